"""The S3 driver's own behaviour on radosgw and Swift's s3api: multipart uploads,
back-pressure, aborts, conditional writes, credentials and unreachable servers.

Every test runs against both servers. The only fault not produced by a real
server is a part upload failing in the middle (a botocore event hook raises, see
``test_part_failure_aborts_the_upload``): neither server fails a part on demand.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from imgstore import (
    AuthenticationFailed,
    BackendUnavailable,
    BadConfiguration,
    Duplicate,
    ImgstoreError,
    Stores,
)
from imgstore.drivers.s3 import MiB, S3Driver, S3Writer
from imgstore.testing.conformance import Payload, SourceFailure, drain
from tests.functional.cutting_proxy import CuttingProxy
from tests.functional.test_s3_conformance import (
    bucket_listing,
    new_bucket,
    purge_bucket,
    rgw_collect_garbage,
    s3_options,
    server,
    write_config,
)

pytestmark = pytest.mark.functional


@pytest.fixture(params=["ceph", "swift"])
def details(request: pytest.FixtureRequest) -> dict[str, Any]:
    return server(request.param)


@pytest.fixture
def make(tmp_path: Path, details: dict[str, Any]) -> Iterator[Any]:
    """``make(**options) -> Stores`` on a fresh bucket of the server; closed afterwards."""
    opened: list[Stores] = []
    bucket = new_bucket()

    def make(**options: Any) -> Stores:
        conf = tmp_path / f"s3-{uuid.uuid4().hex[:8]}.conf"
        stores = Stores.from_config_files(
            write_config(conf, s3_options(details, options.pop("bucket", bucket), **options))
        )
        opened.append(stores)
        return stores

    yield make
    for stores in opened:
        with contextlib.suppress(ImgstoreError, BotoCoreError, ClientError):
            purge_bucket(stores.driver("s3"))  # some tests use bad credentials or ports
        stores.close()
    rgw_collect_garbage(details)


def driver_of(stores: Stores) -> S3Driver:
    drv = stores.driver("s3")
    assert isinstance(drv, S3Driver)
    return drv


def failing_after(payload: Payload, fail_at: int) -> Iterator[bytes]:
    sent = 0
    for block in payload.blocks():
        if sent + len(block) > fail_at:
            raise SourceFailure("the source broke on purpose")
        sent += len(block)
        yield block


class PartCounter:
    """Counts UploadPart calls and how many are in flight at once (botocore events)."""

    def __init__(self, drv: S3Driver) -> None:
        self.calls = 0
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()
        events = drv.client.meta.events
        events.register("before-call.s3.UploadPart", self._before)
        events.register("after-call.s3.UploadPart", self._after)
        events.register("after-call-error.s3.UploadPart", self._after)

    def _before(self, **_: Any) -> None:
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        time.sleep(0.2)  # keep each part in flight long enough to overlap

    def _after(self, **_: Any) -> None:
        with self._lock:
            self.in_flight -= 1


def capture_writers(drv: S3Driver) -> list[S3Writer]:
    writers: list[S3Writer] = []
    original = drv.begin_write

    def begin_write(image_id: str, size: int | None) -> Any:
        writer = original(image_id, size)
        assert isinstance(writer, S3Writer)
        writers.append(writer)
        return writer

    drv.begin_write = begin_write  # type: ignore[method-assign]
    return writers


# -- multipart uploads ----------------------------------------------------------


@pytest.mark.parametrize("known_size", [True, False])
def test_source_failure_mid_multipart_leaves_no_upload(
    make: Any, details: dict[str, Any], known_size: bool
) -> None:
    stores = make(s3_store_large_object_size=0, s3_store_large_object_chunk_size=5)
    drv = driver_of(stores)
    drv._ensure_bucket()
    listing = bucket_listing(stores, "s3", details)
    before = listing()
    counter = PartCounter(drv)
    payload = Payload(40 * MiB, seed=21, keep=False)
    image_id = str(uuid.uuid4())
    with pytest.raises(SourceFailure):
        stores.add(
            image_id, failing_after(payload, 23 * MiB), size=payload.size if known_size else None
        )
    assert counter.calls >= 4, "the failure should come after several parts went up"
    assert drv.client.list_multipart_uploads(Bucket=drv.bucket).get("Uploads", []) == []
    assert listing() == before
    assert not drv._exists(image_id, "test")


def test_part_failure_aborts_the_upload(make: Any, details: dict[str, Any]) -> None:
    stores = make(
        s3_store_large_object_size=0,
        s3_store_large_object_chunk_size=5,
        s3_store_thread_pools=2,
        s3_store_max_retries=0,
    )
    drv = driver_of(stores)
    drv._ensure_bucket()
    listing = bucket_listing(stores, "s3", details)
    before = listing()
    calls = {"n": 0}

    # fault injection (the real servers cannot fail one part on demand): part 3 fails
    def fail_third(params: dict[str, Any], **_: Any) -> None:
        calls["n"] += 1
        if params.get("PartNumber") == 3:
            raise ConnectionResetError("injected: part 3 lost its connection")

    drv.client.meta.events.register("before-parameter-build.s3.UploadPart", fail_third)
    payload = Payload(30 * MiB, seed=22, keep=False)
    image_id = str(uuid.uuid4())
    with pytest.raises(BackendUnavailable) as raised:
        stores.add(image_id, payload.blocks(), size=None)
    assert "part 3" in str(raised.value)
    assert drv.client.list_multipart_uploads(Bucket=drv.bucket).get("Uploads", []) == []
    assert listing() == before
    assert not drv._exists(image_id, "test")


def test_parts_go_up_concurrently_within_the_memory_bound(make: Any) -> None:
    threads = 3
    stores = make(
        s3_store_large_object_size=0,
        s3_store_large_object_chunk_size=5,
        s3_store_thread_pools=threads,
    )
    drv = driver_of(stores)
    counter = PartCounter(drv)
    writers = capture_writers(drv)
    payload = Payload(52 * MiB + 5, seed=23, keep=False)
    result = stores.add(str(uuid.uuid4()), payload.pieces(), size=None)
    assert result.multihash == payload.hexdigest("sha512")
    assert counter.calls == 11  # ten 5 MiB parts and the rest
    assert 2 <= counter.peak <= threads, "parts should overlap, never more than the threads"
    (writer,) = writers
    # memory: at most (threads + 1) part buffers, however many parts
    assert 2 <= writer.buffers_allocated <= threads + 1
    head = drv.client.head_object(Bucket=drv.bucket, Key=result.image_id)
    assert head["ETag"].strip('"').endswith("-11")
    assert drain(stores.get(result.location), keep=False).sha512 == payload.hexdigest("sha512")


@pytest.mark.parametrize(
    ("size", "known", "parts"),
    [
        (12 * MiB + 7, False, 3),  # unknown size: multipart once one part is full
        (5 * MiB - 1, False, 0),  # unknown size that fits one part: a single PUT
        (12 * MiB + 7, True, 0),  # known size below the threshold: a single PUT
        (32 * MiB, True, 7),  # known size at the threshold: multipart
    ],
)
def test_single_put_or_multipart(make: Any, size: int, known: bool, parts: int) -> None:
    """Single PUT or multipart as the size says; progress counts what the server has
    taken (a single PUT: nothing until it is sent), so it reaches the size only once
    the image is stored."""
    stores = make(s3_store_large_object_size=32, s3_store_large_object_chunk_size=5)
    drv = driver_of(stores)
    payload = Payload(size, seed=24, keep=False)
    calls: list[int] = []
    result = stores.add(
        str(uuid.uuid4()),
        payload.pieces(),
        size=size if known else None,
        progress=lambda done, _total: calls.append(done),
    )
    assert calls == sorted(calls) and calls[-1] == size
    assert all(done < size for done in calls[:-1]), "100% before the image was stored"
    if not parts:
        assert set(calls[:-1]) == {0}, "a single PUT counted bytes before it was sent"
    etag = drv.client.head_object(Bucket=drv.bucket, Key=result.image_id)["ETag"].strip('"')
    assert etag.endswith(f"-{parts}") if parts else "-" not in etag
    assert stores.size(result.location) == size
    assert drain(stores.get(result.location), keep=False).sha512 == payload.hexdigest("sha512")


@pytest.mark.parametrize("size", [MiB, 11 * MiB])
def test_racing_writers_of_one_id(make: Any, size: int) -> None:
    """Both writers pass the existence check; the second commit is a Duplicate."""
    stores = make(s3_store_large_object_size=5, s3_store_large_object_chunk_size=5)
    drv = driver_of(stores)
    image_id = str(uuid.uuid4())
    first, second = drv.begin_write(image_id, size), drv.begin_write(image_id, size)
    a, b = Payload(size, seed=25), Payload(size, seed=26)
    assert a.data is not None and b.data is not None
    for writer, data in ((first, a.data), (second, b.data)):
        writer.write(memoryview(data))
    location = first.commit(size).location
    with pytest.raises(Duplicate):
        second.commit(size)
    second.abort()
    assert drv.client.list_multipart_uploads(Bucket=drv.bucket).get("Uploads", []) == []
    assert drain(stores.get(str(location))).data == a.data


@pytest.fixture
def cutting(details: dict[str, Any]) -> Iterator[Any]:
    """``cutting(cuts, after) -> CuttingProxy`` in front of the server's S3 endpoint;
    closed after ``make``'s cleanup (ask for this fixture first)."""
    proxies: list[CuttingProxy] = []
    port = int(details["endpoint"].rsplit(":", 1)[1].split("/", 1)[0])

    def make_proxy(cuts: int, after: int = 2 * MiB) -> CuttingProxy:
        proxies.append(CuttingProxy(port, after=after, cuts=cuts))
        return proxies[-1]

    yield make_proxy
    for proxy in proxies:
        proxy.close()


