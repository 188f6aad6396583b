"""The aio window shared by the RBD and Cinder drivers, against a stand-in image whose
completions fire when the test says: only the window's own bookkeeping is tested here
(the drivers' writes go to the real cluster in tests/functional)."""

from __future__ import annotations

import errno
import os
import threading
from typing import Any

import pytest

from imgstore.drivers import rbd as rbd_driver
from imgstore.drivers.rbd_aio import AioWindow, aio_read
from imgstore.exceptions import BackendUnavailable, ImgstoreError, StorageFull
from tests.functional.conftest import skip_or_fail


class Completion:
    def __init__(self, ret: int) -> None:
        self._ret = ret

    def get_return_value(self) -> int:
        return self._ret


class ReadCompletion:
    """An ``aio_read`` of :class:`ReadImage`: it lands when waited for."""

    def __init__(self, image: ReadImage, offset: int, length: int, done: Any) -> None:
        self.image, self.offset, self.length, self.done = image, offset, length, done
        self.landed = False

    def get_return_value(self) -> int:
        return -errno.EIO if self.offset in self.image.failing else self.length

    def wait_for_complete_and_cb(self) -> None:
        if not self.landed:
            self.landed = True
            failed = self.offset in self.image.failing
            self.done(
                self, None if failed else self.image.data[self.offset : self.offset + self.length]
            )


