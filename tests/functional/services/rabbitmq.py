"""RabbitMQ from Debian (``rabbitmq-server``): the AMQP broker of the distributed migrate.

Our own node, not the system's: ``imgstore@localhost`` with its config, Erlang
cookie (``HOME``), Mnesia database and logs in ``.cache/services/rabbitmq/``,
and its own ``epmd`` (Erlang's port mapper, started first, in the foreground, on
its own port: the one RabbitMQ would otherwise spawn as a daemon would outlive
``down``). Every listener is on 127.0.0.1: AMQP, the Erlang distribution port
and epmd. No plugin is enabled.

The database is wiped at every ``up``; on that blank database RabbitMQ creates
the ``default_user`` of our ``rabbitmq.conf`` (``imgstore``, administrator, a
password generated at the first ``up`` and kept in ``password``, mode 0600)
with every permission on the ``default_vhost`` ``imgstore``, *instead of*
guest/guest and the ``/`` vhost: neither exists. Ready when that user logs in
to that vhost over AMQP.

The node runs under RabbitMQ's own start script, which stays as the parent and
turns SIGTERM into a clean stop of the Erlang VM; the VM is recorded too
(``beam``), so a killed script never leaves a broker behind.

Ports (environment variable, default): ``IMGSTORE_RABBITMQ_PORT`` (18672, AMQP),
``IMGSTORE_RABBITMQ_DIST_PORT`` (18673), ``IMGSTORE_RABBITMQ_EPMD_PORT`` (18369).

Details: ``url_with_password`` (``amqp://imgstore:<password>@127.0.0.1:18672/imgstore``,
the password URL-quoted), ``url`` (the same without credentials: refused), ``host``,
``port``, ``user``, ``password``, ``vhost``, ``node``, ``version``, ``ports``.

Also here: :func:`install_packages`, Debian packages installed without their
maintainer scripts starting the system's own daemons (mariadb and postgresql
use it too).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.functional.services._common import (
    HOST,
    Context,
    ServiceError,
    _dpkg_installed,
    apt_install,
    port_open,
    read_details,
    run,
    until_ok,
    wait_for_port,
    write_details,
)

LOG = logging.getLogger("imgstore.services")

PACKAGES = ["rabbitmq-server"]
TOGETHER = ("rabbitmq-server", "mariadb-server", "postgresql")
"""The Debian packages of the distributed migrate's servers (installed in one run)."""
SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
"""The start script itself (``/usr/sbin/rabbitmq-server`` would ``su`` to the system's
``rabbitmq`` user and its ``/var/lib/rabbitmq``)."""
DEFAULT_PORTS = {"amqp": 18672, "dist": 18673, "epmd": 18369}
USER = "imgstore"
VHOST = "imgstore"
NODE = "imgstore@localhost"
TIMEOUT = 90.0

# -- Debian packages without daemons ----------------------------------------

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
_POLICY_TEXT = (
    "#!/bin/sh\n"
    "# written by tests.functional.services for the time of its apt-get install:\n"
    "# no maintainer script may start a system daemon (101: action forbidden)\n"
    "exit 101\n"
)
_POLICY_LOCK = threading.Lock()


def install_packages(packages: Sequence[str], log: Path | None = None) -> bool:
    """:func:`apt_install` ``packages`` while Debian's ``policy-rc.d`` forbids every daemon
    start, so their maintainer scripts start no system-wide server (``mariadb`` on 3306,
    ``postgresql`` on 5432, ``rabbitmq-server`` on 5672); the harness runs its own. A
    ``policy-rc.d`` already there is left as it is; ours is removed afterwards.
    The three servers' packages (:data:`TOGETHER`) go in one apt run, whichever of them
    starts first (one dpkg run and one round of triggers: on a fresh machine about 40 s
    less than three); the others then find theirs installed. Return True if anything
    was installed."""
    if all(_dpkg_installed(p) for p in packages):
        return False
    with _POLICY_LOCK:  # our servers install in parallel threads: one file for all of them
        if all(_dpkg_installed(p) for p in packages):
            return False
        ours = os.geteuid() == 0 and not POLICY_RC_D.exists()
        if ours:
            POLICY_RC_D.write_text(_POLICY_TEXT)
            POLICY_RC_D.chmod(0o755)
        try:
            return apt_install(sorted({*packages, *TOGETHER}), log)
        finally:
            with contextlib.suppress(OSError):
                if ours and POLICY_RC_D.read_text() == _POLICY_TEXT:
                    POLICY_RC_D.unlink()


