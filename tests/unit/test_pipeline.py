"""The byte pipeline: ChunkSource, write_image and ImageReader, without any backend."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore import pipeline
from imgstore.driver import ReadStream, WriteLimits, Writer, Written
from imgstore.drivers.filesystem import FileLocation
from imgstore.exceptions import (
    BackendError,
    BackendUnavailable,
    ChecksumMismatch,
    InvalidArgument,
    SizeCapExceeded,
    SizeMismatch,
)
from imgstore.parallel import Space
from imgstore.pipeline import ChunkSource, ImageReader, InOrder, new_hash, write_image

DATA = bytes(range(256)) * 41 + b"tail"  # 10500 bytes, no repeating chunk alignment


def drain_source(source: ChunkSource, bufsize: int) -> list[bytes]:
    """Fill buffers of ``bufsize`` until the source ends; return what each fill gave."""
    out: list[bytes] = []
    buf = bytearray(bufsize)
    while True:
        n = source.fill(buf)
        if n == 0:
            return out
        out.append(bytes(buf[:n]))


# -- ChunkSource ------------------------------------------------------------------


class ShortReads(io.RawIOBase):
    """A raw file whose readinto hands out at most 7 bytes at a time (like a pipe)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(7, len(buffer)))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class ReadOnly:
    """Only ``read(n)``; hands back odd amounts, sometimes more than asked."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._calls = 0

    def read(self, n: int) -> bytes:
        self._calls += 1
        want = n + 5 if self._calls % 2 else max(1, n // 3)
        out = self._data[self._pos : self._pos + want]
        self._pos += len(out)
        return out


def odd_pieces(data: bytes) -> Iterator[bytes]:
    sizes = [1, 0, 999, 3, 0, 4096, 17]
    pos = 0
    i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        yield data[pos : pos + n]
        pos += n
        i += 1


SOURCES: dict[str, Callable[[], Any]] = {
    "bytesio": lambda: io.BytesIO(DATA),
    "short-readinto": lambda: ShortReads(DATA),
    "read-only": lambda: ReadOnly(DATA),
    "bytes": lambda: DATA,
    "bytearray": lambda: bytearray(DATA),
    "memoryview": lambda: memoryview(DATA),
    "odd-pieces-with-empties": lambda: odd_pieces(DATA),
    "list-of-mixed-buffers": lambda: [DATA[:10], bytearray(DATA[10:5000]), memoryview(DATA[5000:])],
}


@pytest.mark.parametrize("bufsize", [1, 1000, 4096, len(DATA), len(DATA) + 1])
@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_chunk_source_fills_buffers_completely(kind: str, bufsize: int) -> None:
    fills = drain_source(ChunkSource(SOURCES[kind]()), bufsize)
    assert b"".join(fills) == DATA
    assert all(len(f) == bufsize for f in fills[:-1]), "only the last fill may be short"


def test_chunk_source_real_file(tmp_path: Path) -> None:
    path = tmp_path / "image"
    path.write_bytes(DATA)
    with open(path, "rb") as fh:
        assert b"".join(drain_source(ChunkSource(fh), 4096)) == DATA
    with open(path, "rb", buffering=0) as raw:
        assert b"".join(drain_source(ChunkSource(raw), 333)) == DATA


@pytest.mark.parametrize(
    "source", ["text", 42, None, 3.5, object()], ids=["str", "int", "none", "float", "object"]
)
def test_chunk_source_rejects_non_byte_sources(source: object) -> None:
    with pytest.raises(InvalidArgument):
        ChunkSource(source)


@pytest.mark.parametrize(
    "items",
    [[b"ok", "text"], [b"ok", 7], [[1, 2, 3]], [b"ok", {"a": 1}]],
    ids=["str-item", "int-item", "list-item", "dict-item"],
)
def test_chunk_source_rejects_non_bytes_items(items: list[object]) -> None:
    source = ChunkSource(iter(items))
    with pytest.raises(InvalidArgument):
        drain_source(source, 64)


def test_chunk_source_rejects_text_file() -> None:
    with pytest.raises(InvalidArgument):
        drain_source(ChunkSource(io.StringIO("text, not bytes")), 64)


# -- write_image -----------------------------------------------------------------


class MemoryWriter(Writer):
    """Collects the chunks it is given; records commit and abort."""

    def __init__(self, fail_on_write: int | None = None) -> None:
        self.data = bytearray()
        self.writes = 0
        self.committed = False
        self.committed_size: int | None = None
        self.aborted = 0
        self._fail_on_write = fail_on_write

    def write(self, chunk: memoryview) -> None:
        self.writes += 1
        if self._fail_on_write is not None and self.writes >= self._fail_on_write:
            raise OSError("fault injected: the device went away")
        self.data += chunk

    def commit(self, size: int) -> Written:
        assert not self.aborted and not self.committed
        self.committed = True
        self.committed_size = size
        return Written(FileLocation("/images/x"), {"k": "v"})

    def abort(self) -> None:
        self.aborted += 1


def run(source: Any, writer: Writer | None = None, **kw: Any) -> tuple[Any, MemoryWriter]:
    w = writer or MemoryWriter()
    assert isinstance(w, MemoryWriter)
    options: dict[str, Any] = {
        "chunk_size": 1000,
        "size": None,
        "size_cap": None,
        "hash_algo": "sha512",
        "md5": True,
    }
    options.update(kw)
    return write_image(source, w, **options), w


@pytest.mark.parametrize("size", [len(DATA), None])
@pytest.mark.parametrize("chunk_size", [1, 999, 1000, 65536, 1 << 20])
def test_write_image_round_trip(chunk_size: int, size: int | None) -> None:
    result, writer = run(odd_pieces(DATA), chunk_size=chunk_size, size=size)
    assert bytes(writer.data) == DATA
    assert writer.committed and not writer.aborted
    assert writer.committed_size == result.size == len(DATA)
    assert result.checksum == hashlib.md5(DATA, usedforsecurity=False).hexdigest()
    assert result.multihash == hashlib.sha512(DATA).hexdigest()
    assert result.written.metadata == {"k": "v"}


def test_write_image_large_chunks_hash_on_threads() -> None:
    data = os.urandom(3 * (1 << 20) + 11)
    result, writer = run(io.BytesIO(data), chunk_size=1 << 20, hash_algo="sha256")
    assert result.multihash == hashlib.sha256(data).hexdigest()
    assert result.checksum == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert bytes(writer.data) == data


class LendingWriter(MemoryWriter):
    """Lends the core one buffer of its own, the same memory every time, and keeps each
    chunk's bytes before lending it again (as a writer whose piece went up would)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.buffer = bytearray(size)
        self.in_place = 0

    def space(self, size: int) -> Space | None:
        return Space(self.buffer, 0, min(size, len(self.buffer)))

    def write(self, chunk: memoryview) -> None:
        self.in_place += chunk.obj is self.buffer
        super().write(chunk)


