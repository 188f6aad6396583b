"""OpenStack Swift "all in one" with the ``s3api`` middleware: a real Swift and a real S3.

PyPI ``swift`` (pinned, in its own venv under ``.cache/services/venvs/swift``)
and Debian ``memcached`` (tempauth keeps its tokens there). One proxy
(``tempauth`` + ``s3api``), one account, one container and one object server,
one device, one replica, no replicators/auditors/updaters; every server is one
process (``workers = 0``) in the foreground, recorded by the harness.

Everything lives in ``.cache/services/swift/``: ``etc/`` (``swift.conf``, the
server configs, the rings; ``swift_dir`` points there in every config, so
nothing is read from or written to ``/etc/swift``), ``srv/d1`` (the device,
wiped at every ``up``) and the logs. Only 127.0.0.1 is used.

Ports (environment variables, defaults):

* ``IMGSTORE_SWIFT_PROXY_PORT`` (18090) - the proxy: Swift API and S3 API
* ``IMGSTORE_SWIFT_OBJECT_PORT`` (18091), ``IMGSTORE_SWIFT_CONTAINER_PORT`` (18092),
  ``IMGSTORE_SWIFT_ACCOUNT_PORT`` (18093) - the storage servers
* ``IMGSTORE_SWIFT_MEMCACHED_PORT`` (18094) - memcached

Details written: ``auth_url`` (tempauth v1, ``/auth/v1.0``), ``user``
(``test:tester``), ``key`` (random at every ``up``), ``storage_url``;
``s3_endpoint``, ``s3_access_key`` (= the Swift user), ``s3_secret_key`` (=
the key), ``s3_region``. ``s3api`` is configured like AWS where it matters to
a client: 10,000 parts per multipart upload, 5 MiB minimum part size; and
deleting a multipart object deletes its segments at once (``allow_async_delete
= false``: there is no object-expirer here to do it later). The ``slo`` and ``dlo``
filters serve every segment at full speed (``rate_limit_after_segment``; by default
they throttle a read to one segment a second after the tenth, which made a 64 MiB
image of the tests' 1 MiB segments take 55 s to read).

The second instance (``faults-swift``, used only by ``test_faults.py``) has a
TEST-ONLY fault injector in its proxy, just before ``s3api`` (``fault_injection.py``:
500, 503 and S3's ``SlowDown`` for the requests a JSON control file names; its
path is the detail ``fault_injection_file``, absent file: no faults; each fault
injected is a line of ``fault_injection_log``).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from tests.functional.services._common import (
    HOST,
    Context,
    ServiceError,
    apt_install,
    ensure_venv,
    file_digest,
    port_open,
    run,
    wait_for_http,
    wait_for_port,
)

SWIFT_VERSION = "2.38.3"
REQUIREMENTS = [f"swift=={SWIFT_VERSION}"]
PACKAGES = ["memcached"]
DEFAULT_PORTS = {
    "proxy": 18090,
    "object": 18091,
    "container": 18092,
    "account": 18093,
    "memcached": 18094,
}
USER = "test:tester"
REGION = "us-east-1"
STORAGE_SERVERS = ("account", "container", "object")
TIMEOUT = 60.0
PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk "
    "s3api tempauth copy slo dlo proxy-logging proxy-server"
)
FAULT_INJECTION = "fault_injection"
"""The TEST-ONLY fault injector (``fault_injection.py``): in the second instance's proxy
(``faults-swift``) only, just before ``s3api`` so Swift and S3 requests both pass it."""

_RING_SCRIPT = """
import sys
from swift.common.ring import RingBuilder
etc, *specs = sys.argv[1:]
for spec in specs:
    name, port = spec.split("=")
    builder = RingBuilder(8, 1, 1)
    builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port),
                     "device": "d1", "weight": 100})
    builder.rebalance()
    builder.save(f"{etc}/{name}.builder")
    builder.get_ring().save(f"{etc}/{name}.ring.gz")
"""


def _ports(ctx: Context) -> dict[str, int]:
    ports = {name: ctx.port(f"{name.upper()}_PORT", port) for name, port in DEFAULT_PORTS.items()}
    if len(set(ports.values())) != len(ports):
        raise ServiceError(f"swift ports must differ: {ports}")
    return ports


def _memcached() -> str:
    for candidate in ("/usr/bin/memcached", shutil.which("memcached")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServiceError("memcached is not installed (apt-get install -y memcached)")


def _common_conf(etc: Path, port: int, name: str, user: str) -> str:
    return f"""[DEFAULT]
