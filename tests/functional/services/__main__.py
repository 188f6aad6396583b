"""``python -m tests.functional.services up|down|status [NAME ...]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from tests.functional.services import SERVICES, bring_down, bring_up
from tests.functional.services._common import ServiceError, service_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.functional.services",
        description="Start, stop or show the real servers the functional tests use.",
    )
    parser.add_argument("action", choices=["up", "down", "status"])
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

    failed = []
    if args.action == "up":
        for name in names:
            start = time.monotonic()
            try:
                bring_up(name)
            except (ServiceError, OSError) as exc:
                failed.append(name)
                logging.error(
                    "%s failed to start after %.1f s: %s", name, time.monotonic() - start, exc
                )
    elif args.action == "down":
        for name in reversed(names):
            try:
                bring_down(name)
            except (ServiceError, OSError) as exc:
                failed.append(name)
                logging.error("%s failed to stop: %s", name, exc)
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