class SlowMd5:
    """md5 that takes its time over every chunk, so the hash threads trail the writer
    (a delay injected into hashing; nothing real is slow on cue)."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)

    def update(self, data: Any) -> None:
        time.sleep(0.002)
        self._md5.update(data)

    def hexdigest(self) -> str:
        return self._md5.hexdigest()


def test_a_writer_lending_its_memory_gets_the_bytes_read_into_it_and_hashed_before_reuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "new_md5", SlowMd5)
    chunk = 64 * 1024  # hashed on the threads
    data = os.urandom(40 * chunk + 5)
    writer = LendingWriter(chunk)
    result, _ = run(io.BytesIO(data), writer, chunk_size=chunk, size=len(data))
    assert writer.in_place == writer.writes == 41  # every chunk read into the lent memory
    assert bytes(writer.data) == data
    # the core filled the same memory again only once both hashes were done with it
    assert result.checksum == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert result.multihash == hashlib.sha512(data).hexdigest()


def test_a_writer_with_no_room_left_gets_the_core_buffers() -> None:
    class Full(LendingWriter):
        def space(self, size: int) -> Space | None:
            return None if self.writes else super().space(size)

    writer = Full(1000)
    result, _ = run(io.BytesIO(DATA), writer, chunk_size=1000)
    assert writer.in_place == 1 and writer.writes == 11
    assert bytes(writer.data) == DATA and result.size == len(DATA)


def test_write_image_md5_off() -> None:
    result, _ = run(DATA, md5=False)
    assert result.checksum is None
    assert result.multihash == hashlib.sha512(DATA).hexdigest()


def test_write_image_empty() -> None:
    result, writer = run(b"", size=0)
    assert result.size == 0
    assert writer.writes == 0 and writer.committed
    assert result.multihash == hashlib.sha512(b"").hexdigest()


@pytest.mark.parametrize("size", [len(DATA), None])
def test_progress_is_monotonic_and_ends_at_size(size: int | None) -> None:
    calls: list[tuple[int, int | None]] = []
    run(
        odd_pieces(DATA),
        chunk_size=1000,
        size=size,
        progress=lambda done, total: calls.append((done, total)),
    )
    done = [d for d, _ in calls]
    assert done == sorted(set(done)), "progress must strictly increase"
    assert done[-1] == len(DATA)
    assert len(calls) == -(-len(DATA) // 1000)
    assert {t for _, t in calls} == {size}


class HoldingWriter(MemoryWriter):
    """Takes the bytes but sends them only at commit, like an S3 single PUT (the
    backend has accepted nothing before); ``events`` records progress and commit."""

    def __init__(self, events: list[object]) -> None:
        super().__init__()
        self.events = events
        self.sent = 0

    @property
    def accepted(self) -> int:
        return self.sent

    def commit(self, size: int) -> Written:
        self.sent = len(self.data)
        self.events.append("commit")
        return super().commit(size)


def test_progress_counts_what_the_backend_accepted_so_100_percent_means_stored() -> None:
    events: list[object] = []
    run(
        odd_pieces(DATA),
        HoldingWriter(events),
        size=len(DATA),
        progress=lambda done, total: events.append(done),
    )
    writes = -(-len(DATA) // 1000)
    assert events == [0] * writes + ["commit", len(DATA)]


def test_progress_of_a_writer_holding_bytes_back_is_capped_by_what_was_written() -> None:
    """A writer that reports more accepted than it was given cannot push progress past it."""
    events: list[object] = []
    writer = HoldingWriter(events)
    writer.sent = 10**9
    run(b"x" * 2500, writer, progress=lambda done, total: events.append(done))
    assert events == [1000, 2000, 2500, "commit"]


@pytest.mark.parametrize(
    ("declared", "actual"), [(1, 0), (len(DATA), len(DATA) - 1), (len(DATA) - 1, len(DATA))]
)
def test_size_mismatch_aborts(declared: int, actual: int) -> None:
    writer = MemoryWriter()
    with pytest.raises(SizeMismatch):
        run(DATA[:actual], writer, size=declared)
    assert writer.aborted == 1 and not writer.committed


def test_longer_stream_stops_before_the_extra_bytes_reach_the_writer() -> None:
    writer = MemoryWriter()
    with pytest.raises(SizeMismatch):
        run(DATA, writer, size=1500, chunk_size=1000)
    assert len(writer.data) <= 1500


class CallRecorder(MemoryWriter):
    """Records what the driver side is told: each write's length and bytes, then the end."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []

    def write(self, chunk: memoryview) -> None:
        self.calls.append(("write", bytes(chunk)))
        super().write(chunk)

    def commit(self, size: int) -> Written:
        self.calls.append(("commit", size))
        return super().commit(size)

    def abort(self) -> None:
        self.calls.append(("abort", None))
        super().abort()


