"""PostgreSQL from Debian (``postgresql``): the other journal database of the distributed
migrate.

Our own ``postgres``, not the system's cluster (``/var/lib/postgresql``, port 5432,
which Debian's package creates and we never start): its data directory in
``.cache/services/postgresql/data``, listening on 127.0.0.1 only and on no Unix
socket. PostgreSQL refuses to run as root, so ``initdb`` and the server run as the
system's ``postgres`` user (``setpriv``, which execs: the recorded PID is the
postmaster itself); the data directory is theirs, the rest of the state directory
stays root's.

Every ``up`` starts from a fresh copy of a data directory ``initdb`` made once
(``template/``; made again for another package version or superuser password):
superuser ``postgres`` with a generated password, ``scram-sha-256`` for every
connection in ``pg_hba.conf`` (no ``trust``, no ``peer``). ``up`` then creates the
role ``imgstore`` (login, generated password, no other right) and the database
``imgstore`` it owns. Passwords are generated at the first ``up`` and kept
(``password``, ``admin_password``, mode 0600). Ready when ``imgstore`` logs in over
TCP. ``down`` and :func:`restart` stop it with SIGINT (a fast shutdown: open sessions
are ended; SIGTERM would wait for them).

Port (environment variable, default): ``IMGSTORE_POSTGRESQL_PORT`` (18432).

Details: ``url_with_password``
(``postgresql+psycopg://imgstore:<password>@127.0.0.1:18432/imgstore``, the password
URL-quoted), ``url`` (without credentials), ``admin_url_with_password`` (``postgres``,
database ``postgres``), ``host``, ``port``, ``user``, ``password``, ``database``,
``admin_user``, ``admin_password``, ``version``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.functional.services._common import (
    HOST,
    Context,
    ServiceError,
    read_details,
    run,
    until_ok,
    wait_for_port,
    write_details,
)
from tests.functional.services.rabbitmq import (
    free_ports,
    fresh_data,
    install_packages,
    package_version,
    password,
    quoted,
)

PACKAGES = ["postgresql"]
DEFAULT_PORT = 18432
USER = "imgstore"
DATABASE = "imgstore"
ADMIN = "postgres"
SYSTEM_USER = "postgres"
"""The system account Debian's package creates; the server runs as it."""
KEY = "postgres"
TIMEOUT = 60.0
DRIVER = "postgresql+psycopg"


