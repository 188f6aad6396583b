"""A throw-away single-node Ceph cluster: mon, mgr, one OSD (memstore) and radosgw.

Everything lives in ``.cache/services/ceph/``: its own ``ceph.conf`` and
keyring (cephx), the mon and OSD data, logs. Nothing goes to ``/etc/ceph``.
Every daemon listens on 127.0.0.1 (msgr2 only): the monitor on
``IMGSTORE_CEPH_MON_PORT`` (16789), the other daemons in
``IMGSTORE_CEPH_MS_PORT_MIN``..``MAX`` (16800-16999), radosgw (beast) on
``IMGSTORE_CEPH_RGW_PORT`` (17480) with an S3 user and a Swift subuser whose
random keys go into ``details.json``.

The daemons run in the foreground (``-f``) as children recorded by the
harness, so only they are ever signalled; they stop in the order that lets
each one leave cleanly: radosgw, then OSD and mgr, then the monitor.
Admin sockets are unix sockets (at most 107 bytes of path): when the state
directory's path is too long for them, the run directory moves to
``/tmp/imgstore-ceph-<uid>``, recorded in ``details.json`` and removed by down.

The OSD keeps its data in RAM (memstore), up to ``IMGSTORE_CEPH_OSD_MB``
(10240 MiB); a full OSD blocks writes until the client op timeout, so tests
delete what they add (radosgw frees deleted objects only in its garbage
collection: ``radosgw-admin gc process --include-all``).

Settings that keep it fast and small (measured): ``paxos propose interval =
0.1`` (each pool create costs one round; the default 1 s made radosgw start
in 9 s instead of 1.6 s) and the mgr told not to import modules nobody uses.
Client timeouts are set so a test against a broken cluster fails instead of
hanging forever.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from tests.functional.services._common import (
    HOST,
    Context,
    ServiceError,
    apt_install,
    log_tail,
    port_open,
    wait_for_http,
    wait_for_port,
)

LOG = logging.getLogger("imgstore.services")

PACKAGES = [
    "ceph-mon",
    "ceph-mgr",
    "ceph-osd",
    "radosgw",
    "ceph-common",
    "python3-rados",
    "python3-rbd",
    "uuid-runtime",
]

MGR_DISABLED_MODULES = (
    "alerts diskprediction_local influx insights localpool mirroring nfs osd_perf_query "
    "osd_support prometheus restful selftest snap_schedule stats telegraf test_orchestrator zabbix"
)
SOCKET_MAX = 107
"""Longest path of a unix socket (sun_path minus the NUL)."""
DATA_DIRS = ("mon.a", "mgr.x", "osd.0", "rgw", "crash")
TIMEOUT = float(os.environ.get("IMGSTORE_CEPH_TIMEOUT", "120"))


def link_bindings(python_prefix: str | None = None) -> None:
    """Make Debian's rados/rbd extension modules importable in this venv (symlinks)."""
    if sys.prefix == sys.base_prefix and python_prefix is None:
        return  # not a venv: Debian's python3 sees them already
    platlib = Path(sysconfig.get_paths()["platlib"])
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for mod in ("rados", "rbd"):
        src = Path("/usr/lib/python3/dist-packages") / f"{mod}{suffix}"
        if not src.exists():
            raise ServiceError(
                f"{src} is missing: Debian's python3-{mod} is built for the system CPython; "
                "the venv's CPython must be the same minor version"
            )
        dst = platlib / src.name
        if not dst.exists():
            dst.symlink_to(src)


def _run_dir(ctx: Context) -> Path:
    """Where admin sockets go: in the state dir unless its path is too long for them."""
    local = ctx.path("run")
    # longest socket: <run>/client.rgw.x.asok (daemons; clients get none)
    if len(str(local)) + len("/client.rgw.x.asok") < SOCKET_MAX - 8:
        return local
    return Path(f"/tmp/imgstore-{ctx.name}-{os.getuid()}")  # a short path on purpose


