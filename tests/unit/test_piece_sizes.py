"""Piece sizes within a server's limits, and the Swift driver's reading of its limits
(``GET /info``), without a server.

The pure logic: :func:`imgstore.parallel.piece_size` and ``capacity`` (shared
by S3 parts and Swift segments), the S3 driver's ``s3_store_max_parts`` and its reading
of a server's refusal of a part number, the Swift driver's :class:`SwiftLimits` from an
``/info`` document, its cache and its fallback when ``/info`` is disabled. The crossings
on a real server are in ``tests/functional/test_server_limits.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgstore import BackendUnavailable, BadConfiguration, InvalidArgument, Stores
from imgstore.drivers.s3 import MAX_PART_SIZE, MAX_PARTS, S3Driver, S3Location, S3Writer
from imgstore.drivers.swift import (
    MAX_FILE_SIZE,
    MAX_SEGMENTS,
    Account,
    SwiftDriver,
    SwiftLimits,
)
from imgstore.parallel import capacity, growth_every, piece_size

MiB = 1 << 20
GiB = 1 << 30
SWIFT = (MAX_SEGMENTS, MAX_FILE_SIZE)  # Swift's default max_manifest_segments, max_file_size

limits = st.integers(min_value=1, max_value=12_000)
largests = st.integers(min_value=1, max_value=64).map(lambda n: n * MiB) | st.integers(
    min_value=MiB, max_value=6 * GiB
)
bases = st.integers(min_value=1, max_value=300).map(lambda n: n * MiB)


# -- piece_size and capacity -----------------------------------------------------------


@settings(max_examples=300)
@given(base=bases, limit=limits, largest=largests, data=st.data())
def test_a_known_size_fits_whenever_it_can(base: int, limit: int, largest: int, data: Any) -> None:
    held = capacity(base, limit, largest, largest * limit)
    total = data.draw(st.integers(min_value=0, max_value=held), label="total")
    size = piece_size(1, base, total, limit, largest)
    assert all(piece_size(n, base, total, limit, largest) == size for n in (2, limit))
    assert min(base, largest) <= size <= largest
    assert size % MiB == 0 or size == largest
    assert math.ceil(total / size) <= limit
    assert capacity(base, limit, largest, total) >= total
    if min(base, largest) < size < largest:  # grown, and only as much as needed
        assert math.ceil(total / (size - MiB)) > limit


@settings(max_examples=300)
@given(base=bases, limit=limits, largest=largests)
def test_a_known_size_beyond_limit_x_largest_cannot_fit(
    base: int, limit: int, largest: int
) -> None:
    total = limit * largest + 1
    assert capacity(base, limit, largest, total) < total


@settings(max_examples=100, deadline=None)
@given(
    base=bases,
    limit=st.integers(min_value=1, max_value=3000),
    largest=largests,
    every=st.none() | st.integers(min_value=1, max_value=200),
)
def test_unknown_size_pieces_grow_within_the_largest(
    base: int, limit: int, largest: int, every: int | None
) -> None:
    sizes = [piece_size(n, base, None, limit, largest, every) for n in range(1, limit + 1)]
    assert sizes == sorted(sizes)
    assert sizes[0] == min(base, largest)
    assert all(s <= largest for s in sizes)
    step = every or growth_every(limit)
    for n in range(step, limit, step):  # doubles at each step until the largest
        assert sizes[n] in (min(largest, 2 * sizes[n - 1]), sizes[n - 1])
        if sizes[n - 1] < largest:
            assert sizes[n] == min(largest, 2 * sizes[n - 1])
    assert capacity(base, limit, largest, None, every) == sum(sizes)


def test_growth_every_is_a_tenth_of_the_limit() -> None:
    assert [growth_every(n) for n in (1, 4, 9, 10, 1000, 10_000, 99_999)] == [
        1, 1, 1, 1, 100, 1000, 9999,
    ]  # fmt: skip


def test_piece_numbers_and_limits_are_positive() -> None:
    for bad in ((0, MiB, None, 4, MiB), (1, MiB, None, 0, MiB), (1, MiB, None, 4, 0)):
        with pytest.raises(ValueError):
            piece_size(*bad)


def test_huge_doublings_stop_at_the_largest() -> None:
    assert piece_size(10**6, MiB, None, 10, 16 * MiB) == 16 * MiB


# -- Swift segments ---------------------------------------------------------------------


def test_swift_segments_at_the_lowered_limits_of_the_test_proxy() -> None:
    # max_file_size 16 MiB, max_manifest_segments 4 (tests/functional/test_server_limits.py)
    small, largest = 16 * MiB, 16 * MiB
    assert piece_size(1, 200 * MiB, 17 * MiB, 4, largest) == largest  # never above it
    assert piece_size(1, MiB, 6 * MiB + 5, 4, largest) == 2 * MiB
    assert [piece_size(n, MiB, None, 4, largest) for n in range(1, 6)] == [
        MiB, 2 * MiB, 4 * MiB, 8 * MiB, small,
    ]  # fmt: skip
    assert capacity(MiB, 4, largest) == 15 * MiB
    # a DLO grows every 100 segments whatever its limit
    assert piece_size(100, MiB, None, 99_999, largest, every=100) == MiB
    assert piece_size(101, MiB, None, 99_999, largest, every=100) == 2 * MiB


def test_swift_defaults_are_unchanged_below_the_5_gib_object() -> None:
    base = 200 * MiB
    assert piece_size(101, base, None, *SWIFT) == 2 * base
    assert piece_size(1000, base, None, *SWIFT) == MAX_FILE_SIZE  # 200 MiB x 2**9 is capped
    assert piece_size(1, base, 1000 * GiB, *SWIFT) == 1024 * MiB
    assert piece_size(1, base, 6 * 1024 * GiB, *SWIFT) == MAX_FILE_SIZE  # too big: capped


def test_limits_from_info() -> None:
    info = {
        "swift": {"max_file_size": 16 * MiB, "container_listing_limit": 10000},
        "slo": {"max_manifest_segments": 4, "max_manifest_size": 8 * MiB},
    }
    assert SwiftLimits.from_info(info) == SwiftLimits(16 * MiB, 4, "the cluster's GET /info")
    zero = {"swift": {"max_file_size": 0}, "slo": {"max_manifest_segments": -1}}
    for partial in ({}, {"swift": {}}, {"slo": {"max_manifest_segments": "x"}}, [], None, zero):
        limits = SwiftLimits.from_info(partial)
        assert (limits.max_file_size, limits.max_manifest_segments) == (
            MAX_FILE_SIZE,
            MAX_SEGMENTS,
        )
    assert SwiftLimits().segment_limit(slo=True) == MAX_SEGMENTS
    assert SwiftLimits(max_manifest_segments=4).segment_limit(slo=False) == 99_999


# -- the Swift driver's GET /info ---------------------------------------------------------


class _HttpError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"Capabilities GET failed {status}")
        self.http_status = status


class _Conn:
    """A swiftclient Connection that only answers get_capabilities."""

    url = "http://swift.example:8080/v1/AUTH_test"
    token = "AUTH_tk0123"

    def __init__(self, answers: list[Any], asked: list[int]) -> None:
        self._answers = answers
        self._asked = asked

    def get_capabilities(self) -> Any:
        self._asked.append(1)
        answer = self._answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def close(self) -> None:
        pass


def _swift(tmp_path: Path) -> SwiftDriver:
    driver = _swift_stores(tmp_path).driver("swift")
    assert isinstance(driver, SwiftDriver)
    return driver


def _swift_stores(tmp_path: Path) -> Stores:
    conf = tmp_path / "glance.conf"
    conf.write_text(
        "[glance_store]\nstores = swift\ndefault_store = swift\n"
        "swift_store_auth_address = http://swift.example:8080/auth/v1.0\n"
        "swift_store_user = test:tester\nswift_store_key = testing-key\n"
        "swift_store_auth_version = 1\nswift_store_large_object_chunk_size = 1\n"
    )
    return Stores.from_config_files(conf)


def _answering(driver: SwiftDriver, monkeypatch: Any, *answers: Any) -> list[int]:
    asked: list[int] = []
    queue = list(answers)
    monkeypatch.setattr(driver, "connection", lambda account, retries=None: _Conn(queue, asked))
    return asked


def test_the_limits_are_asked_once(tmp_path: Path, monkeypatch: Any) -> None:
    driver = _swift(tmp_path)
    info = {"swift": {"max_file_size": 16 * MiB}, "slo": {"max_manifest_segments": 4}}
    asked = _answering(driver, monkeypatch, info)
    assert driver.account is not None
    assert driver.limits(driver.account).max_manifest_segments == 4
    assert driver.limits(driver.account).max_file_size == 16 * MiB
    assert len(asked) == 1


def test_multi_tenant_accounts_of_one_cluster_share_the_limits(
    tmp_path: Path, monkeypatch: Any
) -> None:
    driver = _swift(tmp_path)
    asked = _answering(driver, monkeypatch, {"slo": {"max_manifest_segments": 7}})
    for project in ("AUTH_a", "AUTH_b"):
        account = Account(storage_url=f"http://SWIFT.example:8080/v1/{project}", token="t")
        assert driver.limits(account).max_manifest_segments == 7
    assert len(asked) == 1


@pytest.mark.parametrize(
    ("answer", "kept"),
    [
        (_HttpError(403), True),
        (_HttpError(404), True),
        (_HttpError(501), True),
        (ValueError("not JSON"), True),
        (_HttpError(503), False),
    ],
    ids=["disabled-403", "absent-404", "not-implemented", "not-json", "unavailable-503"],
)
def test_info_disabled_or_unreadable_means_swifts_defaults(
    tmp_path: Path, monkeypatch: Any, answer: BaseException, kept: bool
) -> None:
    driver = _swift(tmp_path)
    info = {"slo": {"max_manifest_segments": 4}}
    asked = _answering(driver, monkeypatch, answer, info)
    assert driver.account is not None
    first = driver.limits(driver.account)
    assert (first.max_file_size, first.max_manifest_segments) == (MAX_FILE_SIZE, MAX_SEGMENTS)
    assert "Swift's defaults" in first.source
    second = driver.limits(driver.account)
    assert (second is first) == kept  # a 503 is asked again next time
    assert len(asked) == (1 if kept else 2)


@pytest.mark.parametrize("answer", [ConnectionRefusedError(111, "refused"), _HttpError(401)])
def test_an_unreachable_server_or_refused_login_is_not_taken_for_defaults(
    tmp_path: Path, monkeypatch: Any, answer: BaseException
) -> None:
    driver = _swift(tmp_path)
    _answering(driver, monkeypatch, answer)
    assert driver.account is not None
    with pytest.raises(Exception) as failure:
        driver.limits(driver.account)
    assert "GET /info" in str(failure.value)
    if isinstance(answer, OSError):
        assert failure.type is BackendUnavailable
    assert driver._limits == {}


@pytest.mark.parametrize("slo", [True, False])
def test_an_image_that_cannot_fit_is_refused_before_any_request(
    tmp_path: Path, monkeypatch: Any, slo: bool
) -> None:
    stores = _swift_stores(tmp_path)
    driver = stores.driver("swift")
    assert isinstance(driver, SwiftDriver)
    driver.slo = slo
    small = SwiftLimits(16 * MiB, 4, "the cluster's GET /info")
    monkeypatch.setattr(driver, "limits", lambda account: small)

    def no_request(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a request was made before the refusal")

    monkeypatch.setattr(driver, "call", no_request)
    monkeypatch.setattr(driver, "begin_write", no_request)
    most = 4 if slo else 99_999
    size = most * 16 * MiB + 1
    with pytest.raises(InvalidArgument, match=f"at most {most} segments") as refused:
        stores.add("image-1", b"", size)
    for word in (str(size), "max_file_size", "GET /info"):
        assert word in str(refused.value)


# -- S3 parts -----------------------------------------------------------------------------


def test_s3_part_sizes_follow_the_part_limit() -> None:
    five = 5 * MiB
    assert piece_size(1, five, 18 * MiB + 7, 3, MAX_PART_SIZE) == 7 * MiB
    sizes = [piece_size(n, five, None, 3, MAX_PART_SIZE) for n in (1, 2, 3)]
    assert sizes == [five, 2 * five, 4 * five]
    aws = (MAX_PARTS, MAX_PART_SIZE)
    assert piece_size(1, five, 18 * MiB + 7, *aws) == five  # AWS's 10,000 by default
    assert capacity(five, 3, MAX_PART_SIZE) == 35 * MiB
    assert capacity(five, 1, MAX_PART_SIZE) == five
    assert piece_size(1, five, 3 * MAX_PART_SIZE + 1, 3, MAX_PART_SIZE) == MAX_PART_SIZE


def _s3_stores(tmp_path: Path, **options: Any) -> Stores:
    base = {
        "s3_store_host": "http://127.0.0.1:9",
        "s3_store_access_key": "AKID",
        "s3_store_secret_key": "topsecret-value",
        "s3_store_bucket": "images",
        **options,
    }
    conf = tmp_path / "s3.conf"
    conf.write_text(
        "[glance_store]\nstores = s3\ndefault_store = s3\n"
        + "".join(f"{k} = {v}\n" for k, v in base.items())
    )
    return Stores.from_config_files(conf)


def test_s3_max_parts_option(tmp_path: Path) -> None:
    with _s3_stores(tmp_path) as stores:
        driver = stores.driver("s3")
        assert isinstance(driver, S3Driver)
        assert driver.max_parts == 10_000
    with _s3_stores(tmp_path, s3_store_max_parts=3) as stores:
        driver = stores.driver("s3")
        assert isinstance(driver, S3Driver)
        assert driver.max_parts == 3
        # refused before any request (the endpoint is a closed port)
        with pytest.raises(InvalidArgument, match=r"at most 3 parts .*\(s3_store_max_parts"):
            stores.add("image-1", b"", 3 * MAX_PART_SIZE + 1)
    with pytest.raises(BadConfiguration):
        _s3_stores(tmp_path, s3_store_max_parts=0)


def _client_error(code: str, message: str, status: int, argument: str | None) -> Exception:
    from botocore.exceptions import ClientError

    error = {"Code": code, "Message": message}
    if argument:
        error["ArgumentName"] = argument
    return ClientError(
        {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "UploadPart"
    )


def test_a_refused_part_number_is_a_configuration_error(tmp_path: Path) -> None:
    with _s3_stores(tmp_path) as stores:
        driver = stores.driver("s3")
        assert isinstance(driver, S3Driver)
        writer = S3Writer(driver, S3Location("s3", "127.0.0.1:9", "images", "image-1"), None)
        refusal = _client_error(
            "InvalidArgument",
            "Part number must be an integer between 1 and 3, inclusive",
            400,
            "partNumber",
        )
        error = writer._part_refused(refusal, 4)
        assert isinstance(error, BadConfiguration)
        for words in ("part 4", "at most 3 parts", "s3_store_max_parts is 10000"):
            assert words in str(error), str(error)
        other = _client_error("InvalidArgument", "Invalid canned ACL", 400, "x-amz-acl")
        assert writer._part_refused(other, 4) is None
        assert writer._part_refused(_client_error("SlowDown", "", 503, None), 4) is None
