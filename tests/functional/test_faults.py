"""Faults on the real servers, and ``imgstore cleanup``.

* A server that stalls (SIGSTOP) in the middle of an add or a get: the caller
  gets an imgstore error within the configured timeouts, never a hang; once the
  server runs again (SIGCONT), whatever the add's own cleanup could not reach is
  found by its marker and removed by ``Stores.cleanup``, and the backend holds
  exactly what it held before.
* An add whose process dies (its writer is abandoned: neither committed nor
  aborted): ``cleanup`` lists it only once it is older than ``older_than``,
  never lists a finished image, and removes it completely.

The servers are the fault tests' own (``faults-ceph``, ``faults-swift``,
``faults-mongo``: no other test uses them, so a fault here can never slow or
break another test, in this process or in a parallel one). The tests stop and
continue them by the PIDs the harness recorded, always continue them
(``finally``), and after each test prove the server healthy again within a
bounded time (Ceph: HEALTH_OK, no slow ops, every PG ``active+clean``, not
``laggy``; re-peered once if needed), or fail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from imgstore import Stores
from imgstore.driver import Writer
from imgstore.exceptions import BackendUnavailable, ImgstoreError, NotFound
from tests.functional.conftest import require_service
from tests.functional.services._common import ServiceError

pytestmark = pytest.mark.functional

MIB = 1024 * 1024
BACKENDS = ["file", "rbd", "s3", "swift", "gridfs"]
SERVER_BACKENDS = ["rbd", "s3", "swift", "gridfs"]
OPERATION_WORDS = {
    "add": ("add", "writ", "upload"),
    "get": ("get", "read", "download"),
    "size": ("size", "sizing", "stat", "head"),
}
"""How an error message may name the operation that failed."""
HEAL_SECONDS = 120.0
"""How long a server may take to be healthy again after a fault."""


@dataclass
class Target:
    """One backend on its real server, with what the fault tests need."""

    stores: Stores
    backend: str
    listing: Callable[[], set[str]]
    pids: list[int] = field(default_factory=list)
    """The server processes to stall (SIGSTOP/SIGCONT)."""
    budget: float = 0.0
    """Seconds an operation may take to fail once the server stalls (from its timeouts)."""
    settle: Callable[[Writer], None] = lambda writer: None
    """Stand-in for a process dying: let in-flight work land, drop client handles."""
    service: tuple[str, str] | None = None
    """(harness server, process key) of a process that may be killed and restarted with
    its data intact (radosgw keeps its data in RADOS, a Swift proxy keeps none)."""
    healthy: Callable[[], None] = lambda: None
    """Waits (bounded) until the server answers and is healthy again; fails if it is not."""
    words: tuple[str, ...] = ()
    """Words of which an error message must name one: which backend failed."""


# -- the backends ------------------------------------------------------------------------


def _file_target(tmp_path: Path) -> Iterator[Target]:
    data = tmp_path / "images"
    data.mkdir()
    conf = tmp_path / "file.conf"
    conf.write_text(
        f"[glance_store]\nstores = file\ndefault_store = file\nfilesystem_store_datadir = {data}\n"
    )
    with Stores.from_config_files(conf) as stores:
        yield Target(stores, "file", lambda: {p.name for p in data.iterdir()})


def _ceph_healthy(details: dict[str, Any], rgw: bool = False) -> Callable[[], None]:
    def healthy() -> None:
        from tests.functional.services.ceph import wait_healthy

        if rgw:
            _answers(details["rgw_endpoint"] + "/", "radosgw")
        try:
            wait_healthy(details, timeout=HEAL_SECONDS)
        except ServiceError as exc:
            pytest.fail(str(exc), pytrace=False)

    return healthy


def _answers(url: str, what: str, ok: int | None = None) -> None:
    """Fail unless ``url`` answers (with status ``ok``, or any) within HEAL_SECONDS."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + HEAL_SECONDS
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=5) as resp:
                status = int(resp.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError as exc:
            last = str(exc)
            time.sleep(0.5)
            continue
        if ok is None or status == ok:
            return
        last = f"HTTP {status}"
        time.sleep(0.5)
    pytest.fail(f"{what} does not answer {HEAL_SECONDS:.0f} s after the fault: {last}")


def _rbd_target(tmp_path: Path) -> Iterator[Target]:
    from tests.functional.rbd_helpers import (
        admin_cluster,
        ceph_details,
        pool_listing,
        rbd_options,
        temp_pool,
        write_config,
    )

    details = ceph_details("faults-ceph")
    with admin_cluster(details) as cluster, temp_pool(cluster, "imgstore-faults") as pool:
        options = rbd_options(details, pool, rados_op_timeout=4, rbd_store_chunk_size=1)
        conf = write_config(tmp_path / "rbd.conf", {"rbd": options}, {})
        with Stores.from_config_files(conf) as stores:

            def settle(writer: Writer) -> None:
                writer._drain()  # type: ignore[attr-defined]
                writer._image.close()  # type: ignore[attr-defined]  # a dead client's watch goes

            yield Target(
                stores, "rbd", lambda: pool_listing(cluster, pool),
                [int(details["pids"]["osd"])], 60.0, settle,
                healthy=_ceph_healthy(details), words=("rbd", "ceph", "rados"),
            )  # fmt: skip


def _s3_target(tmp_path: Path) -> Iterator[Target]:
    from tests.functional.test_s3_conformance import (
        bucket_listing,
        new_bucket,
        purge_bucket,
        rgw_collect_garbage,
        s3_options,
        server,
        write_config,
    )

    details = server("faults-ceph")
    bucket = new_bucket()
    # the bucket is made with the default timeouts: radosgw may take seconds to create
    # one on a busy machine, and the short ones below are for the faults
    setup = Stores.from_config_files(
        write_config(tmp_path / "s3-setup.conf", s3_options(details, bucket))
    )
    with setup:
        setup.driver("s3")._ensure_bucket()  # type: ignore[attr-defined]
    options = s3_options(
        details, bucket, s3_store_large_object_size=5, s3_store_large_object_chunk_size=5,
        s3_store_thread_pools=2, s3_store_read_timeout=3, s3_store_connect_timeout=2,
        s3_store_max_retries=0,
    )  # fmt: skip
    with Stores.from_config_files(write_config(tmp_path / "s3.conf", options)) as stores:

        def settle(writer: Writer) -> None:
            writer._wait_parts()  # type: ignore[attr-defined]
            writer._shutdown_pool()  # type: ignore[attr-defined]

        try:
            yield Target(
                stores, "s3", bucket_listing(stores, "s3", details),
                [int(details["pids"]["rgw"])], 40.0, settle, ("faults-ceph", "rgw"),
                healthy=_ceph_healthy(details, rgw=True), words=("s3", bucket),
            )  # fmt: skip
        finally:
            with contextlib.suppress(Exception):
                purge_bucket(stores.driver("s3"))
            rgw_collect_garbage(details)


def _swift_target(tmp_path: Path) -> Iterator[Target]:
    from tests.functional.swift_helpers import (
        container_listing,
        new_container,
        raw_connection,
        server,
        swift_options,
        write_config,
    )

    srv = server("faults-swift")
    details = require_service("faults-swift")
    container = new_container()
    options = swift_options(
        srv, container, swift_store_large_object_size=1, swift_store_large_object_chunk_size=2,
        swift_store_thread_pools=2, swift_store_timeout=3, swift_store_retries=0,
        swift_store_retry_get_count=1,
    )  # fmt: skip
    with Stores.from_config_files(write_config(tmp_path / "swift.conf", options)) as stores:

        def settle(writer: Writer) -> None:
            uploader = writer._uploader  # type: ignore[attr-defined]
            if uploader is not None:
                uploader.wait()

        def healthy() -> None:
            _answers(details["s3_endpoint"] + "/healthcheck", "the Swift proxy", ok=200)

        try:
            yield Target(
                stores, "swift", container_listing(srv, container),
                [int(details["pids"]["proxy"])], 40.0, settle, ("faults-swift", "proxy"),
                healthy=healthy, words=("swift", container),
            )  # fmt: skip
        finally:
            conn = raw_connection(srv)
            with contextlib.suppress(Exception):
                _, objects = conn.get_container(container, full_listing=True)
                for obj in objects:
                    conn.delete_object(container, obj["name"])
                conn.delete_container(container)
            conn.close()


def _gridfs_target(tmp_path: Path) -> Iterator[Target]:
    import pymongo

    from tests.functional.test_gridfs_conformance import write_config

    details = require_service("faults-mongo")
    db = f"imgstore_faults_{uuid.uuid4().hex[:8]}"
    options = {
        "mongodb_store_uri": details["uri_with_password"],
        "mongodb_store_db": db,
        "mongodb_store_chunk_size": 262144,
        "mongodb_store_server_selection_timeout": 3,
        "mongodb_store_socket_timeout": 3,
        "mongodb_store_connect_timeout": 3,
    }
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(
        details["uri_with_password"], serverSelectionTimeoutMS=20_000
    )

    def listing() -> set[str]:
        files = {f"file:{d['_id']}" for d in client[db]["fs.files"].find({}, {"_id": 1})}
        chunks = {
            f"chunk:{d['files_id']}:{d['n']}"
            for d in client[db]["fs.chunks"].find({}, {"files_id": 1, "n": 1})
        }
        return files | chunks

    def healthy() -> None:
        deadline = time.monotonic() + HEAL_SECONDS
        while True:
            try:
                client.admin.command("ping")
                client[db]["fs.files"].find_one()
                return
            except pymongo.errors.PyMongoError as exc:
                if time.monotonic() > deadline:
                    pytest.fail(f"SecantusDB does not answer after the fault: {exc}")
                time.sleep(0.5)

    try:
        with Stores.from_config_files(write_config(tmp_path / "gridfs.conf", options)) as stores:
            yield Target(
                stores, "mongo", listing, [int(details["pids"]["secantusd"])], 40.0,
                healthy=healthy, words=("gridfs", "mongo"),
            )  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            client.drop_database(db)
        client.close()


FACTORIES: dict[str, Callable[[Path], Iterator[Target]]] = {
    "file": _file_target,
    "rbd": _rbd_target,
    "s3": _s3_target,
    "swift": _swift_target,
    "gridfs": _gridfs_target,
}


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """The backend on its server; afterwards the server is proven healthy again."""
    with contextlib.contextmanager(FACTORIES[request.param])(tmp_path) as made:
        yield made
        made.healthy()


# -- helpers --------------------------------------------------------------------------------


@contextlib.contextmanager
def stalled(pids: list[int]) -> Iterator[Callable[[], None]]:
    """``stall()`` stops the server processes; they are always continued on exit."""
    stopped: list[int] = []

    def stall() -> None:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)

    try:
        yield stall
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def stalling_source(stall: Callable[[], None], total: int, stall_at: int) -> Iterator[bytes]:
    """``total`` random bytes in 1 MiB pieces; the server stalls once ``stall_at`` are out."""
    block = os.urandom(MIB)
    sent = 0
    while sent < total:
        if sent == stall_at:
            stall()
        yield block
        sent += len(block)


