"""swift:// locations and Swift driver configuration (no server needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgstore import BadLocation, Stores
from imgstore.drivers.swift import MAX_FILE_SIZE, MAX_SEGMENTS, SwiftLocation
from imgstore.exceptions import AuthenticationFailed, BadConfiguration
from imgstore.location import parse
from imgstore.parallel import piece_size

IMAGE = "0f4b0c4e-1b6a-4b8f-9c1d-2e3f4a5b6c7d"
MiB = 1 << 20


def test_forms_and_round_trips() -> None:
    for uri in (
        f"swift+http://127.0.0.1:8080/auth/v1.0/glance/{IMAGE}",
        f"swift+https://keystone.example:5000/v3/glance/{IMAGE}",
        f"swift://keystone.example/v3/glance/{IMAGE}",
        f"swift+config://ref1/glance/{IMAGE}",
        f"swift+https://swift.example/v1/AUTH_abc/glance_0f4/{IMAGE}",
    ):
        loc = parse(uri)
        assert isinstance(loc, SwiftLocation)
        assert str(loc) == uri
        assert parse(str(loc)) == loc
        assert loc.image_id == IMAGE
    loc = parse(f"swift+config://ref1/glance/{IMAGE}")
    assert isinstance(loc, SwiftLocation)
    assert (loc.reference, loc.container, loc.url) == ("ref1", "glance", None)
    https = parse(f"swift://k.example/v3/glance/{IMAGE}")
    assert isinstance(https, SwiftLocation) and https.url == "https://k.example/v3"


@pytest.mark.parametrize(
    "creds",
    ["tenant%3Auser:s3cr3t", "account:user:s3cr3t", "user:s3/cr@t", "u:s3cr3t?x#y"],
)
def test_old_credentials_are_dropped_and_never_shown(creds: str) -> None:
    uri = f"swift+http://{creds}@127.0.0.1:8080/auth/v1.0/glance/{IMAGE}"
    loc = parse(uri)
    assert isinstance(loc, SwiftLocation)
    assert str(loc) == f"swift+http://127.0.0.1:8080/auth/v1.0/glance/{IMAGE}"
    for shown in (str(loc), repr(loc), loc.redacted()):
        assert "s3cr3t" not in shown and "s3/cr@t" not in shown


@pytest.mark.parametrize(
    "uri",
    [
        "swift://",
        "swift://host",
        f"swift://host/{IMAGE}",
        f"swift://host//{IMAGE}",
        "swift://host/glance/",
        f"swift://host/glance/{IMAGE}?x=1",
        "swift://host/glance/..",
        f"swift+config://ref/with/path/glance/{IMAGE}",
        f"swift://ho st/glance/{IMAGE}",
        f"swift://https://host/glance/{IMAGE}",
    ],
)
def test_malformed(uri: str) -> None:
    with pytest.raises(BadLocation) as info:
        parse(uri)
    assert "secret" not in str(info.value)


def test_error_never_repeats_a_key() -> None:
    with pytest.raises(BadLocation) as info:
        parse("swift://acct:user:topsecret@host/glance")
    assert "topsecret" not in str(info.value)


@given(
    container=st.from_regex(r"[A-Za-z0-9_.-]{1,40}", fullmatch=True),
    obj=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,60}", fullmatch=True),
)
def test_round_trip_property(container: str, obj: str) -> None:
    if obj in (".", "..") or container in (".", ".."):
        return
    loc = SwiftLocation("swift+http", "h:1/auth/v1.0", container, obj)
    assert parse(str(loc)) == loc


def test_segment_size() -> None:
    base = 200 * MiB
    assert piece_size(1, base, 10 * MiB, MAX_SEGMENTS, MAX_FILE_SIZE) == base
    big = 1000 * 1024 * MiB  # 1000 GiB: 200 MiB x 1000 segments is not enough
    size = piece_size(1, base, big, MAX_SEGMENTS, MAX_FILE_SIZE)
    assert size * MAX_SEGMENTS >= big and size % MiB == 0
    assert piece_size(1, base, None, MAX_SEGMENTS, MAX_FILE_SIZE) == base
    assert piece_size(101, base, None, MAX_SEGMENTS, MAX_FILE_SIZE) == 2 * base
    with pytest.raises(ValueError):
        piece_size(0, base, None, MAX_SEGMENTS, MAX_FILE_SIZE)


def _stores(tmp_path: Path, **options: object) -> Stores:
    conf = tmp_path / "glance.conf"
    lines = ["[glance_store]", "stores = swift", "default_store = swift"]
    lines += [f"{k} = {v}" for k, v in options.items()]
    conf.write_text("\n".join(lines) + "\n")
    return Stores.from_config_files(conf)


def test_missing_credentials(tmp_path: Path) -> None:
    with pytest.raises(BadConfiguration, match="swift_store_key"):
        _stores(tmp_path, swift_store_auth_address="http://h/auth/v1.0", swift_store_user="a:b")


def test_keystone_user_needs_a_project(tmp_path: Path) -> None:
    with pytest.raises(BadConfiguration, match="project:user") as info:
        _stores(
            tmp_path,
            swift_store_auth_address="http://h:5000/v3",
            swift_store_user="justuser",
            swift_store_key="hunter2secret",
        )
    assert "hunter2secret" not in str(info.value)


def test_config_file_references(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    refs = tmp_path / "swift.conf"
    refs.write_text(
        "[ref1]\nauth_address = http://127.0.0.1:5000/v3\nuser = demo:demo\nkey = refkey1secret\n"
        "auth_version = 3\nuser_domain_name = Default\nproject_domain_name = Default\n"
        "[old]\nauth_address = http://127.0.0.1:8080/auth/v1.0\nuser = test:tester\n"
        "key = refkey2secret\nauth_version = 1\n"
    )
    with caplog.at_level(logging.DEBUG):
        stores = _stores(tmp_path, swift_store_config_file=refs, default_swift_reference="ref1")
    with stores:
        driver = stores.driver()
        assert driver.owns(parse(f"swift+config://old/glance/{IMAGE}"))
        assert not driver.owns(parse(f"swift+config://nope/glance/{IMAGE}"))
        assert not driver.owns(parse(f"swift+http://other:8080/auth/v1.0/glance/{IMAGE}"))
        assert "refkey1secret" in driver.secrets() and "refkey2secret" in driver.secrets()
        assert "refkey" not in repr(driver) and "refkey" not in repr(driver.account)  # type: ignore[attr-defined]
    assert "refkey" not in caplog.text
    with pytest.raises(BadConfiguration, match="default_swift_reference"):
        _stores(tmp_path, swift_store_config_file=refs, default_swift_reference="missing")


def test_multi_tenant_needs_credentials_per_call(tmp_path: Path) -> None:
    with _stores(tmp_path, swift_store_multi_tenant=True) as stores:
        assert stores.driver().owns(parse(f"swift+https://s.example/v1/AUTH_x/glance/{IMAGE}"))
        with pytest.raises(AuthenticationFailed, match="credentials"):
            stores.size(f"swift+https://s.example/v1/AUTH_x/glance/{IMAGE}")
