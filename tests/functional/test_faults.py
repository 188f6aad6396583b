"""Faults on the real servers, and ``imgstore cleanup``.

* A server that stalls (SIGSTOP) in the middle of an add or a get: the caller
  gets an imgstore error within the configured timeouts, never a hang; once the
  server runs again (SIGCONT), whatever the add's own cleanup could not reach is
  found by its marker and removed by ``Stores.cleanup``, and the backend holds
  exactly what it held before.
* An add whose process dies (its writer is abandoned: neither committed nor
  aborted): ``cleanup`` lists it only once it is older than ``older_than``,
  never lists a finished image, and removes it completely.
* A server that answers 500, 503 or S3's ``SlowDown`` (the faults-swift proxy's
  test-only fault injector, for the Swift and the S3 API): fewer errors than the
  retry budget are retried and the operation succeeds with the bytes intact;
  more give up after exactly the budget's tries, in bounded time, with
  ``BackendUnavailable`` naming the backend and the operation, and nothing left.

The servers are the fault tests' own (``faults-ceph``, ``faults-swift``,
``faults-mongo``: no other test uses them, so a fault here can never slow or
break another test, in this process or in a parallel one). The tests stop and
continue them by the PIDs the harness recorded, always continue them
(``finally``), and after each test prove the server healthy again within a
bounded time (Ceph: HEALTH_OK, no slow ops, every PG ``active+clean``, not
``laggy``, by itself: nothing re-peers it), or fail.
"""

from __future__ import annotations

import contextlib
import functools
import json
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
from tests import otel_sdk
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
    "delete": ("delet",),
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
        from tests.functional.services._common import Context
        from tests.functional.services.ceph import diagnose, wait_healthy

        if rgw:
            _answers(details["rgw_endpoint"] + "/", "radosgw")
        try:
            # by itself: a PG left laggy by a stall longer than its read lease stayed
            # laggy (every op on it blocked) until re-peered; the harness's lease (an
            # hour) outlives any stall, and this shows it (services/ceph.py)
            wait_healthy(details, timeout=HEAL_SECONDS)
        except ServiceError as exc:
            pytest.fail(str(exc), pytrace=False)
        # what a failed CI run prints about the cluster: nothing once healthy
        assert diagnose(Context(details["name"]), details) == []

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
                writer._aio.drain()  # type: ignore[attr-defined]
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
            writer._pieces.wait()  # type: ignore[attr-defined]
            writer._pieces.stop()  # type: ignore[attr-defined]

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
            writer._pieces.wait()  # type: ignore[attr-defined]

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


def _state(pid: int) -> str:
    """The process's state letter in /proc/PID/stat (``T``: stopped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


@contextlib.contextmanager
def stalled(pids: list[int]) -> Iterator[Callable[[], None]]:
    """``stall()`` stops the server processes; they are always continued on exit."""
    stopped: list[int] = []

    def stall() -> None:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        for pid in pids:  # the signal is asynchronous: wait until the process stands still
            deadline = time.monotonic() + 5
            while _state(pid) != "T" and time.monotonic() < deadline:
                time.sleep(0.01)

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
    is reported. The server is first made healthy again (bounded, see Target.healthy)."""
    target.healthy()
    deadline = time.monotonic() + wait
    while True:
        try:
            outcomes = target.stores.cleanup([target.backend], older_than=0)
            now = target.listing()
        except Exception as exc:  # the server may not answer yet
            last = f"{type(exc).__name__}: {exc}"
        else:
            if now == expected:
                return
            errors = [o.error for o in outcomes if o.error]
            last = (
                f"left over: {sorted(now - expected)}, missing: {sorted(expected - now)}, "
                f"cleanup said: {errors}"
            )
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
    target.healthy()
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
    target.healthy()
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


# -- server errors: 500, 503 and S3's SlowDown from the real Swift proxy ---------------------
#
# The faults-swift proxy has a TEST-ONLY fault injector in its pipeline, in front of s3api
# (tests/functional/services/fault_injection.py): the control file below names the requests
# it answers with an error instead of passing them on, and how many times. Swift requests
# get Swift's error page, S3 requests S3's XML error (Code InternalError, ServiceUnavailable
# or SlowDown). Everything else is the real Swift.