bind_ip = {HOST}
bind_port = {port}
workers = 0
user = {user}
swift_dir = {etc}
log_name = {name}
log_level = INFO
"""


def tempauth_proxy(user: str, key: str, s3_extra: str = "max_upload_part_num = 10000\n") -> str:
    """The proxy app, tempauth with ``user`` (``account:name``, admin) and s3api (like
    AWS where it matters to a client: 5 MiB parts; ``s3_extra`` adds lines, by default
    AWS's 10,000 parts), as the tempauth test proxies have them (this one, swift-limits')."""
    account, name = user.split(":")
    return f"""
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:tempauth]
use = egg:swift#tempauth
user_{account}_{name} = {key} .admin
storage_url_scheme = default

[filter:s3api]
use = egg:swift#s3api
location = {REGION}
s3_acl = false
check_bucket_owner = false
min_segment_size = 5242880
{s3_extra}"""


def proxy_filters(memcached_port: int, slo_extra: str = "") -> str:
    """The filter sections every test proxy (this one, Keystone's, swift-limits') shares:
    memcache, the usual middleware, and SLO/DLO serving segments at full speed (see the
    module docstring). ``slo_extra`` adds lines to the ``slo`` filter."""
    return f"""
[filter:cache]
use = egg:swift#memcache
memcache_servers = {HOST}:{memcached_port}

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
allow_async_delete = false
rate_limit_after_segment = 100000
{slo_extra}[filter:dlo]
use = egg:swift#dlo
rate_limit_after_segment = 100000
"""


def render_configs(ctx: Context, ports: dict[str, int], key: str) -> dict[str, str]:
    """The text of ``swift.conf`` and every server's config, by file name."""
    etc, srv = ctx.path("etc"), ctx.path("srv")
    user = pwd.getpwuid(os.geteuid()).pw_name
    files = {
        "swift.conf": f"""[swift-hash]
swift_hash_path_prefix = {secrets.token_hex(8)}
swift_hash_path_suffix = {secrets.token_hex(8)}

[storage-policy:0]
name = Policy-0
default = yes
""",
    }
    for svc in STORAGE_SERVERS:
        files[f"{svc}-server.conf"] = (
            _common_conf(etc, ports[svc], f"{svc}-server", user)
            + f"""devices = {srv}
mount_check = false
disable_fallocate = true

[pipeline:main]
pipeline = healthcheck {svc}-server

[app:{svc}-server]
use = egg:swift#{svc}

[filter:healthcheck]
use = egg:swift#healthcheck
"""
        )
    files["proxy-server.conf"] = (
        _common_conf(etc, ports["proxy"], "proxy-server", user)
        + f"""
[pipeline:main]
pipeline = {_pipeline(ctx)}

"""
        + tempauth_proxy(USER, key)
        + proxy_filters(ports["memcached"])
        + _fault_injection_conf(ctx)
    )
    return files


def _pipeline(ctx: Context) -> str:
    """The proxy's pipeline: the second instance's has the test-only fault injector."""
    if ctx.name == ctx.kind:
        return PIPELINE
    return PIPELINE.replace(" s3api ", f" {FAULT_INJECTION} s3api ")


def _fault_injection_conf(ctx: Context) -> str:
    """The fault injector's filter section (second instance only; see fault_injection.py)."""
    if ctx.name == ctx.kind:
        return ""
    return f"""[filter:{FAULT_INJECTION}]
# TEST-ONLY: answers 500/503/SlowDown as the tests' control file asks
paste.filter_factory = {FAULT_INJECTION}:filter_factory
control_file = {ctx.path("inject.json")}
log_file = {ctx.path("inject.log")}
"""


def _proxy_env(ctx: Context) -> dict[str, str] | None:
    """The second instance's proxy imports the fault injector from a copy of its module
    (the services directory itself cannot go on PYTHONPATH: its swift.py would hide
    the swift package); no stale control file survives an ``up``."""
    if ctx.name == ctx.kind:
        return None
    ctx.path("inject.json").unlink(missing_ok=True)
    ctx.path("inject.log").unlink(missing_ok=True)
    lib = ctx.path("middleware")
    lib.mkdir(exist_ok=True)
    shutil.copyfile(
        Path(__file__).with_name(f"{FAULT_INJECTION}.py"), lib / f"{FAULT_INJECTION}.py"
    )
    return {**os.environ, "PYTHONPATH": str(lib)}


