"""Server limits crossed on a real Swift proxy whose limits are lowered (``swift-limits``).

``python -m tests.functional.services up swift swift-limits``: a third proxy on the
``swift`` server's storage servers with Swift's own settings lowered (see
``services/swift_limits.py``): ``max_file_size`` 16 MiB (``[swift-constraints]``),
``max_manifest_segments`` 4 (the ``slo`` filter) and s3api's ``max_upload_part_num`` 3.
Every crossing takes seconds; the ``swift`` proxy the other tests share keeps the usual
limits.

Swift (the driver reads the limits in ``GET /info``):

* an image of known or unknown size above ``max_file_size`` is segmented (an SLO and a
  DLO) although ``swift_store_large_object_size`` is 5 GiB, every segment within the
  limit (before: one PUT, and 413);
* an SLO whose 1 MiB segments would be more than ``max_manifest_segments`` gets larger
  segments (known size: equal ones; unknown: doubling), counted in the manifest on the
  server; a DLO is not bound by that limit and keeps its 1 MiB segments;
* an SLO that cannot fit even in segments of ``max_file_size`` fails with
  InvalidArgument before anything is written (the source is not read, not even the
  container is made); one of unknown size that outgrows the growing segments fails with
  InvalidArgument and leaves nothing.

S3 (s3api; S3 cannot tell its limit, ``s3_store_max_parts`` says it):

* with ``s3_store_max_parts = 3``, more than 3 x the 5 MiB part size goes up in 3
  grown parts (counted and measured in s3api's segments container on the server, and
  in the ETag's part count);
* with the default 10,000 the server refuses part 4: BadConfiguration naming the option
  and the server's limit, the multipart upload aborted, nothing left;
* an image that would need more than 3 parts of 5 GiB is InvalidArgument before
  anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from imgstore import BadConfiguration, ImgstoreError, InvalidArgument, Stores
from imgstore.drivers.s3 import S3Driver
from imgstore.drivers.swift import SwiftDriver, SwiftLimits
from tests.functional.conftest import require_service
from tests.functional.swift_helpers import (
    container_listing,
    new_container,
    raw_connection,
    swift_options,
)
from tests.functional.swift_helpers import write_config as swift_config
from tests.functional.test_s3_conformance import new_bucket, purge_bucket, s3_options
from tests.functional.test_s3_conformance import server as s3_server
from tests.functional.test_s3_conformance import write_config as s3_config

pytestmark = pytest.mark.functional

MiB = 1 << 20
SERVICE = "swift-limits"
MAX_FILE_SIZE = 16 * MiB
MAX_MANIFEST_SEGMENTS = 4
MAX_UPLOAD_PART_NUM = 3


@pytest.fixture
def limits_server() -> dict[str, Any]:
    details = require_service(SERVICE)
    assert details["limits"] == {
        "max_file_size": MAX_FILE_SIZE,
        "max_manifest_segments": MAX_MANIFEST_SEGMENTS,
        "max_upload_part_num": MAX_UPLOAD_PART_NUM,
    }
    return details


def _chunks(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class NeverRead:
    """A source that fails the test if anything reads it."""

    def __iter__(self) -> Iterator[bytes]:
        pytest.fail("the source was read: something was written before the refusal")
        yield b""  # pragma: no cover


# -- Swift -----------------------------------------------------------------------------


@pytest.fixture
def srv(limits_server: dict[str, Any]) -> dict[str, Any]:
    return {
        "auth_url": limits_server["auth_url"],
        "user": limits_server["user"],
        "key": limits_server["key"],
        "auth_version": "1",
    }


@pytest.fixture
def container(srv: dict[str, Any]) -> Iterator[str]:
    name = new_container()
    yield name
    conn = raw_connection(srv)
    try:  # whatever a failed test left
        with contextlib.suppress(Exception):
            _, objects = conn.get_container(name, full_listing=True)
            for obj in objects:
                with contextlib.suppress(Exception):
                    conn.delete_object(name, obj["name"])
        with contextlib.suppress(Exception):
            conn.delete_container(name)
    finally:
        conn.close()


@pytest.fixture
def make_swift(tmp_path: Path, srv: dict[str, Any], container: str) -> Iterator[Any]:
    """``make_swift(**options) -> Stores`` on the test's container (closed afterwards)."""
    made: list[Stores] = []

    def make(**extra: Any) -> Stores:
        path = tmp_path / f"swift-{uuid.uuid4().hex[:8]}.conf"
        stores = Stores.from_config_files(
            swift_config(path, swift_options(srv, container, **extra))
        )
        made.append(stores)
        return stores

    yield make
    for stores in made:
        stores.close()