ERROR_RETRIES = 2
"""The drivers' retry budget here: every request is tried 1 + 2 times, then given up."""
ERROR_SECONDS = 15.0
"""How long one operation may take to give up (the tries and their backoff)."""
FAULTS = {"500": (500, "InternalError"), "503": (503, "ServiceUnavailable"),
          "SlowDown": (503, "SlowDown")}  # fmt: skip
ERROR_CASES = ["swift-500", "swift-503", "s3-500", "s3-503", "s3-SlowDown"]
"""backend-fault: SlowDown is S3's alone (the Swift API has no error codes)."""


class Injector:
    """The fault injector's control file (written whole, atomically) and its log."""

    def __init__(self, control: Path, log: Path, status: int, code: str) -> None:
        self.control = control
        self.log = log
        self.status = status
        self.code = code
        self.id = ""

    def fail(self, *rules: tuple[str, str, str, int | None], after: bool = False) -> None:
        """Answer the requests (method, path substring, query substring) with the fault,
        ``count`` times each (None: every time); replaces the rules set before. ``after``:
        the server does each request first, and its answer is lost (replaced)."""
        self.id = uuid.uuid4().hex
        body = {
            "id": self.id,
            "rules": [
                {"status": self.status, "code": self.code, "methods": [method], "path": path,
                 "query": query, "count": count, "after": after}
                for method, path, query, count in rules
            ],
        }  # fmt: skip
        tmp = self.control.with_name(f".{self.control.name}.{self.id}")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, self.control)

    def off(self) -> None:
        """No faults any more."""
        self.control.unlink(missing_ok=True)

    def injected(self, rule: int | None = None) -> int:
        """How many faults the current rules (or one of them) injected so far."""
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return 0
        entries = [json.loads(line) for line in lines if line.strip()]
        return sum(1 for e in entries if e["id"] == self.id and (rule is None or e["rule"] == rule))


@dataclass
class ErrorTarget:
    """A backend on the faults-swift proxy, with its fault injector."""

    target: Target
    inject: Injector
    path: Callable[[str], str]
    """Where the requests for an image go (a substring of their path)."""
    parts: tuple[str, str, str]
    """(method, path suffix, query) of a segment or part upload."""
    commit: tuple[str, str, str]
    """(method, path suffix, query) of the request that makes the object of a segmented add."""
    large: int = 11 * MIB
    """An image that goes up in three segments or parts."""
    small: int = MIB // 2
    """An image that goes up in one PUT."""

    def rule(self, step: tuple[str, str, str], image_id: str, count: int | None) -> Any:
        method, suffix, query = step
        return (method, self.path(image_id) + suffix, query, count)


def _error_target(backend: str, tmp_path: Path, inject: Injector) -> Iterator[ErrorTarget]:
    details = require_service("faults-swift")
    if backend == "swift":
        from tests.functional.swift_helpers import (
            container_listing,
            new_container,
            raw_connection,
            server,
            swift_options,
            write_config,
        )

        srv = server("faults-swift")
        container = new_container()
        options = swift_options(
            srv, container, swift_store_large_object_size=5, swift_store_large_object_chunk_size=5,
            swift_store_thread_pools=2, swift_store_timeout=10,
            swift_store_retries=ERROR_RETRIES, swift_store_retry_get_count=0,
        )  # fmt: skip
        with Stores.from_config_files(write_config(tmp_path / "swift.conf", options)) as stores:
            try:
                yield ErrorTarget(
                    Target(stores, "swift", container_listing(srv, container),
                           words=("swift", container)),
                    inject, lambda image_id: f"/{container}/{image_id}",
                    parts=("PUT", "-", ""), commit=("PUT", "", "multipart-manifest=put"),
                )  # fmt: skip
            finally:
                inject.off()
                conn = raw_connection(srv)
                with contextlib.suppress(Exception):
                    _, objects = conn.get_container(container, full_listing=True)
                    for obj in objects:
                        conn.delete_object(container, obj["name"])
                    conn.delete_container(container)
                conn.close()
        return
    from tests.functional.test_s3_conformance import (
        bucket_listing,
        new_bucket,
        purge_bucket,
        s3_options,
        server,
        write_config,
    )

    s3 = server("faults-swift")
    bucket = new_bucket()
    options = s3_options(
        s3, bucket, s3_store_large_object_size=5, s3_store_large_object_chunk_size=5,
        s3_store_thread_pools=2, s3_store_read_timeout=10, s3_store_connect_timeout=5,
        s3_store_max_retries=ERROR_RETRIES,
    )  # fmt: skip
    with Stores.from_config_files(write_config(tmp_path / "s3.conf", options)) as stores:
        stores.driver("s3")._ensure_bucket()  # type: ignore[attr-defined]
        try:
            yield ErrorTarget(
                Target(stores, "s3", bucket_listing(stores, "s3", details),
                       words=("s3", bucket)),
                inject, lambda image_id: f"/{bucket}/{image_id}",
                parts=("PUT", "", "partNumber="), commit=("POST", "", "uploadId="),
            )  # fmt: skip
        finally:
            inject.off()
            with contextlib.suppress(Exception):
                purge_bucket(stores.driver("s3"))


