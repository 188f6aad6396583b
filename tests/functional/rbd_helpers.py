"""Shared pieces of the RBD tests: a pool of their own, a config, the pool's listing."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgstore.drivers.rbd_close import ImageCloser
from tests.functional.conftest import require_service, skip_or_fail

try:
    import rados
    import rbd
except ImportError as exc:  # skip locally; in CI a missing binding is an error
    skip_or_fail(
        f"Ceph's python3-rados/python3-rbd are not linked into the venv (run scripts/setup): {exc}"
    )


CLOSER = ImageCloser("tests")
"""The tests' own images are closed as the driver closes its: never right after librbd
finished opening them (librbd 16 can free them too early then: imgstore.drivers.rbd_close)."""


def open_image(
    ioctx: Any, name: str, *, snapshot: str | None = None, read_only: bool = False
) -> contextlib.AbstractContextManager[Any]:
    """``with open_image(ioctx, name) as image:`` in place of ``with rbd.Image(...)``."""
    return CLOSER.opened(ioctx, name, snapshot=snapshot, read_only=read_only)


def ceph_details(name: str = "ceph") -> dict[str, Any]:
    """The running cluster's details (skip, or fail in CI, when it is down); ``faults-ceph``
    is the fault tests' own cluster."""
    return require_service(name)


@contextlib.contextmanager
def admin_cluster(details: dict[str, Any]) -> Iterator[Any]:
    """A client.admin connection to the test cluster."""
    cluster = rados.Rados(conffile=details["ceph_conf"], rados_id=details["user"])
    cluster.conf_set("client_mount_timeout", "20")
    cluster.connect()
    try:
        yield cluster
    finally:
        CLOSER.flush()
        cluster.shutdown()


@contextlib.contextmanager
def temp_pool(cluster: Any, prefix: str = "imgstore-test") -> Iterator[str]:
    """A fresh RBD pool, deleted with everything in it afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cluster.create_pool(name)
    try:
        with cluster.open_ioctx(name) as ioctx:
            rbd.RBD().pool_init(ioctx, False)
        yield name
    finally:
        CLOSER.flush()
        cluster.delete_pool(name)


def pool_listing(cluster: Any, pool: str) -> set[str]:
    """Every image, snapshot and trash entry in ``pool``."""
    entries: set[str] = set()
    with cluster.open_ioctx(pool) as ioctx:
        for name in rbd.RBD().list(ioctx):
            entries.add(f"image:{name}")
            with (
                contextlib.suppress(rbd.ImageNotFound),
                open_image(ioctx, name, read_only=True) as image,
            ):
                entries.update(f"snap:{name}@{s['name']}" for s in image.list_snaps())
        entries.update(f"trash:{t['name']}" for t in rbd.RBD().trash_list(ioctx))
    return entries


def write_config(path: Path, backends: dict[str, dict[str, Any]], core: dict[str, Any]) -> Path:
    """A multi-store config with rbd backends (name -> options); the first is the default."""
    lines = [
        "[DEFAULT]",
        "enabled_backends = " + ", ".join(f"{name}:rbd" for name in backends),
        "[glance_store]",
        f"default_backend = {next(iter(backends))}",
        *(f"{k} = {v}" for k, v in core.items()),
    ]
    for name, options in backends.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {v}" for k, v in options.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rbd_options(details: dict[str, Any], pool: str, **extra: Any) -> dict[str, Any]:
    """The options of an rbd backend on the test cluster."""
    return {
        "rbd_store_pool": pool,
        "rbd_store_user": details["user"],
        "rbd_store_ceph_conf": details["ceph_conf"],
        "rados_connect_timeout": 20,
        **extra,
    }