def clean_up_until_back(target: Target, expected: set[str], wait: float = 150.0) -> None:
    """Run ``cleanup`` until the backend holds ``expected`` again; fail if it does not
    within ``wait`` seconds (the server may still be catching up on requests queued while
    it stood still, and a stalled OSD's clients hold their RBD watches until they lapse,
    ~30 s after it runs again). Errors while it catches up are retried, and the last one
    is reported."""
    deadline = time.monotonic() + wait
    while True:
        try:
            target.stores.cleanup([target.backend], older_than=0)
            now = target.listing()
        except Exception as exc:  # the server may not answer yet
            last = f"{type(exc).__name__}: {exc}"
        else:
            if now == expected:
                return
            last = f"left over: {sorted(now - expected)}, missing: {sorted(expected - now)}"
        if time.monotonic() > deadline:
            pytest.fail(f"{target.backend}: not back to what it held within {wait:.0f} s ({last})")
        time.sleep(1.0)


def assert_unavailable(failure: pytest.ExceptionInfo[Exception], target: Target, op: str) -> None:
    """The error is BackendUnavailable, and its message names the backend and ``op``."""
    assert failure.type is BackendUnavailable, repr(failure.value)
    message = str(failure.value).lower()
    assert any(w.lower() in message for w in target.words), (target.words, message)
    assert any(w in message for w in OPERATION_WORDS[op]), (op, message)