def _segments(srv: dict[str, Any], container: str, image_id: str) -> list[int]:
    """The sizes of the image's segments on the server, in order (SLO: its manifest;
    DLO: the listing under its prefix)."""
    conn = raw_connection(srv)
    try:
        headers = conn.head_object(container, image_id)
        if headers.get("x-static-large-object", "").lower() == "true":
            _, body = conn.get_object(container, image_id, query_string="multipart-manifest=get")
            return [int(entry["bytes"]) for entry in json.loads(body)]
        seg_container, _, prefix = headers["x-object-manifest"].partition("/")
        _, listing = conn.get_container(seg_container, prefix=prefix, full_listing=True)
        return [int(o["bytes"]) for o in sorted(listing, key=lambda o: o["name"])]
    finally:
        conn.close()


def _round_trip(stores: Stores, data: bytes, known: bool, prefix: str) -> Any:
    image_id = f"{prefix}-{uuid.uuid4().hex}"
    if known:
        result = stores.add(image_id, io.BytesIO(data), size=len(data))
    else:
        result = stores.add(image_id, _chunks(data))
    assert result.size == len(data)
    with stores.get(result.location) as reader:
        read = reader.read_all()
    assert hashlib.sha256(read).digest() == hashlib.sha256(data).digest()
    return result


def test_the_driver_reads_the_lowered_limits_once(make_swift: Any, monkeypatch: Any) -> None:
    from swiftclient import client as sc  # type: ignore[import-untyped]

    asked: list[int] = []
    original = sc.Connection.get_capabilities

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sc.Connection, "get_capabilities", counting)
    stores = make_swift()
    driver = stores.driver("swift")
    assert isinstance(driver, SwiftDriver)
    assert driver.account is not None
    for n in range(2):
        result = stores.add(f"small-{n}-{uuid.uuid4().hex}", io.BytesIO(b"abc"), size=3)
        stores.delete(result.location)
    assert driver.limits(driver.account) == SwiftLimits(
        max_file_size=MAX_FILE_SIZE,
        max_manifest_segments=MAX_MANIFEST_SEGMENTS,
        source="the cluster's GET /info",
    )
    assert len(asked) == 1


@pytest.mark.parametrize("kind", ["slo", "dlo"])
@pytest.mark.parametrize("known", [True, False], ids=["known-size", "unknown-size"])
def test_an_image_above_max_file_size_is_segmented(
    make_swift: Any, srv: dict[str, Any], container: str, kind: str, known: bool
) -> None:
    # the defaults: one PUT below 5 GiB, 200 MiB segments; the server takes 16 MiB objects
    stores = make_swift(swift_store_large_object_type=kind)
    data = os.urandom(MAX_FILE_SIZE + MiB + 3)
    result = _round_trip(stores, data, known, "big")
    assert _segments(srv, container, result.image_id) == [MAX_FILE_SIZE, MiB + 3]
    stores.delete(result.location)
    assert container_listing(srv, container)() == set()


@pytest.mark.parametrize(
    ("known", "sizes"),
    [(True, [2 * MiB, 2 * MiB, 2 * MiB, 5]), (False, [MiB, 2 * MiB, 3 * MiB + 5])],
    ids=["known-size", "unknown-size"],
)
def test_slo_segments_grow_to_stay_within_max_manifest_segments(
    make_swift: Any, srv: dict[str, Any], container: str, known: bool, sizes: list[int]
) -> None:
    # 1 MiB segments would be 7, and the server takes manifests of at most 4
    stores = make_swift(
        swift_store_large_object_size=0,
        swift_store_large_object_chunk_size=1,
        swift_store_thread_pools=2,
    )
    data = os.urandom(6 * MiB + 5)
    result = _round_trip(stores, data, known, "grow")
    assert _segments(srv, container, result.image_id) == sizes
    assert len(sizes) <= MAX_MANIFEST_SEGMENTS
    stores.delete(result.location)
    assert container_listing(srv, container)() == set()


