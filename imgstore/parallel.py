"""A bounded pool for uploading the pieces of one image concurrently.

Drivers that split an image into pieces (Swift segments, S3 parts) fill one
buffer while earlier pieces go up on a few threads. :class:`BoundedUploader`
gives them the two things that need care:

* back-pressure: :meth:`BoundedUploader.submit` blocks while ``workers``
  pieces are in flight, so an add holds at most ``workers + 1`` buffers;
* failure handling: the first exception of any piece is kept and raised by
  the next ``submit``/:meth:`~BoundedUploader.raise_failure`; pieces not yet
  started are skipped; :meth:`~BoundedUploader.wait` returns only once no piece
  is running, so a cleanup after it never races a piece still landing.

Buffers are recycled through :class:`BufferPool` (a piece's buffer goes back
to the pool when its upload ends). :func:`piece_size` chooses the size of each
piece so that an image fits the server's limits: at most so many pieces (S3's
part numbers, an SLO's ``max_manifest_segments``) of at most so many bytes (S3's
5 GiB part, Swift's ``max_file_size``).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
from collections.abc import Callable
from typing import Any

from imgstore.threads import block_signals

MiB = 1 << 20


def growth_every(limit: int) -> int:
    """Unknown size: how many pieces go by before the piece size doubles (a tenth of
    ``limit``, at least one)."""
    return max(1, limit // 10)


def piece_size(
    number: int, base: int, total: int | None, limit: int, largest: int, every: int | None = None
) -> int:
    """The size of piece ``number`` (1-based) of an image cut into at most ``limit``
    pieces of at most ``largest`` bytes, ``base`` bytes when nothing forces more.

    Known ``total``: every piece has the same size, ``base``, or
    ``ceil(total / limit)`` rounded up to a MiB when ``base`` would need more than
    ``limit`` pieces; never above ``largest`` (an image larger than ``limit x largest``
    cannot fit: see :func:`capacity`). Unknown ``total``: ``base`` doubled every
    ``every`` pieces (default :func:`growth_every`), never above ``largest``, so a
    small image keeps small pieces and a large one still fits.
    """
    if number < 1:
        raise ValueError("piece numbers start at 1")
    if limit < 1 or largest < 1 or base < 1:
        raise ValueError("limit, largest and base must be positive")
    base = min(base, largest)
    if total is not None:
        needed = -(-total // limit)
        needed = -(-needed // MiB) * MiB
        return min(largest, max(base, needed))
    step = every if every is not None else growth_every(limit)
    doublings = (number - 1) // step
    if doublings >= largest.bit_length():  # base << doublings is past largest anyway
        return largest
    return min(largest, base << doublings)


def capacity(
    base: int, limit: int, largest: int, total: int | None = None, every: int | None = None
) -> int:
    """The most bytes :func:`piece_size` fits in ``limit`` pieces: for a known ``total``
    at that total's piece size, else the sum of the growing sizes."""
    if total is not None:
        return piece_size(1, base, total, limit, largest) * limit
    step = every if every is not None else growth_every(limit)
    held, number = 0, 1
    while number <= limit:
        size = piece_size(number, base, None, limit, largest, step)
        if size == largest:  # it grows no more: the rest are all this size
            return held + size * (limit - number + 1)
        count = min(step - (number - 1) % step, limit - number + 1)
        held += size * count
        number += count
    return held


class BufferPool:
    """Reusable ``bytearray`` buffers of one size (other sizes are allocated anew)."""

    def __init__(self) -> None:
        self._free: list[bytearray] = []
        self._lock = threading.Lock()
        self.allocated = 0
        """How many buffers were allocated (tests check the memory bound)."""

    def take(self, size: int) -> bytearray:
        """A buffer of exactly ``size`` bytes (contents undefined)."""
        with self._lock:
            while self._free:
                buf = self._free.pop()
                if len(buf) == size:
                    return buf
            self.allocated += 1
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        """Return ``buf`` for reuse."""
        with self._lock:
            self._free.append(buf)

    def clear(self) -> None:
        """Drop every free buffer."""
        with self._lock:
            self._free.clear()


class BoundedUploader:
    """Runs upload tasks on ``workers`` threads, at most ``workers`` at a time."""

    def __init__(self, workers: int, name: str) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._slots = threading.BoundedSemaphore(workers)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=name, initializer=block_signals
        )
        self._futures: list[concurrent.futures.Future[None]] = []
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self._stopped = False
        self.peak = 0
        """The most tasks that ran at once (tests check the bound)."""
        self._running = 0

    @property
    def failure(self) -> BaseException | None:
        """The first exception a task raised, if any."""
        return self._failure

    def raise_failure(self) -> None:
        """Raise the first task failure, if there was one."""
        if self._failure is not None:
            raise self._failure

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` as the failure (first one wins): later tasks are skipped."""
        with self._lock:
            if self._failure is None:
                self._failure = exc

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        on_error: Callable[[BaseException], BaseException] | None = None,
        finally_: Callable[[], None] | None = None,
    ) -> None:
        """Run ``fn(*args)`` on a thread; block first while every thread is busy.

        ``on_error`` turns a task's exception into the one recorded;
        ``finally_`` runs when the task ends (or is skipped), e.g. to give
        its buffer back.
        """
        self._slots.acquire()
        try:
            self.raise_failure()
            if self._stopped:
                raise RuntimeError("submit after the uploader stopped")
            # in the caller's context: the operation it works for stays the current one
            context = contextvars.copy_context()
            future = self._pool.submit(context.run, self._run, fn, args, on_error, finally_)
        except BaseException:
            self._slots.release()
            if finally_ is not None:
                finally_()
            raise
        self._futures.append(future)

    def _run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        on_error: Callable[[BaseException], BaseException] | None,
        finally_: Callable[[], None] | None,
    ) -> None:
        with self._lock:
            self._running += 1
            self.peak = max(self.peak, self._running)
        try:
            if self._failure is None and not self._stopped:
                fn(*args)
        except BaseException as exc:
            self.fail(on_error(exc) if on_error is not None else exc)
        finally:
            with self._lock:
                self._running -= 1
            try:
                if finally_ is not None:
                    finally_()
            finally:
                self._slots.release()

    def wait(self) -> None:
        """Wait until every submitted task has ended (a failure is not raised here)."""
        futures, self._futures = self._futures, []
        concurrent.futures.wait(futures)

    def stop(self) -> None:
        """Skip tasks not yet started, wait for the running ones, free the threads."""
        self._stopped = True
        self.wait()
        self._pool.shutdown(wait=True, cancel_futures=True)
