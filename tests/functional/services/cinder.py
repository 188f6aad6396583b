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
* a second API on its own port, authenticated by the harness's Keystone
  (``services up keystone`` first): the same process serves it (a second
  ``WSGIService``, ``osapi_volume_keystone``), so both APIs share the
  scheduler, the volume service and the database, and the volumes made through
  either are the same RBD volumes. Its paste app is ``/v3`` through Cinder's
  own ``keystone`` pipeline (``authtoken``, ``keystonecontext``), named in
  our copy of ``api-paste.ini`` instead of picked by ``auth_strategy`` (which
  only the first API and Cinder's Nova/Glance clients read: neither is used
  here). A second process could not share the volume service: the in-process
  transport does not cross processes (that would take a broker). authtoken
  validates with Cinder's own service user (``cinder``, admin in project
  ``service``) and caches validations in the process (300 s, each checked
  against the token's ``expires_at``). Keystone's tokens live 10 s: Cinder
  does not reuse a caller's token after the request (no Glance, Nova or
  Keystone calls on the paths used here), and keystoneauth renews the service
  user's token before every validation (it renews any token within 120 s of
  its end), so nothing in Cinder fails when a token ends. Registered in
  Keystone at every ``up`` (idempotent, new passwords): the user ``cinder``;
  the domain ``imgstore`` with the project and member user ``cinder-images``
  (not ``Default``, so the domain options count); the service ``volumev3``
  (``cinderv3``) with public, internal and admin endpoints
  ``http://127.0.0.1:<keystone port>/v3/%(project_id)s``. Keystone's ids are
  hex: the noauth API reaches the images project too (as admin: the tests'
  listing and cleanup);