class ReadImage:
    """Takes aio reads of its ``data``; a read at an offset in ``failing`` fails."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.failing: set[int] = set()
        self.reads: list[ReadCompletion] = []

    def aio_read(self, offset: int, length: int, done: Any) -> ReadCompletion:
        completion = ReadCompletion(self, offset, length, done)
        self.reads.append(completion)
        return completion


class HeldImage:
    """Takes aio writes and completes them when :meth:`complete` is called."""

    def __init__(self) -> None:
        self.pending: list[tuple[bytes, int, Any]] = []
        self.buffers: list[int] = []
        self.data: dict[int, bytes] = {}
        self.refuse: Exception | None = None
        self.lock = threading.Lock()

    def aio_write(self, data: Any, offset: int, done: Any) -> object:
        if self.refuse is not None:
            raise self.refuse
        with self.lock:
            self.pending.append((bytes(data), offset, done))
            self.buffers.append(id(data))
        return object()

    def complete(self, ret: int = 0) -> None:
        with self.lock:
            data, offset, done = self.pending.pop(0)
        if ret >= 0:
            self.data[offset] = data
        done(Completion(ret))


def test_at_most_depth_writes_in_flight_and_buffers_are_reused() -> None:
    image = HeldImage()
    window = AioWindow(image, depth=2, buffer_size=4)
    window.write(memoryview(b"aaaa"), 0)
    window.write(memoryview(b"bbbb"), 4)
    third = threading.Thread(target=window.write, args=(memoryview(b"cccc"), 8))
    third.start()
    third.join(0.2)
    assert third.is_alive(), "a third write waits for a free slot"
    assert window.stored == 0
    image.complete()
    third.join(5)
    assert not third.is_alive()
    assert window.stored == 4
    image.complete()
    image.complete()
    window.drain()
    assert window.stored == 12
    assert image.data == {0: b"aaaa", 4: b"bbbb", 8: b"cccc"}
    assert len(set(image.buffers)) == 2, "the first write's buffer came back for the third"


def test_a_chunk_reused_by_the_caller_was_copied() -> None:
    image = HeldImage()
    window = AioWindow(image, depth=4)
    buf = bytearray(b"xxxx")
    window.write(memoryview(buf), 0)
    buf[:] = b"yyyy"
    window.write(memoryview(buf)[:2], 4)  # another size: copied once, not pooled
    buf[:] = b"zzzz"
    image.complete()
    image.complete()
    window.drain()
    assert image.data == {0: b"xxxx", 4: b"yy"}


def test_a_lent_buffer_is_written_as_it_is_and_lent_again_once_its_write_landed() -> None:
    image = HeldImage()
    window = AioWindow(image, depth=2, buffer_size=4)
    assert window.space(3) is None, "only full-sized buffers are lent"
    first = window.space(4)
    assert first is not None and (first.start, first.end) == (0, 4)
    first.view()[:] = b"aaaa"
    window.write(first.view(), 0)  # not copied: aio_write got the lent buffer itself
    assert image.buffers == [id(first.buffer)]
    second = window.space(4)
    assert second is not None and second.buffer is not first.buffer, "the first is in flight"
    second.view()[:3] = b"bbb"
    window.write(second.view()[:3], 4)  # a short last chunk: copied, its buffer kept
    assert image.buffers[1] != id(second.buffer)
    again = window.space(4)
    assert again is not None and again.buffer is second.buffer
    window.skip(4, again.view())  # left thin: the buffer is free again
    image.complete()
    image.complete()
    window.drain()
    assert image.data == {0: b"aaaa", 4: b"bbb"}
    reused = window.space(4)  # no new buffer: both came back
    assert reused is not None and any(reused.buffer is b for b in (first.buffer, second.buffer))


def test_the_first_failure_is_raised_by_check_and_the_next_write() -> None:
    image = HeldImage()
    window = AioWindow(image, depth=4)
    window.write(memoryview(b"aaaa"), 0)
    window.write(memoryview(b"bbbb"), 4)
    image.complete(-errno.ENOSPC)
    image.complete(-errno.EIO)
    window.drain()
    with pytest.raises(OSError) as raised:
        window.check()
    assert raised.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as again:
        window.write(memoryview(b"cccc"), 8)
    assert again.value.errno == errno.ENOSPC
    assert window.stored == 0 and image.pending == []


def test_finish_waits_for_the_writes_in_flight_then_raises_the_first_failure() -> None:
    image = HeldImage()
    window = AioWindow(image, depth=4)
    window.write(memoryview(b"aaaa"), 0)
    window.write(memoryview(b"bbbb"), 4)
    finishing = threading.Thread(target=window.finish)
    finishing.start()
    finishing.join(0.2)
    assert finishing.is_alive(), "finish waits for the writes in flight"
    image.complete()
    image.complete()
    finishing.join(5)
    assert not finishing.is_alive() and window.stored == 8
    window.write(memoryview(b"cccc"), 8)
    window.write(memoryview(b"dddd"), 12)
    image.complete(-errno.ENOSPC)
    image.complete(-errno.EIO)
    with pytest.raises(OSError) as raised:
        window.finish()
    assert raised.value.errno == errno.ENOSPC and image.pending == []


def test_a_refused_write_frees_its_slot() -> None:
    image = HeldImage()
    window = AioWindow(image, depth=1)
    image.refuse = RuntimeError("librbd refused the write")
    with pytest.raises(RuntimeError, match="refused"):
        window.write(memoryview(b"aaaa"), 0)
    image.refuse = None
    window.write(memoryview(b"aaaa"), 0)  # would wait forever if the slot were still held
    image.complete()
    window.drain()
    assert window.stored == 4


def test_skipped_ranges_count_as_stored() -> None:
    window = AioWindow(HeldImage(), depth=1)
    window.skip(4096)
    assert window.stored == 4096


def test_reads_run_at_most_depth_ahead_and_yield_in_order() -> None:
    image = ReadImage(bytes(range(10)))
    reads = aio_read(image, 1, 8, chunk=3, depth=2)
    assert next(reads) == bytes([1, 2, 3])
    assert len(image.reads) == 2, "two reads in flight, no more"
    assert list(reads) == [bytes([4, 5, 6]), bytes([7, 8])]
    assert [(r.offset, r.length) for r in image.reads] == [(1, 3), (4, 3), (7, 2)]


def test_a_failed_read_raises_its_errno_and_closing_waits_for_the_rest() -> None:
    image = ReadImage(bytes(16))
    image.failing.add(4)
    reads = aio_read(image, 0, 16, chunk=4, depth=3)
    assert next(reads) == bytes(4)
    with pytest.raises(OSError) as raised:
        next(reads)
    assert raised.value.errno == errno.EIO
    assert all(r.landed for r in image.reads), "no read left in flight under a closed image"


def test_closing_before_the_end_waits_for_the_reads_in_flight() -> None:
    image = ReadImage(bytes(16))
    reads = aio_read(image, 0, 16, chunk=4, depth=3)
    next(reads)
    assert [r.landed for r in image.reads] == [True, False, False]
    reads.close()
    assert all(r.landed for r in image.reads)


@pytest.mark.parametrize(
    ("err", "kind"), [(errno.ENOSPC, StorageFull), (errno.ETIMEDOUT, BackendUnavailable)]
)
def test_the_rbd_driver_maps_a_failed_aio_call_by_its_errno(
    err: int, kind: type[ImgstoreError]
) -> None:
    if rbd_driver.rbd is None:
        skip_or_fail("Ceph's Python bindings (python3-rbd) are not installed")
    driver = rbd_driver.RbdDriver.__new__(rbd_driver.RbdDriver)  # no cluster needed
    driver.backend = "ceph"
    with pytest.raises(kind, match=r"^backend 'ceph': writing image img: \w+: \[Errno "):
        with driver.mapped("writing image img"):
            raise OSError(err, os.strerror(err))  # what AioWindow.check raises
