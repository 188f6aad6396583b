"""Keystone v3 and a second Swift proxy that trusts it (authtoken + keystoneauth).

PyPI ``keystone`` (pinned, sqlite, fernet tokens) under ``gunicorn`` (one
worker, threads, in-memory cache: see ../shared notes) in its own venv; a
second proxy of the Swift all-in-one (``services up swift`` must run first),
from a venv with ``swift`` + ``keystonemiddleware``, using the same rings,
storage servers and memcached, so the tempauth proxy of ``swift`` stays as it
is. Everything lives in ``.cache/services/keystone/``.

Resources: projects ``service`` (user ``swift``, admin, for authtoken),
``demo`` (user ``demo``, member) and ``alt`` (user ``alt``, member; another
project whose tokens must be refused on demo's account); service
``object-store`` with endpoints at the second proxy. Passwords are random at
every ``up``.

Tokens live 10 seconds (``[token] expiration = 10``, lowered from Keystone's
3600 here, a real server setting), so a test can watch a token expire in the
middle of an upload or a download. Clients that log in with a password get a
new token whenever theirs is refused (imgstore's Swift driver does; so does
keystonemiddleware for its own service user: keystoneauth renews any token
within 120 s of its end, so with these tokens it logs in again before each
validation). The proxy's authtoken keeps validated tokens in memcache for
``token_cache_time`` (300 s) but checks each one's ``expires_at``, cached or
not, so an expired token is refused at once. ``allow_expired_window`` (48 h by
default) only applies to a validation that asks for it, which authtoken does
only for a request with a valid service token of a service role: never for
imgstore's requests (tests use it to read an expired token's times). A token
given by the caller (multi-tenant) lives 10 s too: a test must use it at once.

Ports: ``IMGSTORE_KEYSTONE_PORT`` (18095), ``IMGSTORE_KEYSTONE_SWIFT_PORT``
(18096). Details: ``auth_url`` (``.../v3``), ``user``/``password``/``project``
(demo), ``alt_user``/``alt_password``/``alt_project``,
``admin_user``/``admin_password``/``admin_project`` (the bootstrap admin, for
servers that register their own users and endpoints here: ``cinder``),
``region``, ``swift_url``,
``token_expiration`` (seconds) and ``proxy_log`` (the second proxy's log, one
line per request and per SLO/DLO segment request, with start and end times).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import time
from typing import Any

from tests.functional.services._common import (
    HOST,
    Context,
    ServiceError,
    ensure_venv,
    port_open,
    read_details,
    run,
    wait_for_http,
)
from tests.functional.services.swift import proxy_filters

KEYSTONE_REQUIREMENTS = ["keystone==30.0.0", "gunicorn==27.0.1"]
PROXY_REQUIREMENTS = ["swift==2.38.3", "keystonemiddleware==13.0.1"]
DEFAULT_PORTS = {"keystone": 18095, "swift": 18096}
TIMEOUT = 90.0
REGION = "RegionOne"
TOKEN_EXPIRATION = 10
"""Seconds a token lives (Keystone's ``[token] expiration``; 3600 by default)."""
PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk "
    "authtoken keystoneauth copy slo dlo proxy-logging proxy-server"
)

_WSGI = """import sys
sys.argv = sys.argv[:1]  # keep oslo.config from parsing gunicorn's command line
from keystone.wsgi.api import application  # noqa: E402,F401
"""

_RESOURCES = """
import json, sys
from keystoneauth1 import session
from keystoneauth1.identity import v3
cfg = json.loads(sys.argv[1])
auth = v3.Password(auth_url=cfg["auth_url"], username="admin", password=cfg["admin"],
                   project_name="admin", user_domain_id="default", project_domain_id="default")
s = session.Session(auth=auth)
EP = {"endpoint_filter": {"service_type": "identity", "interface": "public"}}
def find_or_create(coll, key, match, body):
    found = s.get(f"/{coll}", params=match, **EP).json()[coll]
    if found:
        return found[0]["id"]
    return s.post(f"/{coll}", json={key: body}, **EP).json()[key]["id"]
def role(name):
    return find_or_create("roles", "role", {"name": name}, {"name": name})
out = {}
for project, user, password, rname in cfg["users"]:
    pid = find_or_create("projects", "project", {"name": project, "domain_id": "default"},
                         {"name": project, "domain_id": "default"})
    uid = find_or_create("users", "user", {"name": user, "domain_id": "default"},
                         {"name": user, "domain_id": "default", "password": password,
                          "default_project_id": pid})
    s.put(f"/projects/{pid}/users/{uid}/roles/{role(rname)}", **EP)
    out[project] = pid
svc = find_or_create("services", "service", {"type": "object-store"},
                     {"type": "object-store", "name": "swift", "enabled": True})
url = cfg["swift_url"] + "/v1/AUTH_%(project_id)s"
for iface in ("public", "internal", "admin"):
    s.post("/endpoints", json={"endpoint": {"service_id": svc, "interface": iface, "url": url,
                                            "region_id": cfg["region"], "enabled": True}}, **EP)
print(json.dumps(out))
"""