@pytest.mark.parametrize("known", [True, False], ids=["known-size", "unknown-size"])
def test_a_dlo_is_not_bound_by_max_manifest_segments(
    make_swift: Any, srv: dict[str, Any], container: str, known: bool
) -> None:
    stores = make_swift(
        swift_store_large_object_type="dlo",
        swift_store_large_object_size=0,
        swift_store_large_object_chunk_size=1,
        swift_store_thread_pools=2,
    )
    data = os.urandom(6 * MiB + 5)
    result = _round_trip(stores, data, known, "dlo")
    sizes = _segments(srv, container, result.image_id)
    assert sizes == [MiB] * 6 + [5]
    assert len(sizes) > MAX_MANIFEST_SEGMENTS
    stores.delete(result.location)
    assert container_listing(srv, container)() == set()


@pytest.mark.parametrize(
    ("kind", "size", "words"),
    [
        ("slo", MAX_MANIFEST_SEGMENTS * MAX_FILE_SIZE + 1, ["max_manifest_segments"]),
        ("dlo", 99_999 * MAX_FILE_SIZE + 1, ["99999 segments"]),
    ],
)
def test_an_image_that_cannot_fit_fails_before_anything_is_written(
    make_swift: Any, srv: dict[str, Any], container: str, kind: str, size: int, words: list[str]
) -> None:
    stores = make_swift(swift_store_large_object_type=kind)
    with pytest.raises(InvalidArgument) as failure:
        stores.add(f"huge-{uuid.uuid4().hex}", NeverRead(), size=size)
    message = str(failure.value)
    for word in [*words, str(size), str(MAX_FILE_SIZE), "max_file_size", "GET /info"]:
        assert word in message, message
    conn = raw_connection(srv)
    try:  # not even the container was made
        with pytest.raises(Exception) as missing:
            conn.head_container(container)
        assert getattr(missing.value, "http_status", None) == 404, repr(missing.value)
    finally:
        conn.close()


def test_an_unknown_size_slo_that_outgrows_the_limit_fails_and_leaves_nothing(
    make_swift: Any, srv: dict[str, Any], container: str
) -> None:
    # 4 segments growing from 1 MiB: 1 + 2 + 4 + 8 = 15 MiB at most
    stores = make_swift(
        swift_store_large_object_size=0,
        swift_store_large_object_chunk_size=1,
        swift_store_thread_pools=2,
    )
    with pytest.raises(InvalidArgument) as failure:
        stores.add(f"outgrow-{uuid.uuid4().hex}", _chunks(os.urandom(16 * MiB)))
    message = str(failure.value)
    assert "more than 4 segments" in message and "max_manifest_segments" in message, message
    assert str(15 * MiB) in message, message
    assert container_listing(srv, container)() == set()


# -- S3 (s3api) -------------------------------------------------------------------------


@pytest.fixture
def s3_details(limits_server: dict[str, Any]) -> dict[str, Any]:
    return s3_server(SERVICE)


@pytest.fixture
def make_s3(tmp_path: Path, s3_details: dict[str, Any]) -> Iterator[Any]:
    """``make_s3(**options) -> Stores`` on a fresh bucket; purged and closed afterwards."""
    opened: list[Stores] = []
    bucket = new_bucket()

    def make(**options: Any) -> Stores:
        conf = tmp_path / f"s3-{uuid.uuid4().hex[:8]}.conf"
        stores = Stores.from_config_files(
            s3_config(conf, s3_options(s3_details, bucket, **options))
        )
        opened.append(stores)
        return stores

    yield make
    for stores in opened:
        with contextlib.suppress(ImgstoreError, BotoCoreError, ClientError):
            purge_bucket(stores.driver("s3"))
        stores.close()


