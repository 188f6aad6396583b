"""The contract between the core and a storage driver.

A driver moves bytes and speaks its location URI; nothing else. The core
(:mod:`imgstore.pipeline`, :mod:`imgstore.api`) does chunking, hashing, size
checks, caps, progress and cleanup for every driver, so a driver author writes:

* :meth:`Driver.options` - the oslo.config options the driver reads;
* :meth:`Driver.begin_write` - returns a :class:`Writer` that receives chunks
  and, on :meth:`Writer.commit`, makes the image visible at its location
  (or, on :meth:`Writer.abort`, removes whatever was written);
* :meth:`Driver.open`, :meth:`Driver.size`, :meth:`Driver.delete`.

Drivers are found through the ``imgstore.drivers`` entry-point group.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import re
import secrets
import ssl
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from oslo_config import cfg

from imgstore.capabilities import Capability
from imgstore.exceptions import (
    BackendError,
    BadConfiguration,
    BadLocation,
    Duplicate,
    ImgstoreError,
    InvalidArgument,
    NotFound,
    NotSupported,
    StorageFull,
)
from imgstore.location import Location, parse
from imgstore.parallel import Space, capacity
from imgstore.scrubbing import backend_error
from imgstore.threads import import_here

T = TypeVar("T")

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024

IMAGE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
"""What an image id may look like (it becomes a file, object or image name); use fullmatch."""

PARTIAL_SUFFIX = ".imgstore-partial"
"""Ends the temporary name of an image being written (filesystem, VMware); only writes
make such names, so ``imgstore cleanup`` can tell what an interrupted write left."""
_PARTIAL_TOKEN_HEX = 12
_PARTIAL_ID_CHARS = 200
"""Characters of the image id a temporary name keeps (file names stop at 255)."""


def partial_name(image_id: str) -> str:
    """A new temporary name for a write of ``image_id``: ``.<id>.<12 hex>.imgstore-partial``."""
    token = secrets.token_hex(_PARTIAL_TOKEN_HEX // 2)
    return f".{image_id[:_PARTIAL_ID_CHARS]}.{token}{PARTIAL_SUFFIX}"


def is_partial_name(name: str, image_id: str | None = None) -> bool:
    """Whether ``name`` is one :func:`partial_name` makes (for ``image_id``, when given)."""
    if not (name.startswith(".") and name.endswith(PARTIAL_SUFFIX)):
        return False
    stem, dot, token = name[1 : -len(PARTIAL_SUFFIX)].rpartition(".")
    if not (stem and dot and len(token) == _PARTIAL_TOKEN_HEX):
        return False
    if any(c not in "0123456789abcdef" for c in token):
        return False
    return image_id is None or stem == image_id[:_PARTIAL_ID_CHARS]


class DriverConf:
    """Read-only view of one backend's option values.

    ``conf.filesystem_store_datadir`` reads the backend's group; where that
    group leaves an option at its default, a value set in ``[backend_defaults]``
    applies (multi-store form only).
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def get(self, name: str, default: Any = None) -> Any:
        """The value of ``name``, or ``default`` when the driver declared no such option."""
        return self._values.get(name, default)

    def __repr__(self) -> str:
        return f"<DriverConf {sorted(self._values)}>"


@dataclasses.dataclass(frozen=True)
class Leftover:
    """Something an interrupted write left in a backend, recognised by the marker the
    driver sets while writing (a partial file's suffix, an open multipart upload,
    segments no manifest names, an image still flagged as being written...)."""

    backend: str
    kind: str
    """What it is, in the backend's words: ``partial file``, ``multipart upload``..."""
    name: str
    """Where it is in the backend; never carries a secret."""
    age: float | None = None
    """Seconds since the write started (or the thing was last touched), when known."""
    size: int | None = None
    """Bytes it holds, when known."""
    ref: Any = dataclasses.field(default=None, compare=False, repr=False)
    """The driver's own handle for :meth:`Driver.remove_leftover`."""

    @staticmethod
    def aged(started: Any, now: float, older_than: float) -> tuple[bool, float | None]:
        """Whether :meth:`Driver.leftovers` lists what a write begun at ``started`` (a
        ``time.time()`` stamp, as a number or text) left, and its age at ``now``. An
        unreadable stamp is an unknown age: listed, as nothing says the write is recent."""
        try:
            age: float | None = now - float(started)
        except (TypeError, ValueError):
            age = None
        return age is None or age >= older_than, age


