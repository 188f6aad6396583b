"""The core's piece writer (imgstore.parallel.Pieces) and request body (PieceBody): chunks
are cut at the piece sizes, pieces go up in order with bounded memory, a failure reaches
the writer, and a body reads again after a seek without copying its buffer."""

from __future__ import annotations

import os
import threading

import pytest

from imgstore.driver import Writer, Written
from imgstore.location import parse
from imgstore.parallel import Lending, PieceBody, PieceBuffer, Pieces, PiecesWriting, piece_size

KiB = 1 << 10


def _chunks(data: bytes, size: int) -> list[memoryview]:
    return [memoryview(data)[i : i + size] for i in range(0, len(data), size)]


# -- PieceBody ---------------------------------------------------------------------


def test_a_body_reads_its_first_bytes_and_again_after_a_seek() -> None:
    buf = bytearray(b"abcdefgh")
    body = PieceBody(buf, 5)
    assert len(body) == 5
    assert bytes(body.read(2)) == b"ab"
    assert body.tell() == 2
    assert bytes(body.read()) == b"cde"
    assert bytes(body.read(3)) == b""  # the end: never past the length
    assert body.seek(0) == 0
    assert bytes(body.read(None)) == b"abcde"  # a retry reads the same bytes
    assert body.seek(-2, 2) == 3 and bytes(body.read(1)) == b"d"
    assert body.seek(-10, 1) == 0  # never before the start
    assert len(buf) == 8  # a view, never a resize of the buffer


def test_a_body_shares_its_buffer_and_hides_it_from_repr() -> None:
    buf = bytearray(b"secret bytes")
    body = PieceBody(buf)
    data = body.read(6)
    buf[0:6] = b"SECRET"  # a view, not a copy
    assert bytes(data) == b"SECRET"
    assert repr(body) == "<request body of 12 bytes>"
    assert body.seekable() and body.readable()


def test_a_body_that_fills_its_piece_buffer_is_sent_as_that_buffer() -> None:
    """``whole()``: a full piece buffer goes to the client as one bytes-like body (sent
    with one sendall), never dumped by a repr; a part of one, or a body read from
    already, stays a body."""
    buf = PieceBuffer(b"piece of bytes")
    assert PieceBody(buf).whole() is buf
    assert isinstance(buf, bytearray) and repr(buf) == "<piece buffer of 14 bytes>"
    partial = PieceBody(buf, 5)
    assert partial.whole() is partial
    started = PieceBody(buf)
    started.read(1)
    assert started.whole() is started
    plain = PieceBody(bytearray(b"not from the pool"))
    assert plain.whole() is plain


# -- Pieces --------------------------------------------------------------------------


class Recorder:
    """An upload that records each piece's number, bytes and thread."""

    def __init__(self) -> None:
        self.got: dict[int, bytes] = {}
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, number: int, body: PieceBody) -> str:
        data = bytes(body.read())
        with self.lock:
            self.got[number] = data
            self.threads.add(threading.current_thread().name)
        return f"etag-{number}"


def test_chunks_are_cut_at_the_piece_sizes_and_results_come_in_order() -> None:
    upload = Recorder()
    started: list[int] = []
    pieces = Pieces(
        upload, workers=2, name="t-piece", base=4 * KiB, total=None, limit=3, largest=64 * KiB,
        every=1, before_first=lambda: started.append(len(upload.got)),
    )  # fmt: skip
    data = bytes(range(256)) * 100  # 25,600 bytes: pieces of 4, 8 and 16 KiB (growing)
    for chunk in _chunks(data, 3000):  # chunks that straddle the pieces' ends
        pieces.write(chunk)
    assert pieces.finish() == ["etag-1", "etag-2", "etag-3"]
    first, second = (piece_size(n, 4 * KiB, None, 3, 64 * KiB, 1) for n in (1, 2))
    assert (first, second) == (4 * KiB, 8 * KiB)
    assert [len(upload.got[n]) for n in (1, 2, 3)] == [first, second, 25_600 - first - second]
    assert b"".join(upload.got[n] for n in (1, 2, 3)) == data
    assert started == [0]  # once, before any piece went up
    assert pieces.sent == 3 and pieces.accepted == len(data)
    assert all(name.startswith("t-piece") for name in upload.threads)
    pieces.stop()


def test_memory_stays_at_workers_plus_one_buffers() -> None:
    release = threading.Event()

    def slow(number: int, body: PieceBody) -> None:
        release.wait(5)

    pieces: Pieces[None] = Pieces(
        slow, workers=2, name="t-piece", base=KiB, total=None, limit=100, largest=KiB
    )
    feeder = threading.Thread(target=lambda: [pieces.write(memoryview(bytes(KiB)))
                                              for _ in range(6)])  # fmt: skip
    feeder.start()
    feeder.join(0.5)
    assert feeder.is_alive(), "a third piece should wait for a free thread"
    assert pieces.buffers_allocated <= 3
    release.set()
    feeder.join(5)
    assert len(pieces.finish()) == 6
    assert pieces.buffers_allocated <= 3 and 1 <= pieces.peak <= 2
    pieces.stop()


