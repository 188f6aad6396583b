"""RBD-specific behaviour, against the real single-node Ceph cluster.

Thin provisioning as the cluster records it (diff iteration), clones from the
protected snapshot and delete refusing while they exist, unknown-size adds
that grow and trim the image, failures that leave nothing behind, the copy
inside the cluster, legacy locations, and an unreachable cluster failing fast.
"""

from __future__ import annotations

import concurrent.futures
import logging
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore import BackendUnavailable, BadLocation, Duplicate, InUse, NotFound, Stores
from imgstore.drivers.rbd import WRITING_KEY, RbdDriver, RbdLocation
from imgstore.testing import Payload
from tests.functional.rbd_helpers import (
    admin_cluster,
    ceph_details,
    open_image,
    pool_listing,
    rbd,
    rbd_options,
    temp_pool,
    write_config,
)

pytestmark = pytest.mark.functional

MiB = 1 << 20


@pytest.fixture(scope="module")
def ceph() -> dict[str, Any]:
    return ceph_details()


@pytest.fixture(scope="module")
def cluster(ceph: dict[str, Any]) -> Iterator[Any]:
    with admin_cluster(ceph) as cluster:
        yield cluster


@pytest.fixture
def pools(cluster: Any) -> Iterator[tuple[str, str]]:
    with temp_pool(cluster) as first, temp_pool(cluster) as second:
        yield first, second


def make_stores(
    tmp_path: Path, ceph: dict[str, Any], pools: tuple[str, str], **extra: Any
) -> Stores:
    """Backends ``a`` (default) and ``b`` on the two pools, with ``extra`` options for ``a``."""
    backends = {
        "a": rbd_options(ceph, pools[0], **extra),
        "b": rbd_options(ceph, pools[1]),
    }
    return Stores.from_config_files(
        write_config(tmp_path / f"rbd-{uuid.uuid4().hex[:6]}.conf", backends, {})
    )


def allocated(cluster: Any, pool: str, image: str, snapshot: str | None = "snap") -> int:
    """Bytes the cluster holds data for in ``image@snapshot`` (diff against nothing)."""
    total = 0

    def count(offset: int, length: int, exists: bool) -> None:
        nonlocal total
        if exists:
            total += length

    with (
        cluster.open_ioctx(pool) as ioctx,
        open_image(ioctx, image, snapshot=snapshot, read_only=True) as img,
    ):
        img.diff_iterate(0, img.size(), None, count)
    return total


def read_all(stores: Stores, location: str) -> bytes:
    with stores.get(location) as reader:
        return reader.read_all()


# -- thin provisioning ---------------------------------------------------------


