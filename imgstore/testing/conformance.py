"""The conformance tests: pytest test classes a driver's test module subclasses.

Every test talks to the backend through :class:`imgstore.Stores`, so what is
checked is the whole path a user takes: the core pipeline plus the driver
against its real server. Sizes are expressed in the backend's chunk size so
that chunk boundaries are crossed whatever the driver's chunking.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import itertools
import logging
import multiprocessing
import os
import queue
import random
import tempfile
import threading
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pytest

from imgstore.api import AddResult, Stores
from imgstore.capabilities import Capability
from imgstore.exceptions import (
    BadLocation,
    ChecksumMismatch,
    Duplicate,
    ImgstoreError,
    InvalidArgument,
    NotFound,
    SizeCapExceeded,
    SizeMismatch,
)
from imgstore.location import parse
from imgstore.pipeline import ImageReader

LOG = logging.getLogger(__name__)

MiB = 1 << 20
BIG = 64 * MiB
_BLOCK = 64 * 1024
_KEEP_UP_TO = 16 * MiB
ODD_PIECES = (1, 4093, 65537, 3, MiB + 1, 7919)
"""Piece sizes a generator source cycles through: odd, none a multiple of a chunk."""
SMALL_PIECES = (4093, 1, 2047)


@dataclasses.dataclass
class StoreUnderTest:
    """One configured backend for the conformance suite to exercise."""

    stores: Stores
    backend: str
    """The backend's name in ``stores``."""
    secrets: Sequence[str] = ()
    """Configured secrets that must never show in logs, messages, reprs or locations."""
    seed: Callable[[str, bytes], str] | None = None
    """Read-only backends: place bytes under an id out of band, return the location URI."""
    listing: Callable[[], set[str]] | None = None
    """Every raw entry the backend holds, to prove that nothing is left behind."""
    max_size: int | None = None
    """Skip sizes larger than this (small test servers); None: all sizes incl. 64 MiB."""
    make_stores: Callable[[dict[str, Any]], Stores] | None = None
    """Build another Stores for the same backend with extra ``[glance_store]`` options
    (such as ``image_size_cap``); the caller closes it. None: those tests skip."""
    no_secrets: bool = False
    """The backend has no secret at all (a local filesystem): the secret tests still run
    their failing operations and check each fails as it must, and fail if the driver
    reports a secret after all. False and no secret known: those tests skip."""
    last_writer_wins: str = ""
    """Why this backend cannot refuse all but one of racing adds of one id (its server
    has no atomic create-if-absent: concurrent creates all succeed, the last one's
    object stays). The race tests then fail as expected (xfail, with this reason) when
    more than one add reported success, after checking that the image holds the bytes
    of one of them. Empty: exactly one add must win."""

    @property
    def chunk(self) -> int:
        """The chunk size the core writes this backend in (the sizes around its edges, and
        how far past a size cap an upload may be read, follow from it)."""
        return self.stores.driver(self.backend).write_chunk_size

    @property
    def capabilities(self) -> Capability:
        """What the backend declares it can do."""
        return self.stores.capabilities(self.backend)

    def config_files(self) -> list[str]:
        """The configuration files :attr:`stores` was read from, so that another process
        can build the same backend (empty when it was built from an in-memory
        configuration: the tests that need another process then skip)."""
        conf = self.stores._conf  # the kit is part of the package: it may look inside
        return [str(path) for path in (getattr(conf, "config_file", None) or [])]

    def all_secrets(self) -> list[str]:
        """The declared secrets plus those the driver itself reports."""
        found = [*self.secrets, *self.stores.driver(self.backend).secrets()]
        return sorted({s for s in found if s})

    def snapshot(self) -> set[str] | None:
        """The current listing, or None when the backend offers none."""
        return set(self.listing()) if self.listing is not None else None

    def assert_unchanged(self, before: set[str] | None) -> None:
        """Fail when the listing differs from ``before`` (skipped without a listing)."""
        if before is None:
            return
        after = self.snapshot()
        assert after is not None
        assert after == before, (
            f"backend {self.backend!r} changed: left behind {sorted(after - before)}, "
            f"removed {sorted(before - after)}"
        )

    def skip_if_too_big(self, size: int) -> None:
        """Skip the test when ``size`` exceeds :attr:`max_size`."""
        if self.max_size is not None and size > self.max_size:
            pytest.skip(f"{size} bytes is more than this backend's test max_size {self.max_size}")


class Payload:
    """Deterministic pseudo-random bytes, generated on demand.

    Large payloads are never held in memory: every consumer regenerates the
    bytes from the seed. :attr:`data` holds them only up to 16 MiB (or never,
    with ``keep=False``).
    """

    def __init__(self, size: int, seed: int = 0, keep: bool = True) -> None:
        self.size = size
        self.seed = seed
        hashes = {
            "md5": hashlib.md5(usedforsecurity=False),
            "sha512": hashlib.sha512(),
            "sha256": hashlib.sha256(),
        }
        kept: bytearray | None = bytearray() if keep and size <= _KEEP_UP_TO else None
        for block in self.blocks():
            for h in hashes.values():
                h.update(block)
            if kept is not None:
                kept += block
        self._digests = {name: h.hexdigest() for name, h in hashes.items()}
        self.data: bytes | None = bytes(kept) if kept is not None else None

    @property
    def md5(self) -> str:
        """The md5 hex digest (the legacy ``checksum``)."""
        return self._digests["md5"]

    def hexdigest(self, algo: str) -> str:
        """The hex digest of the payload with hashlib's ``algo``."""
        if algo not in self._digests:
            h = hashlib.new(algo)
            for block in self.blocks():
                h.update(block)
            self._digests[algo] = h.hexdigest()
        return self._digests[algo]

    def blocks(self) -> Iterator[bytes]:
        """The bytes in 64 KiB blocks."""
        rng = random.Random(self.seed)
        left = self.size
        while left > 0:
            n = min(_BLOCK, left)
            yield rng.randbytes(n)
            left -= n

    def pieces(self, sizes: Sequence[int] = ODD_PIECES) -> Iterator[bytes]:
        """The bytes as a generator of pieces cycling through ``sizes``."""
        return rechunk(self.blocks(), sizes)

    def file(self) -> io.RawIOBase:
        """The bytes as a read-only file object (``readinto`` with short reads)."""
        return _GeneratedFile(self.blocks())

    def __repr__(self) -> str:
        return f"<Payload size={self.size} seed={self.seed}>"


