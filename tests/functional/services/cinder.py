"""Cinder (api + scheduler + volume) on the harness's Ceph cluster, in one process.

PyPI ``cinder`` (pinned) in its own venv (``.cache/services/venvs/cinder``,
reused while the pin is unchanged), with Debian's ``rados``/``rbd`` bindings
linked into it. A small launcher runs cinder-api, cinder-scheduler and
cinder-volume as green-thread services of ONE process with oslo.messaging's
in-process transport (``transport_url = fake:/``): no message broker, one PID,
no sqlite file shared between processes (see ../shared notes: measured half
the memory and 5 s faster than three processes and RabbitMQ).

* database: sqlite (WAL) in ``.cache/services/cinder/state/``;
* ``auth_strategy = noauth_include_project_id``: the token is
  ``<user>:<project>``, every caller is admin, the endpoint is
  ``http://127.0.0.1:<port>/v3/<project>`` where the project must be hex
  (cinder's ``project_id_regex``): tests use ``uuid4().hex``;
* backend ``ceph``: Cinder's RBD driver on the cluster of ``services up ceph``
  (start it first), in a pool of its own (``imgstore-cinder``) as a cephx user
  of its own (``client.imgstore-cinder``, ``profile rbd`` on that pool); its
  keyring is written here (never to ``/etc/ceph``) and ``CEPH_*`` variables are
  removed from Cinder's environment (they would override the keyring);
* a volume type ``imgstore-rbd`` pinned to that backend.

Ready only once ``os-services`` shows cinder-scheduler and cinder-volume up.
Port: ``IMGSTORE_CINDER_PORT`` (18776). Details: ``endpoint`` (``.../v3``),
``endpoint_template`` (``.../v3/%(project_id)s``), ``volume_type``,
``rbd_pool``, ``rbd_user``, ``keyring`` (the cephx user's keyring, for
os-brick's RBD connector), ``ceph_conf``, ``secrets`` (the cephx key).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.functional.services._common import (
    HOST,
    Context,
    ServiceError,
    ensure_venv,
    port_open,
    read_details,
    run,
)

REQUIREMENTS = ["cinder==29.0.0"]
DEFAULT_PORT = 18776
POOL = "imgstore-cinder"
RBD_USER = "imgstore-cinder"
BACKEND = "ceph"
VOLUME_TYPE = "imgstore-rbd"
TIMEOUT = float(os.environ.get("IMGSTORE_CINDER_TIMEOUT", "120"))
ADMIN_PROJECT = "0" * 32  # any hex string works with noauth

_LAUNCHER = '''"""cinder api + scheduler + volume as green-thread services of one process.