def test_a_failed_piece_is_raised_as_on_error_says() -> None:
    def failing(number: int, body: PieceBody) -> None:
        raise OSError(f"piece {number} refused")

    def on_error(exc: BaseException, number: int) -> BaseException:
        return RuntimeError(f"uploading piece {number}: {exc}")

    pieces: Pieces[None] = Pieces(
        failing, workers=1, name="t-piece", base=KiB, total=None, limit=10, largest=KiB,
        on_error=on_error,
    )  # fmt: skip
    pieces.write(memoryview(bytes(KiB)))
    pieces.wait()
    with pytest.raises(RuntimeError, match="uploading piece 1: piece 1 refused"):
        pieces.write(memoryview(bytes(10)))
    with pytest.raises(RuntimeError, match="piece 1"):
        pieces.finish()
    pieces.stop()


def test_a_held_image_is_one_buffer_sent_by_the_writer() -> None:
    upload = Recorder()
    pieces = Pieces(
        upload, workers=1, name="t-piece", base=KiB, total=3 * KiB, limit=10, largest=KiB,
        hold=True,
    )  # fmt: skip
    for chunk in _chunks(b"x" * 3 * KiB, 700):
        pieces.write(chunk)
    assert pieces.sent == 0 and upload.got == {} and pieces.accepted == 0
    assert bytes(pieces.held().read()) == b"x" * 3 * KiB


def test_an_image_smaller_than_a_piece_is_held_and_an_empty_one_is_empty() -> None:
    upload = Recorder()
    pieces = Pieces(upload, workers=1, name="t-piece", base=KiB, total=None, limit=10,
                    largest=KiB)  # fmt: skip
    pieces.write(memoryview(b"small"))
    assert bytes(pieces.held().read()) == b"small"
    empty = Pieces(upload, workers=1, name="t-piece", base=KiB, total=0, limit=10, largest=KiB)
    assert len(empty.held()) == 0 and upload.got == {}


def test_a_writer_mixing_in_pieces_writing_writes_through_its_pieces() -> None:
    class PieceWriter(PiecesWriting, Writer):
        def __init__(self) -> None:
            self.upload = Recorder()
            self._pieces = Pieces(
                self.upload, workers=1, name="t-piece", base=KiB, total=None, limit=10,
                largest=KiB,
            )  # fmt: skip

        def commit(self, size: int) -> Written:
            self._pieces.finish()
            return Written(parse("file:///x"))

        def abort(self) -> None:
            self._pieces.stop()

    writer = PieceWriter()  # the mixin's write stands for Writer's abstract one
    writer.write(memoryview(bytes(KiB + 1)))
    writer._pieces.wait()
    assert writer.accepted == KiB  # the full piece; the byte being filled is not yet taken
    writer.commit(KiB + 1)
    assert writer.accepted == KiB + 1
    assert 1 <= writer.buffers_allocated <= 2 and writer.peak_uploads == 1
    assert sorted(writer.upload.got) == [1, 2]
    writer.abort()


def test_the_core_reads_into_the_piece_buffers_where_they_lend_room() -> None:
    upload = Recorder()
    pieces = Pieces(upload, workers=2, name="t-piece", base=4 * KiB, total=None, limit=3,
                    largest=4 * KiB, every=1)  # fmt: skip
    data = os.urandom(10 * KiB)
    lent = []
    done = 0
    while (space := pieces.space(3000)) is not None and done < len(data):
        view = space.view()
        count = min(len(view), len(data) - done)
        view[:count] = data[done : done + count]
        lent.append((space.start, space.end))
        pieces.write(view[:count])  # the lent memory itself: taken as it is
        done += count
    # 3000 bytes at most, never across a piece's end
    assert lent[:3] == [(0, 3000), (3000, 4096), (0, 3000)]
    assert pieces.finish() == [f"etag-{n}" for n in (1, 2, 3)]
    assert b"".join(upload.got[n] for n in (1, 2, 3)) == data
    assert pieces.space(3000) is None, "every piece is used: no more room"
    pieces.stop()


def test_a_held_image_lends_room_up_to_its_size_and_then_none() -> None:
    pieces: Pieces[None] = Pieces(lambda n, b: None, workers=1, name="t-piece", base=KiB,
                                  total=100, limit=1, largest=KiB, hold=True)  # fmt: skip
    space = pieces.space(64)
    assert space is not None and (space.start, space.end) == (0, 64)
    space.view()[:] = b"a" * 64
    pieces.write(space.view())
    space = pieces.space(64)
    assert space is not None and (space.start, space.end) == (64, 100)
    space.view()[:] = b"b" * 36
    pieces.write(space.view())
    assert pieces.space(64) is None
    assert bytes(pieces.held().read()) == b"a" * 64 + b"b" * 36


def test_lending_lends_one_pooled_buffer_of_one_size_and_takes_it_back_unless_used() -> None:
    lending = Lending()
    space = lending.space(8)
    again = lending.space(8)
    assert space is not None and again is not None and again.buffer is space.buffer
    assert lending.space(4) is None  # another size
    assert lending.taken(space.view()[:3]) is space.buffer  # read into it: the writer's
    other = lending.space(8)
    assert other is not None and other.buffer is not space.buffer
    assert lending.taken(memoryview(bytearray(8))) is None  # read elsewhere: back to the pool
    back = lending.space(8)
    assert back is not None and back.buffer is other.buffer
    assert lending.pool.allocated == 2
