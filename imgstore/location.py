"""Location URIs: a base class, a registry from scheme to class, parse().

Each driver contributes a :class:`Location` subclass for its schemes. The
registry is fed by explicit :func:`register` calls and, lazily, by the
``imgstore.locations`` entry-point group (scheme name -> class), so a URI can
be parsed without loading any driver's backend library.

``str(location)`` is the URI to store; ``location.redacted()`` is the form for
logs, reprs and error messages; ``parse(str(location)) == location``.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

from imgstore.exceptions import BadLocation, UnknownScheme

LOG = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "imgstore.locations"

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# User info is everything up to the LAST '@' once the authority (the text after
# the first "://" up to the first '/', '?' or '#') holds a ':' or an '@':
# glance_store's s3 and swift URIs carry secrets that may themselves contain
# '/', '?', '#' or '@' ("s3://key:se/cret@host/bucket/obj"). Over-redacting an
# odd host:port URI with an '@' in its path is the price of never leaking such
# a secret. The first "://" is found wherever it is, so text pasted with a
# leading space, quote or "url=" is redacted too; plain string searches keep
# this linear in the length of hostile input.
_AUTHORITY_END = re.compile(r"[/?#]")

L = TypeVar("L", bound="Location")


class Location(abc.ABC):
    """Where one image lives. Subclasses are immutable value objects."""

    schemes: ClassVar[tuple[str, ...]] = ()
    """URI schemes this class parses; the first is the one it emits."""

    @classmethod
    @abc.abstractmethod
    def from_uri(cls: type[L], uri: str) -> L:
        """Parse ``uri``; raise :class:`BadLocation` when it is malformed."""

    @abc.abstractmethod
    def to_uri(self) -> str:
        """The URI that :meth:`from_uri` reads back to an equal location."""

    @property
    def scheme(self) -> str:
        """The scheme of :meth:`to_uri`."""
        return self.to_uri().split("://", 1)[0]

    def redacted(self) -> str:
        """The URI with every secret replaced by ``***``; safe to show anywhere."""
        return redact_uri(self.to_uri())

    def _key(self) -> tuple[Any, ...]:
        return (type(self), self.to_uri())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Location):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return self.to_uri()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.redacted()}>"


def redact_uri(uri: str) -> str:
    """Hide the user-info part of any ``scheme://user:secret@host`` string.

    Used for URIs that could not even be parsed, so that an error about a bad
    location never repeats a password that was in it.
    """
    head = uri.find("://")
    if head < 0:
        return uri
    head += 3
    last_at = uri.rfind("@")
    if last_at < head:
        return uri
    end = _AUTHORITY_END.search(uri, head)
    authority = uri[head : end.start() if end else len(uri)]
    if ":" not in authority and "@" not in authority:
        return uri
    return uri[:head] + "***" + uri[last_at:]


_lock = threading.Lock()
_registry: dict[str, type[Location]] = {}
_entry_points_loaded = False


def register(location_class: type[Location]) -> type[Location]:
    """Register ``location_class`` for each of its schemes; usable as a decorator."""
    if not location_class.schemes:
        raise ValueError(f"{location_class.__name__} declares no schemes")
    with _lock:
        for scheme in location_class.schemes:
            _registry[scheme.lower()] = location_class
    return location_class


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    from importlib.metadata import entry_points

    found: dict[str, type[Location]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken third-party package must not break parsing
            LOG.warning("cannot load location class %s (%s): %s", ep.name, ep.value, exc)
            continue
        if isinstance(cls, type) and issubclass(cls, Location):
            found[ep.name.lower()] = cls
    with _lock:
        for scheme, cls in found.items():
            _registry.setdefault(scheme, cls)
        _entry_points_loaded = True


def location_class_for(scheme: str) -> type[Location]:
    """The class registered for ``scheme``; :class:`UnknownScheme` when none is."""
    key = scheme.lower()
    if key not in _registry:
        _load_entry_points()
    try:
        return _registry[key]
    except KeyError:
        raise UnknownScheme(
            f"no installed imgstore driver handles the scheme {scheme!r}; "
            f"known schemes: {', '.join(known_schemes()) or 'none'}"
        ) from None


def known_schemes() -> list[str]:
    """Every scheme a location class is registered for, sorted."""
    _load_entry_points()
    return sorted(_registry)


def split_scheme(uri: object) -> str:
    """The scheme of ``uri``, validating only the ``scheme://`` prefix."""
    if not isinstance(uri, str):
        raise BadLocation(f"a location must be a string, not {type(uri).__name__}")
    match = _SCHEME_RE.match(uri)
    if match is None:
        raise BadLocation(f"not a location URI (expected scheme://...): {shown(uri)!r}")
    return match.group(1)


