"""Asynchronous librbd reads and writes, for the RBD driver and Cinder's RBD volumes.

librbd's ``aio_write`` returns at once and calls back on a librbd thread when the
cluster has the bytes. :class:`AioWindow` keeps at most ``depth`` writes in flight,
each from a buffer of its own (the core reuses the buffer it passed to ``write``), and
recycles full-sized buffers, so a write holds at most ``depth`` buffers however large
the image; it counts what the cluster acknowledged (a writer's ``accepted``) and keeps
the first failure to raise on the next call. :func:`aio_read` reads a range a few
``aio_read`` calls ahead of its consumer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections import deque
from collections.abc import Generator
from typing import Any

from imgstore.parallel import Lending, PieceBuffer, Space

READ_DEPTH = 4
"""Reads in flight at most (more do not read faster)."""


def aio_read(
    image: Any, offset: int, count: int, chunk: int, depth: int
) -> Generator[bytes, None, None]:
    """Yield ``count`` bytes of ``image`` from ``offset``, in reads of ``chunk`` bytes of
    which up to ``depth`` are in flight; a failed read raises :class:`OSError` with its
    errno. Closing the generator waits for the reads still in flight (the image must
    outlive them)."""
    pending: deque[tuple[Any, list[Any]]] = deque()
    next_offset, end = offset, offset + count
    try:
        while next_offset < end or pending:
            while next_offset < end and len(pending) < depth:
                length = min(chunk, end - next_offset)
                pending.append(_submit_read(image, next_offset, length))
                next_offset += length
            completion, slot = pending.popleft()
            completion.wait_for_complete_and_cb()
            if slot[1] < 0 or slot[0] is None:
                err = -int(slot[1] or -errno.EIO)
                raise OSError(err, os.strerror(err))
            yield slot[0]
    finally:
        for completion, _slot in pending:
            with contextlib.suppress(Exception):
                completion.wait_for_complete_and_cb()


def _submit_read(image: Any, offset: int, length: int) -> tuple[Any, list[Any]]:
    """Start one ``aio_read``; its slot gets ``[data, return value]`` when it lands."""
    slot: list[Any] = [None, 0]

    def done(completion: Any, data: Any) -> None:
        slot[0] = data
        slot[1] = completion.get_return_value()

    return image.aio_read(offset, length, done), slot


class AioWindow:
    """At most ``depth`` ``aio_write`` calls of ``image`` in flight; buffers of
    ``buffer_size`` bytes (None: the size of the first write) are reused, and lent to the
    core to read a chunk into (:meth:`space`: no copy); other chunks are copied once."""

    def __init__(self, image: Any, depth: int, buffer_size: int | None = None) -> None:
        self._image = image
        self._depth = depth
        self._buffer_size = buffer_size
        self._cond = threading.Condition()
        self._inflight: dict[int, list[Any]] = {}  # seq -> [completion, buffer]
        self._lending = Lending()  # its pool also holds the buffers of copied chunks
        self._failure = 0
        self._seq = 0
        self._stored = 0

    @property
    def stored(self) -> int:
        """Bytes the cluster has acknowledged (or that :meth:`skip` counted)."""
        with self._cond:
            return self._stored

    def check(self) -> None:
        """Raise the first failed write's error as an :class:`OSError` with its errno."""
        if self._failure:
            raise OSError(self._failure, os.strerror(self._failure))

    def space(self, size: int) -> Space | None:
        """A full-sized buffer no write holds, for the core to read the next chunk into
        (None before the first write, or for another size)."""
        return self._lending.space(size) if size == self._buffer_size else None

    def _taken(self, chunk: memoryview) -> bytearray | None:
        """The lent buffer when ``chunk`` is all of it; a lent buffer not used so goes back."""
        lent = self._lending.taken(chunk)
        if lent is not None and len(chunk) != len(lent):
            self._lending.pool.give(lent)
            return None
        return lent

    def skip(self, count: int, chunk: memoryview | None = None) -> None:
        """Count ``count`` bytes as stored without writing them (a range left thin;
        ``chunk``: the bytes, where the core may have read them into a lent buffer)."""
        if chunk is not None:
            self._taken(chunk)
        with self._cond:
            self._stored += count

    def write(self, chunk: memoryview, offset: int) -> None:
        """Start writing ``chunk`` at ``offset``, once a slot is free; raises the first
        earlier failure, and what ``aio_write`` itself raises."""
        if self._buffer_size is None:
            self._buffer_size = len(chunk)
        lent = self._taken(chunk)  # read in place by the core
        reuse = lent is None and len(chunk) == self._buffer_size
        entry: list[Any] = [None, lent]  # [completion, buffer], kept until it has fired
        with self._cond:  # wait for a free slot in the window, and take it
            while len(self._inflight) >= self._depth:
                self._cond.wait()
            self.check()
            self._seq += 1
            seq = self._seq
            self._inflight[seq] = entry
        if reuse:
            buffer = self._lending.pool.take(len(chunk))
            buffer[:] = chunk  # our own copy
            entry[1] = buffer
        elif lent is None:
            entry[1] = chunk.tobytes()
        try:  # not under the lock: librbd may block here until completions ran
            entry[0] = self._image.aio_write(entry[1], offset, lambda c: self._complete(seq, c))
        except BaseException:
            with self._cond:
                self._inflight.pop(seq, None)
                self._cond.notify_all()
            raise

    # runs on a librbd thread: record, hand the buffer back, never raise
    def _complete(self, seq: int, completion: Any) -> None:
        try:
            ret = int(completion.get_return_value())
        except Exception:
            ret = -errno.EIO
        with self._cond:
            entry = self._inflight.pop(seq, None)
            if entry is not None:
                if ret >= 0:
                    self._stored += len(entry[1])
                if isinstance(entry[1], PieceBuffer):
                    self._lending.pool.give(entry[1])
            if ret < 0 and not self._failure:
                self._failure = -ret
            self._cond.notify_all()

    def drain(self) -> None:
        """Wait until no write is in flight (failures are kept for :meth:`check`)."""
        with self._cond:
            while self._inflight:
                self._cond.wait()

    def finish(self) -> None:
        """Wait until no write is in flight, then raise the first failed write's error."""
        self.drain()
        self.check()