@pytest.mark.parametrize(("resumes", "cuts"), [(3, 2), (1, 2)])
def test_a_download_cut_off_is_resumed_up_to_s3_store_read_resumes(
    cutting: Any, make: Any, resumes: int, cuts: int
) -> None:
    """The connection of a GET breaks off twice (a relay cuts it, as a dying network
    does): with 3 resumes the image arrives whole, the rest asked for by ranged GETs of
    the same ETag; with 1, the read fails as the temporary failure it is."""
    proxy = cutting(cuts=0)
    stores = make(
        s3_store_host=f"http://127.0.0.1:{proxy.port}", s3_store_read_resumes=resumes,
        s3_store_large_object_size=100,
    )  # fmt: skip
    data = Payload(12 * MiB, seed=31).data
    assert data is not None
    result = stores.add(str(uuid.uuid4()), data, len(data))
    proxy.cuts_left = cuts  # from now on: uploads are done, only downloads are long
    if resumes >= cuts:
        with stores.get(result.location, expected_checksum=result.checksum) as reader:
            assert reader.read_all() == data
    else:
        with pytest.raises(BackendUnavailable, match="broke off"):
            drain(stores.get(result.location))
    assert proxy.cut == cuts


def test_writer_copies_the_chunk(make: Any) -> None:
    """The core reuses the buffer it passed to write(): the driver must have copied it."""
    stores = make(s3_store_large_object_size=0, s3_store_large_object_chunk_size=5)
    drv = driver_of(stores)
    writer = drv.begin_write(str(uuid.uuid4()), None)
    buf = bytearray(b"a" * (3 * MiB))
    writer.write(memoryview(buf))
    buf[:] = b"b" * len(buf)
    writer.write(memoryview(buf))
    buf[:] = b"c" * len(buf)
    location = writer.commit(6 * MiB).location
    assert drain(stores.get(str(location))).data == b"a" * (3 * MiB) + b"b" * (3 * MiB)