def _conf_text(ctx: Context, fsid: str, run: Path, ports: dict[str, int]) -> str:
    d = ctx.dir
    size = int(os.environ.get(f"{ctx.env_prefix}_OSD_MB", "10240")) * 1024 * 1024
    return f"""[global]
fsid = {fsid}
mon host = [v2:{HOST}:{ports["mon"]}]
mon initial members = a
public addr = {HOST}
cluster addr = {HOST}
ms bind msgr1 = false
ms bind msgr2 = true
ms bind port min = {ports["ms_min"]}
ms bind port max = {ports["ms_max"]}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {d}/keyring
run dir = {run}
admin socket = {run}/$name.asok
pid file =
log file = {d}/log/$name.log
mon cluster log file = {d}/log/cluster.log
crash dir = {d}/crash
log to stderr = false
err to stderr = true
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 2
mon data avail crit = 1
osd crush update on start = true
# clients fail instead of hanging forever when the cluster is broken
client mount timeout = 30
rados mon op timeout = 60
rados osd op timeout = 60
mgr initial modules = iostat
mgr disabled modules = {MGR_DISABLED_MODULES}
paxos propose interval = 0.1

[client]
# test processes: no admin socket (one per process would pile up in run dir),
# no log file, no librbd error lines on the tests' stderr
admin socket =
log file =
err to stderr = false

[mon.a]
mon data = {d}/mon.a

[mgr]
mgr data = {d}/mgr.x

[osd]
osd data = {d}/osd.$id
osd objectstore = memstore
memstore device bytes = {size}
osd memory target = 939524096
osd op num shards = 2
osd op num threads per shard = 1
# a client killed with SIGKILL (the tests do that) holds its watches on the images it
# had open until they time out: 10 s here instead of 30 s (live clients ping theirs
# every 5 s), so a removal after a kill waits less
osd client watch timeout = 10
# Read leases: a PG whose lease ran out while the OSD was stalled (no CPU for longer than
# the lease, or a lease renewal queued late) turns laggy, and with one OSD nothing ever
# clears it: every op on that PG blocks until the PG re-peers (Ceph tracker 80404;
# measured here: a 20 s SIGSTOP wedged it, 13 s did not; a wedged cluster fails every
# test that uses it, as one CI run showed). The lease is heartbeat grace (20 s) x this
# ratio: an hour, the whole run's deadline, so neither a stall of a loaded machine nor a
# lost renewal outlives it. A lease only matters when a PG's primary moves to another
# OSD, which a one-OSD cluster never does ("osd down 0" re-peers at once: measured).
osd pool default read lease ratio = 180

[client.rgw.x]
admin socket = {run}/$name.asok
log file = {d}/log/$name.log
err to stderr = true
rgw frontends = beast endpoint={HOST}:{ports["rgw"]}
rgw data = {d}/rgw
rgw dns name = localhost
rgw enable usage log = false
rgw thread pool size = 64
# Deleted objects' data goes to radosgw's garbage collector, which by default
# waits two hours: the memstore OSD (RAM) would fill up during a test run.
rgw gc obj min wait = 0
rgw gc processor period = 5
rgw gc processor max time = 5
"""


OSD_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": "131072",
    "MALLOC_TRIM_THRESHOLD_": "131072",
    "MALLOC_ARENA_MAX": "2",
}
"""glibc settings for the memstore OSD (Debian's ceph-osd uses glibc's malloc): the data of
a deleted object goes back to the system at once. Measured: 3 GiB written to RBD holds
6.2 GiB of RSS (memstore holds about twice the data); after the removal glibc's default
kept 3 GiB of it (the next writes reuse it, other processes cannot), these keep 0.1 GiB."""


def _clean_env() -> dict[str, str]:
    # the Ceph daemons and tools run Debian's python3: keep our venv out of them
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CEPH_CONF", "CEPH_ARGS")
    }
    bindir = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != bindir)
    return env