def rechunk(blocks: Iterable[bytes], sizes: Sequence[int]) -> Iterator[bytes]:
    """Re-cut a stream of bytes into pieces cycling through ``sizes``."""
    buf = bytearray()
    wanted = itertools.cycle(sizes)
    want = next(wanted)
    for block in blocks:
        buf += block
        while len(buf) >= want:
            yield bytes(buf[:want])
            del buf[:want]
            want = next(wanted)
    if buf:
        yield bytes(buf)


class _GeneratedFile(io.RawIOBase):
    """A raw file over generated blocks; each readinto returns at most one block."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        super().__init__()
        self._blocks = blocks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = memoryview(next(self._blocks, b""))
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class SourceFailure(Exception):
    """Raised on purpose by a test source in the middle of an upload."""


class _Counting:
    """Wraps an iterable of bytes and counts what was taken from it."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = pieces
        self.consumed = 0

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._pieces:
            self.consumed += len(piece)
            yield piece


def _failing_source(
    pieces: Iterable[bytes], fail_after: int, exc: BaseException
) -> Iterator[bytes]:
    sent = 0
    for piece in pieces:
        if sent + len(piece) > fail_after:
            piece = piece[: fail_after - sent]
            if piece:
                yield piece
            raise exc
        sent += len(piece)
        yield piece
    raise exc


@dataclasses.dataclass
class Drained:
    """What reading a whole :class:`ImageReader` gave."""

    count: int
    sha512: str
    data: bytes | None


def drain(reader: ImageReader, keep: bool = True) -> Drained:
    """Read ``reader`` to the end, checking each chunk is ``bytes``; hash it on the way."""
    h = hashlib.sha512()
    kept: list[bytes] | None = [] if keep else None
    count = 0
    with reader:
        for chunk in reader:
            assert isinstance(chunk, bytes), f"reader yielded {type(chunk).__name__}, not bytes"
            h.update(chunk)
            count += len(chunk)
            if kept is not None:
                kept.append(chunk)
    return Drained(count, h.hexdigest(), b"".join(kept) if kept is not None else None)


def _size_of(name: str, chunk: int) -> int:
    return {
        "0": 0,
        "1": 1,
        "chunk-1": chunk - 1,
        "chunk": chunk,
        "chunk+1": chunk + 1,
        "3chunk+7": 3 * chunk + 7,
        "64MiB": BIG,
    }[name]


# A driver is given the same writes whatever the source: the core fills whole chunk
# buffers from a file and from pieces alike (tests/unit/test_pipeline.py shows it). So
# the kit adds each size once with its size known and once unknown, which drivers do
# treat differently, and alternates the source kinds from one size to the next: every
# backend still meets a file and pieces, with known and unknown sizes.


def _round_trip(size_name: str, known: str, unknown: str, *marks: Any) -> list[Any]:
    return [
        pytest.param(size_name, mode, id=f"{size_name}-{mode}", marks=marks)
        for mode in (f"known-{known}", f"unknown-{unknown}")
    ]


ROUND_TRIP_CASES = [
    *_round_trip("0", "file", "pieces"),
    *_round_trip("1", "pieces", "file"),
    *_round_trip("chunk-1", "file", "pieces"),
    *_round_trip("chunk", "pieces", "file"),
    *_round_trip("chunk+1", "file", "pieces"),
    *_round_trip("3chunk+7", "pieces", "file"),
    *_round_trip("64MiB", "file", "pieces", pytest.mark.slow),
]
"""(size name, mode) of :meth:`ConformanceTests.test_round_trip`."""
READ_SIZES = ["0", "1", "chunk-1", "chunk", "chunk+1", "3chunk+7"]

# name: (offset, length) as functions of (chunk, total); total is 3 chunks + 7.
RANGES: dict[str, Callable[[int, int], tuple[int, int | None]]] = {
    "whole": lambda c, n: (0, None),
    "length-0-at-start": lambda c, n: (0, 0),
    "length-0-inside": lambda c, n: (c + 3, 0),
    "small-inside": lambda c, n: (1, 10),
    "across-a-chunk-edge": lambda c, n: (c - 1, 2),
    "one-aligned-chunk": lambda c, n: (c, c),
    "from-offset-to-end": lambda c, n: (2 * c + 1, None),
    "length-past-end": lambda c, n: (n - 5, 100),
    "offset-at-end": lambda c, n: (n, None),
    "offset-at-end-with-length": lambda c, n: (n, 10),
}

# name: (declared size, actual size) as functions of the chunk size, and the source kind
# the stream comes from (alternated: see ROUND_TRIP_CASES).
MISMATCHES: dict[str, tuple[Callable[[int], tuple[int, int]], str]] = {
    "short-empty": (lambda c: (1, 0), "file"),
    "short-by-one": (lambda c: (10, 9), "pieces"),
    "short-at-chunk-edge": (lambda c: (c + 1, c), "pieces"),
    "short-after-chunks": (lambda c: (2 * c + 5, 2 * c + 4), "file"),
    "long-from-zero": (lambda c: (0, 1), "pieces"),
    "long-by-one-at-chunk-edge": (lambda c: (c, c + 1), "file"),
    "long-by-many": (lambda c: (10, 3 * c), "file"),
}