@pytest.mark.parametrize(
    "declared", [len(DATA), None, len(DATA) + 1, len(DATA) - 1, 1000, 0], ids=repr
)
def test_a_writer_is_told_the_same_whatever_the_source(declared: int | None) -> None:
    """Files (short reads or not), bytes and pieces of any size reach a writer as the same
    calls: whole chunks, then commit or abort at the same point. That is why the
    conformance kit alternates source kinds instead of running every case with each."""
    seen: dict[str, list[tuple[str, Any]]] = {}
    for kind, make in SOURCES.items():
        writer = CallRecorder()
        with contextlib.suppress(SizeMismatch):
            run(make(), writer, size=declared, chunk_size=1000)
        seen[kind] = writer.calls
    first = seen["bytesio"]
    assert first[-1][0] == ("commit" if declared in (len(DATA), None) else "abort")
    assert {kind: calls == first for kind, calls in seen.items()} == dict.fromkeys(seen, True)


@pytest.mark.parametrize("size", [len(DATA), None])
def test_size_cap(size: int | None) -> None:
    writer = MemoryWriter()
    with pytest.raises(SizeCapExceeded):
        run(DATA, writer, size=size, size_cap=len(DATA) - 1, chunk_size=1000)
    assert writer.aborted == 1 and not writer.committed
    assert len(writer.data) < len(DATA)
    if size is not None:
        assert writer.writes == 0, "a declared size over the cap is refused before any write"