@pytest.mark.parametrize("thin", [True, False])
def test_thin_provisioning_leaves_zero_chunks_unallocated(
    tmp_path: Path, ceph: dict[str, Any], cluster: Any, pools: tuple[str, str], thin: bool
) -> None:
    chunk = MiB
    data = b"\x01" * chunk + bytes(3 * chunk) + b"\x02" * chunk + bytes(chunk // 2)
    with make_stores(
        tmp_path, ceph, pools, rbd_store_chunk_size=1, rbd_thin_provisioning=thin
    ) as stores:
        result = stores.add("thin-" + str(thin), data, size=len(data))
        assert read_all(stores, result.location) == data
        used = allocated(cluster, pools[0], result.image_id)
    if thin:
        assert used == 2 * chunk  # only the two non-zero chunks hold data
    else:
        assert used == len(data)


def test_thin_provisioning_with_unknown_size(
    tmp_path: Path, ceph: dict[str, Any], cluster: Any, pools: tuple[str, str]
) -> None:
    data = bytes(5 * MiB) + b"tail"
    with make_stores(
        tmp_path, ceph, pools, rbd_store_chunk_size=1, rbd_thin_provisioning=True
    ) as stores:
        result = stores.add("thin-unknown", iter([data]), size=None)
        assert result.size == len(data)
        assert stores.size(result.location) == len(data)
        assert read_all(stores, result.location) == data
        assert allocated(cluster, pools[0], result.image_id) == len(b"tail")


# -- snapshots, clones and delete -------------------------------------------------


def test_clone_from_protected_snapshot_blocks_delete(
    tmp_path: Path, ceph: dict[str, Any], cluster: Any, pools: tuple[str, str]
) -> None:
    payload = Payload(3 * MiB + 5, seed=7)
    assert payload.data is not None
    with make_stores(tmp_path, ceph, pools) as stores:
        result = stores.add("parent", payload.data, size=payload.size)
        loc = RbdLocation.from_uri(result.location)
        assert loc.snapshot == "snap" and loc.pool == pools[0] and loc.fsid == ceph["fsid"]
        with cluster.open_ioctx(pools[0]) as ioctx:
            with open_image(ioctx, "parent", read_only=True) as img:
                assert img.is_protected_snap("snap")
            # what Nova/Cinder do: a copy-on-write clone of the protected snapshot
            rbd.RBD().clone(ioctx, "parent", "snap", ioctx, "vm-disk")
            with open_image(ioctx, "vm-disk", read_only=True) as clone:
                assert clone.read(0, 4096) == payload.data[:4096]
            before = pool_listing(cluster, pools[0])
            with pytest.raises(InUse, match="clone") as info:
                stores.delete(result.location)
            assert "vm-disk" in str(info.value)
            assert pool_listing(cluster, pools[0]) == before  # left intact
            assert read_all(stores, result.location) == payload.data
            rbd.RBD().remove(ioctx, "vm-disk")
        stores.delete(result.location)
        assert pool_listing(cluster, pools[0]) == set()
        with pytest.raises(NotFound):
            stores.size(result.location)


def test_delete_refuses_an_image_with_other_snapshots(
    tmp_path: Path, ceph: dict[str, Any], cluster: Any, pools: tuple[str, str]
) -> None:
    with make_stores(tmp_path, ceph, pools) as stores:
        result = stores.add("snapped", b"x" * 1000, size=1000)
        with cluster.open_ioctx(pools[0]) as ioctx, open_image(ioctx, "snapped") as img:
            img.create_snap("backup")
        before = pool_listing(cluster, pools[0])
        with pytest.raises(InUse, match="backup"):
            stores.delete(result.location)
        assert pool_listing(cluster, pools[0]) == before
        assert read_all(stores, result.location) == b"x" * 1000
        with cluster.open_ioctx(pools[0]) as ioctx, open_image(ioctx, "snapped") as img:
            img.remove_snap("backup")
        stores.delete(result.location)
        assert pool_listing(cluster, pools[0]) == set()


def test_image_without_its_snapshot_is_not_found(
    tmp_path: Path, ceph: dict[str, Any], cluster: Any, pools: tuple[str, str]
) -> None:
    """An image still being written (no snapshot yet) is invisible and never deleted."""
    with cluster.open_ioctx(pools[0]) as ioctx:
        rbd.RBD().create(ioctx, "in-progress", 4096, old_format=False)
    with make_stores(tmp_path, ceph, pools) as stores:
        location = f"rbd://{ceph['fsid']}/{pools[0]}/in-progress/snap"
        for call in (stores.size, stores.get, stores.delete):
            with pytest.raises(NotFound):
                call(location)
    assert pool_listing(cluster, pools[0]) == {"image:in-progress"}


def cut_short_removal(ceph: dict[str, Any], cluster: Any, pool: str, name: str) -> None:
    """Leave ``name`` as a removal killed midway leaves it: listed, but it cannot be opened.

    ``rbd rm`` first moves the image to the pool's trash (hidden, marked as
    being removed), then deletes its objects one by one: it is killed in that
    stretch. 1024 objects of 4 KiB make the stretch long enough to hit.
    """
    with cluster.open_ioctx(pool) as ioctx:
        rbd.RBD().create(ioctx, name, 4 * MiB, order=12, old_format=False)
        with open_image(ioctx, name) as image:
            image.write(b"\x5a" * (4 * MiB), 0)
        command = ["rbd", "-c", ceph["ceph_conf"], "--id", ceph["user"], "-p", pool]
        proc = subprocess.Popen([*command, "--no-progress", "rm", name])
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                assert proc.poll() is None, "rbd rm finished before it could be cut short"
                try:
                    with open_image(ioctx, name, read_only=True):
                        pass
                except rbd.ImageNotFound:
                    break
                time.sleep(0.005)
        finally:
            proc.kill()  # SIGKILL: librbd gets no chance to finish
            proc.wait()
        assert name in rbd.RBD().list(ioctx), "the killed removal should still be listed"
        with pytest.raises(rbd.ImageNotFound):
            rbd.Image(ioctx, name, read_only=True)
        wait_for_no_watchers(ceph, pool, header_object(ioctx, name))


def header_object(ioctx: Any, name: str) -> str:
    """The name of image ``name``'s header object, ``rbd_header.<id>`` (``list2`` still
    lists an image whose removal was cut short, with its id)."""
    (image_id,) = [i["id"] for i in rbd.RBD().list2(ioctx) if i["name"] == name]
    return f"rbd_header.{image_id}"


def wait_for_no_watchers(ceph: dict[str, Any], pool: str, obj: str) -> None:
    """Wait until no client watches ``obj`` any more (at most 60 s).

    A client killed with SIGKILL keeps its watch on the image header until the OSD
    times it out (``osd client watch timeout``: 10 s in the test cluster); until then
    librbd refuses to remove the image (EBUSY). Blocklisting the dead client would be
    quicker, but a blocklist entry is by address, and a live client of this very run
    (another test, another worker) can hold such an address: one did, and librbd
    aborted that worker. So this waits, as an operator without blocklisting would.
    """
    base = ["-c", ceph["ceph_conf"], "--id", ceph["user"]]
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(
            ["rados", *base, "-p", pool, "listwatchers", obj],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if out.returncode == 0 and "watcher=" not in out.stdout:
            return
        assert time.monotonic() < deadline, f"watchers of {obj} stay: {out.stdout}{out.stderr}"
        time.sleep(0.5)


@pytest.mark.parametrize("how", ["delete", "discard", "cleanup"])
def test_a_removal_cut_short_is_finished(
    tmp_path: Path, ceph: dict[str, Any], cluster: Any, pools: tuple[str, str], how: str
) -> None:
    """An image whose removal was killed midway is removed by the next delete or discard
    (opening it fails, so only a second remove by name finishes it) and found by cleanup;
    an add of the same id afterwards leaves exactly one image."""
    name = f"cut-{uuid.uuid4().hex[:8]}"
    cut_short_removal(ceph, cluster, pools[0], name)
    location = f"rbd://{ceph['fsid']}/{pools[0]}/{name}/snap"
    with make_stores(tmp_path, ceph, pools) as stores:
        if how == "delete":
            stores.delete(location)
            with pytest.raises(NotFound):
                stores.delete(location)  # now really gone
        elif how == "discard":
            assert stores.discard(name, "a") is True
            assert stores.discard(name, "a") is False
        else:
            found = stores.cleanup(["a"], older_than=3600)
            assert [(o.leftover.kind, o.leftover.name, o.outcome) for o in found] == [
                ("removal cut short", f"{pools[0]}/{name}", "removed")
            ]
            assert stores.cleanup(["a"], older_than=0) == []
        assert pool_listing(cluster, pools[0]) == set()
        result = stores.add(name, b"fresh", size=5)
        assert read_all(stores, result.location) == b"fresh"
    assert pool_listing(cluster, pools[0]) == {f"image:{name}", f"snap:{name}@snap"}


def test_the_stale_lock_check_leaves_an_image_it_cannot_open_to_the_caller(
    tmp_path: Path, ceph: dict[str, Any], pools: tuple[str, str]
) -> None:
    """A removal that librbd refuses (EBUSY) after moving the image to its trash leaves an
    image that cannot be opened by name; the check for a stale lock of this process then
    says "not mine" (the caller reports the image in use and is retried until the other
    client's watch lapses) instead of raising NotFound, which failed an image of a resumed
    migration in clean run 13 ("discarding img-10-…: not found")."""
    with make_stores(tmp_path, ceph, pools) as stores:
        driver = stores.driver("a")
        assert isinstance(driver, RbdDriver)
        ioctx = driver._ioctx(pools[0], for_write=True)
        assert driver._break_own_stale_lock(ioctx, f"gone-{uuid.uuid4().hex[:8]}") is False


def leave_stale_lock(ioctx: Any, name: str) -> None:
    """Make the client of ``ioctx`` hold image ``name``'s exclusive lock with no watch
    behind it, as a writer whose close could not reach a stalled OSD leaves it (the RBD
    stall of test_faults.py met it about one clean run in three). The lock is taken on
    the real OSD as librbd takes it: the ``lock`` class's ``lock`` call on the image
    header, with librbd's lock name, tag and cookie form (``auto <watch handle>``), for
    a watch that does not exist."""
    with open_image(ioctx, name, read_only=True) as image:
        header = f"rbd_header.{image.id()}"

    def text(value: str) -> bytes:
        data = value.encode()
        return struct.pack("<I", len(data)) + data

    # cls_lock_lock_op, encoding 1: name, type (1: exclusive), cookie, tag, description,
    # duration (s, ns; 0: forever), flags
    body = b"".join(
        [text("rbd_lock"), b"\x01", text("auto 1234567890"), text("internal"), text("")]
    ) + struct.pack("<IIB", 0, 0, 0)
    ioctx.execute(header, "lock", "lock", struct.pack("<BBI", 1, 1, len(body)) + body)


@pytest.mark.parametrize("how", ["discard", "cleanup"])
def test_a_stale_lock_of_this_process_does_not_keep_its_leftover(
    tmp_path: Path,
    ceph: dict[str, Any],
    cluster: Any,
    pools: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    """An unfinished image whose exclusive lock the driver's own client still holds, with
    no watch: librbd alone refuses to remove it for as long as the process lives (it
    would have to blocklist its own client first); discard and cleanup break the lock
    without blocklisting, remove the image, and the client goes on working."""
    name = f"stale-{uuid.uuid4().hex[:8]}"
    with make_stores(tmp_path, ceph, pools) as stores:
        driver = stores.driver("a")
        assert isinstance(driver, RbdDriver)
        ioctx = driver._ioctx(pools[0], for_write=True)  # the driver's own client
        features = rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
        rbd.RBD().create(ioctx, name, MiB, old_format=False, features=features)
        with open_image(ioctx, name) as image:
            image.metadata_set(WRITING_KEY, "0")  # an add that never finished
        leave_stale_lock(ioctx, name)
        with pytest.raises(rbd.ImageBusy):
            rbd.RBD().remove(ioctx, name)
        with caplog.at_level(logging.WARNING, logger="imgstore"):
            if how == "discard":
                assert stores.discard(name, "a") is True
            else:
                found = stores.cleanup(["a"], older_than=0)
                assert [(o.leftover.kind, o.outcome) for o in found] == [
                    ("unfinished image", "removed")
                ], [o.error for o in found]
        assert "broke the stale exclusive lock this process held" in caplog.text
        assert pool_listing(cluster, pools[0]) == set()
        result = stores.add(name, b"fresh", size=5)  # not blocklisted
        assert read_all(stores, result.location) == b"fresh"


def test_legacy_location_reads_the_image_head(
    tmp_path: Path, ceph: dict[str, Any], cluster: Any, pools: tuple[str, str]
) -> None:
    data = b"legacy image bytes" * 1000
    with cluster.open_ioctx(pools[0]) as ioctx:
        rbd.RBD().create(ioctx, "old-glance-image", len(data), old_format=False)
        with open_image(ioctx, "old-glance-image") as img:
            img.write(data, 0)
    with make_stores(tmp_path, ceph, pools) as stores:
        assert stores.backend_for("rbd://old-glance-image") == "a"
        assert stores.size("rbd://old-glance-image") == len(data)
        assert read_all(stores, "rbd://old-glance-image") == data
        with stores.get("rbd://old-glance-image", offset=18, length=18) as reader:
            assert reader.read_all() == data[18:36]
        stores.delete("rbd://old-glance-image")
    assert pool_listing(cluster, pools[0]) == set()


def test_location_of_another_cluster_is_refused(
    tmp_path: Path, ceph: dict[str, Any], pools: tuple[str, str]
) -> None:
    other = f"rbd://{uuid.uuid4()}/{pools[0]}/some-image/snap"
    with make_stores(tmp_path, ceph, pools) as stores, pytest.raises(BadLocation):
        stores.size(other)


# -- adds ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 8 * MiB, 8 * MiB + 1, 150 * MiB + 12345])
def test_unknown_size_add_grows_and_trims(
    tmp_path: Path, ceph: dict[str, Any], cluster: Any, pools: tuple[str, str], size: int
) -> None:
    """glance_store's 8 MiB default; 150 MiB crosses several growth steps (64 MiB, x2)."""
    payload = Payload(size, seed=size % 251, keep=False)
    with make_stores(tmp_path, ceph, pools) as stores:
        result = stores.add("unknown", payload.blocks(), size=None, hash_algo="sha256")
        assert result.size == size
        assert result.multihash == payload.hexdigest("sha256")
        with cluster.open_ioctx(pools[0]) as ioctx:
            with open_image(ioctx, "unknown", read_only=True) as head:
                assert head.size() == size  # trimmed to the real size
            with open_image(ioctx, "unknown", snapshot="snap", read_only=True) as snap:
                assert snap.size() == size
        stores.verify(result.location, "sha256", multihash=payload.hexdigest("sha256"), size=size)
        stores.delete(result.location)
    assert pool_listing(cluster, pools[0]) == set()


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("declared", [True, False])
def test_source_failing_mid_stream_leaves_no_image(
    tmp_path: Path, ceph: dict[str, Any], cluster: Any, pools: tuple[str, str], declared: bool
) -> None:
    """The failure comes after many chunks, with asynchronous writes in flight."""

    def source() -> Iterator[bytes]:
        for i in range(40):
            yield bytes([i + 1]) * MiB
        raise Boom("source broke")

    with make_stores(tmp_path, ceph, pools, rbd_store_chunk_size=1) as stores:
        with pytest.raises(Boom):
            stores.add("broken", source(), size=64 * MiB if declared else None)
    assert pool_listing(cluster, pools[0]) == set()


def test_duplicate_id_is_refused_and_the_first_image_kept(
    tmp_path: Path, ceph: dict[str, Any], cluster: Any, pools: tuple[str, str]
) -> None:
    with make_stores(tmp_path, ceph, pools) as stores:
        first = stores.add("same", b"first", size=5)
        with pytest.raises(Duplicate):
            stores.add("same", b"second!", size=7)
        assert read_all(stores, first.location) == b"first"
    assert pool_listing(cluster, pools[0]) == {"image:same", "snap:same@snap"}


def test_one_connection_shared_by_threads(
    tmp_path: Path, ceph: dict[str, Any], pools: tuple[str, str]
) -> None:
    with make_stores(tmp_path, ceph, pools) as stores:
        driver: Any = stores.driver("a")
        start = threading.Barrier(8)

        def work(n: int) -> int:
            start.wait(timeout=60)
            r = stores.add(f"t{n}", bytes([n]) * 300_000, size=300_000)
            connection = id(driver._cluster)
            assert read_all(stores, r.location) == bytes([n]) * 300_000
            stores.delete(r.location)
            return connection

        # .result() raises here whatever a worker raised (a failed assert too)
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(work, n) for n in range(8)]
            connections = {f.result(timeout=600) for f in futures}
        assert len(connections) == 1
    assert driver._cluster is None  # closed with the Stores


def test_quick_opens_and_closes_under_load_keep_the_process_alive(
    tmp_path: Path, ceph: dict[str, Any], pools: tuple[str, str]
) -> None:
    """librbd 16 can free an image that is closed right after librbd finished opening it,
    and the process then aborts (``std::system_error: Invalid argument``) or crashes:
    imgstore.drivers.rbd_close. A child process sizes and reads one small image in a loop,
    in two threads, with three CPU-bound processes beside it (the race needs the librbd
    thread to lose its CPU at one instant). Before the closer it died within 1 to 6 s."""
    config = tmp_path / "rbd.conf"
    write_config(config, {"a": rbd_options(ceph, pools[0])}, {})
    with Stores.from_config_files(config) as stores:
        location = stores.add("quick", b"q" * 4096, size=4096).location
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        child = subprocess.run(
            [sys.executable, "-m", "tests.functional.rbd_open_loop", str(config), location,
             "12", "4"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert child.returncode == 0, (
        f"the reading process ended with {child.returncode}: {child.stderr[-2000:]}"
    )
    assert int(child.stdout) > 0


# -- copy inside the cluster ------------------------------------------------------------


def test_copy_between_pools_happens_inside_the_cluster(
    tmp_path: Path,
    ceph: dict[str, Any],
    cluster: Any,
    pools: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    payload = Payload(20 * MiB + 3, seed=11, keep=False)
    with make_stores(tmp_path, ceph, pools) as stores:
        source = stores.add("orig", payload.blocks(), size=payload.size)
        with caplog.at_level(logging.INFO, logger="imgstore"):
            copy = stores.copy(source.location, "b", verify=True)
        assert any("inside the cluster" in r.getMessage() for r in caplog.records)
        assert copy.backend == "b"
        assert copy.size == payload.size
        assert copy.multihash == source.multihash == payload.hexdigest("sha512")
        assert copy.checksum == payload.md5
        loc = RbdLocation.from_uri(copy.location)
        assert (loc.pool, loc.image, loc.snapshot) == (pools[1], "orig", "snap")
        with (
            cluster.open_ioctx(pools[1]) as ioctx,
            open_image(ioctx, "orig", read_only=True) as img,
        ):
            with pytest.raises(rbd.ImageNotFound):
                img.parent_info()  # flattened: independent of the source
            assert img.is_protected_snap("snap")
        # the source has no clone left, so it can go
        stores.delete(source.location)
        stores.verify(copy.location, "sha512", multihash=payload.hexdigest("sha512"))
        with pytest.raises(Duplicate):
            stores.add("orig", b"x", size=1, backend="b")
        stores.delete(copy.location)
    assert pool_listing(cluster, pools[0]) == set()
    assert pool_listing(cluster, pools[1]) == set()


def test_copy_onto_an_existing_id_is_duplicate_and_keeps_both(
    tmp_path: Path, ceph: dict[str, Any], cluster: Any, pools: tuple[str, str]
) -> None:
    with make_stores(tmp_path, ceph, pools) as stores:
        source = stores.add("img", b"source", size=6)
        stores.add("img", b"target", size=6, backend="b")
        before = pool_listing(cluster, pools[1])
        with pytest.raises(Duplicate):
            stores.copy(source.location, "b")
        assert pool_listing(cluster, pools[1]) == before


def test_copy_of_a_legacy_location_streams(
    tmp_path: Path, ceph: dict[str, Any], cluster: Any, pools: tuple[str, str]
) -> None:
    """No snapshot to clone from: the core streams the bytes (and still verifies them)."""
    with cluster.open_ioctx(pools[0]) as ioctx:
        rbd.RBD().create(ioctx, "legacy", 5000, old_format=False)
        with open_image(ioctx, "legacy") as img:
            img.write(b"L" * 5000, 0)
    with make_stores(tmp_path, ceph, pools) as stores:
        copy = stores.copy("rbd://legacy", "b")
        assert read_all(stores, copy.location) == b"L" * 5000


# -- an unreachable cluster -------------------------------------------------------------


def test_unreachable_cluster_is_backend_unavailable_quickly(
    tmp_path: Path, ceph: dict[str, Any]
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf = tmp_path / "dead-ceph.conf"
    conf.write_text(
        "[global]\n"
        f"mon host = [v2:127.0.0.1:{port}]\n"
        f"keyring = {ceph['keyring']}\n"
        "log file =\nerr to stderr = false\nadmin socket =\n"
    )
    backends = {
        "dead": {
            "rbd_store_pool": "images",
            "rbd_store_user": ceph["user"],
            "rbd_store_ceph_conf": str(conf),
            "rados_connect_timeout": 2,
        }
    }
    path = write_config(tmp_path / "dead.conf", backends, {})
    with Stores.from_config_files(path) as stores:  # connecting is lazy
        for call in (
            lambda: stores.add("x", b"data", size=4),
            lambda: stores.size(f"rbd://{uuid.uuid4()}/images/x/snap"),
            lambda: stores.get("rbd://x"),
        ):
            start = time.monotonic()
            with pytest.raises(BackendUnavailable) as info:
                call()
            elapsed = time.monotonic() - start
            assert elapsed < 6, f"took {elapsed:.1f} s with rados_connect_timeout = 2"
            assert ceph["secrets"][0] not in str(info.value)
