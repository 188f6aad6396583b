"""``python -m tests.functional.services up|down|status|diagnose [NAME ...]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time

from tests.functional.services import NEEDS, SERVICES, bring_down, bring_up, diagnose, install
from tests.functional.services._common import ServiceError, service_status


def bring_all_up(names: list[str]) -> list[str]:
    """Start ``names`` in parallel threads, each once the servers it needs (NEEDS) are
    done (up or failed); return the names that failed. Most of a start is waiting on
    installs, downloads and daemons, so this takes about as long as the longest chain."""
    done = {name: threading.Event() for name in names}
    failed: list[str] = []

    def start(name: str) -> None:
        try:
            if any(need in done for need in NEEDS.get(name, ())):
                install(name)  # meanwhile: venvs and packages need no other server
            for need in NEEDS.get(name, ()):
                if need in done:
                    done[need].wait()
            began = time.monotonic()
            try:
                bring_up(name)
            except Exception as exc:  # in a thread: any failure must reach the exit code
                failed.append(name)
                logging.error(
                    "%s failed to start after %.1f s: %s",
                    name,
                    time.monotonic() - began,
                    exc,
                    exc_info=not isinstance(exc, ServiceError | OSError),
                )
        finally:
            done[name].set()

    threads = [threading.Thread(target=start, args=(n,), name=f"up-{n}") for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(failed, key=names.index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.functional.services",
        description="Start, stop or show the real servers the functional tests use.",
    )
    parser.add_argument("action", choices=["up", "down", "status", "diagnose"])
    parser.add_argument("names", nargs="*", help=f"servers (default: all: {' '.join(SERVICES)})")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="services: %(message)s",
    )
    names = args.names or list(SERVICES)
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        parser.error(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}")

    failed: list[str] = []
    if args.action == "up":
        failed = bring_all_up(names)
    elif args.action == "down":
        for name in reversed(names):
            try:
                bring_down(name)
            except (ServiceError, OSError) as exc:
                failed.append(name)
                logging.error("%s failed to stop: %s", name, exc)
    elif args.action == "diagnose":
        # what is wrong with each server that was brought up, for a failed run's log
        for name in names:
            found = diagnose(name)
            if found:
                failed.append(name)
                print("\n".join(f"services: diagnose {name}: {line}" for line in found))
    else:
        for name in names:
            up, reason, details = service_status(name)
            shown = {
                k: "***" if any(w in k.lower() for w in ("password", "secret", "key")) else v
                for k, v in (details or {}).items()
            }
            print(f"{name}: {'up' if up else 'down'} ({reason})")
            if up and not args.quiet:
                print(json.dumps(shown, indent=2, sort_keys=True))
            if not up:
                failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