def _check_xattrs(device: Path) -> None:
    probe = device / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.swift.probe", b"x" * 254)
        if os.getxattr(probe, "user.swift.probe") != b"x" * 254:
            raise OSError("xattr read back differs")
    except OSError as exc:
        raise ServiceError(
            f"swift: the filesystem under {device} has no usable user xattrs ({exc}); "
            "the object server stores its metadata there"
        ) from None
    finally:
        probe.unlink(missing_ok=True)


def up(ctx: Context) -> dict[str, Any]:
    """Install (apt memcached, venv with swift), write configs and rings, start, wait."""
    started = time.monotonic()
    apt_install(PACKAGES, log=ctx.path("apt.log"))
    venv = ensure_venv("swift", REQUIREMENTS)
    install_seconds = time.monotonic() - started
    ports = _ports(ctx)
    for name, port in ports.items():
        if port_open(port):
            raise ServiceError(
                f"swift: port {port} ({name}) on {HOST} is taken; "
                f"set {ctx.env_prefix}_{name.upper()}_PORT to a free port"
            )
    etc, srv = ctx.path("etc"), ctx.path("srv")
    shutil.rmtree(etc, ignore_errors=True)
    shutil.rmtree(srv, ignore_errors=True)
    etc.mkdir(parents=True)
    (srv / "d1").mkdir(parents=True)
    _check_xattrs(srv / "d1")
    key = secrets.token_hex(16)
    for name, text in render_configs(ctx, ports, key).items():
        path = etc / name
        path.write_text(text)
        path.chmod(0o600)
    python = str(venv / "bin" / "python")
    run(
        [python, "-c", _RING_SCRIPT, str(etc), *(f"{s}={ports[s]}" for s in STORAGE_SERVERS)],
        "swift ring building",
    )

    t0 = time.monotonic()
    ctx.start(
        "memcached",
        [_memcached(), "-l", HOST, "-p", str(ports["memcached"]), "-U", "0", "-m", "64",
         "-u", pwd.getpwuid(os.geteuid()).pw_name],
    )  # fmt: skip
    bin_dir = venv / "bin"
    for svc in STORAGE_SERVERS:
        conf = str(etc / f"{svc}-server.conf")
        ctx.start(svc, [str(bin_dir / f"swift-{svc}-server"), conf, "-v"])
    wait_for_port(ctx, "memcached", ports["memcached"], timeout=TIMEOUT)
    ctx.start(
        "proxy",
        [str(bin_dir / "swift-proxy-server"), str(etc / "proxy-server.conf"), "-v"],
        env=_proxy_env(ctx),
    )
    for svc in (*STORAGE_SERVERS, "proxy"):
        wait_for_http(
            ctx, svc, f"http://{HOST}:{ports[svc]}/healthcheck", timeout=TIMEOUT, ok=[200]
        )
    proxy = f"http://{HOST}:{ports['proxy']}"
    return {
        "auth_url": f"{proxy}/auth/v1.0",
        "user": USER,
        "key": key,
        "storage_url": f"{proxy}/v1/AUTH_{USER.split(':', maxsplit=1)[0]}",
        "s3_endpoint": proxy,
        "s3_access_key": USER,
        "s3_secret_key": key,
        "s3_region": REGION,
        "secrets": [key],
        "ports": ports,
        "swift_version": SWIFT_VERSION,
        **(
            {
                "fault_injection_file": str(ctx.path("inject.json")),
                "fault_injection_log": str(ctx.path("inject.log")),
            }
            if ctx.name != ctx.kind
            else {}
        ),
        "config_digest": file_digest(*(etc / f for f in sorted(os.listdir(etc)))),
        "install_seconds": round(install_seconds, 3),
        "start_seconds": round(time.monotonic() - t0, 3),
    }


def check(ctx: Context, details: dict[str, Any]) -> bool:
    """Whether the running Swift has the wanted ports and its proxy answers."""
    try:
        if details.get("ports") != _ports(ctx):
            return False
        wait_for_http(ctx, "proxy", f"{details['s3_endpoint']}/healthcheck", timeout=3, ok=[200])
    except (ServiceError, KeyError):
        return False
    return True


def down(ctx: Context) -> None:
    """Stop the proxy, the storage servers, then memcached; wipe the device and configs."""
    ctx.stop("proxy")
    for svc in reversed(STORAGE_SERVERS):
        ctx.stop(svc)
    ctx.stop("memcached")
    shutil.rmtree(ctx.path("srv"), ignore_errors=True)
    shutil.rmtree(ctx.path("middleware"), ignore_errors=True)
    shutil.rmtree(ctx.path("etc"), ignore_errors=True)
