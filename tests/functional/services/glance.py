"""OpenStack Glance's image API on imgstore (the glance_store compatibility package).

Glance from the package index (pinned) under ``gunicorn`` in its own venv,
with ``glance_store`` replaced by this repository's ``compat/`` package
(editable, like imgstore itself, so the server runs the checkout's code);
sqlite, no Keystone: a "trusted" paste pipeline takes the identity from
request headers (``identity_headers`` in the details), as Glance's own
functional tests do. Multi-store: ``fs`` (filesystem, the default) and, when the harness's
Ceph cluster is up (``services up ceph`` first), ``ceph`` (RBD, in a pool of
its own), plus Glance's reserved staging and tasks stores. Debian's
``qemu-utils`` is installed for ``qemu-img`` (Glance inspects images with it;
the tests make their qcow2 image with it).

Port: ``IMGSTORE_GLANCE_PORT`` (19292). Ready when ``/versions`` answers.
Details: ``url``, ``backends`` (id -> driver), ``default_backend``,
``datadir`` (the fs store's directory), ``identity_headers``, ``rbd_pool``/``ceph_conf`` (with
Ceph), ``python`` (the venv's interpreter).
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path
from typing import Any

from tests.functional.services._common import (
    HOST,
    REPO_ROOT,
    Context,
    ServiceError,
    apt_install,
    ensure_venv,
    pip_install,
    port_open,
    read_details,
    run,
    wait_for_http,
)

GLANCE_VERSION = "33.0.0"
REQUIREMENTS = [
    f"glance=={GLANCE_VERSION}",
    "gunicorn==27.0.1",
    "-e",
    f"{REPO_ROOT}[cinder,swift]",  # as glance_store[cinder,swift]: os-brick, swiftclient
    "-e",
    str(REPO_ROOT / "compat"),
]
DEFAULT_PORT = 19292
RBD_POOL = "glance-images"
TIMEOUT = 120.0


def _link_ceph_bindings(venv: Path) -> bool:
    """Link Debian's rados/rbd extension modules into ``venv`` (as scripts/setup does)."""
    site = Path(
        run(
            [str(venv / "bin" / "python"), "-c",
             "import sysconfig; print(sysconfig.get_paths()['platlib'])"],
            "finding the glance venv's site-packages",
        ).strip()
    )  # fmt: skip
    ext = sysconfig.get_config_var("EXT_SUFFIX")
    linked = True
    for mod in ("rados", "rbd"):
        src = Path("/usr/lib/python3/dist-packages") / f"{mod}{ext}"
        dst = site / f"{mod}{ext}"
        if not src.exists():
            linked = False
            continue
        if not dst.exists():
            dst.symlink_to(src)
    return linked


def _rbd_pool(ceph: dict[str, Any]) -> None:
    """Create the RBD pool Glance stores into (kept: ``down ceph`` wipes the cluster)."""
    import rados
    import rbd

    cluster = rados.Rados(conffile=ceph["ceph_conf"], rados_id=ceph["user"])
    cluster.conf_set("client_mount_timeout", "20")
    cluster.connect()
    try:
        if not cluster.pool_exists(RBD_POOL):
            cluster.create_pool(RBD_POOL)
            with cluster.open_ioctx(RBD_POOL) as ioctx:
                rbd.RBD().pool_init(ioctx, False)
    finally:
        cluster.shutdown()


# A pipeline that takes the identity from request headers (X-Roles...) with no
# Keystone, as Glance's own functional tests do: never expose such a server.
# Admin-only calls (GET /v2/info/stores/detail) need the roles it passes on.
_TRUSTED_COMPOSITE = """
[composite:glance-api-trusted]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck
"""
_TRUSTED_PIPELINE = (
    "trusted = cors http_proxy_to_wsgi versionnegotiation osprofiler context rootapp\n"
)
IDENTITY_HEADERS = {
    "X-Identity-Status": "Confirmed",
    "X-Project-Id": "imgstore-test-project",
    "X-User-Id": "imgstore-test-user",
    "X-Roles": "admin,member,reader",
}


def _trusted_paste(stock: str, healthcheck_off: Path) -> str:
    marker = "[composite:api]\npaste.composite_factory = glance.api:pipeline_factory\n"
    if marker not in stock:
        raise ServiceError("glance: the stock glance-api-paste.ini has no [composite:api]")
    text = stock.replace(marker, marker + _TRUSTED_PIPELINE)
    text = text.replace("/etc/glance/healthcheck_disable", str(healthcheck_off))
    return text + _TRUSTED_COMPOSITE