def test_an_unknown_size_that_outgrows_the_backend_limits_is_stopped_and_aborted() -> None:
    # pieces of 500, then 1000 bytes (doubling after each: a tenth of 2 pieces, at least 1)
    limits = WriteLimits(largest_piece=1000, most_pieces=2, first_piece=500, why="the test's")
    assert limits.capacity() == 1500
    writer = MemoryWriter()
    with pytest.raises(InvalidArgument) as refused:
        run(b"x" * 1501, writer, chunk_size=100, limits=limits, describe="image i")
    assert str(refused.value) == (
        "image i needs more than 2 pieces, more than the 1500 bytes they hold (the test's)"
    )
    assert writer.aborted == 1 and not writer.committed
    assert len(writer.data) == 1500, "the chunk that crossed the limit never reached the writer"
    result, _ = run(b"x" * 1500, chunk_size=100, limits=limits)
    assert result.size == 1500


def test_size_cap_zero_means_no_cap() -> None:
    result, _ = run(DATA, size_cap=0)
    assert result.size == len(DATA)


def test_source_error_propagates_unchanged_and_aborts() -> None:
    boom = RuntimeError("the source broke")

    def source() -> Iterator[bytes]:
        yield DATA[:2500]
        raise boom

    writer = MemoryWriter()
    with pytest.raises(RuntimeError) as raised:
        run(source(), writer, chunk_size=1000)
    assert raised.value is boom
    assert writer.aborted == 1 and not writer.committed


def test_writer_error_is_mapped_and_aborts() -> None:
    writer = MemoryWriter(fail_on_write=2)
    with pytest.raises(BackendError, match="device went away"):
        run(DATA, writer, on_backend_error=lambda exc: BackendError(f"wrapped: {exc}"))
    assert writer.aborted == 1


class CallLog(MemoryWriter):
    """Records every call in order; its commit fails when told to."""

    def __init__(self, fail_commit: bool = False) -> None:
        super().__init__()
        self.calls: list[str] = []
        self._fail_commit = fail_commit

    def write(self, chunk: memoryview) -> None:
        self.calls.append("write")
        super().write(chunk)

    def commit(self, size: int) -> Written:
        self.calls.append(f"commit {size}")
        if self._fail_commit:
            raise OSError("fault injected: the commit failed")
        return super().commit(size)

    def abort(self) -> None:
        self.calls.append("abort")
        super().abort()


def test_the_core_commits_once_with_the_size_and_never_aborts_after_it() -> None:
    writer = CallLog()
    run(b"x" * 2500, writer, chunk_size=1000)
    assert writer.calls == ["write"] * 3 + ["commit 2500"]


def test_a_failed_commit_is_aborted_once() -> None:
    writer = CallLog(fail_commit=True)
    with pytest.raises(OSError, match="commit failed"):
        run(b"x" * 2500, writer, chunk_size=1000)
    assert writer.calls == ["write"] * 3 + ["commit 2500", "abort"]


def test_in_order_refuses_calls_out_of_order_before_they_reach_the_driver() -> None:
    driver_writer = CallLog()
    writer = InOrder(driver_writer)
    writer.write(memoryview(b"ab"))
    writer.commit(2)
    writer.abort()  # after a successful commit: nothing to undo
    with pytest.raises(RuntimeError, match=r"write of .* after its successful commit"):
        writer.write(memoryview(b"c"))
    with pytest.raises(RuntimeError, match=r"commit of .* after its successful commit"):
        writer.commit(2)
    aborted = InOrder(CallLog())
    aborted.abort()
    aborted.abort()
    with pytest.raises(RuntimeError, match=r"commit of .* after its abort"):
        aborted.commit(0)
    assert driver_writer.calls == ["write", "commit 2"]
    assert aborted._writer.calls == ["abort"]  # type: ignore[attr-defined]


def test_invalid_hash_algo_aborts() -> None:
    writer = MemoryWriter()
    with pytest.raises(InvalidArgument):
        run(DATA, writer, hash_algo="no-such-hash")
    assert writer.aborted == 1 and writer.writes == 0


@pytest.mark.parametrize("algo", ["md5", "MD5", "shake_128", "nope", ""])
def test_new_hash_refuses(algo: str) -> None:
    with pytest.raises(InvalidArgument):
        new_hash(algo)


