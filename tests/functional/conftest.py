"""Fixtures for tests against real servers started by ``tests.functional.services``.

A test that needs a server asks for its fixture (``nginx``...) or calls
:func:`require_service`. When the server is not up the test is skipped with
the reason, except in CI (``CI`` set to ``true``, ``1`` or ``yes``, any case):
then it fails, so a CI run can never pass with a backend silently left out. At
the end, the terminal summary lists every backend that did not run and why.

The same rule for anything else a test cannot do here (a missing module, a
missing tool): :func:`skip_or_fail` and :func:`import_or_fail`, used by every
test under ``tests/`` instead of ``pytest.skip`` and ``pytest.importorskip``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any, NoReturn

import pytest

from tests.functional import secret_audit
from tests.functional.services._common import service_status

NOT_RUN: dict[str, str] = {}
"""Servers some test wanted but that were not up, with the reason."""


CI_TRUE = frozenset({"true", "1", "yes"})
"""Values of ``CI`` (stripped, any case) that make this a CI run."""


def in_ci() -> bool:
    """Whether this is a CI run (``CI`` is true, 1 or yes): nothing may skip then."""
    return os.environ.get("CI", "").strip().lower() in CI_TRUE


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test (or the module, at import time) with ``reason``; fail in CI.

    A CI run can never pass with a test silently left out: what would skip on
    a developer's machine is an error there.
    """
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is an error)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def import_or_fail(module: str, reason: str) -> ModuleType:
    """``module`` imported; when it cannot be: :func:`skip_or_fail` with ``reason``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        error = exc  # reported outside the except: no "during handling" chain
    skip_or_fail(f"cannot import {module} ({error}): {reason}")


def require_service(name: str) -> dict[str, Any]:
    """The details of server ``name``; skip (fail in CI) if it is not up."""
    up, reason, details = service_status(name)
    if up and details is not None:
        return details
    NOT_RUN[name] = reason
    skip_or_fail(
        f"{reason}; start it with: .venv/bin/python -m tests.functional.services up {name}"
    )


@pytest.fixture(scope="session")
def nginx() -> dict[str, Any]:
    """nginx's details (URLs, ports, CA file, docroot); see services/nginx.py."""
    return require_service("nginx")


@pytest.fixture(scope="session")
def tinyproxy() -> dict[str, Any]:
    """tinyproxy's details (proxy_url, user, password); see services/tinyproxy.py."""
    return require_service("tinyproxy")


@pytest.fixture(scope="session")
def vmware() -> dict[str, Any]:
    """vcsim's details (url, host, port, user, password, ca_file...); see services/vmware.py."""
    return require_service("vmware")


@pytest.fixture(scope="session")
def cinder() -> dict[str, Any]:
    """Cinder's details (endpoint, volume type, RBD keyring); see services/cinder.py."""
    return require_service("cinder")


@pytest.fixture(scope="session")
def glance() -> dict[str, Any]:
    """The Glance API on imgstore's glance_store compat package; see services/glance.py."""
    return require_service("glance")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """Say which backends' servers were missing, so a skip is never overlooked."""
    if not NOT_RUN:
        return
    verb = "FAILED (CI is set)" if in_ci() else "skipped"
    terminalreporter.write_sep("=", "backends that did not run")
    for name, reason in sorted(NOT_RUN.items()):
        terminalreporter.write_line(f"{name}: {verb}: {reason}")
    terminalreporter.write_line(
        "bring servers up with: .venv/bin/python -m tests.functional.services up"
    )


@pytest.fixture(autouse=True)
def _secret_audit() -> Iterator[Any]:
    """Under IMGSTORE_SECRET_AUDIT=1 (default in CI): DEBUG logs, no secret in any.

    See ``secret_audit.py``; a leak fails the test at teardown.
    """
    yield from secret_audit.audited()