@dataclasses.dataclass(frozen=True)
class WriteLimits:
    """What one image in a backend can be, declared by its driver
    (:meth:`Driver.write_limits`): at most ``most_pieces`` pieces (S3 parts, Swift
    segments; 1: one object) of at most ``largest_piece`` bytes, starting at
    ``first_piece`` bytes and grown as :func:`imgstore.parallel.piece_size` grows them.

    The core refuses an image of known size that cannot fit before a byte is written,
    and stops one of unknown size as soon as it outgrows them (its write aborted)."""

    largest_piece: int
    most_pieces: int = 1
    first_piece: int | None = None
    """The driver's piece size when nothing forces more (None: ``largest_piece``)."""
    growth_every: int | None = None
    """Unknown size: pieces between two doublings (None: a tenth of ``most_pieces``)."""
    pieces: str = "pieces"
    """What the backend calls them, for messages: ``parts``, ``segments``..."""
    why: str = ""
    """Where the limits come from (option names, the server's limits), for messages."""

    def capacity(self, size: int | None = None) -> int:
        """The most bytes an image of ``size`` (None: unknown, growing pieces) can hold."""
        first = self.first_piece or self.largest_piece
        return capacity(first, self.most_pieces, self.largest_piece, size, self.growth_every)

    def refusal(self, describe: str, size: int | None) -> InvalidArgument:
        """The error for an image of ``size`` bytes (None: an unknown size that outgrew
        :meth:`capacity`) that cannot fit."""
        held = self.capacity(size)
        shape = f"{self.most_pieces} {self.pieces} of at most {self.largest_piece} bytes"
        if size is not None:
            return InvalidArgument(
                f"{describe} ({size} bytes) does not fit: at most {shape} ({self.why}), "
                f"{held} bytes in all"
            )
        return InvalidArgument(
            f"{describe} needs more than {self.most_pieces} {self.pieces}, more than the "
            f"{held} bytes they hold ({self.why})"
        )


@dataclasses.dataclass(frozen=True)
class Written:
    """What a writer reports on commit: where the image is, and extra metadata."""

    location: Location
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Writer(abc.ABC):
    """Receives one image's bytes; created by :meth:`Driver.begin_write`.

    The core (:func:`imgstore.pipeline.write_image`) holds the order, so a writer
    needs no guard of its own: :meth:`write` with consecutive chunks, then
    :meth:`commit` once, told the size it counted and checked; :meth:`abort`
    once when anything failed, the commit included, and never after a commit
    that succeeded. The buffer passed to :meth:`write` is reused by the core
    once ``write`` returns: a writer that keeps the bytes for later must copy them,
    or lend the core its own memory to read them into (:meth:`space`).
    """

    shown: str = ""
    """Where the image goes, as messages show it (redacted); the repr names it when set."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.shown}>" if self.shown else super().__repr__()

    def space(self, size: int) -> Space | None:
        """Memory of the writer's own (at most ``size`` bytes) for the core to read the
        next chunk into, then pass to :meth:`write` as it is, so the writer keeps the
        bytes without copying them; None (the default, or when it has no room): the core
        reads into a buffer of its own. The core fills it only once every hash of what it
        held before is done, so a writer may lend the same memory again as soon as it no
        longer needs the bytes (a piece uploaded)."""
        return None

    @abc.abstractmethod
    def write(self, chunk: memoryview) -> None:
        """Store the next chunk."""

    @abc.abstractmethod
    def commit(self, size: int) -> Written:
        """Make the image visible under its final location and return it; ``size``
        is the number of bytes :meth:`write` received in all."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Remove everything written so far (also after a failed :meth:`commit`);
        should not raise."""

    @property
    def accepted(self) -> int | None:
        """Bytes the backend has taken so far, for a writer that holds bytes back after
        :meth:`write` returns (a buffer sent whole at commit, parts still uploading);
        None (the default): whatever ``write`` took is with the backend once it returns.
        The core's progress counts this, so 100% means stored."""
        return None