def _tool(argv: list[str], what: str, timeout: float = 60) -> str:
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, env=_clean_env(), timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ServiceError(f"ceph: {what} timed out after {timeout:.0f} s") from None
    if out.returncode != 0:
        raise ServiceError(f"ceph: {what} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return out.stdout


def _wait(what: str, check: Any, ctx: Context, keys: list[str], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # not ready yet
            last = exc
        for key in keys:
            ctx.check_alive(key)
        time.sleep(0.1)
    raise ServiceError(f"ceph: timed out waiting for {what} ({last})")


def _command(cluster: Any, cmd: dict[str, Any], mgr: bool = False) -> Any:
    call = cluster.mgr_command if mgr else cluster.mon_command
    ret, out, err = call(json.dumps({**cmd, "format": "json"}), b"", timeout=10)
    if ret != 0:
        raise ServiceError(f"ceph {cmd['prefix']}: {err} ({ret})")
    return json.loads(out) if out else None


def up(ctx: Context) -> dict[str, Any]:
    """Install, create and start the cluster; return its details."""
    apt_install(PACKAGES, log=ctx.path("apt.log"))
    link_bindings()
    import rados

    ports = {
        "mon": ctx.port("MON_PORT", 16789),
        "rgw": ctx.port("RGW_PORT", 17480),
        "ms_min": ctx.port("MS_PORT_MIN", 16800),
        "ms_max": ctx.port("MS_PORT_MAX", 16999),
    }
    for name in ("mon", "rgw"):
        if port_open(ports[name]):
            raise ServiceError(
                f"{ctx.name}: port {ports[name]} is taken; set {ctx.env_prefix}_{name.upper()}_PORT"
            )
    d = ctx.dir
    run = _run_dir(ctx)
    _wipe(ctx, run)
    for sub in (*DATA_DIRS, "log"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    run.mkdir(mode=0o700, parents=True, exist_ok=True)
    fsid = str(uuid.uuid4())
    conf = d / "ceph.conf"
    keyring = d / "keyring"
    conf.write_text(_conf_text(ctx, fsid, run, ports))
    env = _clean_env()

    t0 = time.monotonic()
    caps = {
        "mon.": ["--cap", "mon", "allow *"],
        "client.admin": [
            *("--cap", "mon", "allow *", "--cap", "osd", "allow *"),
            *("--cap", "mds", "allow *", "--cap", "mgr", "allow *"),
        ],
        "mgr.x": [
            *("--cap", "mon", "allow profile mgr", "--cap", "osd", "allow *"),
            *("--cap", "mds", "allow *"),
        ],
        "osd.0": [
            *("--cap", "mon", "allow profile osd", "--cap", "mgr", "allow profile osd"),
            *("--cap", "osd", "allow *"),
        ],
        "client.rgw.x": [
            *("--cap", "mon", "allow rw", "--cap", "osd", "allow rwx"),
            *("--cap", "mgr", "allow rw"),
        ],
    }
    for i, (entity, cap) in enumerate(caps.items()):
        create = ["--create-keyring"] if i == 0 else []
        _tool(["ceph-authtool", *create, str(keyring), "--gen-key", "-n", entity, *cap], "keyring")
    keyring.chmod(0o600)

    c = ["-c", str(conf)]
    _tool(
        ["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
         f"[v2:{HOST}:{ports['mon']}]", str(d / "monmap")],
        "monmaptool",
    )  # fmt: skip
    _tool(
        ["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap"),
         "--keyring", str(keyring)],
        "mon mkfs",
    )  # fmt: skip
    ctx.start("mon", ["ceph-mon", *c, "-f", "-i", "a"], env=env)
    wait_for_port(ctx, "mon", ports["mon"], timeout=TIMEOUT)
    ctx.start("mgr", ["ceph-mgr", *c, "-f", "-i", "x"], env=env)

    cluster = rados.Rados(conffile=str(conf), name="client.admin")
    cluster.connect(timeout=30)
    try:
        osd_uuid = str(uuid.uuid4())
        osd_id = _command(cluster, {"prefix": "osd new", "uuid": osd_uuid})["osdid"]
        if osd_id != 0:
            raise ServiceError(f"ceph: unexpected osd id {osd_id!r}")
        _tool(["ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid], "osd mkfs", 120)
        ctx.start("osd", ["ceph-osd", *c, "-f", "-i", "0"], env={**env, **OSD_MALLOC})

        def osd_up() -> bool:
            osds = _command(cluster, {"prefix": "osd dump"})["osds"]
            return bool(osds and osds[0]["up"] == 1 and osds[0]["in"] == 1)

        _wait("osd.0 up", osd_up, ctx, ["mon", "osd"])
        LOG.info("ceph: mon + osd up in %.1f s", time.monotonic() - t0)

        # radosgw creates its pools while the mgr is still importing its modules
        ctx.start("rgw", ["radosgw", *c, "-f", "-n", "client.rgw.x"], env=env)
        rgw = f"http://{HOST}:{ports['rgw']}"
        wait_for_http(ctx, "rgw", rgw + "/", timeout=TIMEOUT)
        access, secret, swift_key = (
            "imgstore" + secrets.token_hex(6),
            secrets.token_hex(20),
            secrets.token_hex(20),
        )
        admin = ["radosgw-admin", *c]
        _tool(
            [*admin, "user", "create", "--uid=test", "--display-name=imgstore tests",
             f"--access-key={access}", f"--secret-key={secret}"],
            "rgw user create",
        )  # fmt: skip
        _tool(
            [*admin, "subuser", "create", "--uid=test", "--subuser=test:swift",
             "--access=full", "--key-type=swift", f"--secret-key={swift_key}"],
            "rgw subuser create",
        )  # fmt: skip

        _wait(
            "mgr available",
            lambda: _command(cluster, {"prefix": "mgr dump"})["available"],
            ctx,
            ["mon", "mgr"],
        )

        def pgs_active() -> bool:
            s = _command(cluster, {"prefix": "pg stat"}, mgr=True)
            s = s.get("pg_summary", s)
            total = s.get("num_pgs", 0)
            active = sum(
                x["num"] for x in s.get("num_pg_by_state", []) if "active" in x["name"].split("+")
            )
            return bool(total and active == total)

        _wait("all PGs active", pgs_active, ctx, ["mon", "osd", "mgr"])
        admin_key = _admin_key(keyring)
    finally:
        cluster.shutdown()
    LOG.info("ceph: ready in %.1f s", time.monotonic() - t0)
    return {
        "ceph_conf": str(conf),
        "keyring": str(keyring),
        "user": "admin",
        "fsid": fsid,
        "mon_host": f"{HOST}:{ports['mon']}",
        "run_dir": str(run),
        "rgw_endpoint": rgw,
        "s3_access_key": access,
        "s3_secret_key": secret,
        "swift_auth_url": rgw + "/auth/1.0",
        "swift_user": "test:swift",
        "swift_key": swift_key,
        "secrets": [admin_key, secret, swift_key],
        "ready_seconds": round(time.monotonic() - t0, 2),
    }


def _admin_key(keyring: Path) -> str:
    section = ""
    for line in keyring.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[client.admin]" and line.startswith("key"):
            return line.split("=", 1)[1].strip()
    return ""


def check(ctx: Context, details: dict[str, Any]) -> bool:
    """Whether the cluster that is up still answers (a quick mon round-trip)."""
    try:
        import rados
    except ImportError:
        return False
    cluster = rados.Rados(conffile=details["ceph_conf"], name="client.admin")
    try:
        cluster.connect(timeout=5)
        return bool(cluster.get_fsid() == details["fsid"])
    except rados.Error:
        return False
    finally:
        cluster.shutdown()


def health_problems(cluster: Any) -> list[str]:
    """Why the cluster is not healthy: every health check raised (slow ops among them) and
    how many PGs are in each state other than exactly ``active+clean`` (``laggy``,
    peering...); [] when healthy."""
    health = _command(cluster, {"prefix": "health", "detail": "detail"}) or {}
    problems = [
        f"{name}: {check.get('summary', {}).get('message', '')}"
        for name, check in sorted((health.get("checks") or {}).items())
    ]
    dump = _command(cluster, {"prefix": "pg dump", "dumpcontents": ["pgs_brief"]}, mgr=True)
    stats = dump.get("pg_stats", []) if isinstance(dump, dict) else dump or []
    states = Counter(pg["state"] for pg in stats if pg["state"] != "active+clean")
    problems += [f"{count} PGs {state}" for state, count in sorted(states.items())]
    if not stats:
        problems.append("the mgr reports no PG yet")
    return problems


def wait_healthy(details: dict[str, Any], timeout: float = 120.0) -> float:
    """Wait until the cluster of ``details`` is healthy (:func:`health_problems` is empty),
    by itself: nothing re-peers it; return the seconds it took. :class:`ServiceError` with
    the problems when it is not healthy in ``timeout``."""
    import rados

    started = time.monotonic()
    deadline = started + timeout
    cluster = rados.Rados(conffile=details["ceph_conf"], name="client.admin")
    cluster.conf_set("client_mount_timeout", "20")
    cluster.connect(timeout=20)
    problems = ["not asked yet"]
    try:
        while time.monotonic() < deadline:
            try:
                problems = health_problems(cluster)
            except (ServiceError, rados.Error) as exc:
                problems = [f"no answer: {exc}"]
            if not problems:
                return time.monotonic() - started
            time.sleep(0.5)
    finally:
        cluster.shutdown()
    raise ServiceError(f"ceph: not healthy {timeout:.0f} s after the fault: {'; '.join(problems)}")


def diagnose(ctx: Context, details: dict[str, Any]) -> list[str]:
    """What is wrong with the cluster, for a failed run's log ([] when healthy): its health
    checks and PG states (:func:`health_problems`), the OSD's blocked ops (the
    oldest three; ops wait there before the health checks say so) and then the last
    warnings of the cluster log."""
    import rados

    cluster = rados.Rados(conffile=details["ceph_conf"], name="client.admin")
    cluster.conf_set("client_mount_timeout", "10")
    try:
        cluster.connect(timeout=10)
        lines = health_problems(cluster)
    except (ServiceError, rados.Error) as exc:
        lines = [f"no answer from the cluster: {exc}"]
    finally:
        cluster.shutdown()
    asok = Path(details["run_dir"]) / "osd.0.asok"
    try:
        out = _tool(["ceph", "--admin-daemon", str(asok), "dump_blocked_ops"], "blocked ops", 15)
        blocked = json.loads(out or "{}")
        ops = blocked.get("ops") or []
        if ops:
            lines.append(f"osd.0: {blocked.get('num_blocked_ops', len(ops))} blocked ops")
        for op in ops[:3]:
            events = (op.get("type_data") or {}).get("events") or [{}]
            lines.append(
                f"  {op.get('age', 0):.0f} s old, {events[-1].get('event', '?')}: "
                f"{op.get('description', '')[:160]}"
            )
    except (ServiceError, ValueError) as exc:
        lines.append(f"osd.0 blocked ops: {exc}")
    if not lines:
        return []
    warnings = [
        line
        for line in log_tail(ctx.path("log", "cluster.log"), 2000).splitlines()
        if "[WRN]" in line or "[ERR]" in line
    ]
    lines += [f"cluster.log: {line[:200]}" for line in warnings[-5:]]
    return lines


def down(ctx: Context) -> None:
    """Stop radosgw, then OSD and mgr, then the mon; remove the cluster's data."""
    # radosgw needs the OSD while it shuts down; the OSD tells the mon it is
    # going down and waits for the answer: this order makes a stop take < 1 s.
    ctx.stop("rgw")
    ctx.stop("osd")
    ctx.stop("mgr")
    ctx.stop("mon")
    _wipe(ctx, _run_dir(ctx))


def _wipe(ctx: Context, run: Path) -> None:
    for sub in (*DATA_DIRS, "run"):
        shutil.rmtree(ctx.path(sub), ignore_errors=True)
    for name in ("ceph.conf", "keyring", "monmap"):
        ctx.path(name).unlink(missing_ok=True)
    if run.name.startswith(f"imgstore-{ctx.name}-"):
        shutil.rmtree(run, ignore_errors=True)