def password(ctx: Context, prefix: str, name: str = "password") -> str:
    """A generated password of the server, kept in the file ``name`` (mode 0600): URL-special
    characters on purpose, so every client must quote it and every log must redact it."""
    path = ctx.path(name)
    if path.exists():
        return path.read_text().strip()
    value = prefix + secrets.token_urlsafe(18) + "%@:/"
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def free_ports(ctx: Context, ports: dict[str, int]) -> None:
    """:class:`ServiceError` if another process listens on one of ``ports``."""
    for what, port in ports.items():
        if port_open(port):
            suffix = "PORT" if what in ("amqp", "sql") else f"{what.upper()}_PORT"
            raise ServiceError(
                f"{ctx.name}: port {port} ({what}) on {HOST} is taken by another process; "
                f"set {ctx.env_prefix}_{suffix}"
            )


def fresh_data(ctx: Context, stamp: str, build: Callable[[Path], None]) -> Path:
    """``data/``, a fresh copy (``cp -a``: owners and modes kept) of ``template/``, which
    ``build(path)`` makes once (a new database server's system tables, which take seconds
    to write) and again whenever ``stamp`` (the server's version...) changes."""
    template = ctx.path("template")
    stamp_file = ctx.path("template.stamp")
    if not (template.is_dir() and stamp_file.exists() and stamp_file.read_text() == stamp):
        stamp_file.unlink(missing_ok=True)
        shutil.rmtree(template, ignore_errors=True)
        building = ctx.path("template.new")
        shutil.rmtree(building, ignore_errors=True)
        build(building)
        building.rename(template)
        stamp_file.write_text(stamp)
    data = ctx.path("data")
    shutil.rmtree(data, ignore_errors=True)
    run(["cp", "-a", str(template), str(data)], "copying the data directory")
    return data


def package_version(package: str) -> str:
    """The installed version of Debian ``package``."""
    return run(["dpkg-query", "-W", "-f=${Version}", package], "dpkg-query").strip()


def quoted(value: str) -> str:
    """``value`` quoted for the user-info or path part of a URL."""
    return urllib.parse.quote(value, safe="")


# -- the broker ---------------------------------------------------------------


def _ports(ctx: Context) -> dict[str, int]:
    return {
        "amqp": ctx.port("PORT", DEFAULT_PORTS["amqp"]),
        "dist": ctx.port("DIST_PORT", DEFAULT_PORTS["dist"]),
        "epmd": ctx.port("EPMD_PORT", DEFAULT_PORTS["epmd"]),
    }


def _config(port: int, secret: str) -> str:
    return f"""# generated by tests/functional/services/rabbitmq.py; do not edit
listeners.tcp.1 = {HOST}:{port}
distribution.listener.interface = {HOST}
default_user = {USER}
default_pass = {secret}
default_vhost = {VHOST}
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
log.console = true
log.console.level = warning
log.file = false
"""


def _env(ctx: Context, ports: dict[str, int]) -> dict[str, str]:
    base = ctx.dir
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(base),  # the Erlang cookie: ours, not /var/lib/rabbitmq's
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PLUGINS_EXPAND_DIR": str(base / "plugins-expand"),
        "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
        "RABBITMQ_NODENAME": NODE,
        "RABBITMQ_NODE_IP_ADDRESS": HOST,
        "RABBITMQ_NODE_PORT": str(ports["amqp"]),
        "RABBITMQ_DIST_PORT": str(ports["dist"]),
        "ERL_EPMD_ADDRESS": HOST,
        "ERL_EPMD_PORT": str(ports["epmd"]),
        # no busy-waiting schedulers: the VM shares two cores with everything else (the
        # tuning RabbitMQ documents for shared hosts)
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
    }


def _vm_pid(ctx: Context, script: str, timeout: float) -> int:
    """The Erlang VM the start script runs as its child (waits until it is there)."""
    pid = ctx.pid(script)
    deadline = time.monotonic() + timeout
    while pid is not None and time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            for child in map(int, children):
                if Path(f"/proc/{child}/exe").resolve().name == "beam.smp":
                    return child
        time.sleep(0.05)
    ctx.check_alive(script)
    raise ServiceError(f"{ctx.name}: the start script ran no Erlang VM in {timeout:.0f} s")


def login(url: str, timeout: float = 5.0) -> None:
    """Log in to the broker at ``url`` over AMQP 0-9-1 and close (py-amqp, a dependency of
    the ``distributed`` extra); the error of a refused login propagates."""
    import amqp

    parts = urllib.parse.urlsplit(url)
    conn = amqp.Connection(
        host=f"{parts.hostname}:{parts.port}",
        userid=urllib.parse.unquote(parts.username or ""),
        password=urllib.parse.unquote(parts.password or ""),
        virtual_host=urllib.parse.unquote(parts.path[1:]),
        connect_timeout=timeout,
    )
    try:
        conn.connect()
    except BaseException:
        conn.collect()
        raise
    conn.close()