def _ports(ctx: Context) -> dict[str, int]:
    return {
        "keystone": ctx.port("PORT", DEFAULT_PORTS["keystone"]),
        "swift": ctx.port("SWIFT_PORT", DEFAULT_PORTS["swift"]),
    }


def _keystone_conf(ctx: Context) -> str:
    base = ctx.dir
    return f"""[DEFAULT]
log_dir = {base / "logs"}
log_file = keystone.log
use_stderr = false

[database]
connection = sqlite:///{base / "db" / "keystone.db"}

[identity]
password_hash_rounds = 4

[token]
provider = fernet
expiration = {TOKEN_EXPIRATION}

[fernet_tokens]
key_repository = {base / "keys" / "fernet-tokens"}
max_active_keys = 3

[fernet_receipts]
key_repository = {base / "keys" / "fernet-receipts"}
max_active_keys = 3

[credential]
key_repository = {base / "keys" / "credential"}

[cache]
enabled = true
backend = dogpile.cache.memory
"""


def _proxy_conf(swift: dict[str, Any], port: int, ks_url: str, swift_password: str) -> str:
    etc = swift["swift_dir"]
    user = pwd.getpwuid(os.geteuid()).pw_name
    return f"""[DEFAULT]
bind_ip = {HOST}
bind_port = {port}
workers = 0
user = {user}
swift_dir = {etc}
log_name = proxy-keystone
log_level = INFO

[pipeline:main]
pipeline = {PIPELINE}

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = {ks_url}
auth_url = {ks_url}
auth_type = password
username = swift
password = {swift_password}
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = {REGION}
interface = public
cache = swift.cache
token_cache_time = 300
include_service_catalog = false
delay_auth_decision = true
http_connect_timeout = 5
http_request_max_retries = 3

[filter:keystoneauth]
use = egg:swift#keystoneauth
reseller_prefix = AUTH_
operator_roles = admin, member
reseller_admin_role = ResellerAdmin

""" + proxy_filters(swift["ports"]["memcached"])


def install() -> None:
    """Keystone's venv and the second Swift proxy's (they need no server)."""
    ensure_venv("keystone", KEYSTONE_REQUIREMENTS)
    ensure_venv("swift-keystone", PROXY_REQUIREMENTS)


