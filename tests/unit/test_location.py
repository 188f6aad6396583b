"""Location URIs: round trips, redaction, parse() errors and the scheme registry."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgstore import location
from imgstore.drivers.filesystem import FileLocation
from imgstore.exceptions import BadLocation, ImgstoreError, UnknownScheme
from imgstore.location import Location, known_schemes, parse, redact_uri, register

# Paths as the OS can hand them to us: any text without NUL, plus the
# surrogateescape range os.fsdecode() uses for bytes that are not UTF-8.
_PATH_CHARS = st.one_of(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    st.sampled_from(list(" %?#;:@&=+$,!'()*~[]\\\t\n\r")),
    st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
)
absolute_paths = st.lists(
    st.text(_PATH_CHARS, min_size=0, max_size=20), min_size=1, max_size=6
).map(lambda parts: "/" + "/".join(parts))


@given(absolute_paths)
@settings(max_examples=1000)
def test_file_location_round_trips(path: str) -> None:
    loc = FileLocation(path)
    uri = str(loc)
    assert uri.startswith("file://")
    # nothing the URI grammar gives a meaning to may survive unescaped in the path part
    assert "?" not in uri and "#" not in uri
    back = parse(uri)
    assert isinstance(back, FileLocation)
    assert back == loc
    assert back.path == path
    assert hash(back) == hash(loc)


@pytest.mark.parametrize(
    "path",
    [
        "/var/lib/glance/images/with space",
        "/srv/images/100%/a?b#c;d",
        "/srv/Ümläut/образ/映像.qcow2",
        "/srv/images/%2F",
        "/",
        "/srv/latin1-name-\udce9",  # os.fsdecode() of a non-UTF-8 byte
    ],
)
def test_file_location_round_trips_examples(path: str) -> None:
    loc = FileLocation(path)
    assert parse(str(loc)) == loc
    assert parse(str(loc)).path == path  # type: ignore[attr-defined]


def test_non_utf8_bytes_in_a_uri_survive() -> None:
    # %ED%A0%80 is not valid UTF-8: it maps to surrogateescape characters, as
    # os.fsdecode() would give for such a file name, and prints back unchanged.
    loc = parse("file:///x%ED%A0%80")
    assert isinstance(loc, FileLocation)
    assert os.fsencode(loc.path) == b"/x\xed\xa0\x80"
    assert str(loc) == "file:///x%ED%A0%80"


def test_glance_store_file_uris_parse() -> None:
    image = str(uuid.uuid4())
    for uri in (
        f"file:///var/lib/glance/images/{image}",
        f"file://localhost/var/lib/glance/images/{image}",
    ):
        loc = parse(uri)
        assert isinstance(loc, FileLocation)
        assert loc.path == f"/var/lib/glance/images/{image}"
        assert loc.scheme == "file"
    # glance_store writes exactly this form; we write it back unchanged
    assert str(parse(f"file:///var/lib/glance/images/{image}")) == (
        f"file:///var/lib/glance/images/{image}"
    )


def test_file_location_is_a_value() -> None:
    assert FileLocation("/a/b") == FileLocation("/a/b")
    assert FileLocation("/a/b") != FileLocation("/a/c")
    assert len({FileLocation("/a/b"), parse("file:///a/b")}) == 1
    assert repr(FileLocation("/a/b")) == "<FileLocation file:///a/b>"
    assert parse(FileLocation("/a/b")) == FileLocation("/a/b")


@pytest.mark.parametrize(
    "bad",
    [
        "relative/path",
        "",
        "/with\x00nul",
        "/lone\ud800surrogate",  # not a name any filesystem could return
        None,
        b"/bytes",
        pathlib.Path("/a"),
    ],
)
def test_file_location_rejects_bad_paths(bad: object) -> None:
    with pytest.raises(BadLocation):
        FileLocation(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "uri",
    [
        "file://otherhost/var/lib/x",
        "file:///var/lib/x?query=1",
        "file:///var/lib/x#frag",
        "file:///var/lib/x%00y",
        "file://",
        "file://localhost",
        "file://[::1/x",
        "file://host:notaport/x",
    ],
)
def test_malformed_file_uris(uri: str) -> None:
    with pytest.raises(BadLocation):
        parse(uri)


# -- redaction ---------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "secret", "shown"),
    [
        ("s3://key:secret@host/b/o", "secret", "s3://***@host/b/o"),
        ("s3+https://AKIA:wJalr/XUtnFEMI+K7MDENG@s3.example/b/o", "wJalr/XUtnFEMI+K7MDENG", None),
        ("swift://user:pw@host/v1/container/obj", "pw", "swift://***@host/v1/container/obj"),
        ("swift://account:user:p@ss/w?rd#x@keystone/v3/c/o", "p@ss/w?rd#x", None),
        ("swift+https://tenant%3Auser:pass%40word@host/c/o", "pass%40word", None),
    ],
)
def test_redact_uri_hides_userinfo(uri: str, secret: str, shown: str | None) -> None:
    out = redact_uri(uri)
    assert secret not in out
    assert "***" in out
    if shown is not None:
        assert out == shown


@pytest.mark.parametrize(
    "uri",
    [
        "file:///var/lib/glance/images/x",
        "rbd://fsid/pool/image/snap",
        "http://example.org:8080/images/cirros.img",
        "cinder://9f1b4c26-4b1f-4a8e-9c3e-3c1d3c8e2f1a",
    ],
)
def test_redact_uri_leaves_uris_without_userinfo(uri: str) -> None:
    assert redact_uri(uri) == uri


# The characters real secrets contain: AWS secret keys are base64 with '/' and '+';
# Swift/Keystone passwords can be almost anything printable.
_secret_chars = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


@given(
    scheme=st.sampled_from(["s3", "s3+https", "swift", "swift+https", "swift+http", "http"]),
    user=st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=12),
    secret=st.text(_secret_chars, min_size=1, max_size=40),
    rest=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).filter(
        lambda r: "@" not in r
    ),
)
@settings(max_examples=2000)
def test_redact_uri_never_shows_the_secret(scheme: str, user: str, secret: str, rest: str) -> None:
    marked = "SECRET" + secret  # so that it cannot be a substring of the rest by accident
    uri = f"{scheme}://{user}:{marked}@host.example/{rest}"
    out = redact_uri(uri)
    assert marked not in out
    assert out.endswith(f"@host.example/{rest}")


@given(
    user=st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=12),
    secret=st.text(_secret_chars, min_size=1, max_size=40),
)
@settings(max_examples=500)
def test_bad_location_errors_never_show_the_secret(user: str, secret: str) -> None:
    """Credentials in a URI never show: not in the error when it is refused, and
    not in the location we would emit, its repr or redacted form when it is read
    (old glance_store s3/swift locations carry them)."""
    marked = "SECRET" + secret
    for scheme in ("file", "s3", "swift", "no-such-scheme"):
        uri = f"{scheme}://{user}:{marked}@host/some/path"
        try:
            loc = parse(uri)
        except BadLocation as exc:
            assert marked not in str(exc)
            assert marked not in repr(exc)
        else:
            assert scheme in ("s3", "swift"), f"{scheme} accepted user-info"
            for shown in (str(loc), repr(loc), loc.redacted()):
                assert marked not in shown


# -- parse() of arbitrary input -------------------------------------------


def _schemes() -> list[str]:
    return [*known_schemes(), "FILE", "unknown", "s3", "swift+config"]


arbitrary_uris = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda scheme, sep, rest: f"{scheme}{sep}{rest}",
        st.sampled_from(_schemes()),
        st.sampled_from(["://", ":", ":/", "://localhost", "://[", "://u:p@"]),
        st.text(max_size=80),
    ),
    st.builds(
        lambda scheme, rest: f"{scheme}://{rest}",
        st.sampled_from(_schemes()),
        st.text(st.sampled_from(list("/%?#@:[]0123456789abcdef.;\x00 \udc80\ud800")), max_size=40),
    ),
)


@given(arbitrary_uris)
@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
def test_parse_raises_only_imgstore_errors(text: str) -> None:
    try:
        loc = parse(text)
    except ImgstoreError as exc:
        assert isinstance(exc, (BadLocation, UnknownScheme))
        return
    # whatever parses must print and reparse to an equal location
    assert parse(str(loc)) == loc
    repr(loc)


@pytest.mark.parametrize("value", [None, 42, b"file:///x", pathlib.Path("/x"), ["file:///x"], 1.5])
def test_parse_non_str_is_bad_location(value: object) -> None:
    with pytest.raises(BadLocation):
        parse(value)  # type: ignore[arg-type]


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(UnknownScheme) as info:
        parse("nosuchscheme://x/y")
    assert "nosuchscheme" in str(info.value)
    assert "file" in str(info.value)


# -- the registry ----------------------------------------------------------


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(location._registry)
    yield
    with location._lock:
        location._registry.clear()
        location._registry.update(saved)


class ThirdPartyLocation(Location):
    """A location class as another package would ship it."""

    schemes: ClassVar[tuple[str, ...]] = ("x-thirdparty", "x-thirdparty+tls")

    def __init__(self, key: str) -> None:
        if not key:
            raise BadLocation("empty key")
        self.key = key

    @classmethod
    def from_uri(cls, uri: str) -> ThirdPartyLocation:
        scheme, _, key = uri.partition("://")
        if scheme.lower() not in cls.schemes:
            raise BadLocation("wrong scheme")
        return cls(key)

    def to_uri(self) -> str:
        return f"x-thirdparty://{self.key}"


def test_third_party_location_registers_and_parses(clean_registry: None) -> None:
    with pytest.raises(UnknownScheme):
        parse("x-thirdparty://abc")
    assert register(ThirdPartyLocation) is ThirdPartyLocation
    loc = parse("x-thirdparty://abc")
    assert isinstance(loc, ThirdPartyLocation)
    assert loc.key == "abc"
    assert parse("X-ThirdParty+TLS://abc") == loc  # schemes are case-insensitive
    assert {"x-thirdparty", "x-thirdparty+tls", "file"} <= set(known_schemes())
    with pytest.raises(BadLocation):
        parse("x-thirdparty://")


def test_registry_cleanup_worked() -> None:
    # runs after the test above in file order: the fixture removed the scheme again
    assert "x-thirdparty" not in known_schemes()


def test_register_needs_schemes() -> None:
    class NoSchemes(ThirdPartyLocation):
        schemes = ()

    with pytest.raises(ValueError, match="no schemes"):
        register(NoSchemes)


def test_known_schemes_includes_file() -> None:
    assert "file" in known_schemes()
    assert known_schemes() == sorted(known_schemes())


def test_file_scheme_comes_from_entry_points_without_importing_the_driver() -> None:
    # A fresh interpreter: parse() must find the file scheme through the
    # imgstore.locations entry point, not because a test imported the driver.
    code = (
        "import sys, imgstore.location as L\n"
        "assert 'imgstore.drivers.filesystem' not in sys.modules\n"
        "loc = L.parse('file:///var/lib/glance/images/x')\n"
        "print(type(loc).__name__, loc.path)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.stdout.strip() == "FileLocation /var/lib/glance/images/x"