def glance_conf(base: Path, backends: dict[str, str], paste: Path, extra: str = "") -> str:
    """glance-api.conf for a Glance whose state (db, logs, images, staging...) is under
    ``base``: ``backends`` (id -> driver), ``fs`` the default, ``extra`` sections added."""
    enabled = ", ".join(f"{k}:{v}" for k, v in backends.items())
    text = f"""[DEFAULT]
enabled_backends = {enabled}
log_file = {base / "logs" / "glance-api.log"}
image_cache_dir = {base / "cache"}
enabled_import_methods = [glance-direct]
workers = 1

[database]
connection = sqlite:///{base / "db" / "glance.sqlite"}

[paste_deploy]
flavor = trusted
config_file = {paste}

[glance_store]
default_backend = fs

[fs]
store_description = local filesystem (imgstore)
filesystem_store_datadir = {base / "images"}

[os_glance_staging_store]
filesystem_store_datadir = {base / "staging"}

[os_glance_tasks_store]
filesystem_store_datadir = {base / "tasks"}

[oslo_policy]
enforce_new_defaults = false
enforce_scope = false

[oslo_concurrency]
lock_path = {base / "locks"}
"""
    return text + extra


def _ceph_section(ceph: dict[str, Any] | None) -> str:
    if ceph is None:
        return ""
    return f"""
[ceph]
store_description = Ceph RBD (imgstore)
rbd_store_pool = {RBD_POOL}
rbd_store_user = {ceph["user"]}
rbd_store_ceph_conf = {ceph["ceph_conf"]}
rbd_store_chunk_size = 4
"""


def install() -> None:
    """Debian's qemu-utils and Glance's venv (they need no server)."""
    apt_install(["qemu-utils"])
    glance_venv()


def glance_venv() -> Path:
    """Glance's venv with the compat package as its glance_store: glance pulls in the
    real one, which goes every time the venv is (re)made, whoever makes it (a venv
    remade by ``install`` under a running server once kept the real one)."""
    venv = ensure_venv("glance", REQUIREMENTS)
    py = str(venv / "bin" / "python")
    run(pip_install(py, "--uninstall", "glance_store"), "pip uninstall glance_store")
    run(
        [py, "-c", "import glance_store, sys; sys.exit('imgstore' not in glance_store.__doc__)"],
        "checking that glance_store is imgstore's compat package",
    )
    return venv


def up(ctx: Context) -> dict[str, Any]:
    """Install Glance + the compat package, configure, sync the db, start gunicorn."""
    port = ctx.port("PORT", DEFAULT_PORT)
    if port_open(port):
        raise ServiceError(f"glance: port {port} is taken; set IMGSTORE_GLANCE_PORT to a free port")
    apt_install(["qemu-utils"], ctx.path("apt.log"))
    venv = glance_venv()
    py = str(venv / "bin" / "python")
    ceph = read_details("ceph")
    backends = {"fs": "file"}
    if ceph is not None and _link_ceph_bindings(venv):
        _rbd_pool(ceph)
        backends["ceph"] = "rbd"
    for sub in ("etc", "db", "logs", "images", "staging", "tasks", "cache", "locks"):
        shutil.rmtree(ctx.path(sub), ignore_errors=True)
        ctx.path(sub).mkdir(parents=True)
    paste = ctx.path("etc", "glance-api-paste.ini")
    stock = (venv / "etc" / "glance" / "glance-api-paste.ini").read_text()
    paste.write_text(_trusted_paste(stock, ctx.path("etc", "healthcheck_off")))
    conf = ctx.path("etc", "glance-api.conf")
    extra = _ceph_section(ceph) if "ceph" in backends else ""
    conf.write_text(glance_conf(ctx.dir, backends, paste, extra))
    run(
        [str(venv / "bin" / "glance-manage"), "--config-file", str(conf), "db_sync"],
        "glance-manage db_sync",
    )
    env = {**os.environ, "OS_GLANCE_CONFIG_DIR": str(ctx.path("etc"))}
    env.pop("PYTHONPATH", None)
    ctx.start(
        "gunicorn",
        [str(venv / "bin" / "gunicorn"), "--bind", f"{HOST}:{port}", "--workers", "1",
         "--worker-class", "gthread", "--threads", "4", "--timeout", "120",
         "--graceful-timeout", "5", "--no-control-socket",
         "--error-logfile", str(ctx.path("logs", "gunicorn.log")),
         "glance.wsgi.api:application"],
        env=env,
    )  # fmt: skip
    url = f"http://{HOST}:{port}"
    wait_for_http(ctx, "gunicorn", f"{url}/versions", timeout=TIMEOUT, ok=[200])
    details: dict[str, Any] = {
        "url": url,
        "port": port,
        "backends": backends,
        "default_backend": "fs",
        "datadir": str(ctx.path("images")),
        "python": py,
        "paste": str(paste),
        "glance_version": GLANCE_VERSION,
        "identity_headers": IDENTITY_HEADERS,
    }
    if "ceph" in backends and ceph is not None:
        details.update(rbd_pool=RBD_POOL, ceph_conf=ceph["ceph_conf"], ceph_user=ceph["user"])
    return details


def check(ctx: Context, details: dict[str, Any]) -> bool:
    """Whether the Glance that is up still answers ``/versions``."""
    try:
        wait_for_http(ctx, "gunicorn", f"{details['url']}/versions", timeout=5, ok=[200])
    except ServiceError:
        return False
    return True


def down(ctx: Context) -> None:
    """Stop gunicorn (the images, db and pool stay until the next ``up``/``down ceph``)."""
    ctx.stop("gunicorn")
