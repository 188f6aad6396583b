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
5 GiB part, Swift's ``max_file_size``). :class:`Pieces` puts these together for a
writer: it cuts the core's chunks into pieces and uploads each one, as a
:class:`PieceBody`, once it is full.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import dataclasses
import mmap
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from imgstore.threads import block_signals

MiB = 1 << 20
T = TypeVar("T")


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


class PieceBuffer(bytearray):
    """A piece's buffer: a ``bytearray`` whose repr does not dump its bytes (a client's
    DEBUG log of request parameters prints the body it is given)."""

    def __repr__(self) -> str:
        return f"<piece buffer of {len(self)} bytes>"


@dataclasses.dataclass(frozen=True)
class Space:
    """``buffer[start:end]``: memory a writer lends the core to read a chunk into
    (:meth:`imgstore.driver.Writer.space`), or one of the core's own chunk buffers."""

    buffer: bytearray | mmap.mmap
    start: int
    end: int

    def view(self) -> memoryview:
        """The bytes of this space."""
        return memoryview(self.buffer)[self.start : self.end]

    def overlaps(self, other: Space) -> bool:
        """Whether the two share a byte."""
        return self.buffer is other.buffer and self.start < other.end and other.start < self.end


class BufferPool:
    """Reusable :class:`PieceBuffer` buffers of one size (other sizes are allocated anew)."""

    def __init__(self) -> None:
        self._free: list[PieceBuffer] = []
        self._lock = threading.Lock()
        self.allocated = 0
        """How many buffers were allocated (tests check the memory bound)."""

    def take(self, size: int) -> PieceBuffer:
        """A buffer of exactly ``size`` bytes (contents undefined)."""
        with self._lock:
            while self._free:
                buf = self._free.pop()
                if len(buf) == size:
                    return buf
            self.allocated += 1
        return PieceBuffer(size)

    def give(self, buf: PieceBuffer) -> None:
        """Return ``buf`` for reuse."""
        with self._lock:
            self._free.append(buf)

    def clear(self) -> None:
        """Drop every free buffer."""
        with self._lock:
            self._free.clear()


class Lending:
    """One buffer at a time lent to the core (:meth:`imgstore.driver.Writer.space`), from
    a :class:`BufferPool`, of the size first asked for; :meth:`taken` says whether the
    core read the chunk it wrote into it."""

    def __init__(self) -> None:
        self.pool = BufferPool()
        self._lent: PieceBuffer | None = None
        self._size: int | None = None

    def space(self, size: int) -> Space | None:
        """The lent buffer (a pooled one if none is lent); None for another size."""
        if self._size is None:
            self._size = size
        if size != self._size:
            return None
        if self._lent is None:
            self._lent = self.pool.take(size)
        return Space(self._lent, 0, size)

    def taken(self, chunk: memoryview) -> PieceBuffer | None:
        """The lent buffer when ``chunk`` lies in it (the writer keeps it, and gives it
        back to :attr:`pool` once done); else None, and a lent buffer goes back."""
        lent, self._lent = self._lent, None
        if lent is not None and chunk.obj is lent:
            return lent
        if lent is not None:
            self.pool.give(lent)
        return None


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