Combines cinder/cmd/{api,scheduler,volume}.py main() (cinder 29), so that
transport_url = fake:/ (oslo.messaging's in-process driver) works.
"""
from cinder import monkey_patch; monkey_patch.patch()  # noqa: E702
import logging as python_logging  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402

import os_brick  # noqa: E402
from oslo_config import cfg  # noqa: E402
from oslo_log import log as logging  # noqa: E402
from oslo_privsep import priv_context  # noqa: E402
from oslo_service import service as oslo_svc  # noqa: E402

from cinder.common import config  # noqa: E402,F401
from cinder.common import constants  # noqa: E402
from cinder import coordination  # noqa: E402
from cinder import i18n  # noqa: E402
i18n.enable_lazy()
from cinder import objects  # noqa: E402
from cinder import rpc  # noqa: E402
from cinder import service  # noqa: E402
from cinder import utils  # noqa: E402
from cinder import version  # noqa: E402
from cinder.cmd import volume as volume_cmd  # noqa: E402,F401

CONF = cfg.CONF

# cinder keeps the id of "the" service of a process in the class attribute
# Service.service_id, which report_state reads: with three services in one
# process every heartbeat would update the last one started, and
# cinder-volume would turn "down" after service_down_time.
_report_state = service.Service.report_state


def _report_own_state(self):
    service.Service.service_id = self.origin_service_id
    return _report_state(self)


service.Service.report_state = _report_own_state


def main():
    objects.register_all()
    CONF(sys.argv[1:], project="cinder", version=version.version_string())
    config.set_middleware_defaults()
    logging.setup(CONF, "cinder")
    python_logging.captureWarnings(True)
    priv_context.init(root_helper=shlex.split(utils.get_root_helper()))
    os_brick.setup(CONF)
    rpc.init(CONF)
    coordination.COORDINATOR.start()
    launcher = oslo_svc.ServiceLauncher(CONF, restart_method="mutate")
    for backend in filter(None, CONF.enabled_backends):
        CONF.register_opt(volume_cmd.host_opt, group=backend)
        host = "%s@%s" % (getattr(CONF, backend).backend_host or CONF.host, backend)
        launcher.launch_service(service.Service.create(
            host=host, service_name=backend, binary=constants.VOLUME_BINARY,
            coordination=True, cluster=None))
    launcher.launch_service(service.Service.create(binary="cinder-scheduler"))
    launcher.launch_service(service.WSGIService("osapi_volume"), workers=1)
    launcher.wait()


if __name__ == "__main__":
    main()
'''


def _cinder_conf(ctx: Context, venv: Path, port: int) -> str:
    d = ctx.dir
    return f"""[DEFAULT]
auth_strategy = noauth_include_project_id
transport_url = fake:/
api_paste_config = {venv}/etc/cinder/api-paste.ini
rootwrap_config = {venv}/etc/cinder/rootwrap.conf
state_path = {d}/state
my_ip = {HOST}
host = imgstore-cinder
osapi_volume_listen = {HOST}
osapi_volume_listen_port = {port}
osapi_volume_workers = 1
enabled_backends = {BACKEND}
default_volume_type = __DEFAULT__
use_stderr = true
debug = false
report_interval = 2
service_down_time = 30
periodic_interval = 30
rpc_response_timeout = 60
# tests create many volumes at once (concurrency tests); no quota gets in the way
quota_volumes = -1
quota_gigabytes = -1
quota_snapshots = -1

[database]
connection = sqlite:///{d}/state/cinder.sqlite?timeout=30
sqlite_synchronous = false

[oslo_concurrency]
lock_path = {d}/state/locks

[coordination]
backend_url = file://{d}/state/coordination

[{BACKEND}]
volume_backend_name = {BACKEND}
volume_driver = cinder.volume.drivers.rbd.RBDDriver
rbd_pool = {POOL}
rbd_ceph_conf = {d}/ceph.conf
rbd_user = {RBD_USER}
rbd_cluster_name = ceph
rbd_flatten_volume_from_snapshot = false
rbd_store_chunk_size = 4
rados_connect_timeout = 30
report_discard_supported = true
"""


def _ceph_conf(ceph: dict[str, Any], keyring: Path, log: Path) -> str:
    return f"""[global]
mon host = [v2:{ceph["mon_host"]}]
keyring = {keyring}
auth client required = cephx
client mount timeout = 30
rados mon op timeout = 60
rados osd op timeout = 60
admin socket =
log file = {log}
err to stderr = false
"""


def _link_bindings(venv: Path) -> None:
    """Make Debian's rados/rbd extension modules importable in the cinder venv."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    out = run(
        [str(venv / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['platlib'])"],
        "locating the cinder venv's site-packages",
    )  # fmt: skip
    platlib = Path(out.strip())
    for mod in ("rados", "rbd"):
        src = Path("/usr/lib/python3/dist-packages") / f"{mod}{suffix}"
        if not src.exists():
            raise ServiceError(f"cinder: {src} is missing (install Debian's python3-{mod})")
        dst = platlib / src.name
        if not dst.exists():
            dst.symlink_to(src)


def _env(venv: Path) -> dict[str, str]:
    # CEPH_KEYRING/CEPH_CONF/CEPH_ARGS would override cinder's own ceph.conf
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CEPH_CONF", "CEPH_ARGS", "CEPH_KEYRING")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "/usr/bin:/bin")])
    return env


def _mon(cluster: Any, cmd: dict[str, Any]) -> Any:
    ret, out, err = cluster.mon_command(json.dumps({**cmd, "format": "json"}), b"", timeout=30)
    if ret != 0:
        raise ServiceError(f"cinder: ceph {cmd['prefix']} failed: {err} ({ret})")
    return json.loads(out) if out else None


def _ceph_setup(ceph: dict[str, Any], keyring: Path) -> str:
    """A fresh pool and cephx user for cinder; write its keyring; return the key."""
    import rados
    import rbd

    cluster = rados.Rados(conffile=ceph["ceph_conf"], name="client.admin")
    cluster.connect(timeout=30)
    try:
        if cluster.pool_exists(POOL):  # a leftover of a crashed run: its volumes are gone
            cluster.delete_pool(POOL)
        cluster.create_pool(POOL)
        _mon(cluster, {"prefix": "osd pool application enable", "pool": POOL, "app": "rbd"})
        with cluster.open_ioctx(POOL) as ioctx:
            rbd.RBD().pool_init(ioctx, False)
        entity = f"client.{RBD_USER}"
        _mon(cluster, {"prefix": "auth rm", "entity": entity})
        caps = ["mon", "profile rbd", "osd", f"profile rbd pool={POOL}",
                "mgr", f"profile rbd pool={POOL}"]  # fmt: skip
        _mon(cluster, {"prefix": "auth get-or-create", "entity": entity, "caps": caps})
        key = _mon(cluster, {"prefix": "auth get-key", "entity": entity})["key"]
    finally:
        cluster.shutdown()
    keyring.write_text(f"[client.{RBD_USER}]\n\tkey = {key}\n")
    keyring.chmod(0o600)
    return str(key)


def _ceph_teardown(ceph: dict[str, Any]) -> None:
    import rados

    cluster = rados.Rados(conffile=ceph["ceph_conf"], name="client.admin")
    try:
        cluster.connect(timeout=10)
        if cluster.pool_exists(POOL):
            cluster.delete_pool(POOL)
        _mon(cluster, {"prefix": "auth rm", "entity": f"client.{RBD_USER}"})
    except (rados.Error, ServiceError):
        pass  # the cluster is gone or broken: its data goes with it
    finally:
        cluster.shutdown()


def _api(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "X-Auth-Token": f"admin:{ADMIN_PROJECT}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as resp:
        data = resp.read()
    return json.loads(data) if data else None


def _services_up(base: str) -> bool:
    services = _api(f"{base}/v3/{ADMIN_PROJECT}/os-services")["services"]
    up = {s["binary"] for s in services if s["state"] == "up" and s["status"] == "enabled"}
    return {"cinder-scheduler", "cinder-volume"} <= up


def _volume_type(base: str) -> str:
    url = f"{base}/v3/{ADMIN_PROJECT}/types"
    for vtype in _api(url)["volume_types"]:
        if vtype["name"] == VOLUME_TYPE:
            return str(vtype["id"])
    body = {"volume_type": {"name": VOLUME_TYPE, "os-volume-type-access:is_public": True,
                            "extra_specs": {"volume_backend_name": BACKEND}}}  # fmt: skip
    return str(_api(url, "POST", body)["volume_type"]["id"])


def up(ctx: Context) -> dict[str, Any]:
    """Install the venv, set up the pool and user on Ceph, start Cinder, wait until it serves."""
    ceph = read_details("ceph")
    if ceph is None:
        raise ServiceError("cinder needs the ceph server: services up ceph first")
    started = time.monotonic()
    venv = ensure_venv("cinder", REQUIREMENTS)
    _link_bindings(venv)
    install_seconds = time.monotonic() - started
    port = ctx.port("PORT", DEFAULT_PORT)
    if port_open(port):
        raise ServiceError(f"cinder: port {port} is taken; set IMGSTORE_CINDER_PORT")
    t0 = time.monotonic()
    shutil.rmtree(ctx.path("state"), ignore_errors=True)
    for sub in ("state/locks", "state/coordination", "logs"):
        ctx.path(sub).mkdir(parents=True, exist_ok=True)
    keyring = ctx.path(f"ceph.client.{RBD_USER}.keyring")
    key = _ceph_setup(ceph, keyring)
    ctx.path("ceph.conf").write_text(_ceph_conf(ceph, keyring, ctx.path("logs", "ceph.log")))
    conf = ctx.path("cinder.conf")
    conf.write_text(_cinder_conf(ctx, venv, port))
    conf.chmod(0o600)
    launcher = ctx.path("cinder_all.py")
    launcher.write_text(_LAUNCHER)
    env = _env(venv)
    db = ctx.path("state", "cinder.sqlite")
    sync = ctx.path("logs", "db-sync.log")
    out = run(
        [str(venv / "bin" / "cinder-manage"), "--config-file", str(conf), "db", "sync"],
        "cinder db sync",
        timeout=300,
    )
    sync.write_text(out)
    with sqlite3.connect(db) as con:  # concurrent api + volume writes: no "database is locked"
        con.execute("PRAGMA journal_mode=WAL")
    setup_seconds = time.monotonic() - t0
    ctx.start(
        "cinder",
        [str(venv / "bin" / "python"), str(launcher), "--config-file", str(conf)],
        env=env,
    )
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + TIMEOUT
    last = "no answer"
    while True:
        try:
            if _services_up(base):
                break
            last = "cinder-scheduler or cinder-volume not up yet"
        except (OSError, ValueError, KeyError) as exc:
            last = str(exc)
        ctx.check_alive("cinder")
        if time.monotonic() > deadline:
            raise ServiceError(f"cinder: not ready after {TIMEOUT:.0f} s ({last})")
        time.sleep(0.25)
    type_id = _volume_type(base)
    return {
        "endpoint": f"{base}/v3",
        "endpoint_template": f"{base}/v3/%(project_id)s",
        "port": port,
        "volume_type": VOLUME_TYPE,
        "volume_type_id": type_id,
        "backend_name": BACKEND,
        "rbd_pool": POOL,
        "rbd_user": RBD_USER,
        "keyring": str(keyring),
        "ceph_conf": str(ctx.path("ceph.conf")),
        "ceph_admin_conf": ceph["ceph_conf"],
        "ceph_fsid": ceph["fsid"],
        "secrets": [key],
        "install_seconds": round(install_seconds, 3),
        "setup_seconds": round(setup_seconds, 3),
        "start_seconds": round(time.monotonic() - t0, 3),
    }


def check(ctx: Context, details: dict[str, Any]) -> bool:
    """Whether Cinder answers on the wanted port with its services up, on the same Ceph."""
    ceph = read_details("ceph")
    if ceph is None or ceph.get("fsid") != details.get("ceph_fsid"):
        return False
    if details.get("port") != ctx.port("PORT", DEFAULT_PORT):
        return False
    try:
        return _services_up(f"http://{HOST}:{details['port']}")
    except (OSError, ValueError, KeyError):
        return False


def down(ctx: Context) -> None:
    """Stop Cinder; remove its pool and cephx user (when Ceph still runs) and its state."""
    ctx.stop("cinder", timeout=15)
    ceph = read_details("ceph")
    if ceph is not None:
        _ceph_teardown(ceph)
    shutil.rmtree(ctx.path("state"), ignore_errors=True)
    for name in ("cinder.conf", "ceph.conf", f"ceph.client.{RBD_USER}.keyring"):
        ctx.path(name).unlink(missing_ok=True)


def new_project() -> str:
    """A fresh project id Cinder's noauth accepts (hex)."""
    return uuid.uuid4().hex
