"""Fuzz every location parser: only imgstore's exceptions, round trips, no password shown.

Targets (each runs the profile's number of inputs, see ``profiles.py``):

* ``parse()`` on text aimed at every registered scheme, and per scheme family
  (file, http(s), rbd, s3*, swift*, gridfs, any other registered scheme);
* each Location class built from random parts: whatever the constructor
  accepts must print a URI that parses back to an equal location;
* ``redact_uri()`` and every text a location or a parse error shows, for URIs
  carrying ``user:password@``: the password never shows.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgstore.drivers.filesystem import FileLocation
from imgstore.drivers.gridfs import GridFSLocation
from imgstore.drivers.http import HttpLocation
from imgstore.drivers.rbd import RbdLocation
from imgstore.drivers.s3 import S3Location
from imgstore.drivers.swift import SwiftLocation
from imgstore.exceptions import BadLocation, ImgstoreError
from imgstore.location import Location, known_schemes, location_class_for, parse, redact_uri
from tests.functional.conftest import skip_or_fail
from tests.fuzz.profiles import FUZZ
from tests.fuzz.strategies import MARKER_LEN, char, password, piece, schemes, uri_for, user

FAMILIES = {
    "file": ["file"],
    "http": ["http", "https"],
    "rbd": ["rbd"],
    "s3": ["s3", "s3+http", "s3+https"],
    "swift": ["swift", "swift+http", "swift+https", "swift+config"],
    "gridfs": ["gridfs"],
}


def _others() -> list[str]:
    covered = {s for family in FAMILIES.values() for s in family}
    return [s for s in known_schemes() if s not in covered]


def check_parse(uri: str) -> Location | None:
    """Parse ``uri``: BadLocation, or a location that round-trips. Anything else fails."""
    try:
        loc = parse(uri)
    except ImgstoreError as exc:
        assert isinstance(exc, BadLocation), type(exc)
        assert str(exc)
        repr(exc)
        return None
    check_round_trip(loc)
    return loc


def check_round_trip(loc: Location) -> None:
    """``parse(loc.to_uri())`` is an equal location that prints the same URI."""
    out = loc.to_uri()
    assert isinstance(out, str)
    try:
        again = parse(out)
    except ImgstoreError as exc:
        raise AssertionError(f"{loc!r} prints {out!r}, which does not parse: {exc}") from None
    assert type(again) is type(loc)
    assert again == loc, (out, again.to_uri())
    assert again.to_uri() == out
    assert hash(again) == hash(loc)
    assert isinstance(repr(loc), str)
    assert isinstance(loc.redacted(), str)


def test_every_registered_scheme_is_covered() -> None:
    """A new scheme lands in a family or in 'others'; either way it is fuzzed."""
    assert {s for f in FAMILIES.values() for s in f} <= set(known_schemes())


@FUZZ
@given(uri_for(schemes()))
def test_fuzz_parse_any_scheme(uri: str) -> None:
    check_parse(uri)


@pytest.mark.parametrize("family", [*FAMILIES, "others"])
@FUZZ
@given(data=st.data())
def test_fuzz_parse_by_scheme(family: str, data: st.DataObject) -> None:
    choices = FAMILIES.get(family) or _others()
    if not choices:
        skip_or_fail(
            "no other scheme is registered (the cinder and vmware drivers are not installed)"
        )
    uri = data.draw(uri_for(choices + [c.upper() for c in choices]))
    loc = check_parse(uri)
    if loc is not None:
        assert type(loc) is location_class_for(choices[0])


@FUZZ
@given(st.text(char, max_size=40))
def test_fuzz_file_location_parts(path: str) -> None:
    try:
        loc = FileLocation("/" + path)
    except BadLocation:
        return
    check_round_trip(loc)
    assert parse(str(loc)).path == "/" + path  # type: ignore[attr-defined]


@FUZZ
@given(st.text(char, max_size=20), st.text(char, max_size=20), st.text(char, max_size=40),
       st.one_of(st.none(), st.text(char, max_size=20)))  # fmt: skip
def test_fuzz_rbd_location_parts(fsid: str, pool: str, image: str, snap: str | None) -> None:
    args: dict[str, Any] = {"image": image}
    if snap is not None:
        args.update(fsid=fsid, pool=pool, snapshot=snap)
    try:
        loc = RbdLocation(**args)
    except BadLocation:
        return
    check_round_trip(loc)
    again = parse(str(loc))
    assert isinstance(again, RbdLocation)
    assert (again.image, again.fsid, again.pool, again.snapshot) == (
        image, args.get("fsid"), args.get("pool"), args.get("snapshot")
    )  # fmt: skip


@FUZZ
@given(st.sampled_from(FAMILIES["s3"]), piece, piece, piece)
def test_fuzz_s3_location_parts(scheme: str, host: str, bucket: str, key: str) -> None:
    try:
        loc = S3Location(scheme, host, bucket, key)
    except BadLocation:
        return
    check_round_trip(loc)
    again = parse(str(loc))
    assert isinstance(again, S3Location)
    assert (again.host, again.bucket, again.key) == (host, bucket, key)


@FUZZ
@given(st.sampled_from(FAMILIES["swift"]), piece, piece, piece)
def test_fuzz_swift_location_parts(scheme: str, prefix: str, container: str, obj: str) -> None:
    try:
        loc = SwiftLocation(scheme, prefix, container, obj)
    except BadLocation:
        return
    check_round_trip(loc)
    again = parse(str(loc))
    assert isinstance(again, SwiftLocation)
    assert (again.prefix, again.container, again.obj) == (prefix, container, obj)


@FUZZ
@given(st.one_of(piece, st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,300}\Z")))
def test_fuzz_gridfs_location_parts(file_id: str) -> None:
    try:
        loc = GridFSLocation(file_id)
    except BadLocation:
        return
    check_round_trip(loc)
    assert parse(str(loc)).file_id == file_id  # type: ignore[attr-defined]


@FUZZ
@given(uri_for(["http", "https"]))
def test_fuzz_http_location_constructor(uri: str) -> None:
    try:
        loc = HttpLocation(uri)
    except BadLocation:
        return
    check_round_trip(loc)


# -- passwords --------------------------------------------------------------------


def _assert_hidden(secret: str, *texts: str) -> None:
    marker = secret[:MARKER_LEN]
    for text in texts:
        assert secret not in text, text
        assert marker not in text, text


@FUZZ
@given(
    prefix=st.sampled_from(["", "", "", " ", "  ", "\t", "\n", "<", "'", "url="]),
    scheme=st.sampled_from([*known_schemes(), "nosuch", "HTTP", "S3+HTTPS"]),
    user=user,
    secret=password,
    rest=uri_for(["http"]).map(lambda u: u.split("://", 1)[-1]),
    at=st.sampled_from(["@", "@", "@", "@h/", "@[::1]:80/", "@x@y/"]),
)
def test_fuzz_password_never_shows(
    prefix: str, scheme: str, user: str, secret: str, rest: str, at: str
) -> None:
    """``scheme://user:password@...``: redact_uri, parse errors and locations hide it."""
    uri = f"{prefix}{scheme}://{user}:{secret}{at}{rest}"
    _assert_hidden(secret, redact_uri(uri))
    try:
        loc = parse(uri)
    except ImgstoreError as exc:
        _assert_hidden(secret, str(exc), repr(exc), *map(str, exc.args))
        return
    shown = [repr(loc), loc.redacted()]
    if not isinstance(loc, HttpLocation):  # an http(s) URL is kept as given, to fetch it
        shown.append(str(loc))
    _assert_hidden(secret, *shown)


@FUZZ
@given(st.text(char, max_size=80))
def test_fuzz_redact_uri_total(text: str) -> None:
    """redact_uri takes any text, never grows a secret-free URI, and is idempotent."""
    once = redact_uri(text)
    assert isinstance(once, str)
    assert redact_uri(once) == once
