"""The core's ranged read loop (read_range, RangeStream) and close_quietly."""

from __future__ import annotations

import logging

import pytest

from imgstore.driver import RangeStream, close_quietly, read_range

DATA = bytes(range(256)) * 4


class Reads:
    """``read(at, n)`` over DATA that records its calls; ``extra`` bytes more than asked."""

    def __init__(self, extra: int = 0, empty_at: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.extra = extra
        self.empty_at = empty_at

    def __call__(self, at: int, n: int) -> bytes:
        self.calls.append((at, n))
        if at == self.empty_at:
            return b""
        return DATA[at : at + n + self.extra]


def test_reads_are_cut_at_the_chunk() -> None:
    reads = Reads()
    chunks = list(read_range(reads, 10, 25, 10))
    assert chunks == [DATA[10:20], DATA[20:30], DATA[30:35]]
    assert reads.calls == [(10, 10), (20, 10), (30, 5)]


def test_more_than_asked_is_kept_within_the_range_and_cut_at_its_end() -> None:
    reads = Reads(extra=3)
    chunks = list(read_range(reads, 0, 20, 8))
    assert chunks == [DATA[0:11], DATA[11:20]]  # 11 bytes kept (read), the last cut at 20
    assert reads.calls == [(0, 8), (11, 8)]


def test_an_empty_read_ends_early() -> None:
    reads = Reads(empty_at=16)
    assert b"".join(read_range(reads, 0, 100, 8)) == DATA[:16]
    assert reads.calls == [(0, 8), (8, 8), (16, 8)]


def test_nothing_to_read_calls_nothing() -> None:
    reads = Reads()
    assert list(read_range(reads, 5, 0, 8)) == []
    assert reads.calls == []


def test_stream_reads_from_its_offset_and_releases_once() -> None:
    released: list[int] = []
    stream = RangeStream(
        30, Reads(), 16, offset=100, release=lambda: released.append(1), version="v1",
        name="TestStream",
    )  # fmt: skip
    assert stream.version == "v1"
    assert repr(stream) == "<TestStream size=30>"
    assert b"".join(stream) == DATA[100:130]
    stream.close()
    stream.close()
    assert released == [1]
    assert list(stream) == []  # closed: nothing more


def test_a_failing_release_raises_and_is_not_retried() -> None:
    calls: list[int] = []

    def release() -> None:
        calls.append(1)
        raise OSError("boom")

    stream = RangeStream(1, Reads(), 1, release=release)
    with pytest.raises(OSError, match="boom"):
        stream.close()
    stream.close()
    assert calls == [1]


def test_close_quietly_logs_a_failure_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    class Failing:
        def close(self) -> None:
            raise RuntimeError("boom")

    log = logging.getLogger("imgstore.test_range_stream")
    with caplog.at_level(logging.DEBUG, logger=log.name):
        close_quietly(Failing(), "a thing", log)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "closing a thing failed")
    ]
