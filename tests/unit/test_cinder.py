"""cinder:// locations and the driver's device I/O over recorded os-brick shapes.

The functional tests (tests/functional/test_cinder.py) run against a real
Cinder with the RBD backend. iSCSI, FC and NFS attachments cannot run here:
these unit tests feed the driver's I/O layer the connection-info and device
shapes Cinder and os-brick return for them (recorded from their sources),
with a file standing in for the block device.
"""

from __future__ import annotations

import errno
import uuid
from pathlib import Path
from typing import Any

import pytest

from imgstore import BadLocation, NotSupported
from imgstore.location import parse
from tests.functional.conftest import import_or_fail

cinder = import_or_fail("imgstore.drivers.cinder", "the cinder extra is not installed")
CinderLocation = cinder.CinderLocation

VOL = "5df8d684-1423-4a1e-a3e8-b20aee1a82c9"


def test_glance_store_forms() -> None:
    legacy = parse(f"cinder://{VOL}")
    assert isinstance(legacy, CinderLocation)
    assert (legacy.volume_id, legacy.store) == (VOL, None)
    assert str(legacy) == f"cinder://{VOL}"
    multi = parse(f"cinder://fast/{VOL}")
    assert isinstance(multi, CinderLocation)
    assert (multi.volume_id, multi.store) == (VOL, "fast")
    assert str(multi) == f"cinder://fast/{VOL}"
    assert parse(str(multi)) == multi
    assert legacy != multi


def test_volume_names_fit_cinder_for_every_valid_id() -> None:
    """glance_store's ``image-<id>`` while it fits Cinder's 255 characters; a longer id
    is cut and keeps a hash of the whole id, so two ids sharing their head differ."""
    name = cinder.volume_name
    assert name(VOL) == f"image-{VOL}"
    assert name("a" * 249) == "image-" + "a" * 249
    long_a, long_b = "x" * 254 + "a", "x" * 254 + "b"
    assert len(name(long_a)) == len(name(long_b)) == 255
    assert name(long_a) != name(long_b)
    assert name(long_a).startswith("image-" + "x" * 200)
    assert name(long_a) == name(long_a)  # the same id finds its volume again


def test_volume_id_is_normalised() -> None:
    loc = parse(f"cinder://{VOL.upper()}")
    assert loc == parse(f"cinder://{VOL}")
    assert parse(f"cinder://{uuid.UUID(VOL).hex}") == loc


@pytest.mark.parametrize(
    "uri",
    [
        "cinder://",
        "cinder://not-a-uuid",
        f"cinder://a/b/{VOL}",
        f"cinder:///{VOL}",
        f"cinder://{VOL}?x=1",
        f"cinder://user:pw@{VOL}",
        f"cinder://{VOL}#frag",
    ],
)
def test_bad_locations(uri: str) -> None:
    with pytest.raises(BadLocation) as raised:
        parse(uri)
    assert "pw" not in str(raised.value).replace("cinder://", "")


def test_secret_repr_is_masked() -> None:
    secret = cinder._Secret("[client.x]\n\tkey = AQDSECRETKEY==\n")
    assert "AQDSECRETKEY" not in repr(secret)
    assert "AQDSECRETKEY" not in repr({"keyring": secret})
    assert "AQDSECRETKEY" in str.__str__(secret)  # os-brick writes the real text


# -- device I/O over recorded shapes -------------------------------------------

ISCSI_INFO = {
    "driver_volume_type": "iscsi",
    "target_discovered": False,
    "target_portal": "192.0.2.10:3260",
    "target_iqn": "iqn.2010-10.org.openstack:volume-" + VOL,
    "target_lun": 1,
    "volume_id": VOL,
    "auth_method": "CHAP",
    "auth_username": "user",
    "auth_password": "not-shown",
    "encrypted": False,
    "qos_specs": None,
    "access_mode": "rw",
    "cacheable": False,
    "enforce_multipath": False,
}
NFS_INFO = {
    "driver_volume_type": "nfs",
    "export": "192.0.2.20:/srv/cinder",
    "name": "volume-" + VOL,
    "options": None,
    "format": "raw",
    "access_mode": "rw",
    "encrypted": False,
}


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "sdb"
    path.write_bytes(bytes(1 << 20))
    return path