# -- buckets, credentials, reachability ---------------------------------------------


def test_missing_bucket_without_create_is_a_configuration_error(make: Any) -> None:
    bucket = new_bucket()
    stores = make(bucket=bucket, s3_store_create_bucket_on_put=False)
    with pytest.raises(BadConfiguration, match="s3_store_create_bucket_on_put"):
        stores.add(str(uuid.uuid4()), b"data", size=4)
    # the server says the bucket does not exist (not: any error, such as a refused login)
    with pytest.raises(ClientError) as raised:
        driver_of(stores).client.head_bucket(Bucket=bucket)
    response = raised.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 404, response
    assert response["Error"]["Code"] == "404", response  # a HEAD answer has no body


def test_bucket_created_on_put(make: Any) -> None:
    bucket = new_bucket()
    stores = make(bucket=bucket)
    result = stores.add(str(uuid.uuid4()), b"data", size=4)
    assert result.location.endswith(f"/{bucket}/{result.image_id}")
    assert drain(stores.get(result.location)).data == b"data"


def test_wrong_secret_is_authentication_failed(make: Any, details: dict[str, Any]) -> None:
    good = make()
    result = good.add(str(uuid.uuid4()), b"data", size=4)
    wrong = "wrong-" + uuid.uuid4().hex
    bad = make(s3_store_secret_key=wrong)
    calls = [
        lambda: bad.add(str(uuid.uuid4()), b"data", size=4),
        lambda: drain(bad.get(result.location)),
        lambda: bad.size(result.location),
        lambda: bad.delete(result.location),
    ]
    for call in calls:
        with pytest.raises(AuthenticationFailed) as raised:
            call()
        for secret in (wrong, details["s3_secret_key"]):
            assert secret not in str(raised.value)
            assert secret not in repr(raised.value)
    assert good.size(result.location) == 4


def test_closed_port_is_backend_unavailable_quickly(make: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stores = make(s3_store_host=f"http://127.0.0.1:{port}", s3_store_max_retries=1)
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match="cannot reach"):
        stores.add(str(uuid.uuid4()), b"data", size=4)
    with pytest.raises(BackendUnavailable):
        stores.size(f"s3://127.0.0.1:{port}/{driver_of(stores).bucket}/x")
    assert time.monotonic() - start < 10


def test_old_location_with_credentials_is_read(make: Any, details: dict[str, Any]) -> None:
    stores = make()
    payload = Payload(3 * MiB, seed=27)
    result = stores.add(str(uuid.uuid4()), payload.pieces(), size=payload.size)
    scheme, rest = result.location.split("://", 1)
    secret = details["s3_secret_key"]
    old = f"{scheme}://{details['s3_access_key']}:{secret}@{rest}"
    assert drain(stores.get(old)).data == payload.data
    assert stores.size(old) == payload.size
    assert secret not in stores.backend_for(old)
    stores.delete(old)
