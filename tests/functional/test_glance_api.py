"""OpenStack Glance's image API, served by Glance itself with imgstore as its glance_store.

The ``glance`` harness server (tests/functional/services/glance.py) is an
unmodified Glance under gunicorn whose ``glance_store`` is this repository's
compat package; its backends are ``fs`` (filesystem) and ``ceph`` (RBD on the
harness's Ceph cluster). With python-glanceclient each test creates an
image, uploads a real qcow2 (made here with qemu-img), checks what Glance
recorded (size, virtual size, md5 checksum, sha512 os_hash_value, store),
checks the bytes are in the backend where imgstore put them, downloads them
(whole and a byte range), deletes the image and checks the backend is empty
of it again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.functional.conftest import import_or_fail, skip_or_fail

glanceclient = import_or_fail("glanceclient", "pip install python-glanceclient")
glance_exc = import_or_fail("glanceclient.exc", "pip install python-glanceclient")

pytestmark = pytest.mark.functional

VIRTUAL_SIZE = 24 * 1024 * 1024
"""Guest size of the test image; about 16 MiB of it is random data."""


@pytest.fixture(scope="module")
def client(glance: dict[str, Any]) -> Any:
    """A glanceclient for the v2 API (no Keystone: the server trusts identity headers)."""
    return glanceclient.Client(
        endpoint=f"{glance['url']}/v2", identity_headers=dict(glance["identity_headers"])
    )


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real qcow2 image: random data in part of a 24 MiB guest, converted by qemu-img."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        skip_or_fail("qemu-img is missing (apt-get install qemu-utils; the glance service does)")
    work = tmp_path_factory.mktemp("qcow2")
    raw = work / "disk.raw"
    with open(raw, "wb") as fh:
        fh.truncate(VIRTUAL_SIZE)
        for offset in (0, 8 << 20, 20 << 20):  # data with holes between, as a real disk has
            fh.seek(offset)
            fh.write(os.urandom((4 << 20) - 8192) + b"imgstore" * 1024)
    image = work / "disk.qcow2"
    subprocess.run(
        [qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)],
        check=True,
        capture_output=True,
    )
    info = subprocess.run(
        [qemu_img, "info", "--output=json", str(image)], check=True, capture_output=True
    )
    assert b'"format": "qcow2"' in info.stdout
    return image


def _in_fs(glance: dict[str, Any], image_id: str) -> bytes | None:
    path = Path(glance["datadir"]) / image_id
    return path.read_bytes() if path.exists() else None


def _in_rbd(glance: dict[str, Any], image_id: str) -> bytes | None:
    import rados
    import rbd

    from tests.functional.rbd_helpers import CLOSER, open_image

    cluster = rados.Rados(conffile=glance["ceph_conf"], rados_id=glance["ceph_user"])
    cluster.conf_set("client_mount_timeout", "20")
    cluster.connect()
    try:
        with cluster.open_ioctx(glance["rbd_pool"]) as ioctx:
            if image_id not in rbd.RBD().list(ioctx):
                return None
            with open_image(ioctx, image_id, snapshot="snap", read_only=True) as img:
                return bytes(img.read(0, img.size()))
    finally:
        CLOSER.flush()
        cluster.shutdown()


def _backend(glance: dict[str, Any], backend: str) -> Any:
    if backend not in glance["backends"]:
        skip_or_fail(f"the glance server has no {backend!r} backend (is ceph up?)")
    if backend == "ceph":
        import_or_fail("rados", "Ceph's python3-rados is not linked (scripts/setup)")
        import_or_fail("rbd", "Ceph's python3-rbd is not linked (scripts/setup)")
        return _in_rbd
    return _in_fs


@pytest.fixture
def image(client: Any) -> Iterator[Any]:
    """A queued image record; deleted afterwards if the test left it."""
    img = client.images.create(
        name=f"imgstore-test-{uuid.uuid4().hex[:8]}", disk_format="qcow2", container_format="bare"
    )
    yield img
    try:
        client.images.delete(img.id)
    except glance_exc.HTTPNotFound:
        pass


@pytest.mark.functional
@pytest.mark.parametrize("backend", ["fs", "ceph"])
def test_qcow2_round_trip(
    glance: dict[str, Any], client: Any, qcow2: Path, image: Any, backend: str
) -> None:
    in_backend = _backend(glance, backend)
    data = qcow2.read_bytes()
    assert image.status == "queued"

    with open(qcow2, "rb") as fh:
        client.images.upload(image.id, fh, image_size=len(data), backend=backend)

    got = client.images.get(image.id)
    assert got.status == "active"
    assert got.size == len(data)
    assert got.virtual_size == VIRTUAL_SIZE
    assert got.checksum == hashlib.md5(data).hexdigest()
    assert got.os_hash_algo == "sha512"
    assert got.os_hash_value == hashlib.sha512(data).hexdigest()
    assert got.stores == backend
    # the bytes are where imgstore's driver put them
    assert in_backend(glance, image.id) == data

    downloaded = b"".join(client.images.data(image.id))
    assert hashlib.sha512(downloaded).hexdigest() == got.os_hash_value

    # a byte range goes through glance_store.get(offset=, chunk_size=)
    resp = requests.get(
        f"{glance['url']}/v2/images/{image.id}/file",
        headers={"Range": "bytes=1000-66535", **glance["identity_headers"]},
        timeout=60,
    )
    assert resp.status_code == 206
    assert resp.content == data[1000:66536]

    client.images.delete(image.id)
    with pytest.raises(glance_exc.HTTPNotFound):
        client.images.get(image.id)
    assert in_backend(glance, image.id) is None


@pytest.mark.functional
def test_stores_info(glance: dict[str, Any]) -> None:
    """GET /v2/info/stores/detail reads the compat stores' attributes (datadir, pool...)."""
    resp = requests.get(
        f"{glance['url']}/v2/info/stores/detail", headers=glance["identity_headers"], timeout=60
    )
    assert resp.status_code == 200
    body = resp.json()
    stores = {s["id"]: s for s in body["stores"]}
    assert set(stores) == set(glance["backends"])
    fs = stores["fs"]
    assert fs["default"] == "true"
    assert fs["type"] == "file"
    assert fs["description"] == "local filesystem (imgstore)"
    assert fs["properties"]["data_dir"] == glance["datadir"]
    assert fs["properties"]["thin_provisioning"] is False
    if "ceph" in stores:
        props = stores["ceph"]["properties"]
        assert props["pool"] == glance["rbd_pool"]
        assert props["chunk_size"] == 4 * 1024 * 1024
        assert props["fsid"]