# -- stalls -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", SERVER_BACKENDS, indirect=True)
def test_server_stalling_mid_add_fails_in_time_and_leaves_nothing(target: Target) -> None:
    before = target.listing()
    image_id = str(uuid.uuid4())
    with stalled(target.pids) as stall:
        started = time.monotonic()
        with pytest.raises(ImgstoreError) as failure:
            target.stores.add(
                image_id, stalling_source(stall, 24 * MIB, 12 * MIB), backend=target.backend
            )
        took = time.monotonic() - started
    assert took < target.budget, f"the add took {took:.1f} s to fail (budget {target.budget} s)"
    assert_unavailable(failure, target, "add")
    clean_up_until_back(target, before)


@pytest.mark.parametrize("target", SERVER_BACKENDS, indirect=True)
def test_server_stalling_mid_get_fails_in_time(target: Target) -> None:
    result = target.stores.add(str(uuid.uuid4()), os.urandom(32 * MIB), backend=target.backend)
    with stalled(target.pids) as stall:
        started = time.monotonic()
        with (
            pytest.raises(ImgstoreError) as failure,
            target.stores.get(result.location) as reader,
        ):
            for n, _chunk in enumerate(reader):
                if n == 0:
                    stall()
        took = time.monotonic() - started
    assert took < target.budget, f"the get took {took:.1f} s to fail (budget {target.budget} s)"
    assert_unavailable(failure, target, "get")
    target.stores.delete(result.location)


