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
to the pool when its upload ends).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from imgstore.threads import block_signals


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
            future = self._pool.submit(self._run, fn, args, on_error, finally_)
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
