"""The checks every Location class shares (imgstore.location), and what each class
makes of them: which characters a part may hold, the UTF-8 check, the messages."""

from __future__ import annotations

import pytest

from imgstore.drivers.vmware import VsphereLocation
from imgstore.exceptions import BadLocation
from imgstore.location import (
    after_scheme,
    check_part,
    naming,
    parse,
    require_utf8,
    split_once,
    unsafe,
)

IMAGE = "0f4b0c4e-1b6a-4b8f-9c1d-2e3f4a5b6c7d"


@pytest.mark.parametrize(
    ("value", "forbidden", "spaces", "bad"),
    [
        ("plain-name_1.x", "", False, False),
        ("with space", "", False, True),
        ("with space", "", True, False),
        ("tab\there", "", True, True),
        ("nbsp\u00a0here", "", True, True),  # whitespace, though not a plain space
        ("nul\x00", "", False, True),
        ("del\x7f", "", False, True),  # DEL is a control character too
        ("del\x7f", "", True, True),
        ("a?b", "?#@", False, True),
        ("a/b", "?#@", False, False),
        ("", "", False, False),
    ],
)
def test_unsafe(value: str, forbidden: str, spaces: bool, bad: bool) -> None:
    assert unsafe(value, forbidden, spaces=spaces) is bad


def test_check_part_names_the_kind_and_the_part() -> None:
    assert check_part("s3", "bucket", "images") == "images"
    for value in ("", "im ages", "im?ages"):
        with pytest.raises(BadLocation, match=r"^s3 location has a missing or malformed bucket$"):
            check_part("s3", "bucket", value, "?")


def test_require_utf8() -> None:
    require_utf8("file", "path", "/ok/\udce9")  # a byte os.fsdecode() could not decode
    with pytest.raises(BadLocation, match="the path of a file location must be UTF-8 text"):
        require_utf8("file", "path", "/lone\ud800")
    with pytest.raises(BadLocation, match="parts of a rbd location"):
        require_utf8("rbd", "parts", "ok", "\udce9", escaped=False)
    with pytest.raises(BadLocation):
        require_utf8("rbd", "parts", "ok", None, escaped=False)  # type: ignore[arg-type]


def test_after_scheme_is_case_insensitive_and_hides_secrets() -> None:
    assert after_scheme("GridFS://abc", "gridfs") == "abc"
    for uri in ("rbd:/x", "cinder://x", None):
        with pytest.raises(BadLocation, match="not a gridfs:// location"):
            after_scheme(uri, "gridfs")  # type: ignore[arg-type]
    with pytest.raises(BadLocation) as raised:
        after_scheme("s3://key:Secret1@host/b/k", "rbd")
    assert "Secret1" not in str(raised.value)


def test_split_once_and_naming() -> None:
    assert split_once("s3+https://h/b/k", "s3", "s3://host/bucket/key") == ("s3+https", "h/b/k")
    for uri in ("s3:/h/b/k", "s3://https://h/b/k"):
        with pytest.raises(BadLocation, match="expected s3://host/bucket/key"):
            split_once(uri, "s3", "s3://host/bucket/key")
    with pytest.raises(BadLocation, match=r"^bad part: 's3://\*\*\*@h/b/k'$"):
        with naming("s3://user:Secret1@h/b/k"):
            raise BadLocation("bad part")


# -- what each class accepts, character by character (pinned before the checks moved)


@pytest.mark.parametrize(
    ("uri", "good"),
    [
        (f"vsphere://h/folder/a b/{IMAGE}?dsName=ds%201&dcPath=D%20C", True),
        (f"vsphere://h/folder/a%09b/{IMAGE}?dsName=ds", False),  # tab in the path
        (f"vsphere://h/folder/a%7Fb/{IMAGE}?dsName=ds", False),  # DEL in the path
        (f"vsphere://h/folder/a/{IMAGE}?dsName=d%7Fs", False),
        (f"vsphere://h/folder/a/{IMAGE}?dsName=ds&dcPath=D%0AC", False),
        (f"vsphere://h/folder/a/{IMAGE}?dsName=ds&dcPath=", False),
        (f"vsphere://h/folder/a/{IMAGE}?dsName=d%2Fs", False),
        ("http://h/a\x7fb", False),
        ("http://h/a%7Fb", True),
        ("s3://h/b/k\x7f", False),  # DEL is a control character, as C0 ones are
        ("s3://h/b/k%7F", True),  # S3 keys are kept as written: "%7F" is three characters
        ("swift://h/c/o\x7f", False),
        ("swift://h/c/o%7F", False),
        ("swift://h/c/o%09", False),
        ("s3://h/b/k\x85", False),  # NEL is whitespace
        ("swift://h/c/o%C2%85", False),
        ("swift://h/c/o%ED%A0%80", True),  # not UTF-8: kept as surrogateescape
        ("rbd://f/p/i%ED%A0%80/s", False),  # rbd parts are strict UTF-8
        ("file:///images/a\tb", False),  # urllib would drop the tab: another file
        ("file:///images/a%09b", True),
        (f"vsphere://h/folder/a\nb/{IMAGE}?dsName=ds", False),
        ("http://h/a\tb", False),
        (f"cinder://fast/{IMAGE}", True),
        (f"cinder://a/b/{IMAGE}", False),
        (f"cinder:///{IMAGE}", False),
    ],
)
def test_characters_each_class_takes(uri: str, good: bool) -> None:
    if good:
        loc = parse(uri)
        assert parse(str(loc)) == loc
    else:
        with pytest.raises(BadLocation):
            parse(uri)


@pytest.mark.parametrize(
    ("path", "datacenter", "datastore"),
    [("a/\ud800", None, "ds"), ("a/b", None, "d\udce9"), ("a/b", "D\ud800", "ds")],
)
def test_a_vsphere_location_that_could_not_be_written_is_refused(
    path: str, datacenter: str | None, datastore: str
) -> None:
    # parse() refused these URIs before too (its to_uri() check); now the class does
    with pytest.raises(BadLocation, match="must be UTF-8 text"):
        VsphereLocation("h", None, path, datacenter, datastore)
    with pytest.raises(BadLocation):
        parse(f"vsphere://h/folder/{path}?dsName={datastore}&dcPath={datacenter or 'D'}")
    escaped = VsphereLocation("h", None, "a/\udce9", None, "ds")  # a byte that is not UTF-8
    assert str(escaped) == "vsphere://h/folder/a/%E9?dsName=ds" and parse(str(escaped)) == escaped