def parse(uri: str | Location) -> Location:
    """Parse a location URI with the class registered for its scheme.

    Raises :class:`UnknownScheme` or :class:`BadLocation`, never a raw
    ``ValueError``/``KeyError``.
    """
    if isinstance(uri, Location):
        return uri
    cls = location_class_for(split_scheme(uri))
    try:
        location = cls.from_uri(uri)
        location.to_uri()  # a location that cannot be written back is malformed
        return location
    except BadLocation:
        raise
    except (ValueError, KeyError, TypeError, IndexError, UnicodeError) as exc:
        # the exception's own text can quote any part of the URI, a password
        # included: only its type is shown
        raise BadLocation(
            f"malformed {cls.schemes[0]} location {shown(uri)!r} ({type(exc).__name__})"
        ) from None


def urlsplit(uri: str) -> urllib.parse.SplitResult:
    """``urllib.parse.urlsplit`` that raises :class:`BadLocation` instead of ValueError,
    and for a raw control character, which urllib would drop (tabs, line breaks) and so
    name another object than the one written: a URI carries them percent-encoded."""
    if has_control(uri):
        raise BadLocation(f"malformed location {shown(uri)!r}: it holds a control character")
    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        # urllib quotes the bad port or host, which can be part of a password
        # ("http://user:pass?word@host"): say what is wrong in our own words
        text = str(exc)
        if "port" in text.lower():
            reason = "the port is not a number from 0 to 65535"
        elif "IPv6" in text or "[" in text:
            reason = "a bracketed host is not a valid IPv6 address"
        else:
            reason = "it cannot be split into scheme, host and path"
        raise BadLocation(f"malformed location {shown(uri)!r}: {reason}") from None
    return parts


def quote_path(path: str) -> str:
    """Percent-encode a path for a URI, leaving the usual path characters readable."""
    return urllib.parse.quote(path, safe="/:@!$&'()*+,;=-._~", errors="surrogateescape")


def unquote_path(path: str) -> str:
    """The inverse of :func:`quote_path`."""
    return urllib.parse.unquote(path, errors="surrogateescape")


# -- checks the Location classes share ---------------------------------------------


def shown(uri: object) -> str:
    """``uri`` as an error message may show it: secrets hidden, at most 200 characters."""
    return redact_uri(str(uri))[:200]


def has_control(value: str) -> bool:
    """Whether ``value`` holds an ASCII control character (C0 or DEL)."""
    return any(ord(c) < 32 or c == "\x7f" for c in value)


def unsafe(value: str, forbidden: str = "", *, spaces: bool = False) -> bool:
    """Whether ``value`` holds an ASCII control character (C0 or DEL), whitespace (plain
    spaces pass when ``spaces``) or a character of ``forbidden``."""
    return has_control(value) or any(
        c in forbidden or (c.isspace() and not (spaces and c == " ")) for c in value
    )


def check_part(
    kind: str, what: str, value: str, forbidden: str = "", *, spaces: bool = False
) -> str:
    """``value``, a non-empty part with no :func:`unsafe` character; else
    :class:`BadLocation` ("<kind> location has a missing or malformed <what>")."""
    if not value or unsafe(value, forbidden, spaces=spaces):
        raise BadLocation(f"{kind} location has a missing or malformed {what}")
    return value


def require_utf8(kind: str, what: str, *values: str, escaped: bool = True) -> None:
    """Refuse values that cannot be percent-encoded: a lone surrogate has no UTF-8 bytes.
    With ``escaped``, the surrogates that stand for bytes that are not UTF-8
    (``os.fsdecode``, :func:`unquote_path`) pass."""
    try:
        for value in values:
            value.encode("utf-8", "surrogateescape" if escaped else "strict")
    except (UnicodeEncodeError, AttributeError):
        raise BadLocation(f"the {what} of a {kind} location must be UTF-8 text") from None


def after_scheme(uri: str, scheme: str) -> str:
    """What follows ``scheme://`` (in any case) in ``uri``; :class:`BadLocation` when
    ``uri`` does not start with it."""
    prefix = scheme + "://"
    if not isinstance(uri, str) or uri[: len(prefix)].lower() != prefix:
        raise BadLocation(f"not a {prefix} location: {shown(uri)!r}")
    return uri[len(prefix) :]


def split_once(uri: str, kind: str, form: str) -> tuple[str, str]:
    """``(scheme, rest)`` of ``scheme://rest``; :class:`BadLocation` (expected ``form``)
    without a "://", or with a second one (``s3://https://host/...``)."""
    scheme, sep, rest = uri.partition("://")
    if not sep or "://" in rest:
        raise BadLocation(f"malformed {kind} location {shown(uri)!r}: expected {form}")
    return scheme, rest


@contextlib.contextmanager
def naming(uri: str) -> Iterator[None]:
    """Add ``uri`` (as :func:`shown`) to a :class:`BadLocation` raised in the block."""
    try:
        yield
    except BadLocation as exc:
        raise BadLocation(f"{exc}: {shown(uri)!r}") from None