# -- ImageReader -----------------------------------------------------------------


class ListStream(ReadStream):
    """Fault injection: a driver stream that announces ``size`` but yields ``pieces``."""

    def __init__(self, pieces: list[bytes], size: int | None = None) -> None:
        self._pieces = pieces
        self.size = sum(map(len, pieces)) if size is None else size
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        yield from self._pieces

    def close(self) -> None:
        self.closed += 1


class BreakingStream(ReadStream):
    """Fault injection: ``data`` announced whole, broken off after ``cut`` bytes with
    ``error`` (None: it just ends), in ``version``."""

    def __init__(
        self, data: bytes, cut: int, error: Exception | None = None, version: str | None = "v1"
    ) -> None:
        self._data, self._cut, self._error = data, cut, error
        self.size = len(data)
        self.version = version

    def __iter__(self) -> Iterator[bytes]:
        yield self._data[: self._cut]
        if self._error is not None:
            raise self._error


class Reopener:
    """``reopen(done, count)`` for a reader of ``data``: each call gives the next of
    ``breaks`` (cut, error) after byte ``done``, then whole streams of the rest."""

    def __init__(
        self, data: bytes, breaks: list[tuple[int, Exception | None]], version: str = "v1"
    ) -> None:
        self.data, self.breaks, self.version = data, breaks, version
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, count: int) -> ReadStream:
        self.calls.append((done, count))
        rest = self.data[done : done + count]
        cut, error = self.breaks.pop(0) if self.breaks else (len(rest), None)
        return BreakingStream(rest, cut, error, self.version)


@pytest.fixture
def no_resume_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imgstore.pipeline.RESUME_FIRST_WAIT", 0.0)


@pytest.mark.usefixtures("no_resume_wait")
@pytest.mark.parametrize("error", [None, BackendUnavailable("connection reset")])
def test_a_read_that_breaks_off_is_resumed_where_it_stopped(error: Exception | None) -> None:
    reopen = Reopener(DATA, [(1000, error)])
    reader = ImageReader(
        BreakingStream(DATA, 2500, error), describe="img", reopen=reopen, resumes=2,
        hash_algo="sha256",
    )  # fmt: skip
    assert reader.read_all() == DATA
    assert reopen.calls == [(2500, len(DATA) - 2500), (3500, len(DATA) - 3500)]
    assert reader.multihash == hashlib.sha256(DATA).hexdigest()


@pytest.mark.usefixtures("no_resume_wait")
def test_resumes_stop_at_their_count_with_the_last_error() -> None:
    cut = BackendUnavailable("connection reset")
    reopen = Reopener(DATA, [(10, cut), (10, cut)])
    reader = ImageReader(BreakingStream(DATA, 2500, cut), describe="img", reopen=reopen, resumes=2)
    with pytest.raises(BackendUnavailable):
        reader.read_all()
    assert len(reopen.calls) == 2


@pytest.mark.usefixtures("no_resume_wait")
def test_a_read_is_not_resumed_into_another_version_of_the_image() -> None:
    reopen = Reopener(DATA, [], version="v2")
    reader = ImageReader(BreakingStream(DATA, 2500), describe="img", reopen=reopen, resumes=3)
    with pytest.raises(BackendError, match="changed while it was read"):
        reader.read_all()
    assert len(reopen.calls) == 1


@pytest.mark.usefixtures("no_resume_wait")
@pytest.mark.parametrize(
    ("version", "error", "expected"),
    [
        # no version: nothing to check a reopened stream by; cut short is temporary
        (None, None, BackendUnavailable),
        ("v1", BackendError("bad request"), BackendError),  # not temporary
    ],
)
def test_no_resume_without_a_version_or_after_a_lasting_error(
    version: str | None, error: Exception | None, expected: type[Exception]
) -> None:
    reopen = Reopener(DATA, [])
    stream = BreakingStream(DATA, 2500, error, version)
    with pytest.raises(expected):
        ImageReader(stream, describe="img", reopen=reopen, resumes=3).read_all()
    assert reopen.calls == []


def test_reader_yields_exactly_the_bytes() -> None:
    stream = ListStream([DATA[:10], b"", DATA[10:]])
    reader = ImageReader(stream, describe="test image")
    assert reader.size == len(DATA)
    chunks = list(reader)
    assert all(isinstance(c, bytes) for c in chunks)
    assert b"".join(chunks) == DATA
    assert stream.closed == 1
    reader.close()
    assert stream.closed == 1


