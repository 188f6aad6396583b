"""Generic helpers for the real-server harness (no server-specific code here).

Every server module (``nginx.py``, ``ceph.py``, ...) gets a :class:`Context`
for its private state directory ``.cache/services/<name>/`` and uses:

* :func:`apt_install` - Debian packages by name (``apt-get update`` once if
  the install fails, e.g. because the package lists are missing);
* :func:`ensure_venv` - a venv of its own under ``.cache/services/venvs/<name>``
  for PyPI servers whose dependencies could clash with ours;
* :meth:`Context.start` / :meth:`Context.record_pid` / :meth:`Context.stop` /
  :meth:`Context.stop_all` - PID files (pid + kernel start time, so a recycled
  PID is never signalled), SIGTERM then SIGKILL after a timeout;
* :func:`wait_for_port` / :func:`wait_for_http` - "really answers" checks that
  give up early, with the log tail, when the process died;
* :func:`write_details` / :func:`read_details` - the ``details.json`` the pytest
  fixtures read.

Nothing here touches a process this harness did not start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

LOG = logging.getLogger("imgstore.services")

REPO_ROOT = Path(__file__).resolve().parents[3]
STATE_ROOT = REPO_ROOT / ".cache" / "services"
VENV_ROOT = STATE_ROOT / "venvs"
DETAILS_FILE = "details.json"
HOST = "127.0.0.1"
SECOND_INSTANCE_PREFIX = "faults-"
"""A server named ``faults-<name>`` is a second instance of ``<name>`` (same module)."""
SECOND_INSTANCE_PORT_OFFSET = 1000
"""Added to a server's default ports for its second instance (``faults-ceph``...)."""


class ServiceError(RuntimeError):
    """A server could not be installed, started or stopped."""


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock(name: str) -> threading.Lock:
    """One lock per shared resource (apt, a venv) for servers started in parallel threads."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(name, threading.Lock())


# -- Debian packages ------------------------------------------------------


def _dpkg_installed(package: str) -> bool:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return False
    return out.returncode == 0 and out.stdout.strip().endswith("install ok installed")


def apt_install(packages: Sequence[str], log: Path | None = None) -> bool:
    """Install Debian ``packages`` with apt-get (as root); return True if anything was installed.

    Packages already installed are skipped without calling apt. If the first
    install fails (typically: no package lists yet), ``apt-get update`` runs
    once and the install is retried.
    """
    with _lock("apt"):  # servers start in parallel threads; dpkg takes one at a time
        return _apt_install(packages, log)


def _apt_install(packages: Sequence[str], log: Path | None) -> bool:
    missing = [p for p in packages if not _dpkg_installed(p)]
    if not missing:
        return False
    if os.geteuid() != 0:
        raise ServiceError(
            f"Debian packages {' '.join(missing)} are missing and installing them needs root: "
            f"apt-get install -y {' '.join(missing)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # another apt-get (Glance's preparation installs qemu-utils beside `up`) holds the
    # dpkg lock for a while: wait for it rather than fail
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
    cmd = [*apt, "install", "-y", "--no-install-recommends", *missing]
    LOG.info("installing Debian packages: %s", " ".join(missing))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        LOG.info("apt-get install failed; running apt-get update once and retrying")
        upd = subprocess.run([*apt, "update"], capture_output=True, text=True, env=env, check=False)
        if upd.returncode != 0:
            raise ServiceError(f"apt-get update failed:\n{_tail(upd.stdout + upd.stderr)}")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise ServiceError(
            f"apt-get install {' '.join(missing)} failed:\n{_tail(out.stdout + out.stderr)}"
        )
    return True


# -- per-server venvs -----------------------------------------------------


def ensure_venv(
    name: str,
    requirements: Sequence[str],
    python: str | None = None,
    system_site_packages: bool = False,
) -> Path:
    """A venv at ``.cache/services/venvs/<name>`` with ``requirements`` installed by pip.

    Reused as long as the requirement list and interpreter are unchanged (a
    stamp file records them); returns the venv directory (its ``bin/python``
    runs the server).
    """
    with _lock(f"venv:{name}"):
        return _ensure_venv(name, requirements, python, system_site_packages)


def _ensure_venv(
    name: str, requirements: Sequence[str], python: str | None, system_site_packages: bool
) -> Path:
    venv = VENV_ROOT / name
    python = python or sys.executable
    stamp_text = json.dumps(
        {
            "python": python,
            "requirements": list(requirements),
            "site": system_site_packages,
            "constraints": CONSTRAINTS.read_text(),
        }
    )
    stamp = venv / ".imgstore-stamp"
    if stamp.exists() and stamp.read_text() == stamp_text and (venv / "bin" / "python").exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "venv", "--clear"]
    if system_site_packages:
        cmd.append("--system-site-packages")
    _run([*cmd, str(venv)], f"creating the venv {name}")
    if requirements:
        _run(
            pip_install(venv / "bin" / "python", *requirements),
            f"pip install into the venv {name}",
        )
    stamp.write_text(stamp_text)
    return venv


CONSTRAINTS = REPO_ROOT / "scripts" / "constraints.txt"
"""Versions every pip-install avoids (scripts/pip-install); a venv built before they
changed is built again."""


def pip_install(python: Path | str, *args: str) -> list[str]:
    """The command that pip-installs ``args`` into the environment of ``python``
    (scripts/pip-install: by uv when .venv has it, else by pip)."""
    return ["bash", str(REPO_ROOT / "scripts" / "pip-install"), str(python), *args]


def _run(cmd: Sequence[str], what: str, timeout: float = 1800) -> str:
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise ServiceError(f"{what} failed ({out.returncode}):\n{_tail(out.stdout + out.stderr)}")
    return out.stdout


def run(cmd: Sequence[str], what: str, timeout: float = 600) -> str:
    """Run a setup command; :class:`ServiceError` with its output tail when it fails."""
    return _run(cmd, what, timeout)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError:
        return ""


# -- processes ------------------------------------------------------------


def start_time(pid: int) -> str | None:
    """The kernel start time of ``pid`` (None if gone or a zombie): with the PID, what
    tells a process from a later one that reuses its PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]  # field 22 of /proc/PID/stat


