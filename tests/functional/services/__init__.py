"""The real servers the functional tests talk to, started by the project itself.

Usage (from the repository root)::

    .venv/bin/python -m tests.functional.services up [NAME ...]
    .venv/bin/python -m tests.functional.services status [NAME ...]
    .venv/bin/python -m tests.functional.services down [NAME ...]
    .venv/bin/python -m tests.functional.services diagnose [NAME ...]

No NAME means every server in :data:`SERVICES`. Each server is one module
here with ``up(ctx) -> dict`` (install, start on 127.0.0.1, wait until it
answers, return the connection details), ``down(ctx)`` and optionally
``diagnose(ctx, details) -> list[str]`` (what is wrong with it, for a failed run's
log: :func:`diagnose`); the generic parts
(apt, venvs, PID files, waiting, ``details.json``) are in ``_common``. To add
a server: write ``<name>.py`` and add one line to :data:`SERVICES`.

State lives in ``.cache/services/<name>/`` (git-ignored). ``up`` twice is
fine (a server that is up is left alone), ``down`` when nothing runs is fine,
and only the PIDs the harness recorded are ever signalled.
"""

from __future__ import annotations

import importlib
import logging
import time
from types import ModuleType
from typing import Any

from tests.functional.services._common import (
    Context,
    ServiceError,
    log_tail,
    remove_details,
    service_status,
    write_details,
)

LOG = logging.getLogger("imgstore.services")

SERVICES: dict[str, str] = {
    # name -> module; `up` starts them in this order, `down` stops them in reverse
    "nginx": "tests.functional.services.nginx",
    "tinyproxy": "tests.functional.services.tinyproxy",
    "ceph": "tests.functional.services.ceph",
    "swift": "tests.functional.services.swift",
    "keystone": "tests.functional.services.keystone",  # needs swift (a second proxy)
    # needs ceph (RBD backend) and keystone (its second API authenticates there)
    "cinder": "tests.functional.services.cinder",
    # a third proxy on swift's servers with lowered limits (max_file_size...)
    "swift-limits": "tests.functional.services.swift_limits",
    "mongo": "tests.functional.services.mongo",
    "vmware": "tests.functional.services.vmware",
    "glance": "tests.functional.services.glance",  # uses ceph when it is up
    # the distributed migrate: its broker and the two databases its journal runs on
    "rabbitmq": "tests.functional.services.rabbitmq",
    "mariadb": "tests.functional.services.mariadb",
    "postgresql": "tests.functional.services.postgresql",
    # The fault tests' own servers: test_faults.py stops (SIGSTOP) and kills their
    # processes, so no other test shares them. Same modules, ports + 1000.
    "faults-ceph": "tests.functional.services.ceph",
    "faults-swift": "tests.functional.services.swift",
    "faults-mongo": "tests.functional.services.mongo",
}


NEEDS: dict[str, tuple[str, ...]] = {
    # name -> the servers it needs up first (when they are being started too)
    "cinder": ("ceph", "keystone"),
    "keystone": ("swift",),
    "swift-limits": ("swift",),
    "glance": ("ceph",),
}
"""What ``up`` of several servers waits for; the others start at once, in parallel."""


def module(name: str) -> ModuleType:
    """The module of server ``name``."""
    try:
        return importlib.import_module(SERVICES[name])
    except KeyError:
        raise ServiceError(f"unknown server {name!r}; known: {', '.join(SERVICES)}") from None


def install(name: str) -> None:
    """Install what server ``name`` runs from (its venv, Debian packages) when its module
    says how (an ``install()`` function): this needs no other server, so ``up`` of several
    does it at once, before waiting for the servers ``name`` needs (NEEDS); ``up`` then
    finds it done. A failure here is left for ``up`` to report."""
    step = getattr(module(name), "install", None)
    if step is None:
        return
    try:
        step()
    except Exception as exc:  # up() installs again and says what failed
        LOG.warning("%s: installing ahead failed (up will retry): %s", name, exc)


def bring_up(name: str) -> dict[str, Any]:
    """Start server ``name`` unless it is already up; return its details."""
    mod = module(name)
    ctx = Context(name)
    up, _reason, details = service_status(name)
    if up and details is not None:
        check = getattr(mod, "check", None)
        if check is None or check(ctx, details):
            LOG.info("%s is already up", name)
            return details
        LOG.info("%s runs but does not answer properly; restarting it", name)
    # leftovers of a crashed or half-finished run: stop only what we recorded
    _stop(mod, ctx)
    start = time.monotonic()
    try:
        details = dict(mod.up(ctx))
    except BaseException:
        _stop(mod, ctx)
        raise
    details["up_seconds"] = round(time.monotonic() - start, 3)
    write_details(ctx, details)
    LOG.info("%s is up in %.2f s", name, details["up_seconds"])
    return details


def _stop(mod: ModuleType, ctx: Context) -> None:
    remove_details(ctx)
    try:
        mod.down(ctx)
    finally:
        ctx.stop_all()


def bring_down(name: str) -> None:
    """Stop server ``name`` (nothing happens when it is not running)."""
    _stop(module(name), Context(name))


def diagnose(name: str) -> list[str]:
    """What is wrong with server ``name``, in a few lines (none when nothing is): its
    recorded processes that no longer run, with their last log lines, then what its
    module's ``diagnose(ctx, details)`` finds (a Ceph cluster's health, blocked ops...).
    For the log of a failed run: it never raises."""
    ctx = Context(name)
    up, reason, details = service_status(name)
    if details is None:
        return []  # never brought up: its tests said so
    lines: list[str] = []
    if not up:
        lines.append(reason)
        for key in details.get("pids") or {}:
            if ctx.pid(key) is None:
                tail = log_tail(ctx.path(f"{key}.log"), 8)
                lines += [f"  {key}.log: {line}" for line in tail.splitlines() if line.strip()]
    check = getattr(module(name), "diagnose", None) if name in SERVICES else None
    if check is not None:
        try:
            lines += check(ctx, details)
        except Exception as exc:  # a diagnosis must not hide the run's own failure
            lines.append(f"diagnosis failed: {type(exc).__name__}: {exc}")
    return lines