class ReadStream(abc.ABC):
    """An open image (or byte range of one), as returned by :meth:`Driver.open`."""

    size: int
    """How many bytes iterating will yield."""

    version: str | None = None
    """What identifies the bytes being read (an ETag, an upload date, a snapshot), when
    the backend tells. The core resumes a read that broke off (:attr:`Driver.read_resumes`)
    only where it can check that the reopened stream reads the same version."""

    @abc.abstractmethod
    def __iter__(self) -> Iterator[bytes]:
        """Yield the bytes in order, in chunks of any size."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the stream holds; called once by the core."""


def read_range(
    read: Callable[[int, int], bytes], offset: int, count: int, chunk: int
) -> Generator[bytes, None, None]:
    """``count`` bytes from ``offset`` through ``read(at, n)`` with ``n <= chunk``.

    A read may return more or fewer than ``n`` bytes: what goes beyond ``count`` is cut
    off; an empty read ends early (the core's :class:`~imgstore.pipeline.ImageReader`
    reports the short read).
    """
    at, end = offset, offset + count
    while at < end:
        data = read(at, min(chunk, end - at))
        if not data:
            return
        if len(data) > end - at:
            data = data[: end - at]
        at += len(data)
        yield data


class RangeStream(ReadStream):
    """A :class:`ReadStream` of :func:`read_range`; :meth:`close` calls ``release`` once."""

    def __init__(
        self,
        size: int,
        read: Callable[[int, int], bytes],
        chunk: int,
        *,
        offset: int = 0,
        release: Callable[[], None] | None = None,
        version: str | None = None,
        name: str = "RangeStream",
    ) -> None:
        self.size = size
        self.version = version
        self._read = read
        self._chunk = chunk
        self._offset = offset
        self._release = release
        self._open = True
        self._name = name

    def __iter__(self) -> Iterator[bytes]:
        if self._open:
            yield from read_range(self._read, self._offset, self.size, self._chunk)

    def close(self) -> None:
        release, self._release, self._open = self._release, None, False
        if release is not None:
            release()

    def __repr__(self) -> str:
        return f"<{self._name} size={self.size}>"


class _Closable(Protocol):
    def close(self) -> None: ...


def close_quietly(thing: _Closable, what: str, log: logging.Logger) -> None:
    """Close ``thing``; a failure is logged at debug (closing must not fail the caller)."""
    try:
        thing.close()
    except Exception:
        log.debug("closing %s failed", what)


