"""S3 driver units without a server: part-size math, locations, configuration."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgstore import BadConfiguration, BadLocation, Stores
from imgstore.drivers.s3 import MAX_PART_SIZE, MAX_PARTS, S3Location
from imgstore.location import parse
from imgstore.parallel import MiB, capacity, piece_size

TiB = 1 << 40
MIN_PART_SIZE = 5 * MiB  # S3's smallest part (all but the last)
AWS = (MAX_PARTS, MAX_PART_SIZE)  # piece_size's and capacity's limit and largest for S3
bases = st.integers(min_value=5, max_value=5120).map(lambda n: n * MiB)


@given(base=bases, total=st.integers(min_value=0, max_value=MAX_PARTS * MAX_PART_SIZE))
def test_known_size_fits_in_10000_parts(base: int, total: int) -> None:
    size = piece_size(1, base, total, *AWS)
    assert all(piece_size(n, base, total, *AWS) == size for n in (2, 999, 10_000))
    assert MIN_PART_SIZE <= base <= size <= MAX_PART_SIZE
    assert size % MiB == 0
    assert math.ceil(total / size) <= MAX_PARTS
    if size > base:  # grown: one MiB less would need too many parts
        assert math.ceil(total / (size - MiB)) > MAX_PARTS


def test_known_size_examples() -> None:
    ten = 10 * MiB
    assert piece_size(1, ten, 1 << 30, *AWS) == ten  # 1 GiB: 103 parts of the base size
    assert piece_size(1, ten, 10_000 * ten, *AWS) == ten  # exactly 10,000 parts
    assert piece_size(1, ten, 10_000 * ten + 1, *AWS) == 11 * MiB
    assert piece_size(1, ten, TiB, *AWS) == 105 * MiB  # 1 TiB / 10,000 = 104.86 MiB
    assert piece_size(1, ten, 5 * TiB, *AWS) == 525 * MiB


def test_unknown_size_doubles_every_1000_parts() -> None:
    ten = 10 * MiB
    assert [piece_size(n, ten, None, *AWS) for n in (1, 1000, 1001, 2000, 2001, 3001)] == [
        ten, ten, 2 * ten, 2 * ten, 4 * ten, 8 * ten,
    ]  # fmt: skip
    assert piece_size(10_000, ten, None, *AWS) == MAX_PART_SIZE  # 10 MiB x 2**9 = 5 GiB, the cap
    assert piece_size(10_000, 100 * MiB, None, *AWS) == MAX_PART_SIZE


@settings(deadline=None, max_examples=30)
@given(base=bases)
def test_unknown_size_parts_stay_legal_and_hold_terabytes(base: int) -> None:
    sizes = [piece_size(n, base, None, *AWS) for n in range(1, MAX_PARTS + 1)]
    assert sizes == sorted(sizes)
    assert all(MIN_PART_SIZE <= s <= MAX_PART_SIZE for s in sizes)
    assert sum(sizes) == capacity(base, *AWS)
    assert capacity(base, *AWS) >= capacity(MIN_PART_SIZE, *AWS) >= 4.8 * TiB


def test_unknown_size_default_holds_s3s_largest_object() -> None:
    assert capacity(10 * MiB, *AWS) >= 5 * TiB
    assert capacity(5 * MiB, *AWS) >= 4.8 * TiB


def test_part_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        piece_size(0, 10 * MiB, None, *AWS)


# -- locations ------------------------------------------------------------------


def test_location_round_trip() -> None:
    for uri in (
        "s3://127.0.0.1:9000/bucket/image-1",
        "s3+https://s3.example.com/b/k",
        "s3+http://host/prefix/path/bucket/key",
    ):
        loc = parse(uri)
        assert isinstance(loc, S3Location)
        assert str(loc) == uri
        assert parse(str(loc)) == loc


def test_old_glance_store_location_with_credentials_is_read_and_dropped() -> None:
    uri = "s3://AKIDEXAMPLE:se/cr@et+key@s3.example.com:8080/images/1234"
    loc = parse(uri)
    assert isinstance(loc, S3Location)
    assert (loc.host, loc.bucket, loc.key) == ("s3.example.com:8080", "images", "1234")
    for text in (str(loc), loc.redacted(), repr(loc)):
        assert "se/cr" not in text and "AKIDEXAMPLE" not in text
    assert str(loc) == "s3://s3.example.com:8080/images/1234"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://host/bucket",
        "s3://host/bucket/",
        "s3://host//key",
        "s3://https://host/bucket/key",
        "s3://host/bucket/key?x=1",
        "s3://host/bucket/key#f",
        "s3://host/bucket/ke y",
        "s3:///bucket/key",
        "s3://user:sec@host/bucket",
    ],
)
def test_bad_locations(uri: str) -> None:
    with pytest.raises(BadLocation) as raised:
        parse(uri)
    assert "sec" not in str(raised.value).replace("secure", "")


# -- configuration ----------------------------------------------------------------


def _stores(tmp_path: Path, **options: Any) -> Stores:
    base = {
        "s3_store_host": "http://127.0.0.1:9",
        "s3_store_access_key": "AKID",
        "s3_store_secret_key": "topsecret-value",
        "s3_store_bucket": "images",
    }
    lines = ["[glance_store]", "stores = s3", "default_store = s3"]
    lines += [f"{k} = {v}" for k, v in {**base, **options}.items() if v is not None]
    conf = tmp_path / "s3.conf"
    conf.write_text("\n".join(lines) + "\n")
    return Stores.from_config_files(conf)


def test_missing_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(BadConfiguration, match="s3_store_bucket"):
        _stores(tmp_path, s3_store_bucket=None)


def test_part_size_below_5_mib_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadConfiguration):
        _stores(tmp_path, s3_store_large_object_chunk_size=4)


def test_virtual_addressing_needs_a_dns_bucket(tmp_path: Path) -> None:
    with pytest.raises(BadConfiguration, match="DNS"):
        _stores(tmp_path, s3_store_bucket="Not_DNS", s3_store_bucket_url_format="virtual")


@pytest.mark.parametrize(
    ("style", "url"),
    [
        ("path", "http://localhost:9/images/some-key"),
        ("virtual", "http://images.localhost:9/some-key"),
    ],
)
def test_addressing_style_shapes_the_url(tmp_path: Path, style: str, url: str) -> None:
    """The URL botocore would send to (captured before sending: no server needed)."""
    with _stores(
        tmp_path, s3_store_host="http://localhost:9", s3_store_bucket_url_format=style
    ) as stores:
        client: Any = stores.driver("s3").client  # type: ignore[attr-defined]
        seen: list[str] = []

        class Stop(Exception):
            pass

        def capture(request: Any, **_: Any) -> None:
            seen.append(request.url)
            raise Stop

        client.meta.events.register("before-send.s3.HeadObject", capture)
        with pytest.raises(Stop):
            client.head_object(Bucket="images", Key="some-key")
    assert seen == [url]


def test_owns_only_its_host_and_bucket(tmp_path: Path) -> None:
    with _stores(tmp_path) as stores:
        drv = stores.driver("s3")
        assert drv.owns(parse("s3://127.0.0.1:9/images/x"))
        assert drv.owns(parse("s3+http://127.0.0.1:9/images/x")) is True
        assert not drv.owns(parse("s3+https://127.0.0.1:9/images/x"))
        assert not drv.owns(parse("s3://127.0.0.1:9/other/x"))
        assert not drv.owns(parse("s3://127.0.0.2:9/images/x"))
        assert "topsecret-value" not in repr(drv)
        assert "topsecret-value" not in repr(stores.describe())
