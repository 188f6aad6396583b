"""Test order for parallel runs (``pytest -n 2 --dist loadscope --no-loadscope-reorder``).

pytest-xdist hands each worker a whole scope at a time (a test class, or a module's
functions) in collection order. The longest single scopes go first, so no worker is
left alone with one of them at the end; then the other functional tests; the many
short unit, fuzz and harness scopes last, to fill the gaps. The order within a scope
is not changed. Serial runs (no ``-n``) get the same order, which is harmless.
"""

from __future__ import annotations

import pytest

FIRST = (
    # each takes minutes as one scope (measured on the 2-core CI machine)
    "tests/functional/test_glance_suite.py",
    "tests/functional/test_big_images.py",
    "tests/functional/test_migrate.py",
    "tests/functional/test_faults.py",
    "tests/functional/test_load.py",
    "tests/functional/test_cinder.py",
)
"""Scopes (module paths, or prefixes of them) that start first, in this order."""
LAST = ("tests/unit/", "tests/fuzz/", "tests/functional/test_services_harness.py")
"""Scopes of many short tests that fill the gaps at the end."""


def _rank(nodeid: str) -> int:
    for i, prefix in enumerate(FIRST):
        if nodeid.startswith(prefix):
            return i
    if nodeid.startswith(LAST):
        return len(FIRST) + 1
    return len(FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest scopes first, short ones last (a stable sort: same order on every worker)."""
    items.sort(key=lambda item: _rank(item.nodeid))