def _exception_texts(exc: BaseException) -> list[str]:
    """Everything an exception (and its chain) would show in a traceback."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return texts


class _Images:
    """Places images for a test and deletes what it added afterwards."""

    def __init__(self, sut: StoreUnderTest) -> None:
        self.sut = sut
        self._added: list[str] = []
        self._lock = threading.Lock()

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    def add(
        self, image_id: str, data: Any, size: int | None, stores: Stores | None = None, **kw: Any
    ) -> AddResult:
        result = (stores or self.sut.stores).add(
            image_id, data, size=size, backend=self.sut.backend, **kw
        )
        with self._lock:
            self._added.append(result.location)
        return result

    def track(self, location: str) -> None:
        """Delete ``location`` at cleanup too (an image another process added)."""
        with self._lock:
            self._added.append(location)

    def place(self, data: bytes) -> tuple[str, str]:
        """Put ``data`` under a new id (``seed`` or ``add``); return (id, location)."""
        image_id = self.new_id()
        if self.sut.seed is not None:
            return image_id, self.sut.seed(image_id, data)
        if Capability.WRITE not in self.sut.capabilities:
            pytest.fail(f"backend {self.sut.backend!r} is read-only: give StoreUnderTest a seed")
        return image_id, self.add(image_id, data, len(data)).location

    def missing_location(self) -> str:
        """A well-formed location of this backend where no image is."""
        image_id, location = self.place(b"placeholder")
        if image_id in location:
            return location.replace(image_id, self.new_id())
        if Capability.DELETE in self.sut.capabilities:
            self.sut.stores.delete(location, backend=self.sut.backend)
            return location
        pytest.skip("cannot make a location of a missing image: the id is not in the URI")

    def cleanup(self) -> None:
        if Capability.DELETE not in self.sut.capabilities:
            return
        for location in self._added:
            try:
                self.sut.stores.delete(location, backend=self.sut.backend)
            except NotFound:
                pass
            except ImgstoreError:
                LOG.warning("conformance cleanup could not delete %s", location, exc_info=True)


class ReadConformanceTests:
    """Read-side conformance: whole and ranged reads, sizes, NotFound, no secrets shown.

    Subclass it and define a ``store_under_test`` fixture; works with a
    read-only backend when :attr:`StoreUnderTest.seed` is given.
    """

    @pytest.fixture
    def images(self, store_under_test: StoreUnderTest) -> Iterator[_Images]:
        helper = _Images(store_under_test)
        yield helper
        helper.cleanup()

    @pytest.mark.parametrize("size_name", READ_SIZES)
    def test_read_whole_image(
        self, store_under_test: StoreUnderTest, images: _Images, size_name: str
    ) -> None:
        sut = store_under_test
        sut.skip_if_too_big(_size_of(size_name, sut.chunk))
        payload = Payload(_size_of(size_name, sut.chunk), seed=1)
        assert payload.data is not None
        _, location = images.place(payload.data)
        assert sut.stores.backend_for(location) == sut.backend
        assert sut.stores.size(location) == payload.size
        reader = sut.stores.get(location)
        assert reader.size == payload.size
        got = drain(reader)
        assert got.count == payload.size
        assert got.data == payload.data

    def test_ranged_read(self, store_under_test: StoreUnderTest, images: _Images) -> None:
        """Every range of :data:`RANGES` read from one image: native ranged reads where
        the driver has READ_RANDOM, the core's emulation elsewhere. Every range is read,
        and the failure names each one that came back wrong."""
        sut = store_under_test
        chunk = sut.chunk
        sut.skip_if_too_big(3 * chunk + 7)
        payload = Payload(3 * chunk + 7, seed=2)
        assert payload.data is not None
        _, location = images.place(payload.data)
        wrong: list[str] = []
        for case, bounds in sorted(RANGES.items()):
            offset, length = bounds(chunk, payload.size)
            end = None if length is None else offset + length
            expected = payload.data[offset:end]
            what = f"{case} (offset {offset}, length {length})"
            try:
                reader = sut.stores.get(location, offset=offset, length=length, backend=sut.backend)
                got = drain(reader)
            except ImgstoreError as exc:
                wrong.append(f"{what}: {type(exc).__name__}: {exc}")
                continue
            if reader.size != len(expected) or got.count != len(expected):
                wrong.append(
                    f"{what}: {len(expected)} bytes expected, reader.size {reader.size}, "
                    f"{got.count} read"
                )
            elif got.data != expected:
                wrong.append(f"{what}: {got.count} bytes read, not the image's")
        assert not wrong, "ranged reads came back wrong: " + "; ".join(wrong)

    def test_offset_past_end_is_invalid(
        self, store_under_test: StoreUnderTest, images: _Images
    ) -> None:
        sut = store_under_test
        _, location = images.place(b"0123456789")
        with pytest.raises(InvalidArgument):
            drain(sut.stores.get(location, offset=11))
        with pytest.raises(InvalidArgument):
            drain(sut.stores.get(location, offset=12, length=1))

    def test_missing_image_is_not_found(
        self, store_under_test: StoreUnderTest, images: _Images
    ) -> None:
        sut = store_under_test
        missing = images.missing_location()
        with pytest.raises(NotFound):
            drain(sut.stores.get(missing))
        with pytest.raises(NotFound):
            drain(sut.stores.get(missing, backend=sut.backend))
        with pytest.raises(NotFound):
            sut.stores.size(missing)

    def test_read_verifies_hashes(self, store_under_test: StoreUnderTest, images: _Images) -> None:
        sut = store_under_test
        payload = Payload(sut.chunk + 1, seed=3)
        assert payload.data is not None
        _, location = images.place(payload.data)
        good = payload.hexdigest("sha256")
        reader = sut.stores.get(location, hash_algo="sha256", expected_multihash=good)
        assert drain(reader, keep=False).sha512 == payload.hexdigest("sha512")
        assert reader.multihash == good
        sut.stores.verify(
            location, "sha256", multihash=good, checksum=payload.md5, size=payload.size
        )
        bad = "0" * len(good)
        with pytest.raises(ChecksumMismatch):
            drain(sut.stores.get(location, hash_algo="sha256", expected_multihash=bad))
        with pytest.raises(ChecksumMismatch):
            sut.stores.verify(location, "sha512", checksum="0" * 32)
        with pytest.raises(SizeMismatch):
            sut.stores.verify(location, "sha256", size=payload.size + 1)

    def test_concurrent_reads(self, store_under_test: StoreUnderTest, images: _Images) -> None:
        sut = store_under_test
        chunk = sut.chunk
        payload = Payload(2 * chunk + 3, seed=4)
        assert payload.data is not None
        _, location = images.place(payload.data)
        ranges = [(i * (chunk // 5), None if i % 2 else chunk) for i in range(8)]

        def read(offset: int, length: int | None) -> bytes | None:
            return drain(sut.stores.get(location, offset=offset, length=length)).data

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(read, o, n) for o, n in ranges]
            results = [f.result(timeout=300) for f in futures]
        for (offset, length), got in zip(ranges, results, strict=True):
            end = None if length is None else offset + length
            assert got == payload.data[offset:end]

    def test_no_secret_in_read_output(
        self,
        store_under_test: StoreUnderTest,
        images: _Images,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        sut = store_under_test
        secrets = _secrets_or_skip(sut, caplog)
        texts: list[str] = [repr(sut.stores), repr(sut.stores.describe())]
        _, location = images.place(b"some bytes for the secret check")
        # A seeded location is the caller's own input (it may legitimately
        # carry credentials, as old Glance URLs do); one from add() is ours.
        emitted = sut.seed is None
        if emitted:
            texts.append(location)
        reader = sut.stores.get(location, offset=1, length=4)
        texts.append(repr(reader))
        drain(reader)
        texts.append(str(sut.stores.size(location)))
        missing = images.missing_location()
        if emitted:
            texts.append(missing)
        failing: list[_Failing] = [
            ("get of a missing image", NotFound, lambda: drain(sut.stores.get(missing))),
            ("size of a missing image", NotFound, lambda: sut.stores.size(missing)),
            (
                "get from past the end",
                InvalidArgument,
                lambda: drain(sut.stores.get(location, offset=10_000)),
            ),
            (
                "get of the location with '/../x' appended",
                (BadLocation, NotFound),
                lambda: drain(sut.stores.get(location + "/../x")),
            ),
            (
                "get with a wrong expected multihash",
                ChecksumMismatch,
                lambda: drain(sut.stores.get(location, hash_algo="sha256", expected_multihash="0")),
            ),
        ]
        texts += _expect_failures(failing)
        _assert_no_secret(secrets, texts, caplog)


def _secrets_or_skip(sut: StoreUnderTest, caplog: pytest.LogCaptureFixture) -> list[str]:
    """The secrets to look for, with every log record captured; skip when there are none
    (unless the backend is declared to have none: :attr:`StoreUnderTest.no_secrets`)."""
    secrets = sut.all_secrets()
    if sut.no_secrets:
        assert not secrets, (
            f"backend {sut.backend!r} is declared with no_secrets=True "
            f"but has {len(secrets)} secret(s): declare them instead"
        )
    elif not secrets:
        pytest.skip(
            "no secret is configured for this backend (give StoreUnderTest its secrets, "
            "or no_secrets=True if it has none)"
        )
    caplog.set_level(logging.DEBUG)
    return secrets


_Failing = tuple[str, type[BaseException] | tuple[type[BaseException], ...], Callable[[], object]]
"""An operation that must fail: (what it is, the exception class(es) it must raise, the call)."""


def _expect_failures(calls: Iterable[_Failing]) -> list[str]:
    """Run each call: it must raise one of its expected exceptions (anything else propagates,
    success fails the test); return the texts of the exceptions, for the secret check."""
    texts: list[str] = []
    for what, expected, call in calls:
        try:
            call()
        except expected as exc:
            texts += _exception_texts(exc)
        else:
            names = " or ".join(
                e.__name__ for e in (expected if isinstance(expected, tuple) else (expected,))
            )
            pytest.fail(f"{what} succeeded; it must raise {names}")
    return texts


def _assert_no_secret(
    secrets: Sequence[str], texts: Iterable[str], caplog: pytest.LogCaptureFixture
) -> None:
    shown = list(texts)
    for record in caplog.records:
        shown.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            shown += _exception_texts(record.exc_info[1])
    shown.append(caplog.text)
    for secret in secrets:
        leaks = [text for text in shown if secret in text]
        assert not leaks, f"a configured secret shows in: {leaks[0][:500]!r}"


MAX_ID_LENGTH = 255
"""The longest image id the core accepts (``IMAGE_ID_RE``): every writable backend stores it."""

RACE_THREADS = 8
"""Adds of one id racing in threads of one process (one Stores, as a server shares it)."""
RACE_PROCESSES = 3
"""Adds of one id racing in processes of their own (a Stores each, as separate hosts)."""
_RACE_TIMEOUT = 300.0


def _unique_id(shape: str, length: int | None = None) -> str:
    """A new id of ``shape`` (``{u}`` is a 32-hex unique part), padded to ``length`` with
    the separators the core allows, so backends shared between runs never collide."""
    image_id = shape.format(u=uuid.uuid4().hex)
    if length is not None:
        filler = itertools.cycle("._-Az9")
        image_id += "".join(next(filler) for _ in range(length - len(image_id)))
    return image_id


ID_SHAPES = (
    "0.{u}__--X.y_Z-",  # a digit then a dot, doubled '_' and '-', upper case, ends with '-'
    "A{u}..-_.x.",  # upper case first, doubled dots, ends with '.'
)
"""Valid ids with the separators ``.``, ``_`` and ``-`` in every position the core allows."""

BAD_IDS = {
    "empty": "",
    "leading dot": ".{u}",
    "leading underscore": "_{u}",
    "leading dash": "-{u}",
    "slash": "{u}/x",
    "dot-dot slash": "{u}/../x",
    "space": "{u} x",
    "non-ASCII": "{u}é",
    "NUL": "{u}\x00",
    "newline": "{u}\n",
}
"""Ids the core refuses (InvalidArgument) before the backend is touched."""


def _racer_sizes(chunk: int, count: int) -> list[int]:
    """Sizes of ``count`` racing images: one empty, one across a chunk edge, small others;
    all different, so that the image left tells whose bytes won."""
    sizes = [chunk + 17, 0, 4093, 1, chunk // 2 + 3, 65537, 13, 7919]
    return sizes[:count]


@dataclasses.dataclass
class _RaceOutcome:
    """What one racing add ended with: its result, or the Duplicate it got."""

    payload: Payload
    result: AddResult | None = None
    duplicate: str | None = None


SOCKET_DIR_MAX = 60
"""Longest temporary directory under which the fork server's socket path still fits:
``<tmp>/pymp-xxxxxxxx/listener-xxxxxxxx`` in the 107 bytes of a unix socket path."""


def _race_context() -> Any:
    """The multiprocessing context racing processes start from: a fork server (no fork
    of the test process and its threads) that has imported this module once, so a
    racer starts in about 0.1 s instead of the 1.5 s of a spawned interpreter.

    The fork server listens on a unix socket in a directory under the temporary
    directory; when that path is too long for a socket (108 bytes, e.g. a pytest
    ``tmp_path`` as TMPDIR), the racers are spawned instead."""
    if len(tempfile.gettempdir()) > SOCKET_DIR_MAX:
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # no effect once the server runs
    return ctx


def _race_add_in_process(
    environ: dict[str, str],
    config_files: list[str],
    backend: str,
    image_id: str,
    index: int,
    size: int,
    seed: int,
    known_size: bool,
    start: Any,
    results: Any,
) -> None:
    """One racing add in a process of its own: take the test's environment (the fork
    server has the one of its start), build a Stores from the configuration files, wait
    at ``start`` for the others, add, report ``(index, "added", AddResult fields)``,
    ``(index, "duplicate", message)`` or ``(index, "error", traceback)`` on ``results``."""
    os.environ.clear()
    os.environ.update(environ)
    try:
        with Stores.from_config_files(*config_files) as stores:
            payload = Payload(size, seed=seed)
            start.wait(_RACE_TIMEOUT)
            try:
                result = stores.add(
                    image_id, payload.pieces(), size if known_size else None, backend=backend
                )
            except Duplicate as exc:
                results.put((index, "duplicate", str(exc)))
            else:
                results.put((index, "added", result.as_dict()))
    except BaseException as exc:  # reported to the test, which fails with it
        start.abort()
        results.put((index, "error", "".join(traceback.format_exception(exc))))


def _check_race(
    sut: StoreUnderTest, image_id: str, outcomes: Sequence[_RaceOutcome], before: set[str] | None
) -> None:
    """Exactly one add won, with its own bytes intact; the others got Duplicate; after
    the winner is deleted the backend is as it was before the race.

    On a backend declared :attr:`StoreUnderTest.last_writer_wins`, more than one winner
    is an expected failure (xfail, saying how many won and what was left over) once
    the stored bytes are checked to be those of one of the winners."""
    winners = [o for o in outcomes if o.result is not None]
    summary = [
        f"{o.payload}: " + ("added" if o.result is not None else f"Duplicate({o.duplicate})")
        for o in outcomes
    ]
    assert winners, f"no add of the id won: {summary}"
    assert len(winners) == 1 or sut.last_writer_wins, (
        f"{len(winners)} of {len(outcomes)} adds of one id won: {summary}"
    )
    for won in winners:
        result, payload = won.result, won.payload
        assert result is not None
        assert result.image_id == image_id
        assert result.size == payload.size
        assert result.checksum == payload.md5
        assert result.multihash == payload.hexdigest("sha512")
        assert sut.stores.backend_for(result.location) == sut.backend
    location = winners[0].result.location if winners[0].result is not None else ""
    assert {o.result.location for o in winners if o.result is not None} == {location}
    got = drain(sut.stores.get(location))
    stored = [
        o.payload for o in winners if (got.count, got.data) == (o.payload.size, o.payload.data)
    ]
    assert stored, f"the image is not the bytes of any winner: {got.count} bytes read: {summary}"
    if len(winners) > 1 and sut.last_writer_wins:
        sut.stores.delete(location)
        after = sut.snapshot()
        left = sorted(after - before) if after is not None and before is not None else "?"
        pytest.xfail(
            f"{len(winners)} of {len(outcomes)} adds of one id reported success, the image "
            f"holds the bytes of {stored[0]}; left over: {left}; {sut.last_writer_wins}"
        )
    assert sut.stores.size(location) == stored[0].size
    # the id stays taken: a late add is a Duplicate too
    with pytest.raises(Duplicate):
        sut.stores.add(image_id, b"late", size=4, backend=sut.backend)
    sut.stores.delete(location)
    sut.assert_unchanged(before)


class ConformanceTests(ReadConformanceTests):
    """Full conformance for a writable backend: the read tests plus adds and deletes."""

    @pytest.fixture(autouse=True)
    def _writable(self, store_under_test: StoreUnderTest) -> None:
        missing = Capability.RW & ~store_under_test.capabilities
        if missing:
            pytest.fail(
                f"backend {store_under_test.backend!r} lacks {missing.names()}: "
                "use ReadConformanceTests for it"
            )

    # -- round trips ---------------------------------------------------

    @pytest.mark.parametrize(("size_name", "mode"), ROUND_TRIP_CASES)
    def test_round_trip(
        self, store_under_test: StoreUnderTest, images: _Images, size_name: str, mode: str
    ) -> None:
        sut = store_under_test
        size = _size_of(size_name, sut.chunk)
        sut.skip_if_too_big(size)
        before = sut.snapshot()
        payload = Payload(size, seed=size % 9973)
        source: Any = payload.file() if mode.endswith("-file") else payload.pieces()
        declared = None if mode.startswith("unknown") else size
        progress: list[tuple[int, int | None]] = []
        image_id = images.new_id()
        result = images.add(
            image_id,
            source,
            declared,
            progress=lambda done, total: progress.append((done, total)),
        )
        assert result.size == size
        assert result.image_id == image_id
        assert result.backend == sut.backend
        assert result.hash_algo == "sha512"
        assert result.checksum == payload.md5
        assert result.multihash == payload.hexdigest("sha512")
        assert result.metadata.get("store") == sut.backend
        assert sut.stores.backend_for(result.location) == sut.backend
        done = [d for d, _ in progress]
        assert done == sorted(done)
        assert done[-1:] == ([size] if size else [])
        assert {t for _, t in progress} <= {declared}

        assert sut.stores.size(result.location) == size
        reader = sut.stores.get(result.location)
        assert reader.size == size
        got = drain(reader, keep=payload.data is not None)
        assert got.count == size
        assert got.sha512 == payload.hexdigest("sha512")
        if payload.data is not None:
            assert got.data == payload.data

        sut.stores.delete(result.location)
        sut.assert_unchanged(before)

    @pytest.mark.parametrize("algo", ["sha256", "sha3_256", "blake2b"])
    def test_multihash_algorithm(
        self, store_under_test: StoreUnderTest, images: _Images, algo: str
    ) -> None:
        sut = store_under_test
        payload = Payload(sut.chunk + 5, seed=5)
        result = images.add(images.new_id(), payload.pieces(), None, hash_algo=algo)
        assert result.hash_algo == algo
        assert result.multihash == payload.hexdigest(algo)
        assert result.checksum == payload.md5
        sut.stores.verify(
            result.location, algo, multihash=result.multihash, checksum=result.checksum
        )

    # -- size checks -----------------------------------------------------

    @pytest.mark.parametrize(
        "case", [pytest.param(c, id=f"{c}-{MISMATCHES[c][1]}") for c in sorted(MISMATCHES)]
    )
    def test_stream_size_mismatch(
        self, store_under_test: StoreUnderTest, images: _Images, case: str
    ) -> None:
        sut = store_under_test
        sizes, source_kind = MISMATCHES[case]
        declared, actual = sizes(sut.chunk)
        payload = Payload(actual, seed=6)
        before = sut.snapshot()
        image_id = images.new_id()
        source: Any = payload.file() if source_kind == "file" else payload.pieces()
        with pytest.raises(SizeMismatch):
            images.add(image_id, source, declared)
        sut.assert_unchanged(before)
        # the id is free: nothing half-written claims it
        right = Payload(declared, seed=7)
        result = images.add(image_id, right.pieces(), declared)
        assert drain(sut.stores.get(result.location), keep=False).sha512 == right.hexdigest(
            "sha512"
        )

    @pytest.mark.parametrize("case", ["unknown-size-over", "declared-over", "exactly-at-cap"])
    def test_size_cap(self, store_under_test: StoreUnderTest, images: _Images, case: str) -> None:
        sut = store_under_test
        if sut.make_stores is None:
            pytest.skip("StoreUnderTest.make_stores is not given: cannot configure a size cap")
        chunk = sut.chunk
        cap = chunk + 10
        with sut.make_stores({"image_size_cap": cap}) as capped:
            before = sut.snapshot()
            image_id = images.new_id()
            if case == "exactly-at-cap":
                payload = Payload(cap, seed=8)
                result = images.add(image_id, payload.pieces(), None, stores=capped)
                assert result.size == cap
                assert result.multihash == payload.hexdigest("sha512")
                capped.delete(result.location)
                sut.assert_unchanged(before)
                return
            total = 4 * chunk + 8192 if case == "unknown-size-over" else cap + 1
            source = _Counting(Payload(total, seed=9).pieces(SMALL_PIECES))
            declared = None if case == "unknown-size-over" else total
            with pytest.raises(SizeCapExceeded):
                images.add(image_id, source, declared, stores=capped)
            assert source.consumed < total or case == "declared-over", (
                "the upload was read to its end instead of being stopped at the cap"
            )
            sut.assert_unchanged(before)

    # -- duplicates, missing images, deletes ---------------------------

    @pytest.mark.parametrize("known_size", [True, False])
    def test_duplicate_add(
        self, store_under_test: StoreUnderTest, images: _Images, known_size: bool
    ) -> None:
        sut = store_under_test
        first = Payload(sut.chunk + 100, seed=10)
        image_id = images.new_id()
        result = images.add(image_id, first.pieces(), first.size)
        after_first = sut.snapshot()
        second = Payload(2 * sut.chunk + 1, seed=11)
        with pytest.raises(Duplicate):
            images.add(image_id, second.pieces(), second.size if known_size else None)
        sut.assert_unchanged(after_first)
        assert sut.stores.size(result.location) == first.size
        got = drain(sut.stores.get(result.location), keep=False)
        assert got.sha512 == first.hexdigest("sha512")

    def test_delete_missing_is_not_found(
        self, store_under_test: StoreUnderTest, images: _Images
    ) -> None:
        sut = store_under_test
        missing = images.missing_location()
        before = sut.snapshot()
        with pytest.raises(NotFound):
            sut.stores.delete(missing)
        with pytest.raises(NotFound):
            sut.stores.delete(missing, backend=sut.backend)
        sut.assert_unchanged(before)

    def test_delete_then_get(self, store_under_test: StoreUnderTest, images: _Images) -> None:
        sut = store_under_test
        before = sut.snapshot()
        payload = Payload(1000, seed=12)
        result = images.add(images.new_id(), payload.pieces(), None)
        sut.stores.delete(result.location)
        with pytest.raises(NotFound):
            drain(sut.stores.get(result.location))
        with pytest.raises(NotFound):
            sut.stores.size(result.location)
        with pytest.raises(NotFound):
            sut.stores.delete(result.location)
        sut.assert_unchanged(before)

    # -- failures mid-stream ---------------------------------------------

    @pytest.mark.parametrize("known_size", [True, False])
    @pytest.mark.parametrize("where", ["at-start", "inside-first-chunk", "after-two-chunks"])
    def test_failing_source(
        self, store_under_test: StoreUnderTest, images: _Images, where: str, known_size: bool
    ) -> None:
        sut = store_under_test
        chunk = sut.chunk
        payload = Payload(3 * chunk + 7, seed=13)
        fail_after = {
            "at-start": 0,
            "inside-first-chunk": chunk // 2,
            "after-two-chunks": 2 * chunk + 3,
        }[where]
        boom = SourceFailure("the source broke on purpose")
        before = sut.snapshot()
        image_id = images.new_id()
        source = _failing_source(payload.pieces(), fail_after, boom)
        with pytest.raises(SourceFailure) as raised:
            images.add(image_id, source, payload.size if known_size else None)
        assert raised.value is boom
        sut.assert_unchanged(before)
        result = images.add(image_id, payload.pieces(), payload.size)
        assert result.multihash == payload.hexdigest("sha512")

    # -- concurrency -----------------------------------------------------

    def test_concurrent_adds_and_gets(
        self, store_under_test: StoreUnderTest, images: _Images
    ) -> None:
        sut = store_under_test
        chunk = sut.chunk
        payloads = [
            Payload(i * (chunk // 4) + 13 * i + 1, seed=100 + i, keep=False) for i in range(8)
        ]
        barrier = threading.Barrier(len(payloads))

        def add_and_get(i: int, payload: Payload) -> tuple[AddResult, Drained]:
            barrier.wait(timeout=120)
            result = images.add(images.new_id(), payload.pieces(), payload.size if i % 2 else None)
            return result, drain(sut.stores.get(result.location), keep=False)

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(payloads)) as pool:
            futures = [pool.submit(add_and_get, i, p) for i, p in enumerate(payloads)]
            outcomes = [f.result(timeout=600) for f in futures]
        locations = {result.location for result, _ in outcomes}
        assert len(locations) == len(payloads)
        for payload, (result, got) in zip(payloads, outcomes, strict=True):
            assert result.size == payload.size
            assert result.multihash == payload.hexdigest("sha512")
            assert result.checksum == payload.md5
            assert got.count == payload.size
            assert got.sha512 == payload.hexdigest("sha512")

    # -- one id, many writers ----------------------------------------------

    def test_race_one_id_threads(self, store_under_test: StoreUnderTest, images: _Images) -> None:
        """RACE_THREADS adds of one id through one Stores, released together at a barrier:
        exactly one wins with its bytes, every other gets Duplicate, nothing is left over."""
        sut = store_under_test
        before = sut.snapshot()
        image_id = images.new_id()
        sizes = _racer_sizes(sut.chunk, RACE_THREADS)
        outcomes = [_RaceOutcome(Payload(n, seed=300 + i)) for i, n in enumerate(sizes)]
        start = threading.Barrier(len(outcomes))

        def add(i: int, outcome: _RaceOutcome) -> None:
            payload = outcome.payload
            start.wait(timeout=_RACE_TIMEOUT)
            try:
                outcome.result = images.add(
                    image_id, payload.pieces(), payload.size if i % 2 else None
                )
            except Duplicate as exc:
                outcome.duplicate = str(exc)

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(outcomes)) as pool:
            futures = [pool.submit(add, i, o) for i, o in enumerate(outcomes)]
            for future in futures:
                future.result(timeout=_RACE_TIMEOUT)  # any other error fails the test
        _check_race(sut, image_id, outcomes, before)

    def test_race_one_id_processes(self, store_under_test: StoreUnderTest, images: _Images) -> None:
        """RACE_PROCESSES adds of one id, each in a process with a Stores of its own
        built from the same configuration files, released together at a barrier: exactly
        one wins with its bytes, every other gets Duplicate, nothing is left over."""
        sut = store_under_test
        config_files = sut.config_files()
        if not config_files:
            pytest.skip("the Stores under test was not read from configuration files")
        before = sut.snapshot()
        image_id = images.new_id()
        sizes = _racer_sizes(sut.chunk, RACE_PROCESSES)
        outcomes = [_RaceOutcome(Payload(n, seed=400 + i)) for i, n in enumerate(sizes)]
        ctx = _race_context()
        start = ctx.Barrier(len(outcomes))
        results = ctx.Queue()
        processes = []
        for i, outcome in enumerate(outcomes):
            payload = outcome.payload
            args = (dict(os.environ), config_files, sut.backend, image_id, i, payload.size)
            processes.append(
                ctx.Process(
                    target=_race_add_in_process,
                    args=(*args, payload.seed, bool(i % 2), start, results),
                    name=f"imgstore-race-{i}",
                    daemon=True,
                )
            )
        for process in processes:
            process.start()
        errors: list[str] = []
        try:
            for _ in processes:
                try:
                    index, kind, value = results.get(timeout=_RACE_TIMEOUT)
                except queue.Empty:
                    pytest.fail(f"a racing process did not report within {_RACE_TIMEOUT} s")
                if kind == "added":
                    outcomes[index].result = AddResult(**value)
                    images.track(outcomes[index].result.location)
                elif kind == "duplicate":
                    outcomes[index].duplicate = value
                else:
                    errors.append(f"racing process {index} failed:\n{value}")
        finally:
            for process in processes:
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
                    process.join()
            results.close()
        assert not errors, "\n".join(errors)
        assert [p.exitcode for p in processes] == [0] * len(processes)
        _check_race(sut, image_id, outcomes, before)

    # -- ids ---------------------------------------------------------------

    def _id_round_trip(self, sut: StoreUnderTest, images: _Images, image_id: str) -> None:
        """Add, locate, size, read (whole and a range), refuse a second add, delete."""
        payload = Payload(sut.chunk + 3, seed=len(image_id))
        assert payload.data is not None
        result = images.add(image_id, payload.pieces(), payload.size)
        assert result.image_id == image_id
        assert result.size == payload.size
        assert result.multihash == payload.hexdigest("sha512")
        assert str(parse(result.location)) == result.location
        assert sut.stores.backend_for(result.location) == sut.backend
        planned = sut.stores.location_for(image_id, backend=sut.backend)
        assert planned in (None, result.location)
        assert sut.stores.size(result.location) == payload.size
        assert drain(sut.stores.get(result.location)).data == payload.data
        ranged = sut.stores.get(result.location, offset=sut.chunk - 1, length=3)
        assert drain(ranged).data == payload.data[sut.chunk - 1 : sut.chunk + 2]
        with pytest.raises(Duplicate):
            images.add(image_id, b"again", 5)
        sut.stores.delete(result.location)
        with pytest.raises(NotFound):
            sut.stores.size(result.location)

    def _refused(self, sut: StoreUnderTest, image_id: str) -> None:
        """An add of ``image_id`` is an InvalidArgument before one byte is taken."""
        source = _Counting([b"never read"])
        with pytest.raises(InvalidArgument):
            sut.stores.add(image_id, source, size=10, backend=sut.backend)
        assert source.consumed == 0

    def test_long_id_round_trip(self, store_under_test: StoreUnderTest, images: _Images) -> None:
        """An id of MAX_ID_LENGTH characters (separators included) works end to end; one
        character more is an InvalidArgument with nothing written."""
        sut = store_under_test
        before = sut.snapshot()
        self._id_round_trip(sut, images, _unique_id("{u}", MAX_ID_LENGTH))
        self._refused(sut, _unique_id("{u}", MAX_ID_LENGTH + 1))
        sut.assert_unchanged(before)

    def test_id_chars_round_trip(self, store_under_test: StoreUnderTest, images: _Images) -> None:
        """Ids with ``.``, ``_`` and ``-`` anywhere after the first character work end to
        end (in parallel: a round trip of a volume takes seconds); ids the core refuses
        are an InvalidArgument with nothing written."""
        sut = store_under_test
        before = sut.snapshot()
        ids = [_unique_id(shape) for shape in ID_SHAPES]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(ids)) as pool:
            futures = [pool.submit(self._id_round_trip, sut, images, i) for i in ids]
            for future in futures:
                future.result(timeout=_RACE_TIMEOUT)
        for shape in BAD_IDS.values():
            self._refused(sut, _unique_id(shape))
        sut.assert_unchanged(before)

    # -- secrets -----------------------------------------------------------

    def test_no_secret_in_write_output(
        self,
        store_under_test: StoreUnderTest,
        images: _Images,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        sut = store_under_test
        secrets = _secrets_or_skip(sut, caplog)
        payload = Payload(sut.chunk + 3, seed=14)
        image_id = images.new_id()
        result = images.add(image_id, payload.pieces(), payload.size)
        texts = [
            repr(sut.stores),
            repr(sut.stores.describe()),
            repr(sut.stores.driver(sut.backend)),
            repr(result),
            repr(result.as_dict()),
            result.location,
        ]
        other = images.add(images.new_id(), payload.file(), None)
        texts += [repr(other), other.location]
        reader = sut.stores.get(result.location)
        texts.append(repr(reader))
        drain(reader, keep=False)
        sut.stores.delete(other.location)
        failing: list[_Failing] = [
            ("a second add of the same id", Duplicate, lambda: images.add(image_id, b"again", 5)),
            (
                "an add shorter than its declared size",
                SizeMismatch,
                lambda: images.add(images.new_id(), b"short", 6),
            ),
            (
                "an add whose source fails",
                SourceFailure,
                lambda: images.add(
                    images.new_id(), _failing_source([b"x" * 10], 5, SourceFailure("boom")), None
                ),
            ),
            ("delete of a deleted image", NotFound, lambda: sut.stores.delete(other.location)),
            ("get of a deleted image", NotFound, lambda: drain(sut.stores.get(other.location))),
            ("size of a deleted image", NotFound, lambda: sut.stores.size(other.location)),
            (
                "a copy onto the id of an image in the same backend",
                Duplicate,
                lambda: sut.stores.copy(result.location, sut.backend, image_id=image_id),
            ),
        ]
        texts += _expect_failures(failing)
        _assert_no_secret(secrets, texts, caplog)