def test_reader_short_stream_is_unavailable_not_an_integrity_error() -> None:
    """Fewer bytes than announced is a read that broke off: read it again (exit 5), not
    a bad image (exit 4); more bytes than announced is (below)."""
    stream = ListStream([DATA[:100], DATA[100:200]], size=300)
    with pytest.raises(BackendUnavailable, match="sent 200 of 300 bytes"):
        ImageReader(stream, describe="test image").read_all()
    assert stream.closed == 1


def test_reader_long_stream_is_size_mismatch() -> None:
    stream = ListStream([DATA[:100], DATA[100:300]], size=200)
    with pytest.raises(SizeMismatch):
        ImageReader(stream, describe="test image").read_all()


def test_reader_surplus_in_a_later_chunk_is_size_mismatch() -> None:
    """The announced bytes arrive whole, then more follow in another chunk."""
    stream = ListStream([DATA[:100], DATA[100:200], b"extra"], size=200)
    with pytest.raises(SizeMismatch):
        ImageReader(stream, describe="test image").read_all()
    assert stream.closed == 1


@pytest.mark.parametrize(("skip", "limit"), [(0, None), (10, 20), (999, None), (5, 0), (0, 10**9)])
def test_reader_emulated_range(skip: int, limit: int | None) -> None:
    stream = ListStream([DATA[i : i + 77] for i in range(0, len(DATA), 77)])
    reader = ImageReader(stream, describe="test image", skip=skip, limit=limit)
    expected = DATA[skip:] if limit is None else DATA[skip : skip + limit]
    assert reader.size == len(expected)
    assert reader.read_all() == expected


def test_reader_checks_multihash() -> None:
    good = hashlib.sha256(DATA).hexdigest()
    reader = ImageReader(
        ListStream([DATA]), describe="img", hash_algo="sha256", expected_multihash=good.upper()
    )
    assert reader.read_all() == DATA
    assert reader.multihash == good
    bad = ImageReader(
        ListStream([DATA]), describe="img", hash_algo="sha256", expected_multihash="0" * 64
    )
    with pytest.raises(ChecksumMismatch):
        bad.read_all()


def test_reader_checks_md5() -> None:
    good = hashlib.md5(DATA, usedforsecurity=False).hexdigest()
    assert ImageReader(ListStream([DATA]), describe="img", expected_checksum=good).read_all()
    with pytest.raises(ChecksumMismatch):
        ImageReader(ListStream([DATA]), describe="img", expected_checksum="f" * 32).read_all()


def test_reader_maps_stream_errors() -> None:
    class Broken(ListStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b"abc"
            raise ConnectionResetError("fault injected: peer reset")

    reader = ImageReader(
        Broken([b"abcdef"]),
        describe="img",
        on_error=lambda exc: BackendError(f"reading failed: {exc}"),
    )
    with pytest.raises(BackendError, match="peer reset"):
        reader.read_all()


def test_reader_closed_when_abandoned() -> None:
    stream = ListStream([DATA[:10], DATA[10:]])
    with ImageReader(stream, describe="img") as reader:
        next(iter(reader))
    assert stream.closed == 1


class NonBlocking(io.RawIOBase):
    """A raw file in non-blocking mode: ``readinto``/``read`` give None when nothing is ready."""

    def __init__(self) -> None:
        self.calls = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self.calls += 1
        if self.calls == 1:
            buffer[:3] = b"abc"
            return 3
        return None


class NonBlockingReadOnly:
    def __init__(self) -> None:
        self.calls = 0

    def read(self, n: int) -> bytes | None:
        self.calls += 1
        return b"abc" if self.calls == 1 else None


@pytest.mark.parametrize("kind", [NonBlocking, NonBlockingReadOnly])
def test_non_blocking_source_is_refused_not_truncated(kind: type) -> None:
    """'No data ready' must not pass for the end of the image (it would store 3 bytes)."""
    writer = MemoryWriter()
    with pytest.raises(InvalidArgument, match="non-blocking"):
        run(kind(), writer)
    assert writer.aborted == 1 and not writer.committed


def test_reader_closes_the_stream_when_construction_fails() -> None:
    stream = ListStream([DATA])
    with pytest.raises(InvalidArgument):
        ImageReader(stream, describe="img", hash_algo="no-such-hash")
    assert stream.closed == 1