def _s3(stores: Stores) -> S3Driver:
    drv = stores.driver("s3")
    assert isinstance(drv, S3Driver)
    return drv


def _parts_on_server(srv: dict[str, Any], bucket: str) -> list[int]:
    """The sizes of the parts in s3api's ``<bucket>+segments`` container, in part order."""
    conn = raw_connection(srv)
    try:
        _, listing = conn.get_container(f"{bucket}+segments", full_listing=True)
    except Exception as exc:
        if getattr(exc, "http_status", None) == 404:
            return []
        raise
    finally:
        conn.close()
    parts = {}  # <key>/<upload id>/<part number>; <key>/<upload id> marks an upload
    for entry in listing:
        name = str(entry["name"]).split("/")
        parts[int(name[-1]) if len(name) == 3 else 0] = int(entry["bytes"])
    return [parts[n] for n in sorted(parts)]


PARTS = 3 * 5 * MiB + 3 * MiB + 7
"""More than the server's 3 parts x the 5 MiB part size."""


@pytest.mark.parametrize(
    ("known", "sizes"),
    [(True, [7 * MiB, 7 * MiB, 4 * MiB + 7]), (False, [5 * MiB, 10 * MiB, 3 * MiB + 7])],
    ids=["known-size", "unknown-size"],
)
def test_parts_grow_to_stay_within_the_servers_part_limit(
    make_s3: Any, srv: dict[str, Any], known: bool, sizes: list[int]
) -> None:
    stores = make_s3(
        s3_store_max_parts=MAX_UPLOAD_PART_NUM,
        s3_store_large_object_size=0,
        s3_store_large_object_chunk_size=5,
        s3_store_thread_pools=2,
    )
    drv = _s3(stores)
    data = os.urandom(PARTS)
    result = _round_trip(stores, data, known, "parts")
    assert _parts_on_server(srv, drv.bucket) == sizes
    head = drv.client.head_object(Bucket=drv.bucket, Key=result.image_id)
    assert head["ETag"].strip('"').endswith(f"-{len(sizes)}")
    stores.delete(result.location)
    assert _parts_on_server(srv, drv.bucket) == []


def test_more_parts_than_the_server_takes_fail_clearly_and_abort(
    make_s3: Any, srv: dict[str, Any]
) -> None:
    # s3_store_max_parts left at 10,000: 5 MiB parts, and the server refuses part 4
    stores = make_s3(
        s3_store_large_object_size=0,
        s3_store_large_object_chunk_size=5,
        s3_store_thread_pools=2,
    )
    drv = _s3(stores)
    data = os.urandom(PARTS)
    with pytest.raises(BadConfiguration) as failure:
        stores.add(f"refused-{uuid.uuid4().hex}", io.BytesIO(data), size=len(data))
    message = str(failure.value)
    for word in ["part 4", "at most 3 parts", "s3_store_max_parts is 10000", "set it"]:
        assert word in message, message
    assert drv.client.list_multipart_uploads(Bucket=drv.bucket).get("Uploads", []) == []
    assert drv.client.list_objects_v2(Bucket=drv.bucket).get("Contents", []) == []
    assert _parts_on_server(srv, drv.bucket) == []


def test_an_image_beyond_the_part_limit_of_5_gib_parts_is_refused_before_writing(
    make_s3: Any,
) -> None:
    stores = make_s3(s3_store_max_parts=MAX_UPLOAD_PART_NUM)  # creates its bucket on put
    drv = _s3(stores)
    size = MAX_UPLOAD_PART_NUM * 5 * 1024 * MiB + 1
    with pytest.raises(InvalidArgument) as failure:
        stores.add(f"huge-{uuid.uuid4().hex}", NeverRead(), size=size)
    message = str(failure.value)
    assert "at most 3 parts" in message and "(s3_store_max_parts" in message, message
    with pytest.raises(ClientError) as missing:  # not even the bucket was made
        drv.client.head_bucket(Bucket=drv.bucket)
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
