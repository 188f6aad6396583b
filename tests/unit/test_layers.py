"""One place for each shared concern, checked by reading imgstore's own source: a wait,
a tracing or metrics call, or a secret scrub written again in a driver fails here.

Each rule names the one module allowed to do the thing, and the few exceptions with
the reason they stay.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "imgstore"


def sources() -> dict[str, ast.Module]:
    """Every module of the imgstore package (testing kit included), parsed."""
    return {
        path.relative_to(PACKAGE.parent).as_posix(): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def calls_to(tree: ast.Module, module: str, name: str) -> list[int]:
    """Lines that call ``module.name(...)`` (as an attribute of the imported module)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == name
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == module
    ]


def imports_of(tree: ast.Module) -> set[str]:
    """Every module ``tree`` imports (``from x import y`` gives ``x`` and ``x.y``)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_waits_are_only_in_backoff() -> None:
    """Retries and polls wait through imgstore.backoff (one schedule, counted retries)."""
    sleeping = {
        path: lines
        for path, tree in sources().items()
        if (lines := calls_to(tree, "time", "sleep")) and path != "imgstore/backoff.py"
    }
    assert sleeping == {}, f"time.sleep outside imgstore/backoff.py: {sleeping}"


def test_drivers_start_no_threads_of_their_own() -> None:
    """Work in the background runs on the core's threads (imgstore.parallel, .deferred)."""
    spawning = {
        path: lines
        for path, tree in sources().items()
        if path.startswith("imgstore/drivers/")
        and (lines := calls_to(tree, "threading", "Thread") + calls_to(tree, "threading", "Timer"))
    }
    assert spawning == {}, f"threads started by drivers: {spawning}"


def stored_attributes(tree: ast.Module, name: str) -> list[int]:
    """Lines that assign ``<something>.name``."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == name and isinstance(node.ctx, ast.Store)
    ]


def test_writers_leave_the_call_order_to_the_core() -> None:
    """The core holds write, commit, abort in order (imgstore.pipeline.InOrder): no driver
    writer keeps a flag of its own to refuse a late call or a second abort."""
    guarding = {
        path: lines
        for path, tree in sources().items()
        if path.startswith("imgstore/drivers/") and (lines := stored_attributes(tree, "_done"))
    }
    assert guarding == {}, f"writers guarding their own call order: {guarding}"


def test_opentelemetry_is_used_only_by_the_telemetry_layer() -> None:
    allowed = {"imgstore/telemetry.py", "imgstore/metrics_server.py"}
    using = sorted(
        path
        for path, tree in sources().items()
        if any(m == "opentelemetry" or m.startswith("opentelemetry.") for m in imports_of(tree))
        and path not in allowed
    )
    assert using == [], f"instrument operations in imgstore/telemetry.py only: {using}"


LOG_SCRUBBING = {"imgstore.scrubbing.scrub_loggers"}
"""What a driver may take from imgstore.scrubbing: the core's filter for the loggers of a
library that logs secrets outside any error (suds logs the SOAP login at DEBUG)."""


def scrubbing_taken(tree: ast.Module) -> set[str]:
    """What ``tree`` imports from imgstore.scrubbing, besides :data:`LOG_SCRUBBING`."""
    found = imports_of(tree)
    names = {m for m in found if m.startswith("imgstore.scrubbing.")}
    if "imgstore.scrubbing" in found and not names:
        names = {"imgstore.scrubbing"}  # the module itself
    return names - LOG_SCRUBBING


def test_drivers_leave_scrubbing_to_the_core() -> None:
    scrubbing = {
        path: taken
        for path, tree in sources().items()
        if path.startswith("imgstore/drivers/") and (taken := scrubbing_taken(tree))
    }
    assert scrubbing == {}, (
        f"drivers scrubbing secrets themselves: {scrubbing} "
        "(the core scrubs every error a driver raises; see imgstore/scrubbing.py)"
    )


def error_tables(tree: ast.Module) -> list[int]:
    """Lines of tables that map to imgstore exception classes: a dict literal with two or
    more such values, or ``dict.fromkeys(keys, <class>)``."""
    import imgstore.exceptions as exceptions

    classes = {
        name
        for name, value in vars(exceptions).items()
        if isinstance(value, type) and issubclass(value, exceptions.ImgstoreError)
    }

    def is_class(node: ast.expr | None) -> bool:
        return isinstance(node, ast.Name) and node.id in classes

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and sum(map(is_class, node.values)) >= 2:
            found.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "fromkeys"
            and len(node.args) == 2
            and is_class(node.args[1])
        ):
            found.append(node.lineno)
    return sorted(set(found))


CLASSIFIES_ITSELF = {
    "imgstore/drivers/s3.py": "S3's error codes (NoSuchKey, SlowDown, AccessDenied...), "
    "which only the S3 driver meets and which say more than their HTTP status (some "
    "come with a 400); statuses and errnos go through imgstore.exceptions.for_status "
    "and imgstore.errnos",
}


def test_drivers_keep_no_status_or_errno_tables() -> None:
    """HTTP statuses and errnos are classed in one place (imgstore.exceptions.for_status,
    imgstore.errnos): a driver that maps them to exceptions again fails here."""
    tabling = {
        path: lines
        for path, tree in sources().items()
        if path.startswith("imgstore/drivers/") and (lines := error_tables(tree))
    }
    assert set(tabling) == set(CLASSIFIES_ITSELF), f"error tables in drivers: {tabling}"


def test_drivers_keep_no_thread_pools() -> None:
    """Parts and segments go up on the core's bounded pool (imgstore.parallel)."""
    pooling = {
        path
        for path, tree in sources().items()
        if path.startswith("imgstore/drivers/")
        and any(m.split(".")[0] in ("concurrent", "multiprocessing") for m in imports_of(tree))
    }
    assert pooling == set(), f"drivers with a pool of their own: {sorted(pooling)}"


