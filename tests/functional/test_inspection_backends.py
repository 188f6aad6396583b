"""Disk-format inspection through the RBD and S3 drivers, against the real Ceph cluster
(RBD, and radosgw's S3 API): each hostile image (made with qemu-img) is reported in
``report`` mode and refused in ``enforce`` mode with nothing left in the pool or the
bucket; ``verify --inspect`` over a list mixing safe and hostile images on both
backends reports exactly the hostile ones. (The filesystem store's side, and every
format, is tests/unit/test_inspection.py.)"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore import Stores
from imgstore.exceptions import UnsafeImage
from imgstore.migration import ImageRecord, verify_images
from tests.disk_images import HOSTILE, hostile, make
from tests.functional.rbd_helpers import (
    admin_cluster,
    ceph_details,
    pool_listing,
    rbd_options,
    temp_pool,
)
from tests.functional.test_s3_conformance import (
    bucket_listing,
    new_bucket,
    purge_bucket,
    s3_options,
    server,
)

pytestmark = pytest.mark.functional


@pytest.fixture(scope="module")
def ceph() -> dict[str, Any]:
    return ceph_details()


@pytest.fixture(scope="module")
def pool(ceph: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    with admin_cluster(ceph) as cluster, temp_pool(cluster) as name:
        yield cluster, name


@pytest.fixture
def make_stores(
    tmp_path: Path, ceph: dict[str, Any], pool: tuple[Any, str]
) -> Iterator[Callable[[str], tuple[Stores, dict[str, Callable[[], set[str]]]]]]:
    """``make(mode)``: Stores with an ``rbd`` and an ``s3`` backend inspecting in
    ``mode``, and a listing of everything in each backend's pool or bucket."""
    made: list[Stores] = []
    bucket = new_bucket()
    rgw = server("ceph")

    def make(mode: str) -> tuple[Stores, dict[str, Callable[[], set[str]]]]:
        cluster, name = pool
        sections = {
            "rbd": {**rbd_options(ceph, name, rbd_store_chunk_size=1), "image_inspection": mode},
            "s3": {**s3_options(rgw, bucket), "image_inspection": mode},
        }
        lines = ["[DEFAULT]", "enabled_backends = rbd:rbd, s3:s3", "[glance_store]",
                 "default_backend = rbd"]  # fmt: skip
        for section, options in sections.items():
            lines += [f"[{section}]", *(f"{k} = {v}" for k, v in options.items())]
        conf = tmp_path / f"{mode}-{len(made)}.conf"
        conf.write_text("\n".join(lines) + "\n")
        stores = Stores.from_config_files(conf)
        made.append(stores)
        listings = {
            "rbd": lambda: pool_listing(cluster, name),
            "s3": bucket_listing(stores, "s3", rgw),
        }
        return stores, listings

    yield make
    if made:
        purge_bucket(made[0].driver("s3"))
    for stores in made:
        stores.close()


@pytest.mark.parametrize("backend", ["rbd", "s3"])
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_image_is_refused_or_reported(
    tmp_path: Path, make_stores: Any, backend: str, kind: str
) -> None:
    data = hostile(tmp_path, kind)
    stores, listings = make_stores("enforce")
    image_id = f"hostile-{uuid.uuid4().hex[:8]}"
    with pytest.raises(UnsafeImage, match=HOSTILE[kind]):
        stores.add(image_id, io.BytesIO(data), size=len(data), backend=backend)
    assert listings[backend]() == set(), "the refused image left something behind"
    reporting, _ = make_stores("report")
    result = reporting.add(image_id, io.BytesIO(data), size=len(data), backend=backend)
    assert result.safety is not None and HOSTILE[kind] in result.safety.failed_checks
    with reporting.get(result.location) as reader:
        assert reader.read_all() == data
    reporting.delete(result.location)
    assert listings[backend]() == set()


def test_verify_inspect_finds_exactly_the_hostile_images(tmp_path: Path, make_stores: Any) -> None:
    stores, listings = make_stores("report")
    records, hostile_ids = [], set()
    safe = make(tmp_path, "qcow2", "4G", name="safe.qcow2").read_bytes()
    for backend in ("rbd", "s3"):
        for kind in ("safe", "qcow2-data-file", "vmdk-host-path", "iso-and-qcow2"):
            where = tmp_path / backend / kind
            where.mkdir(parents=True)
            data = safe if kind == "safe" else hostile(where, kind)
            image_id = f"{backend}-{kind}-{uuid.uuid4().hex[:6]}"
            added = stores.add(image_id, data, size=len(data), backend=backend)
            records.append(ImageRecord(image_id, added.location, added.size, added.checksum))
            if kind != "safe":
                hostile_ids.add(image_id)
    report = verify_images(stores, records, concurrency=2, inspect=True)
    assert report.ok, [i.error for i in report.failed]
    assert report.inspected == len(records)
    assert {i.image_id for i in report.unsafe} == hostile_ids
    by_id = {i.image_id: i for i in report.images}
    for record in records:
        inspection = by_id[record.image_id].inspection
        assert inspection is not None
        if record.image_id not in hostile_ids:
            assert (inspection["disk_format"], inspection["virtual_size"]) == ("qcow2", 4 << 30)
    assert report.as_dict()["summary"]["unsafe"] == len(hostile_ids)
    for record in records:
        stores.delete(record.location)
    assert listings["rbd"]() == set() and listings["s3"]() == set()


def test_a_copy_inside_ceph_is_inspected_too(tmp_path: Path, make_stores: Any) -> None:
    """RBD to RBD copies inside the cluster (clone and flatten), not through add: what
    the copy is comes from the read that hashes it, and enforce removes a bad copy."""
    data = hostile(tmp_path, "qcow2-backing-file")
    reporting, listings = make_stores("report")
    source = reporting.add("src-" + uuid.uuid4().hex[:6], data, backend="rbd")
    copied = reporting.copy(source.location, "rbd", image_id="copy-" + uuid.uuid4().hex[:6])
    assert copied.disk_format == "qcow2" and copied.safety is not None
    assert "backing_file" in copied.safety.failed_checks
    reporting.delete(copied.location)
    before = listings["rbd"]()
    enforcing, _ = make_stores("enforce")
    with pytest.raises(UnsafeImage, match="backing_file"):
        enforcing.copy(source.location, "rbd", image_id="copy-" + uuid.uuid4().hex[:6])
    assert listings["rbd"]() == before, "the refused copy was left behind"
    reporting.delete(source.location)
    assert listings["rbd"]() == set()