class PieceBody:
    """A piece's bytes as a seekable request body, without copying them.

    Reads return memoryview slices of the buffer (sent and hashed as they are); a
    client seeks back to send it again (a retry). The short repr keeps a client's
    DEBUG log of request parameters from dumping the whole piece (which a bare
    ``bytearray`` body would).
    """

    def __init__(self, data: bytes | bytearray | memoryview, length: int | None = None) -> None:
        # a view of the first ``length`` bytes, never a resize of the buffer: a logging
        # handler that keeps records (botocore logs requests at DEBUG) may hold a view of it
        view = memoryview(data)
        self._view = view if length is None else view[:length]
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view)

    def whole(self) -> PieceBody | PieceBuffer:
        """The piece as one bytes-like body when it fills its buffer, else this body. An
        HTTP client sends a bytes-like body with one ``sendall``, where it reads a file
        16 KiB at a time (urllib3), each read and send a round of Python calls."""
        data = self._view.obj
        if isinstance(data, PieceBuffer) and len(self._view) == len(data) and not self._pos:
            return data
        return self

    def read(self, size: int | None = -1) -> memoryview:
        """The next ``size`` bytes (all that is left when ``size`` is negative)."""
        end = len(self._view) if size is None or size < 0 else self._pos + size
        data = self._view[self._pos : end]
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move to ``offset`` from the start (``whence`` 0), here (1) or the end (2)."""
        self._pos = max(0, {0: 0, 1: self._pos, 2: len(self._view)}[whence] + offset)
        return self._pos

    def tell(self) -> int:
        """The position of the next read."""
        return self._pos

    def seekable(self) -> bool:
        """Always: a retry can read the piece again."""
        return True

    def readable(self) -> bool:
        """Always."""
        return True

    def close(self) -> None:
        """Nothing to release (a client may call it)."""

    def __repr__(self) -> str:
        return f"<request body of {len(self._view)} bytes>"


class Pieces(Generic[T]):
    """One image cut into pieces as it is written: each piece fills a pooled buffer and,
    once full, goes up on a :class:`BoundedUploader` while the next one fills.

    ``upload(number, body)`` sends piece ``number`` (from 1) and returns what the commit
    needs of it (an ETag, a manifest entry); :meth:`finish` gives these in order. Piece
    sizes are :func:`piece_size`'s for ``base``, ``total``, ``limit``, ``largest`` and
    ``every``. ``before_first`` runs on the writer's thread before the first piece goes
    (it starts a multipart upload); ``on_error(exc, number)`` turns a piece's failure
    into the error the writer raises. ``hold``: the image is one piece of ``total``
    bytes that is never uploaded here; the writer sends :meth:`held` itself.
    Memory: at most ``workers + 1`` buffers.
    """

    def __init__(
        self,
        upload: Callable[[int, PieceBody], T],
        *,
        workers: int,
        name: str,
        base: int,
        total: int | None,
        limit: int,
        largest: int,
        every: int | None = None,
        before_first: Callable[[], None] | None = None,
        on_error: Callable[[BaseException, int], BaseException] | None = None,
        hold: bool = False,
    ) -> None:
        self._upload = upload
        self._workers = workers
        self._name = name
        self._sizes = (base, total, limit, largest, every)
        self._before_first = before_first
        self._on_error = on_error
        self._hold = hold
        self._pool = BufferPool()
        self._uploader: BoundedUploader | None = None
        self._buf: PieceBuffer | None = None
        self._filled = 0
        self._lent: Space | None = None
        self._results: dict[int, T] = {}
        self._lock = threading.Lock()
        self._accepted = 0
        self.sent = 0
        """Pieces handed to the uploader (stored or not)."""

    @property
    def accepted(self) -> int:
        """Bytes of the pieces the server has taken (a held piece: none)."""
        return self._accepted  # one int: read whole without the lock

    @property
    def buffers_allocated(self) -> int:
        """How many piece buffers were allocated (tests check the memory bound)."""
        return self._pool.allocated

    @property
    def peak(self) -> int:
        """The most pieces that were uploading at once."""
        return self._uploader.peak if self._uploader is not None else 0

    def space(self, size: int) -> Space | None:
        """Room for the next at most ``size`` bytes in the piece being filled (a new one
        if none is), for the core to read into; None when no piece may hold more (a held
        image is full, the pieces are all used: the core stops such an image)."""
        if self._buf is None:
            if not self._hold and self.sent >= self._sizes[2]:
                return None
            self._take()
        assert self._buf is not None
        end = min(len(self._buf), self._filled + size)
        if end == self._filled:
            return None
        self._lent = Space(self._buf, self._filled, end)
        return self._lent

    def _take(self) -> None:
        self._buf = self._pool.take(self._next_size())
        self._filled = 0

    def write(self, chunk: memoryview) -> None:
        """Take ``chunk`` into piece buffers (where :meth:`space` lent it: as it is; else
        a copy), each uploaded once full; raise a piece's failure first."""
        self.raise_failure()
        lent, self._lent = self._lent, None
        if lent is not None and chunk.obj is lent.buffer and len(chunk) <= lent.end - lent.start:
            self._filled += len(chunk)  # read in place by the core
            self._sent_if_full()
            return
        view = chunk
        while view:
            if self._buf is None:
                self._take()
            assert self._buf is not None
            take = min(len(self._buf) - self._filled, len(view))
            assert take, "the core never writes past the declared size"
            self._buf[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            self._sent_if_full()

    def _sent_if_full(self) -> None:
        if self._buf is not None and self._filled == len(self._buf) and not self._hold:
            self._send()

    def _next_size(self) -> int:
        base, total, limit, largest, every = self._sizes
        if self._hold:
            assert total is not None, "only an image of known size is held whole"
            return total
        number = self.sent + 1
        assert number <= limit, "the core stops an image that outgrows write_limits"
        return piece_size(number, base, total, limit, largest, every)

    def _send(self) -> None:
        """Hand the filled buffer to the uploader; block first while every thread is busy."""
        buf, count = self._buf, self._filled
        assert buf is not None
        self._buf, self._filled = None, 0
        if self._uploader is None:
            if self._before_first is not None:
                self._before_first()
            self._uploader = BoundedUploader(self._workers, self._name)
        self.sent += 1
        number, on_error = self.sent, self._on_error
        self._uploader.submit(
            self._run, number, PieceBody(buf, count),
            on_error=None if on_error is None else lambda exc: on_error(exc, number),
            finally_=lambda: self._pool.give(buf),
        )  # fmt: skip

    def _run(self, number: int, body: PieceBody) -> None:
        result = self._upload(number, body)
        with self._lock:
            self._results[number] = result
            self._accepted += len(body)

    def raise_failure(self) -> None:
        """Raise the first piece's failure, if one failed."""
        if self._uploader is not None:
            self._uploader.raise_failure()

    def held(self) -> PieceBody:
        """The bytes written, when no piece was sent: the whole image, for one PUT."""
        assert self.sent == 0, "pieces were sent"
        buf, self._buf = self._buf, None
        return PieceBody(buf if buf is not None else b"", self._filled)

    def wait(self) -> None:
        """Wait until no piece is uploading (a failure is raised by the next call)."""
        if self._uploader is not None:
            self._uploader.wait()

    def finish(self) -> list[T]:
        """Send the last, partly filled piece, wait for all and return their results in
        order; raise a piece's failure."""
        if self._buf is not None and self._filled:
            self._send()
        self.wait()
        self.raise_failure()
        return [self._results[n] for n in sorted(self._results)]

    def stop(self) -> None:
        """Drop the piece being filled, skip those not started, wait for the running ones
        and free the threads and buffers."""
        self._buf = self._lent = None
        if self._uploader is not None:
            self._uploader.stop()
        self._pool.clear()


class PiecesWriting:
    """What a writer whose bytes go through :class:`Pieces` (its ``_pieces``) gives of
    them: ``write``, and the bytes, buffers and threads they used (mix in before
    :class:`~imgstore.driver.Writer`)."""

    _pieces: Pieces[Any]

    def space(self, size: int) -> Space | None:
        """Room in the piece being filled, for the core to read the next chunk into."""
        return self._pieces.space(size)

    def write(self, chunk: memoryview) -> None:
        """Take ``chunk`` into piece buffers, each uploaded once full."""
        self._pieces.write(chunk)

    @property
    def accepted(self) -> int:
        """Bytes of the pieces the server has taken (a piece held for commit: none)."""
        return self._pieces.accepted

    @property
    def buffers_allocated(self) -> int:
        """How many piece buffers this writer allocated (tests check the memory bound)."""
        return self._pieces.buffers_allocated

    @property
    def peak_uploads(self) -> int:
        """The most pieces that were uploading at once."""
        return self._pieces.peak
