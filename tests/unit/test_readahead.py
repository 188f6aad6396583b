"""ReadAhead: the core's read-ahead wrapper around a driver's stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from imgstore.driver import ReadStream
from imgstore.readahead import ReadAhead


class CountingStream(ReadStream):
    """Yields ``n`` numbered chunks and records how far the producer got."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.size = n
        self.n = n
        self.fail_at = fail_at
        self.produced = 0
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        for i in range(self.n):
            if i == self.fail_at:
                raise OSError("connection reset")
            self.produced += 1
            yield bytes([i % 256])

    def close(self) -> None:
        self.closed.set()


def test_yields_every_chunk_in_order() -> None:
    stream = CountingStream(100)
    reader = ReadAhead(stream, 3)
    assert reader.size == 100
    assert b"".join(reader) == bytes(i % 256 for i in range(100))
    reader.close()
    assert stream.closed.is_set()


def test_stays_at_most_depth_chunks_ahead() -> None:
    stream = CountingStream(1000)
    reader = ReadAhead(stream, 4)
    it = iter(reader)
    next(it)
    time.sleep(0.3)  # give the worker every chance to run ahead
    # one chunk taken, four queued, one held by the blocked put
    assert stream.produced <= 1 + 4 + 1
    reader.close()


def test_error_reaches_the_caller_after_the_good_chunks() -> None:
    reader = ReadAhead(CountingStream(10, fail_at=5), 2)
    got = []
    with pytest.raises(OSError, match="connection reset"):
        for chunk in reader:
            got.append(chunk)
    assert len(got) == 5
    reader.close()


def test_close_midway_stops_the_worker_and_closes_the_stream() -> None:
    stream = CountingStream(10_000)
    reader = ReadAhead(stream, 2)
    it = iter(reader)
    next(it)
    reader.close()
    assert stream.closed.is_set()
    produced = stream.produced
    time.sleep(0.3)
    assert stream.produced == produced
    assert not [t for t in threading.enumerate() if t.name == "imgstore-readahead"]


def test_close_before_iterating_starts_no_thread() -> None:
    stream = CountingStream(5)
    ReadAhead(stream, 2).close()
    assert stream.closed.is_set() and stream.produced == 0
