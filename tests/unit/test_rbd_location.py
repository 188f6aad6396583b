"""rbd:// locations: glance_store's two forms, its quoting, round trips, bad input."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgstore import BadLocation
from imgstore.drivers.rbd import RbdLocation
from imgstore.location import parse

FSID = "8a092577-61fd-4bee-aa7a-f3c9bbb71a75"


def glance_uri(fsid: str, pool: str, image: str, snap: str) -> str:
    """What glance_store's rbd StoreLocation.get_uri() writes for the four-part form."""
    safe = [urllib.parse.quote(p, "") for p in (fsid, pool, image, snap)]
    return "rbd://" + "/".join(safe)  # glance: "rbd://%s/%s/%s/%s" % (...)


def test_four_part_form() -> None:
    loc = parse(f"rbd://{FSID}/images/0f4b0c4e-1b6a-4b8f-9c1d-2e3f4a5b6c7d/snap")
    assert isinstance(loc, RbdLocation)
    assert (loc.fsid, loc.pool, loc.image, loc.snapshot) == (
        FSID,
        "images",
        "0f4b0c4e-1b6a-4b8f-9c1d-2e3f4a5b6c7d",
        "snap",
    )
    assert not loc.legacy
    assert loc.image_id == loc.image
    assert str(loc) == f"rbd://{FSID}/images/0f4b0c4e-1b6a-4b8f-9c1d-2e3f4a5b6c7d/snap"


def test_legacy_one_part_form() -> None:
    loc = parse("rbd://0f4b0c4e-1b6a")
    assert isinstance(loc, RbdLocation)
    assert loc.legacy
    assert (loc.fsid, loc.pool, loc.image, loc.snapshot) == (None, None, "0f4b0c4e-1b6a", None)
    assert str(loc) == "rbd://0f4b0c4e-1b6a"


def test_quoting_matches_glance_store() -> None:
    loc = RbdLocation("my image/1", "f s", "pool/x", "sn@p")
    assert str(loc) == glance_uri("f s", "pool/x", "my image/1", "sn@p")
    assert str(loc) == "rbd://f%20s/pool%2Fx/my%20image%2F1/sn%40p"
    assert parse(str(loc)) == loc


def test_legacy_form_is_not_unquoted() -> None:
    """glance_store reads and writes the one-part form verbatim."""
    loc = parse("rbd://image%20one")
    assert isinstance(loc, RbdLocation)
    assert loc.image == "image%20one"
    assert str(loc) == "rbd://image%20one"


@pytest.mark.parametrize(
    "uri",
    [
        "rbd://",
        "rbd:///",
        "rbd://a/b",
        "rbd://a/b/c",
        "rbd://a/b/c/d/e",
        "rbd://a//c/d",
        "rbd://a/b/c/",
        "rbd:///b/c/d",
        "rbd://image/",
        "rbd://a/b/%FF%FE/d",
    ],
)
def test_malformed_locations(uri: str) -> None:
    with pytest.raises(BadLocation):
        parse(uri)


def test_constructor_needs_all_or_none_of_fsid_pool_snapshot() -> None:
    with pytest.raises(BadLocation):
        RbdLocation("img", FSID, "pool", None)
    with pytest.raises(BadLocation):
        RbdLocation("img", None, "pool", None)
    with pytest.raises(BadLocation):
        RbdLocation("")
    with pytest.raises(BadLocation):
        RbdLocation("a/b")  # the one-part form cannot hold a slash


def test_equality_and_hash() -> None:
    a = parse(f"rbd://{FSID}/images/x/snap")
    b = RbdLocation("x", FSID, "images", "snap")
    assert a == b and hash(a) == hash(b)
    assert a != RbdLocation("x")
    assert repr(a) == f"<RbdLocation rbd://{FSID}/images/x/snap>"


_part = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30)


@given(fsid=_part, pool=_part, image=_part, snap=_part)
def test_four_part_round_trip(fsid: str, pool: str, image: str, snap: str) -> None:
    loc = RbdLocation(image, fsid, pool, snap)
    uri = str(loc)
    assert uri == glance_uri(fsid, pool, image, snap)
    back = parse(uri)
    assert back == loc
    assert isinstance(back, RbdLocation)
    assert (back.fsid, back.pool, back.image, back.snapshot) == (fsid, pool, image, snap)


@given(image=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="/@"), min_size=1))
def test_legacy_round_trip(image: str) -> None:
    loc = RbdLocation(image)
    back = parse(str(loc))
    assert back == loc
    assert isinstance(back, RbdLocation) and back.image == image


@pytest.mark.parametrize(
    "uri", ["rbd://user:Secret1@image", "rbd://admin:Secret1@fsid/pool/image/snap", "rbd://a@b"]
)
def test_raw_at_sign_is_refused_and_not_shown(uri: str) -> None:
    # '@' starts a snapshot name in Ceph; before it may sit a user:password
    with pytest.raises(BadLocation) as info:
        parse(uri)
    assert "Secret1" not in str(info.value)
    with pytest.raises(BadLocation):
        RbdLocation("a@b")
