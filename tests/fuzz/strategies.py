"""Hypothesis strategies for hostile location URIs and configuration values."""

from __future__ import annotations

from hypothesis import strategies as st

from imgstore.location import known_schemes

# Characters that mean something to a URI, a path, an INI file or a shell,
# plus the odd ones: NUL, DEL, whitespace, a lone surrogate, the
# surrogateescape range, non-ASCII letters.
SPECIAL = list("/:@?#[]%;.=&+-_~!$'()*,\\\"<>{}|^` \t\r\n\x00\x7f\x0b\x0c")
ODD = ["\udc80", "\udcff", "\ud800", "é", "映", "\u202e", "\ufeff", "İ", "ß", "\u00a0"]
TOKENS = [
    "%2F", "%40", "%3A", "%25", "%00", "%zz", "%", "%E9", "%ED%A0%80", "%C3%A9", "..", ".",
    "//", "localhost", "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "[", "]", ":80", ":0",
    ":65536", ":99999", ":-1", ":", "@", "user:pw@", "a:b:c@", "://", "?", "#", "../",
]  # fmt: skip

char = st.one_of(
    st.sampled_from(SPECIAL),
    st.sampled_from(ODD),
    st.characters(min_codepoint=0x30, max_codepoint=0x7A),
    st.characters(),
)
piece = st.one_of(st.text(char, max_size=12), st.sampled_from(TOKENS))
pieces = st.lists(piece, max_size=8).map("".join)


def schemes() -> list[str]:
    """Every registered scheme, some in odd case, and a few unknown ones."""
    found = known_schemes()
    return [*found, *(s.upper() for s in found), "File", "S3+HTTPS", "nosuch", "x-y+z", "h"]


def uri_for(scheme_choices: list[str]) -> st.SearchStrategy[str]:
    """Text aimed at the parsers of ``scheme_choices``: mostly well-formed, often not."""
    schemes_st = st.sampled_from(scheme_choices)
    segment = st.one_of(
        st.from_regex(r"\A[A-Za-z0-9._~-]{1,12}\Z"),
        piece,
        st.uuids().map(str),
    )
    structured = st.builds(
        lambda prefix, scheme, sep, userinfo, host, port, path, tail: (
            f"{prefix}{scheme}{sep}{userinfo}{host}{port}{path}{tail}"
        ),
        st.sampled_from(["", "", "", " ", "\t", "\n", "x"]),
        schemes_st,
        st.sampled_from(["://", "://", "://", ":/", ":", ":///", "://localhost/"]),
        st.one_of(
            st.just(""),
            st.builds(lambda u, p: f"{u}:{p}@", segment, segment),
            st.builds(lambda u: f"{u}@", segment),
        ),
        st.one_of(segment, st.sampled_from(["", "127.0.0.1", "[::1]", "h.example", "localhost"])),
        st.sampled_from(["", "", ":8080", ":0", ":x", ":65536", ":"]),
        st.lists(segment, max_size=6).map(lambda parts: "".join("/" + p for p in parts)),
        st.sampled_from(["", "", "", "/", "?", "?a=b", "#f", "?a#b", "//", "@x"]),
    )
    raw = st.builds(lambda s, rest: f"{s}://{rest}", schemes_st, pieces)
    return st.one_of(structured, structured, raw, st.text(char, max_size=60))


# Passwords: a 12-character marker no other part of a generated URI can
# contain (MARKER_LEN), then any text (AWS secret keys have '/' and '+';
# Keystone passwords can be anything printable, '@' included).
MARKER_LEN = 12
password = st.builds(
    lambda marker, body: f"Zq{marker}{body}",
    st.uuids().map(lambda u: u.hex[:10]),
    st.one_of(
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=24),
        st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=8),
    ),
)
# RFC 3986 user names: unreserved, sub-delims and percent-escapes, no ':' or '@'.
user = st.from_regex(r"\A[A-Za-z0-9._~!$&'()*+,;=%-]{0,16}\Z")
