"""The aio window shared by the RBD and Cinder drivers, against a stand-in image whose
completions fire when the test says: only the window's own bookkeeping is tested here
(the drivers' writes go to the real cluster in tests/functional)."""

from __future__ import annotations

import errno
import threading
from typing import Any

import pytest

from imgstore.drivers.rbd_aio import AioWindow


class Completion:
    def __init__(self, ret: int) -> None:
        self._ret = ret

    def get_return_value(self) -> int:
        return self._ret


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