@pytest.fixture
def errors(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ErrorTarget]:
    """``backend-fault``: the backend on faults-swift and an injector of that fault; the
    control file is always removed, and the proxy proven to answer again."""
    backend, fault = str(request.param).split("-")
    details = require_service("faults-swift")
    if "fault_injection_log" not in details:
        pytest.fail("faults-swift runs without the fault injector: restart it (down, up)")
    inject = Injector(
        Path(details["fault_injection_file"]), Path(details["fault_injection_log"]), *FAULTS[fault]
    )
    inject.off()
    try:
        with contextlib.contextmanager(_error_target)(backend, tmp_path, inject) as made:
            yield made
    finally:
        inject.off()
    _answers(details["s3_endpoint"] + "/healthcheck", "the Swift proxy", ok=200)


def _read_all(stores: Stores, location: str) -> bytes:
    with stores.get(location) as reader:
        return b"".join(reader)


def _timed_failure(
    errors: ErrorTarget, op: str, fn: Callable[[], object]
) -> pytest.ExceptionInfo[Exception]:
    """``fn()`` fails with BackendUnavailable naming the backend and ``op``, in time."""
    started = time.monotonic()
    with pytest.raises(ImgstoreError) as failure:  # assert_unavailable: exactly which
        fn()
    took = time.monotonic() - started
    assert_unavailable(failure, errors.target, op)
    assert took < ERROR_SECONDS, f"{op} took {took:.1f} s to give up"
    return failure


@pytest.mark.parametrize("errors", ERROR_CASES, indirect=True)
def test_server_errors_within_the_retry_budget_are_retried(errors: ErrorTarget) -> None:
    """Fewer errors than the retries, on every kind of request: each one is retried and the
    operation succeeds with the image's bytes intact; the operation's span counts exactly
    the retries it took (imgstore.telemetry, read with the real OpenTelemetry SDK)."""
    t, inject = errors.target, errors.inject
    stores, backend = t.stores, t.backend
    before = t.listing()
    n = ERROR_RETRIES
    spans = otel_sdk.installed().spans
    spans.clear()
    big, image_id = os.urandom(errors.large), str(uuid.uuid4())

    # a segmented add: a segment (part) upload and the manifest (completion) fail n times
    inject.fail(errors.rule(errors.parts, image_id, n), errors.rule(errors.commit, image_id, n))
    added = stores.add(image_id, big, size=len(big), backend=backend)
    assert (inject.injected(0), inject.injected(1)) == (n, n)

    inject.fail(("GET", errors.path(image_id), "", n))
    assert _read_all(stores, added.location) == big
    assert inject.injected() == n

    inject.fail(("HEAD", errors.path(image_id), "", n))
    assert stores.size(added.location) == len(big)
    assert inject.injected() == n

    if backend == "s3":  # Swift's single PUT streams its body: see the next test
        small, small_id = os.urandom(errors.small), str(uuid.uuid4())
        inject.fail(("PUT", errors.path(small_id), "", n))
        single = stores.add(small_id, small, size=len(small), backend=backend)
        assert inject.injected() == n
        inject.off()
        assert _read_all(stores, single.location) == small
        stores.delete(single.location)

    inject.fail(("DELETE", errors.path(image_id), "", n))
    stores.delete(added.location)
    assert inject.injected() == n
    inject.off()
    assert t.listing() == before
    retried = [
        (s.name, (s.attributes or {}).get("imgstore.retries"))
        for s in spans.get_finished_spans()
        if (s.attributes or {}).get("imgstore.backend") == backend
        and (s.attributes or {}).get("imgstore.retries")
    ]
    single = [("imgstore.add", n)] if backend == "s3" else []
    assert retried == [
        ("imgstore.add", 2 * n), ("imgstore.get", n), ("imgstore.size", n), *single,
        ("imgstore.delete", n),
    ]  # fmt: skip