@pytest.mark.parametrize(
    "rule", [calls_to, imports_of, stored_attributes, error_tables, scrubbing_taken]
)
def test_the_readers_find_what_they_look_for(rule: object) -> None:
    """The checks above can fail: each reader finds its target in a sample."""
    tree = ast.parse(
        "import time\nfrom opentelemetry import trace\ntime.sleep(1)\nself._done = True\n"
        "T = {1: NotFound, 2: StorageFull}\nU = dict.fromkeys([1], InUse)\nV = {1: 2, 3: 4}\n"
    )
    if rule is error_tables:
        assert error_tables(tree) == [5, 6]
    elif rule is calls_to:
        assert calls_to(tree, "time", "sleep") == [3]
    elif rule is scrubbing_taken:
        assert scrubbing_taken(ast.parse("from imgstore.scrubbing import scrub")) == {
            "imgstore.scrubbing.scrub"
        }
        assert scrubbing_taken(ast.parse("import imgstore.scrubbing")) == {"imgstore.scrubbing"}
        assert scrubbing_taken(ast.parse("from imgstore.scrubbing import scrub_loggers")) == set()
    elif rule is stored_attributes:
        assert stored_attributes(tree, "_done") == [4]
    else:
        assert {"opentelemetry", "opentelemetry.trace", "time"} <= imports_of(tree)


RETRIES = {
    "http": "http_retries",
    "s3": "s3_store_max_retries",
    "swift": "swift_store_retries",
    "cinder": "cinder_http_retries",
    "vmware": "vmware_api_retry_count",
}
TIMEOUTS = {
    "http": ["http_connect_timeout", "http_read_timeout"],
    "s3": ["s3_store_connect_timeout", "s3_store_read_timeout"],
    "swift": ["swift_store_timeout"],
}
"""The request timeouts of the drivers on an HTTP client (GridFS, RBD and Cinder's os-brick
pass theirs to a library whose own terms their help text keeps)."""


@pytest.mark.parametrize(("driver", "name"), sorted(RETRIES.items()))
def test_retry_and_timeout_options_are_declared_by_the_core(driver: str, name: str) -> None:
    """Every network driver's retry count (glance_store's name where it had one) is the
    core's option, with the core's help; so are the HTTP clients' timeouts."""
    import importlib

    from imgstore.driver import retries_option, timeout_option

    module = importlib.import_module(f"imgstore.drivers.{driver}")
    cls = next(
        v for v in vars(module).values() if isinstance(v, type) and getattr(v, "name", "") == driver
    )
    opts = {opt.name: opt for opt in cls.options()}
    assert opts[name].help == retries_option(name).help
    for timeout in TIMEOUTS.get(driver, []):
        assert opts[timeout].help.startswith(timeout_option(timeout, 1.0, "").help.rstrip("."))