* ``resource_query_filters_file`` is the packaged ``resource_filters.json``:
  without it Cinder refuses every list filter of a caller who is not admin
  (the driver's look-up of a volume by name: 400 Invalid filters);
* backend ``ceph``: Cinder's RBD driver on the cluster of ``services up ceph``
  (start it first), in a pool of its own (``imgstore-cinder``) as a cephx user
  of its own (``client.imgstore-cinder``, ``profile rbd`` on that pool); its
  keyring is written here (never to ``/etc/ceph``) and ``CEPH_*`` variables are
  removed from Cinder's environment (they would override the keyring);
* a volume type ``imgstore-rbd`` pinned to that backend.

Ready only once ``os-services`` shows cinder-scheduler and cinder-volume up
and the Keystone API takes a token of ``cinder-images`` (and refuses a noauth
one). ``check`` restarts Cinder when Keystone was started again since (its
users would be gone). Ports: ``IMGSTORE_CINDER_PORT`` (18776, noauth),
``IMGSTORE_CINDER_KEYSTONE_PORT`` (18777, Keystone). Details: ``endpoint``
(``.../v3``), ``endpoint_template`` (``.../v3/%(project_id)s``),
``volume_type``, ``rbd_pool``, ``rbd_user``, ``keyring`` (the cephx user's
keyring, for os-brick's RBD connector), ``ceph_conf``, ``secrets`` (the cephx
key, the Keystone passwords); for Keystone: ``keystone_endpoint``,
``keystone_endpoint_template``, ``keystone_auth_url``, ``keystone_region``,
``keystone_catalog_info`` (``volumev3:cinderv3:publicURL``),
``keystone_user``/``keystone_password``/``keystone_project`` (``cinder-images``),
``keystone_project_id``, ``keystone_domain`` (of both), ``keystone_service_user``.
"""

from __future__ import annotations

import configparser
import json
import os
import secrets
import shutil
import sqlite3
import sysconfig
import time
import urllib.error
import urllib.parse
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
DEFAULT_KEYSTONE_PORT = 18777
KEYSTONE_API = "osapi_volume_keystone"
"""The second API of the process: Cinder's own ``keystone`` pipeline (authtoken)."""
SERVICE_USER = "cinder"
"""Cinder's service user in Keystone (project ``service``, role admin): authtoken's."""
DOMAIN = "imgstore"
"""A Keystone domain of its own for the images user and project (not ``Default``, so the
driver's ``cinder_store_user_domain_name``/``cinder_store_project_domain_name`` count)."""
IMAGES_USER = "cinder-images"
IMAGES_PROJECT = "cinder-images"
CATALOG_INFO = "volumev3:cinderv3:publicURL"
POOL = "imgstore-cinder"
RBD_USER = "imgstore-cinder"
BACKEND = "ceph"
VOLUME_TYPE = "imgstore-rbd"
TIMEOUT = float(os.environ.get("IMGSTORE_CINDER_TIMEOUT", "120"))
ADMIN_PROJECT = "0" * 32  # any hex string works with noauth

_LAUNCHER = '''"""cinder api + scheduler + volume as green-thread services of one process.

Combines cinder/cmd/{api,scheduler,volume}.py main() (cinder 29), so that
transport_url = fake:/ (oslo.messaging's in-process driver) works. Two APIs on
two ports share the scheduler, the volume service and the database: osapi_volume
(auth_strategy, noauth here) and osapi_volume_keystone (its paste pipeline has
Keystone's authtoken, whatever auth_strategy says).
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
    # the second API (Keystone auth): WSGIService reads <name>_listen, _listen_port, _workers
    CONF.register_opts([
        cfg.StrOpt("osapi_volume_keystone_listen", default="127.0.0.1"),
        cfg.PortOpt("osapi_volume_keystone_listen_port"),
        cfg.IntOpt("osapi_volume_keystone_workers", default=1),
    ])
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
    if CONF.osapi_volume_keystone_listen_port:
        launcher.launch_service(service.WSGIService("osapi_volume_keystone"), workers=1)
    launcher.wait()


if __name__ == "__main__":
    main()
'''


def _cinder_conf(
    ctx: Context, venv: Path, ports: dict[str, int], keystone: dict[str, Any], service_password: str
) -> str:
    d = ctx.dir
    ks_base = keystone["auth_url"].removesuffix("/v3")
    return f"""[DEFAULT]
auth_strategy = noauth_include_project_id
transport_url = fake:/
api_paste_config = {d}/api-paste.ini
# the filters a user who is not admin may list with (volumes by name, attachments by
# volume): as packaged in /etc/cinder; without the file every filter is refused (400)
resource_query_filters_file = {venv}/etc/cinder/resource_filters.json
rootwrap_config = {venv}/etc/cinder/rootwrap.conf
state_path = {d}/state
my_ip = {HOST}
host = imgstore-cinder
osapi_volume_listen = {HOST}
osapi_volume_listen_port = {ports["api"]}
osapi_volume_workers = 1
{KEYSTONE_API}_listen = {HOST}
{KEYSTONE_API}_listen_port = {ports["keystone"]}
{KEYSTONE_API}_workers = 1
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

# the second API's authtoken (its own service user; keystoneauth logs in again
# whenever its token is within 120 s of its end: with 10 s tokens, before each
# validation). No memcache: validations are cached in the process for 300 s, and
# each is checked against the token's expires_at
[keystone_authtoken]
www_authenticate_uri = {ks_base}
auth_url = {ks_base}
auth_type = password
username = {SERVICE_USER}
password = {service_password}
user_domain_name = Default
project_name = service
project_domain_name = Default
region_name = {keystone["region"]}
interface = public
service_token_roles_required = true
token_cache_time = 300
http_connect_timeout = 5
http_request_max_retries = 3

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


def _api_paste(venv: Path) -> str:
    """Cinder's api-paste.ini plus the second API: ``/v3`` through Cinder's own ``keystone``
    pipeline (authtoken, keystonecontext), picked by name instead of by auth_strategy."""
    text = (venv / "etc" / "cinder" / "api-paste.ini").read_text()
    paste = configparser.ConfigParser(interpolation=None)
    paste.read_string(text)
    pipeline = paste["composite:openstack_volume_api_v3"]["keystone"]
    if "authtoken" not in pipeline.split():
        raise ServiceError(f"cinder: its keystone pipeline has no authtoken: {pipeline}")
    return f"""{text}
# imgstore's harness: the API on the second port ({KEYSTONE_API}) authenticates with
# Keystone, the first (osapi_volume) follows auth_strategy (noauth_include_project_id)
[composite:{KEYSTONE_API}]
use = call:cinder.api:root_app_factory
/: apiversions
/healthcheck: healthcheck
/v3: openstack_volume_api_v3_keystone

[pipeline:openstack_volume_api_v3_keystone]
pipeline = {pipeline}
"""


class _Keystone:
    """Just enough of Keystone's v3 API, as its bootstrap admin (system scope), to register
    Cinder: a token is used for at most half the Keystone's token lifetime."""

    def __init__(self, details: dict[str, Any]) -> None:
        self.url = details["auth_url"]
        self._admin = (details["admin_user"], details["admin_password"])
        self._lifetime = float(details.get("token_expiration", 3600)) / 2
        self._token = ""
        self._issued = 0.0
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _send(self, method: str, path: str, body: Any, token: str) -> tuple[Any, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["X-Auth-Token"] = token
        req = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers=headers,
        )
        try:
            with self._opener.open(req, timeout=20) as resp:
                data = resp.read()
                return (json.loads(data) if data else None), resp.headers
        except urllib.error.HTTPError as exc:
            raise ServiceError(
                f"cinder: Keystone {method} {path}: HTTP {exc.code} {exc.read()[:300]!r}"
            ) from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request with a fresh enough admin token; the decoded answer."""
        if not self._token or time.monotonic() - self._issued > self._lifetime:
            user, password = self._admin
            auth = {"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": user, "domain": {"id": "default"}, "password": password}}},
                "scope": {"system": {"all": True}}}}  # fmt: skip
            self._issued = time.monotonic()
            _data, headers = self._send("POST", "/auth/tokens", auth, "")
            self._token = headers["X-Subject-Token"]
        return self._send(method, path, body, self._token)[0]

    def find(self, coll: str, **match: str) -> str | None:
        """The id of the first ``coll`` entry matching ``match``, or None."""
        query = urllib.parse.urlencode(match)
        found = self.call("GET", f"/{coll}?{query}")[coll]
        return str(found[0]["id"]) if found else None

    def find_or_create(self, coll: str, key: str, body: dict[str, Any], **match: str) -> str:
        """The id of the entry matching ``match``, created from ``body`` if there is none."""
        found = self.find(coll, **match)
        if found is not None:
            return found
        return str(self.call("POST", f"/{coll}", {key: body})[key]["id"])

    def user(self, domain_id: str, name: str, password: str, project_id: str, role: str) -> str:
        """User ``name`` with ``password`` (set again if it exists) and ``role`` on the project."""
        uid = self.find("users", name=name, domain_id=domain_id)
        if uid is None:
            body = {"name": name, "domain_id": domain_id, "password": password,
                    "default_project_id": project_id, "enabled": True}  # fmt: skip
            uid = str(self.call("POST", "/users", {"user": body})["user"]["id"])
        else:
            self.call("PATCH", f"/users/{uid}", {"user": {"password": password, "enabled": True}})
        role_id = self.find("roles", name=role)
        if role_id is None:
            raise ServiceError(f"cinder: Keystone has no role {role!r}")
        self.call("PUT", f"/projects/{project_id}/users/{uid}/roles/{role_id}")
        return uid


def _register(keystone: dict[str, Any], api_url: str, passwords: dict[str, str]) -> str:
    """Cinder's service user, the images user and project (own domain), and the volumev3
    endpoints ``<api_url>/v3/%(project_id)s`` in Keystone; return the images project's id.

    Idempotent: users that exist get the new passwords, the endpoints are made again."""
    ks = _Keystone(keystone)
    service_pid = ks.find_or_create(
        "projects", "project", {"name": "service", "domain_id": "default"},
        name="service", domain_id="default",
    )  # fmt: skip
    ks.user("default", SERVICE_USER, passwords["service"], service_pid, "admin")
    domain_id = ks.find_or_create(
        "domains", "domain", {"name": DOMAIN, "enabled": True}, name=DOMAIN
    )
    project_id = ks.find_or_create(
        "projects", "project", {"name": IMAGES_PROJECT, "domain_id": domain_id},
        name=IMAGES_PROJECT, domain_id=domain_id,
    )  # fmt: skip
    ks.user(domain_id, IMAGES_USER, passwords["images"], project_id, "member")
    service_type, service_name, _interface = CATALOG_INFO.split(":")
    service_id = ks.find_or_create(
        "services", "service", {"type": service_type, "name": service_name, "enabled": True},
        type=service_type,
    )  # fmt: skip
    for endpoint in ks.call("GET", f"/endpoints?service_id={service_id}")["endpoints"]:
        ks.call("DELETE", f"/endpoints/{endpoint['id']}")
    for interface in ("public", "internal", "admin"):
        body = {"service_id": service_id, "interface": interface, "enabled": True,
                "url": f"{api_url}/v3/%(project_id)s", "region_id": keystone["region"]}  # fmt: skip
        ks.call("POST", "/endpoints", {"endpoint": body})
    return project_id


def _keystone_login(keystone: dict[str, Any], password: str) -> str:
    """A token of the images user (what the driver does), for the readiness check."""
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": IMAGES_USER, "domain": {"name": DOMAIN}, "password": password}}},
        "scope": {"project": {"name": IMAGES_PROJECT, "domain": {"name": DOMAIN}}}}}  # fmt: skip
    req = urllib.request.Request(
        f"{keystone['auth_url']}/auth/tokens",
        method="POST",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as resp:
        return str(resp.headers["X-Subject-Token"])


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


def _api(
    url: str, method: str = "GET", body: dict[str, Any] | None = None, token: str | None = None
) -> Any:
    req = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "X-Auth-Token": token or f"admin:{ADMIN_PROJECT}",
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


def _ports(ctx: Context) -> dict[str, int]:
    return {
        "api": ctx.port("PORT", DEFAULT_PORT),
        "keystone": ctx.port("KEYSTONE_PORT", DEFAULT_KEYSTONE_PORT),
    }


def _keystone_api_ok(base: str, keystone: dict[str, Any], password: str, project: str) -> bool:
    """Whether the second API takes a Keystone token of the images user (and only that)."""
    try:
        _api(f"{base}/v3/{project}/volumes", token=f"admin:{project}")  # noauth's token
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            return False
    else:
        return False  # a noauth token let in: not the Keystone pipeline
    token = _keystone_login(keystone, password)
    return "volumes" in _api(f"{base}/v3/{project}/volumes", token=token)


def install() -> None:
    """Cinder's venv with Ceph's bindings (they need no server)."""
    _link_bindings(ensure_venv("cinder", REQUIREMENTS))


def up(ctx: Context) -> dict[str, Any]:
    """Install the venv, set up the pool and user on Ceph, register Cinder in Keystone,
    start Cinder, wait until both APIs serve."""
    ceph = read_details("ceph")
    if ceph is None:
        raise ServiceError("cinder needs the ceph server: services up ceph first")
    keystone = read_details("keystone")
    if keystone is None or not keystone.get("admin_password"):
        raise ServiceError("cinder needs the keystone server: services up keystone first")
    started = time.monotonic()
    venv = ensure_venv("cinder", REQUIREMENTS)
    _link_bindings(venv)
    install_seconds = time.monotonic() - started
    ports = _ports(ctx)
    for what, port in ports.items():
        if port_open(port):
            var = "IMGSTORE_CINDER_PORT" if what == "api" else "IMGSTORE_CINDER_KEYSTONE_PORT"
            raise ServiceError(f"cinder: port {port} is taken; set {var}")
    port = ports["api"]
    ks_base = f"http://{HOST}:{ports['keystone']}"
    t0 = time.monotonic()
    passwords = {"service": secrets.token_hex(12), "images": secrets.token_hex(12)}
    ks_project_id = _register(keystone, ks_base, passwords)
    shutil.rmtree(ctx.path("state"), ignore_errors=True)
    for sub in ("state/locks", "state/coordination", "logs"):
        ctx.path(sub).mkdir(parents=True, exist_ok=True)
    keyring = ctx.path(f"ceph.client.{RBD_USER}.keyring")
    key = _ceph_setup(ceph, keyring)
    ctx.path("ceph.conf").write_text(_ceph_conf(ceph, keyring, ctx.path("logs", "ceph.log")))
    ctx.path("api-paste.ini").write_text(_api_paste(venv))
    conf = ctx.path("cinder.conf")
    conf.write_text(_cinder_conf(ctx, venv, ports, keystone, passwords["service"]))
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
            if not _services_up(base):
                last = "cinder-scheduler or cinder-volume not up yet"
            elif not _keystone_api_ok(ks_base, keystone, passwords["images"], ks_project_id):
                last = f"{ks_base} does not answer as a Keystone-authenticated API"
            else:
                break
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
        "ports": ports,
        "keystone_endpoint": f"{ks_base}/v3",
        "keystone_endpoint_template": f"{ks_base}/v3/%(project_id)s",
        "keystone_auth_url": keystone["auth_url"],
        "keystone_region": keystone["region"],
        "keystone_catalog_info": CATALOG_INFO,
        "keystone_user": IMAGES_USER,
        "keystone_password": passwords["images"],
        "keystone_project": IMAGES_PROJECT,
        "keystone_project_id": ks_project_id,
        "keystone_domain": DOMAIN,
        "keystone_service_user": SERVICE_USER,
        "keystone_instance": keystone["project_id"],
        "volume_type": VOLUME_TYPE,
        "volume_type_id": type_id,
        "backend_name": BACKEND,
        "rbd_pool": POOL,
        "rbd_user": RBD_USER,
        "keyring": str(keyring),
        "ceph_conf": str(ctx.path("ceph.conf")),
        "ceph_admin_conf": ceph["ceph_conf"],
        "ceph_fsid": ceph["fsid"],
        "secrets": [key, passwords["images"], passwords["service"]],
        "install_seconds": round(install_seconds, 3),
        "setup_seconds": round(setup_seconds, 3),
        "start_seconds": round(time.monotonic() - t0, 3),
    }


def check(ctx: Context, details: dict[str, Any]) -> bool:
    """Whether Cinder answers on the wanted ports with its services up, on the same Ceph,
    registered in the Keystone that runs now (a new Keystone has none of its users)."""
    ceph = read_details("ceph")
    if ceph is None or ceph.get("fsid") != details.get("ceph_fsid"):
        return False
    keystone = read_details("keystone")
    if keystone is None or keystone.get("project_id") != details.get("keystone_instance"):
        return False
    if details.get("ports") != _ports(ctx):
        return False
    try:
        return _services_up(f"http://{HOST}:{details['port']}") and _keystone_api_ok(
            f"http://{HOST}:{details['ports']['keystone']}",
            keystone,
            details["keystone_password"],
            details["keystone_project_id"],
        )
    except (OSError, ValueError, KeyError):
        return False


def down(ctx: Context) -> None:
    """Stop Cinder; remove its pool and cephx user (when Ceph still runs) and its state."""
    ctx.stop("cinder", timeout=15)
    ceph = read_details("ceph")
    if ceph is not None:
        _ceph_teardown(ceph)
    shutil.rmtree(ctx.path("state"), ignore_errors=True)
    for name in ("cinder.conf", "api-paste.ini", "ceph.conf", f"ceph.client.{RBD_USER}.keyring"):
        ctx.path(name).unlink(missing_ok=True)


def new_project() -> str:
    """A fresh project id Cinder's noauth accepts (hex)."""
    return uuid.uuid4().hex