def _wait_for_login(ctx: Context, url: str, timeout: float) -> None:
    try:
        import amqp  # noqa: F401
    except ImportError:
        LOG.warning(
            "%s: py-amqp is not installed (imgstore[distributed]): port check only", ctx.name
        )
        return
    try:  # refused while the vhost is still being set up
        until_ok(ctx, "beam", timeout, lambda: login(url), retry_on=Exception)
    except ServiceError:
        raise
    except Exception as exc:
        raise ServiceError(
            f"{ctx.name}: {USER} cannot log in to vhost {VHOST}: {type(exc).__name__}"
        ) from None


def up(ctx: Context) -> dict[str, Any]:
    """Install the package, start epmd and a blank node with our user and vhost."""
    t0 = time.monotonic()
    installed = install_packages(PACKAGES, log=ctx.path("apt.log"))
    install_seconds = time.monotonic() - t0
    epmd = shutil.which("epmd") or "/usr/bin/epmd"
    ports = _ports(ctx)
    free_ports(ctx, ports)
    secret = password(ctx, "rq-")
    t1 = time.monotonic()
    for sub in ("mnesia", "log", "plugins-expand"):
        shutil.rmtree(ctx.path(sub), ignore_errors=True)
    conf = ctx.path("rabbitmq.conf")
    conf.write_text(_config(ports["amqp"], secret))
    conf.chmod(0o600)
    ctx.path("rabbitmq-env.conf").write_text("# empty: the environment says it all\n")
    ctx.path("enabled_plugins").write_text("[].\n")
    env = _env(ctx, ports)
    ctx.start("epmd", [epmd, "-address", HOST, "-port", str(ports["epmd"])], env=env)
    wait_for_port(ctx, "epmd", ports["epmd"], timeout=10)
    ctx.start("rabbitmq", [str(SERVER)], env=env)
    ctx.record_pid("beam", _vm_pid(ctx, "rabbitmq", timeout=10))
    wait_for_port(ctx, "beam", ports["amqp"], timeout=TIMEOUT)
    url = f"amqp://{USER}:{quoted(secret)}@{HOST}:{ports['amqp']}/{VHOST}"
    _wait_for_login(ctx, url, timeout=30)
    return {
        "url": f"amqp://{HOST}:{ports['amqp']}/{VHOST}",
        "url_with_password": url,
        "host": HOST,
        "port": ports["amqp"],
        "ports": ports,
        "user": USER,
        "password": secret,
        "vhost": VHOST,
        "node": NODE,
        "version": package_version(PACKAGES[0]),
        "installed_packages": installed,
        "install_seconds": round(install_seconds, 3),
        "start_seconds": round(time.monotonic() - t1, 3),
    }


def restart(name: str = "rabbitmq") -> dict[str, Any]:
    """Stop the running node and start it again on the same database (its user, vhost and
    durable queues and messages kept), as an operator's restart would; wait until our user
    logs in; return the details with the new PIDs. (``_common.restart_process`` cannot:
    the VM is a child of the start script.)"""
    ctx = Context(name)
    details = read_details(name)
    if details is None:
        raise ServiceError(f"{name} is not up")
    ctx.stop("beam", timeout=30)
    ctx.restart("rabbitmq")
    ctx.record_pid("beam", _vm_pid(ctx, "rabbitmq", timeout=10))
    wait_for_port(ctx, "beam", details["port"], timeout=TIMEOUT)
    _wait_for_login(ctx, details["url_with_password"], timeout=30)
    write_details(ctx, {k: v for k, v in details.items() if k not in ("name", "pids")})
    return read_details(name) or {}


def check(ctx: Context, details: dict[str, Any]) -> bool:
    """Whether the running broker is on the wanted ports and our user logs in."""
    if details.get("ports") != _ports(ctx):
        return False
    try:
        _wait_for_login(ctx, details["url_with_password"], timeout=3)
    except (ServiceError, KeyError):
        return False
    return True


def down(ctx: Context) -> None:
    """Stop the node (a clean stop of the VM), its start script, then epmd; wipe the data."""
    ctx.stop("beam", timeout=30)
    ctx.stop("rabbitmq")
    ctx.stop("epmd")
    for sub in ("mnesia", "plugins-expand"):
        shutil.rmtree(ctx.path(sub), ignore_errors=True)
