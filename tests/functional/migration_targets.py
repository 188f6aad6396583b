"""Targets of a migration on the real Ceph cluster (a fresh RBD pool or radosgw bucket),
and the configuration of a filesystem source and such a target, for the migrate tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from imgstore import Stores
from tests.functional.rbd_helpers import admin_cluster, ceph_details, pool_listing, temp_pool
from tests.functional.test_s3_conformance import (
    bucket_listing,
    new_bucket,
    purge_bucket,
    rgw_collect_garbage,
    s3_options,
    server,
)


def write_config(path: Path, datadir: Path, target_driver: str, options: dict[str, Any]) -> Path:
    lines = [
        "[DEFAULT]",
        f"enabled_backends = src:file, dst:{target_driver}",
        "[glance_store]",
        "default_backend = src",
        "[src]",
        f"filesystem_store_datadir = {datadir}",
        "[dst]",
        *(f"{k} = {v}" for k, v in options.items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Target:
    """A fresh target backend on the cluster: its config, its raw listing, its secrets."""

    def __init__(
        self,
        driver: str,
        options: dict[str, Any],
        listing: Callable[[Stores], set[str]],
        expected: Callable[[str], set[str]],
        secrets: list[str],
    ) -> None:
        self.driver = driver
        self.options = options
        self.listing = listing
        self.expected = expected
        self.secrets = secrets


@contextmanager
def migration_target(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A fresh ``rbd`` or ``s3`` (radosgw) target on the cluster, removed afterwards."""
    details = ceph_details()
    if kind == "rbd":
        with admin_cluster(details) as cluster, temp_pool(cluster, "imgstore-migrate") as pool:
            options = {
                "rbd_store_pool": pool,
                "rbd_store_user": details["user"],
                "rbd_store_ceph_conf": details["ceph_conf"],
                "rados_connect_timeout": 20,
            }
            yield Target(
                "rbd",
                options,
                lambda _stores: pool_listing(cluster, pool),
                lambda image_id: {f"image:{image_id}", f"snap:{image_id}@snap"},
                [],
            )
        return
    s3 = server("ceph")
    bucket = new_bucket()
    options = s3_options(s3, bucket)
    try:
        yield Target(
            "s3",
            options,
            lambda stores: bucket_listing(stores, "dst", s3)(),
            lambda image_id: {f"object:{image_id}"},
            [s3["s3_secret_key"]],
        )
    finally:
        tmp = tmp_path_factory.mktemp("cleanup")
        conf = write_config(tmp / "cleanup.conf", tmp, "s3", options)
        with Stores.from_config_files(conf) as stores:
            purge_bucket(stores.driver("dst"))
        rgw_collect_garbage(s3)
