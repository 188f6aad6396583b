"""Test groups and order for parallel runs (``pytest -n 2 --no-loadscope-reorder``).

pytest-xdist hands a worker a whole group at a time, in collection order. A group is a
test module: tests of one module often share a server's namespace (Cinder's volume
pool, a vSphere datastore listing) and check it holds exactly what they expect, so two
of them must never run at once. The conformance modules are the exception: each class
there has a bucket, container, pool, database or directory of its own, so each class
is a group and two classes may run side by side.

The longest groups go first, so no worker is left alone with one of them at the end;
then the other functional tests; the many short unit, fuzz and harness groups last,
to fill the gaps. The order within a group is not changed. A serial run (no ``-n``)
gets the same order, which is harmless.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

FIRST = (
    # each takes minutes as one group (measured on the 2-core CI machine)
    "tests/functional/test_glance_suite.py",
    "tests/functional/test_big_images.py",
    # xdist gives each worker a second group at the start: the Glance suite's worker
    # holds it until that one test ends (10-15 min on a clean machine), so the group
    # queued behind it must be a short one, never Cinder's
    "tests/functional/test_glance_api.py",
    "tests/functional/test_cinder.py",
    "tests/functional/test_distributed_migrate.py",
    "tests/functional/test_faults.py",
    "tests/functional/test_vmware.py",
    "tests/functional/test_load.py",
)
"""Groups (module paths, or prefixes of them) that start first, in this order."""
LAST = ("tests/unit/", "tests/fuzz/", "tests/functional/test_services_harness.py")
"""Groups of many short tests that fill the gaps at the end."""
CLASS_GROUPS = (
    "tests/functional/test_filesystem_conformance.py",
    "tests/functional/test_gridfs_conformance.py",
    "tests/functional/test_http_conformance.py",
    "tests/functional/test_rbd_conformance.py",
    "tests/functional/test_s3_conformance.py",
    "tests/functional/test_swift_conformance.py",
)
"""Modules whose classes are independent of each other: one group per class."""


def _rank(nodeid: str) -> int:
    for i, prefix in enumerate(FIRST):
        if nodeid.startswith(prefix):
            return i
    if nodeid.startswith(LAST):
        return len(FIRST) + 1
    return len(FIRST)


SHARED_GROUPS = {
    # its private Glance's Cinder backend uses the test Cinder's RBD pool, which the
    # Cinder tests list whole to check that nothing is left
    "tests/functional/test_glance_operators.py": "tests/functional/test_cinder.py",
    # the distributed migrate restarts RabbitMQ and PostgreSQL under them
    "tests/functional/test_journal_servers.py": "tests/functional/test_distributed_migrate.py",
    "tests/functional/test_distributed_services.py": "tests/functional/test_distributed_migrate.py",
}
"""Modules that share a server's namespace with another module: they join its group."""


def group_of(nodeid: str) -> str:
    """The xdist group of a test: its module, or its class in CLASS_GROUPS modules."""
    module, _, rest = nodeid.partition("::")
    if module in SHARED_GROUPS:
        return SHARED_GROUPS[module]
    if module in CLASS_GROUPS and "::" in rest:
        return f"{module}::{rest.split('::', 1)[0]}"
    return module


def cross_section(items: list[pytest.Item]) -> tuple[list[pytest.Item], list[pytest.Item]]:
    """Kept and deselected tests of classes that run a cross-section of the kit.

    A conformance class for a second configuration of a driver whose data path another
    class already runs whole (the same Cinder without Keystone, the same Swift with
    tempauth) names the tests it keeps in ``CROSS_SECTION``: a test's function name keeps
    all its cases, ``name[case]`` one case. The rest is deselected, and pytest reports
    them as deselected, never as passed. A name whose test the class does not have is an
    error, so a renamed test cannot empty a cross-section unnoticed."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        cls = getattr(item, "cls", None)
        names = set(getattr(cls, "CROSS_SECTION", None) or ())
        if not names:
            kept.append(item)
            continue
        unknown = sorted(n for n in names if not hasattr(cls, n.split("[", 1)[0]))
        if unknown:
            raise pytest.UsageError(f"{cls.__name__}.CROSS_SECTION names no test: {unknown}")
        keep = {item.name, getattr(item, "originalname", item.name)} & names
        (kept if keep else dropped).append(item)
    return kept, dropped


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Cross-sections applied (:func:`cross_section`), then the longest groups first and
    short ones last (a stable sort: the same order on every worker)."""
    kept, dropped = cross_section(items)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    items.sort(key=lambda item: _rank(item.nodeid))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scope scheduling, with :func:`group_of` as the scope. (``--dist loadgroup``
    and ``xdist_group`` marks would say the same, but xdist 3.8 renames the node id to
    carry the group, which pytest 9.2's node ids no longer allow: the marks are ignored.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Name each failure the moment it happens, with its last line, on the terminal
    (xdist prints only an ``F``): a run cut short by CI's limit still says what failed."""
    if not report.failed or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller reports what the workers send it
    crash = getattr(report.longrepr, "reprcrash", None)
    reason = crash.message.splitlines()[0][:300] if crash and crash.message else ""
    stage = "" if report.when == "call" else f" (in {report.when})"
    line = f"\n{'ERROR' if report.when != 'call' else 'FAILED'}{stage} {report.nodeid}: {reason}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
