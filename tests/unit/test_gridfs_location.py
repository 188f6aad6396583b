"""gridfs:// locations, configuration checks and secret redaction (no server needed:
pymongo connects lazily, so a Stores is built without any MongoDB running)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgstore import Stores
from imgstore.drivers.gridfs import GridFSDriver, GridFSLocation, uri_secrets
from imgstore.exceptions import BadConfiguration, BadLocation
from imgstore.location import parse

PASSWORD = "p@ss:w/rd%sec"
QUOTED = "p%40ss%3Aw%2Frd%25sec"
URI = f"mongodb://glance:{QUOTED}@db.example.invalid:27017/glance?authSource=admin"


@pytest.mark.parametrize(
    "uri",
    [
        "gridfs://6c6d93ff-8b2b-4c4d-9f4e-33c3a1c2e3f0",
        "gridfs://a",
        "gridfs://Image_1.2-x",
        "gridfs://" + "x" * 255,
    ],
)
def test_round_trip(uri: str) -> None:
    location = parse(uri)
    assert isinstance(location, GridFSLocation)
    assert str(location) == uri
    assert parse(str(location)) == location
    assert location.scheme == "gridfs"
    assert location.redacted() == uri


def test_scheme_is_case_insensitive() -> None:
    location = parse("GRIDFS://abc")
    assert isinstance(location, GridFSLocation)
    assert str(location) == "gridfs://abc"


@given(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,254}\Z"))
def test_every_valid_id_round_trips(file_id: str) -> None:
    location = GridFSLocation(file_id)
    assert GridFSLocation.from_uri(location.to_uri()) == location


@pytest.mark.parametrize(
    "uri",
    [
        "gridfs://",
        "gridfs:///abc",
        "gridfs://abc/def",
        "gridfs://abc/../x",
        "gridfs://abc?x=1",
        "gridfs://abc#frag",
        "gridfs://.hidden",
        "gridfs://-dash",
        "gridfs://a b",
        "gridfs://abc\n",
        "gridfs://" + "x" * 256,
        "gridfs://host:27017/abc",
        f"gridfs://user:{PASSWORD}@host/abc",
    ],
)
def test_bad_locations(uri: str) -> None:
    with pytest.raises(BadLocation) as raised:
        parse(uri)
    assert PASSWORD not in str(raised.value)
    assert "w/rd" not in str(raised.value)


def test_bad_id_in_constructor() -> None:
    with pytest.raises(BadLocation):
        GridFSLocation("../etc")


def test_uri_secrets_cover_every_spelling_of_the_password() -> None:
    found = uri_secrets(URI)
    assert URI in found
    assert QUOTED in found
    assert PASSWORD in found
    assert uri_secrets("mongodb://db.example.invalid/glance") == [
        "mongodb://db.example.invalid/glance"
    ]
    assert uri_secrets(None) == []


def _conf(tmp_path: Path, **options: object) -> Path:
    path = tmp_path / "glance-api.conf"
    lines = ["[glance_store]", "stores = gridfs", "default_store = gridfs"]
    lines += [f"{k} = {v}" for k, v in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_legacy_config_builds_without_a_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with Stores.from_config_files(
        _conf(tmp_path, mongodb_store_uri=URI, mongodb_store_chunk_size=65536)
    ) as stores:
        driver = stores.driver("gridfs")
        assert isinstance(driver, GridFSDriver)
        assert driver.db.name == "glance"  # from the URI
        assert driver.bucket_name == "fs"
        assert driver.gridfs_chunk == 65536
        assert stores.chunk_size("gridfs") == 16 * 65536
        assert stores.backend_for("gridfs://abc") == "gridfs"
        assert set(driver.secrets()) >= {URI, QUOTED, PASSWORD}
        shown = [repr(stores), repr(stores.describe()), repr(driver), repr(driver.conf)]
    shown.append(caplog.text)
    for text in shown:
        assert PASSWORD not in text
        assert QUOTED not in text


def test_core_chunk_is_a_whole_number_of_gridfs_chunks(tmp_path: Path) -> None:
    for gridfs_chunk, core in [(1024, 16 * 1024), (261120, 16 * 261120), (8 << 20, 8 << 20)]:
        conf = _conf(tmp_path, mongodb_store_uri=URI, mongodb_store_chunk_size=gridfs_chunk)
        with Stores.from_config_files(conf) as stores:
            assert stores.chunk_size("gridfs") == core


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "mongodb_store_uri"),
        ({"mongodb_store_uri": "mongodb://db.example.invalid"}, "mongodb_store_db"),
        ({"mongodb_store_uri": f"http://glance:{QUOTED}@db.example.invalid/x"}, "mongodb"),
        ({"mongodb_store_uri": f"mongodb://glance:{QUOTED}@db:notaport/x"}, "mongodb"),
        ({"mongodb_store_uri": URI, "mongodb_store_db": "bad.name$"}, "database"),
        ({"mongodb_store_uri": URI, "mongodb_store_bucket": "$$x"}, "bucket"),
    ],
)
def test_bad_configuration(tmp_path: Path, options: dict[str, str], message: str) -> None:
    with pytest.raises(BadConfiguration) as raised:
        Stores.from_config_files(_conf(tmp_path, **options))
    text = str(raised.value)
    assert message in text
    assert PASSWORD not in text
    assert QUOTED not in text


def test_chunk_size_limits(tmp_path: Path) -> None:
    for bad in (512, 16 << 20):
        with pytest.raises(BadConfiguration):
            Stores.from_config_files(
                _conf(tmp_path, mongodb_store_uri=URI, mongodb_store_chunk_size=bad)
            )
