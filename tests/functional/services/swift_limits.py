"""A third Swift proxy with LOWERED LIMITS, so the tests cross them in seconds.

It runs on the ``swift`` server's storage servers, rings and memcached (``services up
swift`` must run first), like the Keystone proxy of ``keystone.py``, and only the tests
of ``tests/functional/test_server_limits.py`` use it: the ``swift`` proxy, which the
conformance, big-image and other tests share, keeps Swift's and AWS's usual limits.

The limits are Swift's own settings, read by the real proxy, not a fault injector:

* ``max_file_size`` = 16 MiB: ``[swift-constraints]`` of this proxy's ``swift.conf``
  (its own ``swift_dir``: a copy of the ``swift`` server's ``swift.conf``, hash settings
  included, plus the constraint; the rings are copied). Any object PUT above it, a single
  image or one segment or S3 part, gets 413. Swift reads its constraints from
  ``/etc/swift/swift.conf`` when it is imported, whatever ``swift_dir`` says; the proxy is
  therefore started by a three-line launcher that points Swift at this ``swift.conf``
  first (as Swift's own in-process tests do) and then runs ``swift-proxy-server``'s main.
* ``max_manifest_segments`` = 4 (the ``slo`` filter): an SLO manifest may name at most
  4 segments (400 otherwise).
* ``max_upload_part_num`` = 3 (the ``s3api`` filter; Swift wants it at most
  ``max_manifest_segments``, since s3api completes an upload as an SLO): part numbers
  above 3 get S3's ``InvalidArgument``. ``min_segment_size`` stays at AWS's 5 MiB.

All three are published in ``GET /info`` (``swift.max_file_size``,
``slo.max_manifest_segments``, ``s3api.max_upload_part_num``), where the Swift driver
reads them. The proxy has its own tempauth account (``limits:tester``, key random at
every ``up``), so the tests' containers and buckets never mix with the ``swift``
proxy's.

Port: ``IMGSTORE_SWIFT_LIMITS_PORT`` (18097). Details: ``auth_url`` (tempauth v1),
``user``, ``key``, ``storage_url``, ``s3_endpoint``, ``s3_access_key``,
``s3_secret_key``, ``s3_region``, ``limits`` (the three values above). The ``swift``
server writes new hash settings and rings at every ``up``: when its configuration
changed (``config_digest``), this proxy is no longer right (``check``) and ``up``
starts it again.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import time
from typing import Any

from tests.functional.services import swift as swift_server
from tests.functional.services._common import (
    HOST,
    Context,
    ServiceError,
    ensure_venv,
    env_port,
    port_open,
    read_details,
    wait_for_http,
)

DEFAULT_PORT = 18097
MiB = 1 << 20
LIMITS = {
    "max_file_size": 16 * MiB,
    "max_manifest_segments": 4,
    "max_upload_part_num": 3,
}
"""The lowered limits (Swift's defaults: 5 GiB + 2 bytes, 1000, and s3api's 1000)."""
USER = "limits:tester"
TIMEOUT = 60.0

_LAUNCHER = """import sys
from swift.common import utils
utils.SWIFT_CONF_FILE = sys.argv.pop(1)  # Swift reads its constraints from this file
from swift.common import constraints
constraints.reload_constraints()
from swift.proxy.server import main
sys.exit(main())
"""


def _port(ctx: Context) -> int:
    return env_port(f"{ctx.env_prefix}_PORT", DEFAULT_PORT)


def _swift_conf(swift_etc: str) -> str:
    """The ``swift`` server's ``swift.conf`` (same hash settings) with the lowered constraint."""
    with open(os.path.join(swift_etc, "swift.conf"), encoding="utf-8") as f:
        text = f.read()
    return f"{text.rstrip()}\n\n[swift-constraints]\nmax_file_size = {LIMITS['max_file_size']}\n"