def up(ctx: Context) -> dict[str, Any]:
    """Install both venvs, set Keystone up, start it and the second proxy, create users."""
    swift = read_details("swift")
    if swift is None:
        raise ServiceError("keystone needs the swift server: services up swift first")
    started = time.monotonic()
    ks_venv = ensure_venv("keystone", KEYSTONE_REQUIREMENTS)
    px_venv = ensure_venv("swift-keystone", PROXY_REQUIREMENTS)
    install_seconds = time.monotonic() - started
    ports = _ports(ctx)
    for name, port in ports.items():
        if port_open(port):
            raise ServiceError(
                f"keystone: port {port} ({name}) is taken; set IMGSTORE_KEYSTONE_PORT "
                "or IMGSTORE_KEYSTONE_SWIFT_PORT to a free port"
            )
    t0 = time.monotonic()
    for sub in ("etc", "db", "keys", "logs"):
        shutil.rmtree(ctx.path(sub), ignore_errors=True)
        ctx.path(sub).mkdir(parents=True)
    ctx.path("keys").chmod(0o700)
    conf = ctx.path("etc", "keystone.conf")
    conf.write_text(_keystone_conf(ctx))
    conf.chmod(0o600)
    ctx.path("etc", "ks_wsgi.py").write_text(_WSGI)
    manage = [str(ks_venv / "bin" / "keystone-manage"), "--config-file", str(conf)]
    me = pwd.getpwuid(os.geteuid()).pw_name
    admin_password = secrets.token_hex(12)
    ks_url = f"http://{HOST}:{ports['keystone']}/v3"
    run([*manage, "db_sync"], "keystone db_sync")
    for step in ("fernet_setup", "credential_setup"):
        run([*manage, step, "--keystone-user", me, "--keystone-group", me], f"keystone {step}")
    run(
        [*manage, "bootstrap", "--bootstrap-password", admin_password,
         "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
         "--bootstrap-role-name", "admin", "--bootstrap-service-name", "keystone",
         "--bootstrap-region-id", REGION, "--bootstrap-admin-url", ks_url,
         "--bootstrap-internal-url", ks_url, "--bootstrap-public-url", ks_url],
        "keystone bootstrap",
    )  # fmt: skip
    setup_seconds = time.monotonic() - t0
    ctx.start(
        "gunicorn",
        [str(ks_venv / "bin" / "gunicorn"), "--bind", f"{HOST}:{ports['keystone']}",
         "--workers", "1", "--threads", "4", "--worker-class", "gthread", "--timeout", "120",
         "--graceful-timeout", "5", "--no-control-socket", "--chdir", str(ctx.path("etc")),
         "--error-logfile", str(ctx.path("logs", "gunicorn.log")), "ks_wsgi:application"],
        env={**os.environ, "OS_KEYSTONE_CONFIG_DIR": str(ctx.path("etc"))},
    )  # fmt: skip
    passwords = {name: secrets.token_hex(12) for name in ("swift", "demo", "alt")}
    swift_url = f"http://{HOST}:{ports['swift']}"
    proxy_conf = ctx.path("etc", "proxy-server.conf")
    proxy_conf.write_text(
        _proxy_conf(
            {**swift, "swift_dir": str(ctx.path("..", "swift", "etc").resolve())},
            ports["swift"],
            f"http://{HOST}:{ports['keystone']}",
            passwords["swift"],
        )
    )
    proxy_conf.chmod(0o600)
    ctx.start("proxy", [str(px_venv / "bin" / "swift-proxy-server"), str(proxy_conf), "-v"])
    wait_for_http(ctx, "gunicorn", ks_url, timeout=TIMEOUT, ok=[200])
    wait_for_http(ctx, "proxy", f"{swift_url}/healthcheck", timeout=TIMEOUT, ok=[200])
    spec = {
        "auth_url": ks_url,
        "admin": admin_password,
        "swift_url": swift_url,
        "region": REGION,
        "users": [
            ["service", "swift", passwords["swift"], "admin"],
            ["demo", "demo", passwords["demo"], "member"],
            ["alt", "alt", passwords["alt"], "member"],
        ],
    }
    projects = json.loads(
        run([str(ks_venv / "bin" / "python"), "-c", _RESOURCES, json.dumps(spec)],
            "keystone resources").strip().splitlines()[-1]
    )  # fmt: skip
    return {
        "auth_url": ks_url,
        "user": "demo",
        "password": passwords["demo"],
        "project": "demo",
        "project_id": projects["demo"],
        "alt_user": "alt",
        "alt_password": passwords["alt"],
        "alt_project": "alt",
        "alt_project_id": projects["alt"],
        "admin_user": "admin",
        "admin_password": admin_password,
        "admin_project": "admin",
        "region": REGION,
        "swift_url": swift_url,
        "token_expiration": TOKEN_EXPIRATION,
        "proxy_log": str(ctx.path("proxy.log")),
        "ports": ports,
        "secrets": [admin_password, *passwords.values()],
        "install_seconds": round(install_seconds, 3),
        "setup_seconds": round(setup_seconds, 3),
        "start_seconds": round(time.monotonic() - t0, 3),
    }


def check(ctx: Context, details: dict[str, Any]) -> bool:
    """Whether Keystone (with these token lifetimes) and the second proxy answer on the ports."""
    try:
        if details.get("ports") != _ports(ctx):
            return False
        if details.get("token_expiration") != TOKEN_EXPIRATION:
            return False  # started with another token lifetime: start it again
        if not details.get("admin_password"):
            return False  # started before the details named the admin: start it again
        wait_for_http(ctx, "gunicorn", details["auth_url"], timeout=3, ok=[200])
        wait_for_http(ctx, "proxy", f"{details['swift_url']}/healthcheck", timeout=3, ok=[200])
    except (ServiceError, KeyError):
        return False
    return True


def down(ctx: Context) -> None:
    """Stop the second proxy, then Keystone; wipe its database and keys."""
    ctx.stop("proxy")
    ctx.stop("gunicorn")
    for sub in ("db", "keys", "etc"):
        shutil.rmtree(ctx.path(sub), ignore_errors=True)