class Driver(abc.ABC):
    """Base class of storage drivers. One instance serves one configured backend."""

    name: ClassVar[str] = ""
    """The entry-point name, as used in ``stores`` / ``enabled_backends``."""

    location_class: ClassVar[type[Location]]
    """The :class:`Location` subclass this driver emits and reads."""

    reads_ranges: bool = True
    """Whether :meth:`open` reads a byte range without reading what comes before it."""

    thin: bool = False
    """Whether runs of zero bytes are stored as holes (set from the driver's options)."""

    read_resumes: int = 0
    """How often the core reopens a read that broke off (the connection dropped, a
    temporary error, fewer bytes than announced) at the byte where it stopped; only for a
    driver with :attr:`Capability.READ_RANDOM` whose streams give a :attr:`ReadStream.version`."""

    read_ahead: int = 0
    """Chunks the core fetches ahead of the caller on a worker thread (0: none).

    For client libraries that read synchronously, so the next request is on
    the wire while the caller uses the current chunk; memory grows by this
    many chunks per open image.
    """

    chain_errors: ClassVar[bool] = True
    """Whether :meth:`mapped` raises the imgstore error ``from`` the library's (True) or
    ``from None`` (False: the library's traceback is left out)."""

    def __init__(self, conf: DriverConf, backend: str) -> None:
        self.conf = conf
        self.backend = backend
        self.chunk_size = DEFAULT_CHUNK_SIZE
        try:
            self.configure()
        except ImgstoreError as exc:  # its message, scrubbed (other errors pass unchanged)
            backend_error(exc, f"backend {backend!r}: configuring", self.secrets)
            raise

    @property
    def capabilities(self) -> Capability:
        """What this backend can do, read from what its driver implements: reads always
        (ranges unless :attr:`reads_ranges` is False), writes if it has
        :meth:`begin_write` and :meth:`can_write`, deletes if it has :meth:`delete`,
        thin provisioning if :attr:`thin`."""
        cls = type(self)
        caps = Capability.READ | (Capability.READ_RANDOM if self.reads_ranges else Capability.NONE)
        if cls.begin_write is not Driver.begin_write and self.can_write():
            caps |= Capability.WRITE
        if cls.delete is not Driver.delete:
            caps |= Capability.DELETE
        return caps | (Capability.THIN_PROVISIONING if self.thin else Capability.NONE)

    def can_write(self) -> bool:
        """Whether this backend's settings let it add images (a driver that can write
        only when configured for it says no otherwise)."""
        return True

    @property
    def write_chunk_size(self) -> int:
        """Bytes per chunk the core hands to :meth:`Writer.write` (``chunk_size`` unless the
        driver writes better in larger pieces than it reads)."""
        return self.chunk_size

    @classmethod
    def options(cls) -> list[cfg.Opt]:
        """The oslo.config options this driver reads, with help text."""
        return []

    def configure(self) -> None:  # noqa: B027 - optional hook
        """Check ``self.conf`` and prepare; raise :class:`BadConfiguration` when wrong."""

    def require(self, *options: str) -> None:
        """Raise :class:`BadConfiguration` naming those of ``options`` left unset (empty)."""
        missing = [name for name in options if not self.conf.get(name)]
        if missing:
            raise BadConfiguration(f"backend {self.backend!r}: set {', '.join(missing)}")

    def not_installed(self, what: str) -> BadConfiguration:
        """The error of a driver whose library ``what`` (its pip name) is not installed."""
        return BadConfiguration(
            f"backend {self.backend!r}: the {self.name} driver needs {what}: "
            f"pip install 'imgstore[{self.name}]'"
        )

    def needs(self, what: str, *modules: str) -> None:
        """Import ``modules`` now, in the calling thread (:func:`imgstore.threads.import_here`);
        :meth:`not_installed` ``what`` when one of them cannot be imported."""
        try:
            import_here(*modules)
        except ImportError:
            raise self.not_installed(what) from None

    def secrets(self) -> list[str]:
        """Configured values that must never appear in output (tests check this)."""
        return []

    @property
    def schemes(self) -> tuple[str, ...]:
        """The URI schemes this driver reads."""
        return self.location_class.schemes

    def parse(self, uri: str | Location) -> Location:
        """Parse ``uri`` and check it is one of this driver's locations."""
        location = parse(uri)
        if not isinstance(location, self.location_class):
            raise BadLocation(f"{location.redacted()} is not a {self.name} location")
        return location

    def owns(self, location: Location) -> bool:
        """Whether ``location`` belongs to this backend (not merely this scheme)."""
        return isinstance(location, self.location_class)

    def write_limits(self) -> WriteLimits | None:
        """What one image here can be (None, the default: nothing but the storage's room);
        asked before every add, so it may reflect the server's current settings."""
        return None

    def begin_write(self, image_id: str, size: int | None) -> Writer:
        """Start writing image ``image_id``; ``size`` is None when unknown (and, when
        known, within :meth:`write_limits`: the core checked)."""
        raise NotSupported(f"backend {self.backend!r} ({self.name}) cannot add images")

    @abc.abstractmethod
    def open(self, location: Location, offset: int, length: int | None) -> ReadStream:
        """Open ``length`` bytes (None: to the end) from ``offset``.

        Only called with a non-zero ``offset`` or a ``length`` when the driver
        declares :attr:`Capability.READ_RANDOM`; use :func:`clamp_range`.
        """

    @abc.abstractmethod
    def size(self, location: Location) -> int:
        """The image's size in bytes."""

    def delete(self, location: Location) -> None:
        """Delete the image; :class:`NotFound` if it is not there."""
        raise NotSupported(f"backend {self.backend!r} ({self.name}) cannot delete images")

    @staticmethod
    def found(fn: Callable[..., object], /, *args: Any, **kwargs: Any) -> bool:
        """Whether ``fn(*args, **kwargs)`` (a look-up, a delete) found its object: False
        when it raised :class:`NotFound`; other errors pass."""
        try:
            fn(*args, **kwargs)
        except NotFound:
            return False
        return True

    def duplicate(self, image_id: str) -> Duplicate:
        """The error for an add of ``image_id``, which is here already."""
        return Duplicate(f"image {image_id} already exists in backend {self.backend!r}")

    def with_room(
        self, places: Sequence[T], rank: Callable[[T], int], free: Callable[[T], int],
        size: int, what: str,
    ) -> T:  # fmt: skip
        """Of ``places`` (data directories, datastores), the one of highest ``rank`` with
        room for ``size`` bytes; within a rank the one with the most ``free`` bytes (the first
        of equals). ``free`` is asked of a rank's places only when no place of a higher rank
        has room; :class:`StorageFull` (``no <what> has room``) when none has."""
        for top in sorted({rank(p) for p in places}, reverse=True):
            room, best = max(((free(p), p) for p in places if rank(p) == top), key=lambda r: r[0])
            if room >= size:
                return best
        raise StorageFull(f"backend {self.backend!r}: no {what} has room for {size} bytes")

    def location_for(self, image_id: str) -> Location | None:
        """Where :meth:`begin_write` of ``image_id`` puts the image, or None when unknown.

        Optional hook: lets a caller that journals its writes (``imgstore
        migrate``) record the target before the bytes start to flow.
        """
        return None

    def discard(self, image_id: str) -> bool:
        """Remove whatever a write of ``image_id`` left here, committed or not.

        Optional hook for a caller that knows it was writing ``image_id`` when
        it was killed (no :meth:`Writer.abort` ran): a half-written image must
        not block the retry. Returns whether anything was removed. The default
        deletes the committed image at :meth:`location_for`, if any.
        """
        location = self.location_for(image_id)
        if location is None:
            return False
        try:
            self.delete(location)
        except NotFound:
            return False
        return True

    def copy_from(self, source: Driver, location: Location, image_id: str) -> Written | None:
        """Copy ``location`` of ``source`` into this backend as ``image_id`` by itself.

        Optional hook, called by ``Stores.copy`` only when ``source`` is an
        instance of this same driver class: copy inside the storage (without
        the bytes passing through Python) and return where the copy is, or
        return None to have the core stream the bytes. The core then hashes
        the source and checks the copy against it, and deletes the copy if
        anything fails.
        """
        return None

    def leftovers(self, older_than: float) -> Iterator[Leftover]:
        """What interrupted writes left here, started at least ``older_than`` seconds ago.

        A writer cleans up after itself when it can; when it cannot (the
        process was killed, the server went away during the cleanup), what it
        wrote carries a marker, and this finds it by that marker, never by
        guessing: nothing that a finished add made, or that another program
        keeps in the same storage, is ever listed. ``older_than`` spares
        writes that may still be running. Drivers whose writes cannot leave
        anything behind keep this default, which finds nothing.
        """
        return iter(())

    def remove_leftover(self, leftover: Leftover) -> None:
        """Remove one item :meth:`leftovers` found; gone already is not an error."""
        raise NotSupported(f"backend {self.backend!r} ({self.name}) has no leftovers to remove")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and sessions."""

    # -- errors ------------------------------------------------------------------

    def library_errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions :meth:`mapped` maps: those of the driver's client library
        (default: any :class:`Exception`); others pass unchanged."""
        return (Exception,)

    def map_error(self, exc: BaseException, doing: str) -> ImgstoreError:
        """The imgstore error for ``exc``, raised while ``doing``: an imgstore error as it
        is, any other as :meth:`classify_error` says."""
        return exc if isinstance(exc, ImgstoreError) else self.classify_error(exc, doing)

    def classify_error(self, exc: BaseException, doing: str) -> ImgstoreError:
        """The imgstore error for ``exc``, an exception of the client library raised while
        ``doing`` (drivers override it with their library's kinds). The default is a
        :class:`BackendError` with :meth:`failed`'s message (the core scrubs it)."""
        return BackendError(self.failed(doing, exc))

    def failed(self, doing: str, exc: BaseException) -> str:
        """``backend 'b': <doing> failed: <exception type>: <exception>``."""
        return f"backend {self.backend!r}: {doing} failed: {type(exc).__name__}: {exc}"

    @contextlib.contextmanager
    def mapped(self, doing: str) -> Iterator[None]:
        """Raise a :meth:`library_errors` exception raised in the block as
        :meth:`map_error` maps it (chained per :attr:`chain_errors`); imgstore errors
        pass unchanged."""
        try:
            yield
        except ImgstoreError:
            raise
        except self.library_errors() as exc:
            error = self.map_error(exc, doing)
            if error is exc:
                raise
            raise error from (exc if self.chain_errors else None)

    def call_mapped(self, doing: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, its errors :meth:`mapped`."""
        with self.mapped(doing):
            return fn(*args, **kwargs)


def read_resumes_option(name: str, default: int = 3) -> cfg.IntOpt:
    """The option that sets a driver's :attr:`Driver.read_resumes`, declared here once
    for every driver (``name``: the driver's, e.g. glance_store's
    ``swift_store_retry_get_count``)."""
    return cfg.IntOpt(
        name,
        default=default,
        min=0,
        help="How often a read that broke off (the connection dropped, a temporary "
        "error) is resumed where it stopped, with a ranged request for the rest; only "
        "when the image is the same one (its ETag, or what the backend has like it). "
        "0: never.",
    )


def retries_option(name: str, default: int = 3, minimum: int = 0) -> cfg.IntOpt:
    """The option of how often a driver tries a failed request again, declared here once
    for every network driver (``name``: the driver's, e.g. glance_store's
    ``cinder_http_retries``)."""
    return cfg.IntOpt(
        name,
        default=default,
        min=minimum,
        help="How often a request that failed for a reason worth retrying (the connection "
        "dropped or timed out, the server is busy or answered 5xx) is tried again, waiting "
        "longer before each try (exponentially, capped). Only requests that are safe to "
        "repeat: reads, sizes, deletes, part and segment uploads; never a commit that may "
        "already have happened.",
    )


def timeout_option(
    name: str, default: float, what: str = "for the server's next bytes"
) -> cfg.FloatOpt:
    """The option of one of a driver's network timeouts, in seconds, declared here once
    (``what``: what it waits for, e.g. ``"to connect"``)."""
    return cfg.FloatOpt(name, default=default, min=0.1, help=f"Seconds to wait {what}.")


def clamp_range(total: int, offset: int, length: int | None) -> tuple[int, int]:
    """Return ``(offset, count)`` for a read of ``length`` from ``offset`` in ``total`` bytes.

    An offset past the end is an error; a length running past the end is cut.
    """
    if offset > total:
        raise InvalidArgument(f"offset {offset} is past the end of the image ({total} bytes)")
    remaining = total - offset
    return offset, remaining if length is None else min(length, remaining)


_CERT_VERIFY_RE = re.compile(r"certificate verify failed: ([^()'\"\n]+)")


def tls_verify_failure(exc: BaseException) -> str | None:
    """Why the server's TLS certificate was refused, when ``exc`` is (or wraps) that refusal.

    Looks through what requests, urllib3 and botocore wrap (causes, contexts,
    arguments, ``reason``, botocore's ``kwargs``) for an
    :class:`ssl.SSLCertVerificationError`, then at the text; returns its short
    reason (``unable to get local issuer certificate``, ``Hostname mismatch, ...``)
    or None for any other error. Drivers map it to a :class:`BackendError` that
    says so: retrying cannot help.
    """
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo and len(seen) < 32:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, ssl.SSLCertVerificationError):
            return str(err.verify_message or err.reason or "certificate verify failed").strip()
        kwargs = getattr(err, "kwargs", None)
        nested = [err.__cause__, err.__context__, getattr(err, "reason", None), *err.args]
        nested += list(kwargs.values()) if isinstance(kwargs, dict) else []
        todo += [e for e in nested if isinstance(e, BaseException)]
    text = str(exc)
    match = _CERT_VERIFY_RE.search(text)
    if match:
        return match.group(1).strip()
    return "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in text else None


def tls_refused(what: str, server: str, reason: str, option: str) -> BackendError:
    """The error of ``server``'s certificate refused for ``reason`` (as
    :func:`tls_verify_failure` found it) while doing ``what``; ``option`` is the driver's
    option that names the CA to trust."""
    return BackendError(
        f"{what}: TLS certificate verification failed for {server} ({reason}); "
        f"set {option} to the CA that signed its certificate"
    )