def read_pidfile(path: Path) -> tuple[int, str] | None:
    """``(pid, start time)`` a harness PID file records (None when there is none): the
    process may have ended since."""
    try:
        pid, start, _seq = path.read_text().split()
        return int(pid), start
    except (OSError, ValueError):
        return None


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def env_port(var: str, default: int) -> int:
    """A port from the environment variable ``var``, else ``default`` plus
    ``IMGSTORE_PORT_OFFSET`` (0; e.g. 10000 runs a second checkout's servers beside the
    first's: keep the ports below 32768, where Linux picks its outgoing ports)."""
    value = os.environ.get(var, "")
    if not value:
        offset = os.environ.get("IMGSTORE_PORT_OFFSET", "0") or "0"
        try:
            return default + int(offset)
        except ValueError:
            raise ServiceError(f"IMGSTORE_PORT_OFFSET={offset!r} is not a number") from None
    try:
        port = int(value)
    except ValueError:
        raise ServiceError(f"{var}={value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ServiceError(f"{var}={value!r} is not a port number")
    return port


@dataclasses.dataclass
class Context:
    """One server's private state directory and the processes started in it."""

    name: str

    @property
    def dir(self) -> Path:
        """``.cache/services/<name>/``, created on first use."""
        path = STATE_ROOT / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def path(self, *parts: str) -> Path:
        """A path inside the state directory."""
        return self.dir.joinpath(*parts)

    @property
    def env_prefix(self) -> str:
        """``IMGSTORE_<NAME>`` (``faults-ceph`` -> ``IMGSTORE_FAULTS_CEPH``)."""
        return "IMGSTORE_" + self.name.upper().replace("-", "_")

    @property
    def kind(self) -> str:
        """The server this is an instance of: ``ceph`` for ``ceph`` and ``faults-ceph``."""
        return self.name.removeprefix(SECOND_INSTANCE_PREFIX)

    def port(self, suffix: str, default: int) -> int:
        """The port from ``IMGSTORE_<NAME>_<SUFFIX>`` (IMGSTORE_NGINX_HTTP_PORT...) or default.

        A second instance of a server (``faults-ceph``, a copy of ``ceph`` that only
        the fault tests use) defaults to ``default + SECOND_INSTANCE_PORT_OFFSET``.
        """
        if self.kind != self.name:
            default += SECOND_INSTANCE_PORT_OFFSET
        return env_port(f"{self.env_prefix}_{suffix}", default)

    # pid files in pids/: "<pid> <starttime> <seq>" (a server's own pid files live elsewhere)
    @property
    def _piddir(self) -> Path:
        path = self.dir / "pids"
        path.mkdir(exist_ok=True)
        return path

    def _pidfile(self, key: str) -> Path:
        return self._piddir / f"{key}.pid"

    def record_pid(self, key: str, pid: int) -> None:
        """Record ``pid`` (started by us) under ``key`` so :meth:`stop` can end it."""
        start = start_time(pid)
        if start is None:
            raise ServiceError(f"{self.name}: process {key} (pid {pid}) exited at once")
        seq = (
            max(
                (
                    int(f.read_text().split()[2])
                    for f in self._piddir.glob("*.pid")
                    if len(f.read_text().split()) == 3
                ),
                default=-1,
            )
            + 1
        )
        self._pidfile(key).write_text(f"{pid} {start} {seq}\n")

    def pid(self, key: str) -> int | None:
        """The recorded PID of ``key`` if that very process still runs."""
        recorded = read_pidfile(self._pidfile(key))
        if recorded is None:
            return None
        pid, start = recorded
        return pid if start_time(pid) == start else None

    def pids(self) -> dict[str, int]:
        """Every recorded process that still runs, by key."""
        return {k: p for k in self.keys() if (p := self.pid(k)) is not None}

    def keys(self) -> list[str]:
        """The keys of the PID files, in start order."""
        entries = []
        for f in self._piddir.glob("*.pid"):
            try:
                seq = int(f.read_text().split()[2])
            except (OSError, ValueError, IndexError):
                seq = 0
            entries.append((seq, f.stem))
        return [k for _, k in sorted(entries)]

    def start(
        self,
        key: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start ``argv`` in its own session, output to ``<key>.log``; record and return its PID.

        The process must stay in the foreground (no daemonising), so the PID
        recorded is the one to stop.
        """
        command = self._piddir / f"{key}.cmd.json"  # for restart(); private like the rest
        command.write_text(
            json.dumps(
                {"argv": list(argv), "env": dict(env) if env is not None else None,
                 "cwd": str(cwd) if cwd is not None else None}
            )
        )  # fmt: skip
        os.chmod(command, 0o600)
        log = self.path(f"{key}.log")
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=str(cwd or self.dir),
                start_new_session=True,
            )
        self.record_pid(key, proc.pid)
        return proc.pid

    def restart(self, key: str) -> int:
        """Start ``key`` again exactly as :meth:`start` last did (stopping it first if it runs)."""
        try:
            command = json.loads((self._piddir / f"{key}.cmd.json").read_text())
        except (OSError, ValueError):
            raise ServiceError(f"{self.name}: no recorded command for {key}") from None
        self.stop(key)
        cwd = command.get("cwd")
        return self.start(
            key, command["argv"], env=command.get("env"), cwd=Path(cwd) if cwd else None
        )

    def stop(self, key: str, timeout: float = 10.0) -> bool:
        """SIGTERM the recorded process, SIGKILL after ``timeout``; True if one was running."""
        pidfile = self._pidfile(key)
        pid = self.pid(key)
        if pid is None:
            pidfile.unlink(missing_ok=True)
            return False
        start = start_time(pid)
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and start_time(pid) == start:
            time.sleep(0.05)
        if start_time(pid) == start:
            LOG.warning("%s: %s (pid %d) ignored SIGTERM; sending SIGKILL", self.name, key, pid)
            _signal(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and start_time(pid) == start:
                time.sleep(0.05)
        pidfile.unlink(missing_ok=True)
        return True

    def stop_all(self, timeout: float = 10.0) -> list[str]:
        """Stop every recorded process, last started first; return the keys that were running."""
        return [k for k in reversed(self.keys()) if self.stop(k, timeout)]

    def running(self, keys: Iterable[str]) -> bool:
        """Whether every process in ``keys`` still runs."""
        return all(self.pid(k) is not None for k in keys)

    def check_alive(self, key: str) -> None:
        """:class:`ServiceError` with the log tail if ``key`` is no longer running."""
        if self.pid(key) is None:
            raise ServiceError(
                f"{self.name}: {key} exited; last log lines:\n{log_tail(self.path(f'{key}.log'))}"
            )


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# -- waiting --------------------------------------------------------------


T = TypeVar("T")


def until_ok(
    ctx: Context,
    key: str,
    timeout: float,
    call: Callable[[], T],
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = ServiceError,
) -> T:
    """``call()`` again every 0.1 s while it raises ``retry_on`` (a server still starting
    refuses logins), for ``timeout`` seconds; process ``key`` must stay alive meanwhile.
    The last error is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except retry_on:
            if time.monotonic() > deadline:
                raise
            ctx.check_alive(key)
            time.sleep(0.1)


def wait_for_port(
    ctx: Context, key: str, port: int, timeout: float = 30.0, host: str = HOST
) -> None:
    """Wait until ``host:port`` accepts connections; fail early if ``key`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        ctx.check_alive(key)
        time.sleep(0.05)
    raise ServiceError(f"{ctx.name}: nothing answers on {host}:{port} after {timeout:.0f} s")


def wait_for_http(
    ctx: Context,
    key: str,
    url: str,
    timeout: float = 30.0,
    ok: Iterable[int] = range(200, 500),
    cafile: str | None = None,
) -> int:
    """Wait until ``url`` answers with a status in ``ok``; return that status."""
    wanted = set(ok)
    context = ssl.create_default_context(cafile=cafile) if url.startswith("https") else None
    # no proxies: the harness talks to 127.0.0.1 only
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=2) as resp:
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (OSError, ValueError) as exc:
            last = str(exc)
            ctx.check_alive(key)
            time.sleep(0.05)
            continue
        if status in wanted:
            return status
        last = f"HTTP {status}"
        time.sleep(0.05)
    raise ServiceError(f"{ctx.name}: {url} did not answer properly in {timeout:.0f} s ({last})")


# -- details.json ---------------------------------------------------------


def details_path(name: str) -> Path:
    """Where the details of server ``name`` are written."""
    return STATE_ROOT / name / DETAILS_FILE


def write_details(ctx: Context, details: Mapping[str, Any]) -> Path:
    """Write ``details`` (plus the running PIDs) atomically to ``details.json``."""
    data = {**details, "name": ctx.name, "pids": ctx.pids(), "written_at": time.time()}
    path = ctx.path(DETAILS_FILE)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def remove_details(ctx: Context) -> None:
    """Forget the details (the server is down)."""
    ctx.path(DETAILS_FILE).unlink(missing_ok=True)


def restart_process(name: str, key: str) -> dict[str, Any]:
    """Start process ``key`` of running server ``name`` again (after a test killed it);
    return the server's details with the new PID."""
    ctx = Context(name)
    details = read_details(name)
    if details is None:
        raise ServiceError(f"{name} is not up")
    ctx.restart(key)
    kept = {k: v for k, v in details.items() if k not in ("name", "pids", "written_at")}
    write_details(ctx, kept)
    return read_details(name) or {}


def read_details(name: str) -> dict[str, Any] | None:
    """The details of server ``name``, or None when it was never brought up."""
    try:
        data = json.loads(details_path(name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def service_status(name: str) -> tuple[bool, str, dict[str, Any] | None]:
    """``(up, reason, details)``: up means details exist and every recorded PID runs."""
    details = read_details(name)
    if details is None:
        shown = os.path.relpath(details_path(name), REPO_ROOT)
        return False, f"{name} is not up (no {shown})", None
    ctx = Context(name)
    recorded = details.get("pids") or {}
    if not recorded:
        return False, f"{name}: no running process was recorded", details
    dead = [k for k in recorded if ctx.pid(k) is None]
    if dead:
        return False, f"{name} was started but {', '.join(dead)} no longer runs", details
    return True, "up", details


def file_digest(*paths: Path) -> str:
    """A short digest of files' contents (to notice a changed config)."""
    h = hashlib.sha256()
    for p in paths:
        with contextlib.suppress(OSError):
            h.update(p.read_bytes())
    return h.hexdigest()[:16]