@pytest.mark.parametrize("target", ["s3", "swift", "gridfs"], indirect=True)
def test_stalled_server_is_unavailable_for_new_requests(target: Target) -> None:
    result = target.stores.add(str(uuid.uuid4()), b"x" * 1000, backend=target.backend)
    with stalled(target.pids) as stall:
        stall()
        started = time.monotonic()
        with pytest.raises(ImgstoreError) as failure:
            target.stores.size(result.location)
        took = time.monotonic() - started
    assert took < target.budget, f"size took {took:.1f} s to fail (budget {target.budget} s)"
    assert_unavailable(failure, target, "size")
    target.stores.delete(result.location)


# -- deaths -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["s3", "swift"], indirect=True)
def test_server_dying_mid_add_fails_in_time_and_cleanup_removes_the_rest(target: Target) -> None:
    from tests.functional.services._common import restart_process

    assert target.service is not None
    before = target.listing()
    killed: list[int] = []

    def kill() -> None:
        for pid in target.pids:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    try:
        started = time.monotonic()
        with pytest.raises(ImgstoreError) as failure:
            target.stores.add(
                str(uuid.uuid4()), stalling_source(kill, 24 * MIB, 12 * MIB), backend=target.backend
            )
        took = time.monotonic() - started
    finally:
        if killed:
            restart_process(*target.service)
    assert took < target.budget, f"the add took {took:.1f} s to fail (budget {target.budget} s)"
    assert_unavailable(failure, target, "add")
    clean_up_until_back(target, before)


# -- abandoned adds and cleanup --------------------------------------------------------------


@pytest.mark.parametrize("target", BACKENDS, indirect=True)
def test_cleanup_removes_exactly_what_a_dead_add_left(target: Target) -> None:
    stores, backend = target.stores, target.backend
    kept = stores.add(str(uuid.uuid4()), os.urandom(12 * MIB), backend=backend)  # segmented
    before = target.listing()
    drv = stores.driver(backend)
    dead_id = str(uuid.uuid4())
    writer = drv.begin_write(dead_id, None)
    block = memoryview(bytearray(os.urandom(MIB)))
    for _ in range(11):
        writer.write(block)
    target.settle(writer)  # the process dies here: no commit, no abort
    assert target.listing() != before, "the dead add left something to clean up"

    young = stores.cleanup([backend], older_than=3600, remove=False)
    assert not [o for o in young if dead_id in o.leftover.name], "a running add is spared"

    found = stores.cleanup([backend], older_than=0, remove=False)
    assert [o.outcome for o in found] == ["found"], found
    assert dead_id in found[0].leftover.name
    assert target.listing() != before, "a dry run removes nothing"

    removed = stores.cleanup([backend], older_than=0)
    assert [o.outcome for o in removed] == ["removed"], removed
    assert target.listing() == before
    assert stores.cleanup([backend], older_than=0) == []
    with stores.get(kept.location) as reader:  # the finished image was never touched
        assert sum(len(c) for c in reader) == kept.size
    with pytest.raises(NotFound):
        stores.size(kept.location.replace(kept.image_id, dead_id))