@pytest.mark.parametrize("errors", ERROR_CASES, indirect=True)
def test_server_errors_beyond_the_retry_budget_are_unavailable(errors: ErrorTarget) -> None:
    """A server that keeps failing: every operation gives up after exactly its tries, with
    BackendUnavailable naming the backend and the operation, and leaves nothing behind."""
    t, inject = errors.target, errors.inject
    stores, backend = t.stores, t.backend
    tries = ERROR_RETRIES + 1
    data = os.urandom(errors.large)
    kept = stores.add(str(uuid.uuid4()), data, size=len(data), backend=backend)
    path = errors.path(kept.image_id)
    before = t.listing()

    inject.fail(("HEAD", path, "", None))
    _timed_failure(errors, "size", lambda: stores.size(kept.location))
    assert inject.injected() == tries

    inject.fail(("GET", path, "", None))
    _timed_failure(errors, "get", lambda: _read_all(stores, kept.location))
    assert inject.injected() == tries

    inject.fail(("DELETE", path, "", None))
    _timed_failure(errors, "delete", lambda: stores.delete(kept.location))
    assert inject.injected() == tries

    for step in (errors.parts, errors.commit):
        image_id = str(uuid.uuid4())
        inject.fail(errors.rule(step, image_id, None))
        _timed_failure(
            errors, "add",
            functools.partial(stores.add, image_id, data, size=len(data), backend=backend),
        )  # fmt: skip
        assert inject.injected() >= tries
        inject.off()
        assert t.listing() == before, "a failed add left something"

    small_id = str(uuid.uuid4())
    inject.fail(("PUT", errors.path(small_id), "", None))
    _timed_failure(
        errors, "add",
        lambda: stores.add(small_id, data[: errors.small], size=errors.small, backend=backend),
    )  # fmt: skip
    # Swift's single PUT streams the image to the server as it comes: it cannot be sent
    # again, so it is tried once (an image above swift_store_large_object_size goes up in
    # segments, each of which is retried)
    assert inject.injected() == (tries if backend == "s3" else 1)
    inject.off()
    assert t.listing() == before, "a failed add left something"

    assert _read_all(stores, kept.location) == data, "the failed delete changed the image"
    stores.delete(kept.location)


@pytest.mark.parametrize("errors", ["swift-503", "s3-503"], indirect=True)
def test_a_write_whose_answer_is_lost_is_not_taken_for_a_failure(errors: ErrorTarget) -> None:
    """The server stores the object, then answers 503 (its answer is lost): the write that
    makes the image (a single PUT, a manifest, a multipart completion) is found to be the
    writer's own (a token in its metadata), so the add succeeds, not Duplicate (the retry's
    If-None-Match) or BackendUnavailable, and nothing is left half-written: no manifest
    without its segments, no orphan object."""
    t, inject = errors.target, errors.inject
    stores, backend = t.stores, t.backend
    before = t.listing()
    for size, step in ((errors.large, errors.commit), (errors.small, ("PUT", "", ""))):
        data, image_id = os.urandom(size), str(uuid.uuid4())
        inject.fail(errors.rule(step, image_id, 1), after=True)
        added = stores.add(image_id, data, size=size, backend=backend)
        assert inject.injected() == 1
        inject.off()
        assert _read_all(stores, added.location) == data
        inject.fail(("DELETE", errors.path(image_id), "", 1), after=True)
        stores.delete(added.location)
        assert inject.injected() == 1
        inject.off()
        assert t.listing() == before