def _bindir() -> Path:
    """The newest installed server's ``bin`` (``/usr/lib/postgresql/15/bin``)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if not found:
        raise ServiceError("postgresql: no server in /usr/lib/postgresql/*/bin")
    return found[-1].parent


def _as_postgres(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}", "--init-groups", "--",
            *argv]  # fmt: skip


def _initdb(ctx: Context, bindir: Path, admin_secret: str) -> Callable[[Path], None]:
    account = pwd.getpwnam(SYSTEM_USER)

    def build(path: Path) -> None:
        path.mkdir(mode=0o700)
        os.chown(path, account.pw_uid, account.pw_gid)
        pwfile = ctx.path("initdb.pw")
        pwfile.write_text(admin_secret + "\n")
        pwfile.chmod(0o600)
        os.chown(pwfile, account.pw_uid, account.pw_gid)
        try:
            run(
                _as_postgres([str(bindir / "initdb"), "-D", str(path / "pgdata"),
                              f"--username={ADMIN}", f"--pwfile={pwfile}",
                              "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                              "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"]),
                "initdb",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)

    return build


def _psql(
    bindir: Path, port: int, user: str, secret: str, database: str, sql: str, timeout: float = 10
) -> str:
    """Run ``sql`` (from stdin) as ``user`` over TCP with ``psql`` (the password in the
    environment, never in argv); its output."""
    out = subprocess.run(
        [str(bindir / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", HOST,
         "-p", str(port), "-U", user, "-d", database],
        input=sql, capture_output=True, text=True, timeout=timeout + 10, check=False,
        env={**os.environ, "PGPASSWORD": secret, "PGCONNECT_TIMEOUT": str(int(timeout)),
             "PGSSLMODE": "disable"},
    )  # fmt: skip
    if out.returncode != 0:
        raise ServiceError(f"postgresql: {user} cannot run SQL: {out.stderr.strip()[-300:]}")
    return out.stdout


def _wait_for(ctx: Context, timeout: float, *args: Any) -> str:
    """:func:`_psql` ``args`` again until it succeeds (the server says it is starting up)."""
    return until_ok(ctx, KEY, timeout, lambda: _psql(*args))


def up(ctx: Context) -> dict[str, Any]:
    """Install the package, copy the initdb'd template, start the server, add our role."""
    t0 = time.monotonic()
    installed = install_packages(PACKAGES, log=ctx.path("apt.log"))
    install_seconds = time.monotonic() - t0
    bindir = _bindir()
    port = ctx.port("PORT", DEFAULT_PORT)
    free_ports(ctx, {"sql": port})
    secret = password(ctx, "pg-")
    admin_secret = password(ctx, "pg-admin-", "admin_password")
    t1 = time.monotonic()
    stamp = package_version(PACKAGES[0]) + " " + hashlib.sha256(admin_secret.encode()).hexdigest()
    data = fresh_data(ctx, stamp, _initdb(ctx, bindir, admin_secret)) / "pgdata"
    ctx.start(
        KEY,
        _as_postgres([str(bindir / "postgres"), "-D", str(data),
                      "-c", f"listen_addresses={HOST}", "-c", f"port={port}",
                      "-c", "unix_socket_directories=", "-c", "logging_collector=off"]),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
    )  # fmt: skip
    wait_for_port(ctx, KEY, port, timeout=TIMEOUT)
    admin = (bindir, port, ADMIN, admin_secret, "postgres")
    _wait_for(ctx, TIMEOUT, *admin, "SELECT 1")
    escaped = secret.replace("'", "''")
    _psql(
        *admin,
        f"CREATE ROLE {USER} LOGIN PASSWORD '{escaped}';\n"
        f"CREATE DATABASE {DATABASE} OWNER {USER} ENCODING 'UTF8';\n",
    )
    version = _psql(bindir, port, USER, secret, DATABASE, "SHOW server_version").strip()
    base = f"{HOST}:{port}"
    return {
        "url": f"{DRIVER}://{base}/{DATABASE}",
        "url_with_password": f"{DRIVER}://{USER}:{quoted(secret)}@{base}/{DATABASE}",
        "admin_url_with_password": f"{DRIVER}://{ADMIN}:{quoted(admin_secret)}@{base}/postgres",
        "host": HOST,
        "port": port,
        "user": USER,
        "password": secret,
        "database": DATABASE,
        "admin_user": ADMIN,
        "admin_password": admin_secret,
        "version": version,
        "installed_packages": installed,
        "install_seconds": round(install_seconds, 3),
        "start_seconds": round(time.monotonic() - t1, 3),
    }


def check(ctx: Context, details: dict[str, Any]) -> bool:
    """Whether the running server is on the wanted port and ``imgstore`` logs in."""
    if details.get("port") != ctx.port("PORT", DEFAULT_PORT):
        return False
    try:
        args = (_bindir(), details["port"], USER, details["password"], DATABASE, "SELECT 1")
        _wait_for(ctx, 3, *args)
    except (ServiceError, KeyError):
        return False
    return True


def _stop_fast(ctx: Context) -> None:
    """SIGINT (a fast shutdown: sessions are ended), then SIGTERM/SIGKILL if it hangs.
    SIGTERM alone waits for every session to end, and a SIGKILL leaves the backends
    holding the shared memory, which a new server then refuses to start on."""
    pid = ctx.pid(KEY)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ctx.pid(KEY) == pid:
            time.sleep(0.05)
    ctx.stop(KEY)


def restart(name: str = "postgresql") -> dict[str, Any]:
    """Stop the running server (fast shutdown) and start it again on the same data, as an
    operator's restart would; wait until ``imgstore`` logs in; the details with the new
    PID."""
    ctx = Context(name)
    details = read_details(name)
    if details is None:
        raise ServiceError(f"{name} is not up")
    _stop_fast(ctx)
    ctx.restart(KEY)  # stopped already: starts the recorded command again
    args = (_bindir(), details["port"], USER, details["password"], DATABASE, "SELECT 1")
    _wait_for(ctx, TIMEOUT, *args)
    write_details(ctx, {k: v for k, v in details.items() if k not in ("name", "pids")})
    return read_details(name) or {}


def down(ctx: Context) -> None:
    """Stop the server (fast shutdown) and throw its data away."""
    _stop_fast(ctx)
    shutil.rmtree(ctx.path("data"), ignore_errors=True)
