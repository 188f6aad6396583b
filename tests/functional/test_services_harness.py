"""The service harness itself: PID files, stopping only our processes, skip/fail rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.functional import conftest
from tests.functional.services import _common
from tests.functional.services._common import Context


@pytest.fixture
def ctx(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    monkeypatch.setattr(_common, "STATE_ROOT", tmp_path)
    context = Context(f"selftest-{uuid.uuid4().hex[:6]}")
    yield context
    context.stop_all(timeout=2)


def _sleeper() -> list[str]:
    return [sys.executable, "-c", "import time; time.sleep(60)"]


def _gone(pid: int) -> bool:
    return _common.start_time(pid) is None


def test_start_records_and_stop_ends_only_that_pid(ctx: Context) -> None:
    first = ctx.start("first", _sleeper())
    second = ctx.start("second", _sleeper())
    assert ctx.pids() == {"first": first, "second": second}
    assert ctx.keys() == ["first", "second"]
    assert ctx.stop("first") is True
    assert _gone(first)
    assert not _gone(second)
    assert ctx.stop("first") is False  # stopping again is fine
    assert ctx.stop_all() == ["second"]
    assert _gone(second)
    assert ctx.stop_all() == []


def test_restart_runs_the_same_command_again(ctx: Context) -> None:
    first = ctx.start(
        "proc", _sleeper(), env={"IMGSTORE_SELFTEST": "1", "PATH": os.environ["PATH"]}
    )
    os.kill(first, signal.SIGKILL)  # a test killed it
    for _ in range(100):
        if ctx.pid("proc") is None:
            break
        time.sleep(0.05)
    second = ctx.restart("proc")
    assert second != first and ctx.pids() == {"proc": second}
    assert b"IMGSTORE_SELFTEST=1" in _environ(second).split(b"\0")
    assert ctx.stop_all() == ["proc"]


def _environ(pid: int) -> bytes:
    """``/proc/<pid>/environ`` once the kernel has set it up. Popen returns as soon as the
    child's exec has released the parent (vfork), which can be before the kernel has put
    the new environment in place: under load a read then came back empty (clean run 11)."""
    for _ in range(100):
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read()
        if environ:
            return environ
        time.sleep(0.05)
    return b""


def test_a_recycled_pid_is_never_signalled(ctx: Context) -> None:
    """A PID file whose start time does not match the running process is stale."""
    other = subprocess.Popen(_sleeper())
    try:
        ctx.dir  # noqa: B018 - creates the directory
        (ctx.dir / "pids").mkdir(exist_ok=True)
        (ctx.dir / "pids" / "stale.pid").write_text(f"{other.pid} 1 0\n")
        assert ctx.pid("stale") is None
        assert ctx.stop("stale") is False
        time.sleep(0.1)
        assert other.poll() is None  # still running: not ours
    finally:
        other.kill()
        other.wait()


def test_sigkill_after_timeout(ctx: Context) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    pid = ctx.start("stubborn", [sys.executable, "-c", code])
    time.sleep(0.3)  # let it install the handler
    started = time.monotonic()
    assert ctx.stop("stubborn", timeout=0.5)
    assert _gone(pid)
    assert time.monotonic() - started < 5


def test_wait_for_port_reports_a_dead_process(ctx: Context) -> None:
    ctx.start("dies", [sys.executable, "-c", "print('boom: bad config')"])
    time.sleep(0.3)
    with pytest.raises(_common.ServiceError, match="boom: bad config"):
        _common.wait_for_port(ctx, "dies", 1, timeout=5)


def test_details_and_status(ctx: Context) -> None:
    up, reason, _ = _common.service_status(ctx.name)
    assert not up and "not up" in reason
    pid = ctx.start("server", _sleeper())
    _common.write_details(ctx, {"url": "http://127.0.0.1:1"})
    up, reason, details = _common.service_status(ctx.name)
    assert up, reason
    assert details is not None and details["pids"] == {"server": pid}
    ctx.stop_all()
    up, reason, _ = _common.service_status(ctx.name)
    assert not up and "server no longer runs" in reason


def test_env_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMGSTORE_PORT_OFFSET", raising=False)
    monkeypatch.setenv("IMGSTORE_X_PORT", "12345")
    assert _common.env_port("IMGSTORE_X_PORT", 1) == 12345
    monkeypatch.setenv("IMGSTORE_X_PORT", "")
    assert _common.env_port("IMGSTORE_X_PORT", 7) == 7
    monkeypatch.setenv("IMGSTORE_PORT_OFFSET", "10000")  # moves defaults, not explicit ports
    assert _common.env_port("IMGSTORE_X_PORT", 7) == 10007
    monkeypatch.setenv("IMGSTORE_X_PORT", "12345")
    assert _common.env_port("IMGSTORE_X_PORT", 7) == 12345
    monkeypatch.setenv("IMGSTORE_PORT_OFFSET", "many")
    monkeypatch.setenv("IMGSTORE_X_PORT", "")
    with pytest.raises(_common.ServiceError):
        _common.env_port("IMGSTORE_X_PORT", 7)
    monkeypatch.delenv("IMGSTORE_PORT_OFFSET")
    for bad in ("http", "0", "70000"):
        monkeypatch.setenv("IMGSTORE_X_PORT", bad)
        with pytest.raises(_common.ServiceError):
            _common.env_port("IMGSTORE_X_PORT", 7)


CI_VALUES = [
    ("true", "fail"),
    ("1", "fail"),
    ("yes", "fail"),
    (" TRUE ", "fail"),
    ("Yes\n", "fail"),
    ("", "skip"),
    ("false", "skip"),
    ("0", "skip"),
    ("no", "skip"),
    ("truthy", "skip"),
]


OUTCOMES = (pytest.fail.Exception, pytest.skip.Exception)
"""Caught together: a skip where a failure is expected must fail the test, not skip it."""


def _outcome(outcome: str) -> type[BaseException]:
    return pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception


@pytest.mark.parametrize(("ci", "outcome"), CI_VALUES)
def test_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str) -> None:
    monkeypatch.setenv("CI", ci)
    assert conftest.in_ci() is (outcome == "fail")
    monkeypatch.delenv("CI")
    assert conftest.in_ci() is False


@pytest.mark.parametrize(("ci", "outcome"), CI_VALUES)
def test_skip_or_fail_and_import_or_fail(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(OUTCOMES, match="the reason") as raised:
        conftest.skip_or_fail("the reason")
    assert type(raised.value) is _outcome(outcome)
    missing = f"no_such_module_{uuid.uuid4().hex[:6]}"
    with pytest.raises(OUTCOMES, match=f"cannot import {missing}.*: pip install it") as raised:
        conftest.import_or_fail(missing, "pip install it")
    assert type(raised.value) is _outcome(outcome)
    assert conftest.import_or_fail("json", "stdlib") is sys.modules["json"]


@pytest.mark.parametrize(("ci", "outcome"), CI_VALUES)
def test_missing_server_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str
) -> None:
    name = f"never-started-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(conftest, "NOT_RUN", {})
    with pytest.raises(OUTCOMES, match=f"{name} is not up") as raised:
        conftest.require_service(name)
    assert type(raised.value) is _outcome(outcome)
    assert name in conftest.NOT_RUN

    class Reporter:
        lines: list[str] = []  # noqa: RUF012

        def write_sep(self, sep: str, title: str) -> None:
            self.lines.append(title)

        def write_line(self, line: str) -> None:
            self.lines.append(line)

    reporter = Reporter()
    conftest.pytest_terminal_summary(reporter, 0, None)
    assert "backends that did not run" in reporter.lines
    verb = "FAILED" if outcome == "fail" else "skipped"
    assert any(line.startswith(f"{name}: {verb}") for line in reporter.lines)


def test_cli_status_of_unknown_and_down_servers() -> None:
    env = {**os.environ, "PYTHONPATH": str(_common.REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "tests.functional.services", "status", "no-such-server"],
        capture_output=True,
        text=True,
        cwd=_common.REPO_ROOT,
        env=env,
        check=False,
    )
    assert out.returncode == 2
    assert "unknown server" in out.stderr


def test_diagnose_names_a_dead_process_and_its_last_lines(ctx: Context) -> None:
    from tests.functional.services import diagnose

    assert diagnose(ctx.name) == []  # never brought up: nothing to say
    ctx.start("server", _sleeper())
    _common.write_details(ctx, {"url": "http://127.0.0.1:1"})
    assert diagnose(ctx.name) == []  # up and running
    pid = ctx.start("worker", [sys.executable, "-c", "print('boom: disk full')"])
    _common.write_details(ctx, {"url": "http://127.0.0.1:1"})
    for _ in range(100):
        if _gone(pid):
            break
        time.sleep(0.05)
    found = diagnose(ctx.name)
    assert found[0].endswith("worker no longer runs"), found
    assert "  worker.log: boom: disk full" in found


def test_resource_watch_names_a_server_process_that_ended(ctx: Context, tmp_path: Any) -> None:
    """A recorded server process that ends while its PID file still names it (a crash, a
    kill) is named in the report, with when; one the harness stops is not."""
    script = _common.REPO_ROOT / "scripts" / "resource-watch"
    workdir = tmp_path / "repo"
    (workdir / ".cache").mkdir(parents=True)
    (workdir / ".cache" / "services").symlink_to(_common.STATE_ROOT)
    crashing = ctx.start("crashing", _sleeper())
    ctx.start("stopped", _sleeper())
    env = {**os.environ, "IMGSTORE_RESOURCE_INTERVAL": "1"}
    log = tmp_path / "resources.log"
    watch = subprocess.Popen(
        [sys.executable, str(script), str(log), str(tmp_path)],
        cwd=workdir, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # seen running: a sample's line is written before it looks at the servers, so
        # the second line means the first sample saw them (clean run 41 killed first)
        _wait_for_lines(log, 2)
        os.kill(crashing, signal.SIGKILL)
        ctx.stop("stopped")  # removes its PID file within 0.05 s of the end
        for _ in range(600):
            if "crashing" in log.read_text():
                break
            time.sleep(0.05)
        time.sleep(2.5)  # two samples more: "stopped" is never named
    finally:
        watch.terminate()
        _out, err = watch.communicate(timeout=10)
    ended = [line for line in err.splitlines() if " ended by " in line]
    assert len(ended) == 1, err
    assert f"{ctx.name}/crashing (pid {crashing}) ended by" in ended[0]


def _wait_for_lines(path: Any, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} has fewer than {count} lines after {timeout:.0f} s")