def _proxy_conf(ctx: Context, swift: dict[str, Any], port: int, key: str) -> str:
    user = pwd.getpwuid(os.geteuid()).pw_name
    return (
        f"""[DEFAULT]
bind_ip = {HOST}
bind_port = {port}
workers = 0
user = {user}
swift_dir = {ctx.path("etc")}
log_name = proxy-limits
log_level = INFO

[pipeline:main]
pipeline = {swift_server.PIPELINE}

"""
        + swift_server.tempauth_proxy(
            USER,
            key,
            "# LOWERED for the tests (AWS: 10000)\n"
            f"max_upload_part_num = {LIMITS['max_upload_part_num']}\n",
        )
        + swift_server.proxy_filters(
            swift["ports"]["memcached"],
            "# LOWERED for the tests (Swift's default: 1000)\n"
            f"max_manifest_segments = {LIMITS['max_manifest_segments']}\n",
        )
    )


def up(ctx: Context) -> dict[str, Any]:
    """Write this proxy's swift_dir (swift.conf with the constraint, the rings), start it."""
    swift = read_details("swift")
    if swift is None:
        raise ServiceError("swift-limits needs the swift server: services up swift first")
    started = time.monotonic()
    venv = ensure_venv("swift", swift_server.REQUIREMENTS)
    install_seconds = time.monotonic() - started
    port = _port(ctx)
    if port_open(port):
        raise ServiceError(
            f"swift-limits: port {port} on {HOST} is taken; "
            f"set {ctx.env_prefix}_PORT to a free port"
        )
    t0 = time.monotonic()
    swift_etc = str(Context("swift").path("etc"))
    etc = ctx.path("etc")
    shutil.rmtree(etc, ignore_errors=True)
    etc.mkdir(parents=True)
    key = secrets.token_hex(16)
    files = {
        "swift.conf": _swift_conf(swift_etc),
        "proxy-server.conf": _proxy_conf(ctx, swift, port, key),
        "launcher.py": _LAUNCHER,
    }
    for name, text in files.items():
        path = etc / name
        path.write_text(text)
        path.chmod(0o600)
    for ring in ("account", "container", "object"):
        shutil.copyfile(os.path.join(swift_etc, f"{ring}.ring.gz"), etc / f"{ring}.ring.gz")
    ctx.start(
        "proxy",
        [str(venv / "bin" / "python"), str(etc / "launcher.py"), str(etc / "swift.conf"),
         str(etc / "proxy-server.conf"), "-v"],
    )  # fmt: skip
    proxy = f"http://{HOST}:{port}"
    wait_for_http(ctx, "proxy", f"{proxy}/healthcheck", timeout=TIMEOUT, ok=[200])
    return {
        "auth_url": f"{proxy}/auth/v1.0",
        "user": USER,
        "key": key,
        "storage_url": f"{proxy}/v1/AUTH_{USER.split(':', maxsplit=1)[0]}",
        "s3_endpoint": proxy,
        "s3_access_key": USER,
        "s3_secret_key": key,
        "s3_region": swift_server.REGION,
        "limits": dict(LIMITS),
        "secrets": [key],
        "ports": {"proxy": port},
        "swift_config_digest": swift.get("config_digest"),
        "swift_version": swift_server.SWIFT_VERSION,
        "install_seconds": round(install_seconds, 3),
        "start_seconds": round(time.monotonic() - t0, 3),
    }


def check(ctx: Context, details: dict[str, Any]) -> bool:
    """Whether the proxy answers on the wanted port, on the ``swift`` server it was made for."""
    swift = read_details("swift")
    if swift is None or swift.get("config_digest") != details.get("swift_config_digest"):
        return False
    try:
        if details.get("ports") != {"proxy": _port(ctx)}:
            return False
        wait_for_http(ctx, "proxy", f"{details['s3_endpoint']}/healthcheck", timeout=3, ok=[200])
    except (ServiceError, KeyError):
        return False
    return True


def down(ctx: Context) -> None:
    """Stop the proxy; remove its swift_dir."""
    ctx.stop("proxy")
    shutil.rmtree(ctx.path("etc"), ignore_errors=True)