@pytest.mark.parametrize("info", [ISCSI_INFO, NFS_INFO], ids=["iscsi", "nfs"])
def test_path_device_read_write(info: dict[str, Any], device: Path) -> None:
    # os-brick: iSCSI/FC -> {'type': 'block', 'scsi_wwn': ..., 'path': '/dev/sdX'};
    # NFS -> {'path': '<mount>/volume-<id>'}
    io = cinder._device_io({"type": "block", "scsi_wwn": "3600", "path": str(device)}, info)
    try:
        io.pwrite(memoryview(b"hello world"), 4096)
        io.flush()
        assert io.pread(4096, 11) == b"hello world"
        assert io.pread((1 << 20) - 2, 10) == b"\0\0"  # short at the end
        assert list(io.chunks(4094, 15, 8)) == [b"\0\0hello ", b"world\0\0"]
        assert list(io.chunks((1 << 20) - 2, 10, 4)) == [b"\0\0"]  # the stream tells
    finally:
        io.close()


def test_path_device_read_only(device: Path) -> None:
    io = cinder._device_io({"path": str(device)}, {**ISCSI_INFO, "access_mode": "ro"})
    try:
        assert io.pread(0, 4) == b"\0\0\0\0"
        with pytest.raises(OSError) as raised:
            io.pwrite(b"x", 0)
        assert raised.value.errno == errno.EBADF
    finally:
        io.close()


def test_qcow2_nfs_volume_is_not_supported(device: Path) -> None:
    with pytest.raises(NotSupported):
        cinder._device_io({"path": str(device)}, {**NFS_INFO, "format": "qcow2"})


class _FakeImage:
    """Stands in for librbd's Image (no cluster in unit tests)."""

    def __init__(self) -> None:
        self.data = bytearray(64)
        self.flushed = False

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    def write(self, data: bytes | bytearray, offset: int) -> int:
        assert isinstance(data, (bytes, bytearray))  # what python-rbd takes (not a memoryview)
        self.data[offset : offset + len(data)] = data
        return len(data)

    def aio_write(self, data: bytes, offset: int, oncomplete: Any) -> object:
        written = self.write(data, offset)
        completion = _Completion(written)
        oncomplete(completion)
        return completion

    def aio_read(self, offset: int, length: int, oncomplete: Any) -> object:
        data = self.read(offset, length)
        completion = _Completion(len(data))
        oncomplete(completion, data)
        return completion

    def flush(self) -> None:
        self.flushed = True


class _Completion:
    def __init__(self, value: int) -> None:
        self.value = value

    def get_return_value(self) -> int:
        return self.value

    def wait_for_complete_and_cb(self) -> None:
        """Completed already (the stand-in calls back at once)."""


class _FakeWrapper:
    """os-brick's RBDVolumeIOWrapper exposes the image as ``rbd_image``."""

    def __init__(self) -> None:
        self.rbd_image = _FakeImage()


def test_rbd_librados_device() -> None:
    wrapper = _FakeWrapper()
    info = {"driver_volume_type": "rbd", "name": f"volumes/volume-{VOL}", "access_mode": "rw"}
    io = cinder._device_io({"path": wrapper}, info)
    io.pwrite(memoryview(b"abc"), 10)
    io.flush()
    assert wrapper.rbd_image.flushed
    assert list(io.chunks(9, 5, 2)) == [b"\0a", b"bc", b"\0"]


def test_unknown_device_shape() -> None:
    with pytest.raises(NotSupported):
        cinder._device_io({"path": 42}, ISCSI_INFO)


def test_rbd_failed_asynchronous_write_surfaces() -> None:
    class Failing(_FakeImage):
        def aio_write(self, data: bytes, offset: int, oncomplete: Any) -> object:
            completion = _Completion(-errno.EIO)
            oncomplete(completion)
            return completion

    wrapper = _FakeWrapper()
    wrapper.rbd_image = Failing()
    io = cinder._device_io({"path": wrapper}, {"driver_volume_type": "rbd"})
    io.pwrite(b"abc", 0)
    with pytest.raises(OSError) as raised:
        io.flush()
    assert raised.value.errno == errno.EIO
    with pytest.raises(OSError):
        io.pwrite(b"more", 3)
