"""The byte pipeline every backend shares.

``add``: the source is read in fixed-size chunks into a small ring of reused
buffers (about 32 MiB in all); md5 and the multihash run on one worker thread
each (hashlib releases the GIL on large buffers), fed through queues so that
they may trail the driver, which writes the same chunks, by a few chunks;
bytes are counted against the declared size and the size cap before they reach
the driver; on any failure the driver's writer is aborted so nothing is left
behind.

``get``: :class:`ImageReader` wraps a driver's stream, checks that it yields
exactly the promised number of bytes, and can verify a hash at the end.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import logging
import mmap
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from imgstore import telemetry
from imgstore.backoff import Backoff
from imgstore.driver import ReadStream, WriteLimits, Writer, Written
from imgstore.exceptions import (
    BackendError,
    BackendUnavailable,
    ChecksumMismatch,
    ImgstoreError,
    InvalidArgument,
    SizeCapExceeded,
    SizeMismatch,
)
from imgstore.parallel import Space
from imgstore.threads import start_without_signals

if TYPE_CHECKING:
    from imgstore.inspection import Inspection, StreamInspector

LOG = logging.getLogger(__name__)
T = TypeVar("T")

Progress = Callable[[int, "int | None"], None]
"""``progress(bytes_done, total_or_None)``, called after every chunk."""

_MIN_THREADED_CHUNK = 64 * 1024
_QUEUE_BYTES = 32 * 1024 * 1024
"""How far (in bytes) hashing may trail the writer; bounds the buffers of one add."""
_MAX_BUFFERS = 16
RESUME_FIRST_WAIT = 0.2
RESUME_MAX_WAIT = 8.0
"""Seconds before a read that broke off is reopened: full jitter, doubling, capped."""


class _Hash(Protocol):
    def update(self, data: Any, /) -> None: ...
    def hexdigest(self) -> str: ...


def new_hash(algo: str) -> _Hash:
    """A hashlib object for ``algo``; :class:`InvalidArgument` if it is not usable."""
    if not isinstance(algo, str) or algo.lower().startswith("shake") or algo.lower() == "md5":
        raise InvalidArgument(f"unsupported hash algorithm {algo!r} for the multihash")
    try:
        return hashlib.new(algo.lower())
    except (ValueError, TypeError):
        raise InvalidArgument(
            f"unknown hash algorithm {algo!r}; try sha256, sha384, sha512, sha3_256 or blake2b"
        ) from None


def new_md5() -> _Hash:
    """md5 for the legacy ``checksum`` field; not used for security."""
    return hashlib.md5(usedforsecurity=False)


_NON_BLOCKING = (
    "the image source is non-blocking and had no data ready; pass a blocking file object"
)


def new_buffer(size: int) -> mmap.mmap:
    """A zeroed, page-aligned chunk buffer (drivers may write it with O_DIRECT)."""
    return mmap.mmap(-1, max(size, 1))


class ChunkSource:
    """Fills caller-owned buffers from a file object, bytes, or an iterable of bytes."""

    def __init__(self, source: Any) -> None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = io.BytesIO(source)
        self._readinto: Callable[[memoryview], int | None] | None = None
        self._read: Callable[[int], bytes] | None = None
        self._iter: Iterator[bytes] | None = None
        self._pending = memoryview(b"")
        if hasattr(source, "readinto"):
            self._readinto = source.readinto
        elif hasattr(source, "read"):
            self._read = source.read
        elif isinstance(source, Iterable) and not isinstance(source, str):
            self._iter = iter(source)
        else:
            raise InvalidArgument(
                f"image data must be a file object, bytes or an iterable of bytes, "
                f"not {type(source).__name__}"
            )

    def fill(self, buf: bytearray | mmap.mmap | memoryview) -> int:
        """Fill ``buf`` completely unless the source ends first; return the byte count."""
        view = memoryview(buf)
        filled = 0
        size = len(buf)
        while filled < size:
            got = self._next_into(view[filled:])
            if got == 0:
                break
            filled += got
        return filled

    def _next_into(self, view: memoryview) -> int:
        if self._readinto is not None:
            got = self._readinto(view)
            if got is None:  # a non-blocking source with nothing ready: not the end
                raise InvalidArgument(_NON_BLOCKING)
            return got
        if not self._pending:
            data = self._read(len(view)) if self._read is not None else self._next_item()
            if data is None and self._read is not None:
                raise InvalidArgument(_NON_BLOCKING)
            if not data:
                return 0
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise InvalidArgument(f"image data yielded {type(data).__name__}, not bytes")
            self._pending = memoryview(data).cast("B")
        take = min(len(view), len(self._pending))
        view[:take] = self._pending[:take]
        self._pending = self._pending[take:]
        return take

    def _next_item(self) -> bytes:
        assert self._iter is not None
        for item in self._iter:
            if item:
                return item
        return b""


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    """What the pipeline measured while a writer stored an image."""

    written: Written
    size: int
    checksum: str | None
    multihash: str
    inspection: Inspection | None = None
    """What the image is (None when it was not inspected)."""


class _Hashers:
    """md5 and the multihash, each fed chunk by chunk on its own worker thread.

    Chunks are queued, so hashing may trail the writer by several chunks
    instead of meeting it after every chunk: with as many cores as hashes plus
    one, nothing waits, and with fewer the scheduler can still keep every core
    busy. The caller must not refill a buffer handed to :meth:`start` until
    :meth:`release_oldest` (or :meth:`wait`) says every hasher is done with it.
    Small chunks are hashed inline while no thread has been started.
    """

    def __init__(self, hash_algo: str, md5: bool) -> None:
        self.hashes: list[_Hash] = [new_hash(hash_algo)]
        if md5:
            self.hashes.append(new_md5())
        self._workers: list[_HashWorker] = []
        self._spaces: collections.deque[Space] = collections.deque()
        """Where the chunks handed to the workers and not yet released are, oldest first."""

    @property
    def in_flight(self) -> int:
        return len(self._spaces)

    def start(self, chunk: memoryview, space: Space) -> None:
        """Hash ``chunk``, read into ``space``, on the workers."""
        if not self._workers:
            if len(chunk) < _MIN_THREADED_CHUNK:
                for h in self.hashes:
                    h.update(chunk)
                return
            self._workers = [_HashWorker(h) for h in self.hashes]
        for worker in self._workers:
            worker.todo.put(chunk)
        self._spaces.append(space)

    def make_room(self, space: Space, most: int) -> None:
        """Wait until no chunk being hashed is in ``space`` and fewer than ``most`` are."""
        while self._spaces and (
            len(self._spaces) >= most or any(space.overlaps(s) for s in self._spaces)
        ):
            self.release_oldest()

    def release_oldest(self) -> None:
        """Wait until every hasher is done with the oldest chunk in flight."""
        self._spaces.popleft()
        failure: BaseException | None = None
        for worker in self._workers:
            error = worker.done.get()
            if error is not None and failure is None:
                failure = error
        if failure is not None:
            raise failure

    def wait(self) -> None:
        """Wait until every chunk handed over so far is hashed."""
        while self.in_flight:
            self.release_oldest()

    def close(self) -> None:
        self.wait_quietly()
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def wait_quietly(self) -> None:
        while self.in_flight:
            try:
                self.release_oldest()
            except Exception:
                LOG.debug("hashing failed while an add was being cleaned up", exc_info=True)

    @property
    def multihash(self) -> str:
        return self.hashes[0].hexdigest()

    @property
    def md5(self) -> str | None:
        return self.hashes[1].hexdigest() if len(self.hashes) > 1 else None


class _HashWorker:
    """One thread feeding one hash from a queue; acknowledges every chunk on ``done``."""

    def __init__(self, h: _Hash) -> None:
        self._hash = h
        self.todo: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="imgstore-hash", daemon=True)
        start_without_signals(self._thread)

    def _run(self) -> None:
        failed = False
        while (chunk := self.todo.get()) is not None:
            if failed:
                self.done.put(None)  # the error was reported already; just keep pace
                continue
            try:
                self._hash.update(chunk)
            except BaseException as exc:  # reported to the pipeline thread
                failed = True
                self.done.put(exc)
            else:
                self.done.put(None)

    def stop(self) -> None:
        self.todo.put(None)
        self._thread.join()


class _Ring:
    """The core's own chunk buffers, used in turn (allocated as first needed)."""

    def __init__(self, chunk_size: int, depth: int) -> None:
        self._size = chunk_size
        self._depth = depth
        self._buffers: list[mmap.mmap] = []
        self._index = 0

    def next(self) -> Space:
        """The next buffer, whole."""
        if self._index == len(self._buffers):
            self._buffers.append(new_buffer(self._size))
        buffer = self._buffers[self._index]
        self._index = (self._index + 1) % self._depth
        return Space(buffer, 0, self._size)


def _buffer_count(chunk_size: int) -> int:
    """How many chunk buffers the pipeline cycles through (hashing may trail by that many)."""
    return max(2, min(_MAX_BUFFERS, _QUEUE_BYTES // max(chunk_size, 1)))


def write_image(
    source: Any,
    writer: Writer,
    *,
    chunk_size: int,
    size: int | None,
    size_cap: int | None,
    hash_algo: str,
    md5: bool,
    progress: Progress | None = None,
    describe: str = "image",
    on_backend_error: Callable[[Exception], ImgstoreError] | None = None,
    limits: WriteLimits | None = None,
    inspector: StreamInspector | None = None,
) -> PipelineResult:
    """Stream ``source`` into ``writer``; commit on success, abort on any failure.

    Raises :class:`SizeMismatch` when the stream is shorter or longer than
    ``size``, :class:`SizeCapExceeded` as soon as ``size_cap`` is crossed, and
    :class:`InvalidArgument` as soon as the image outgrows the backend's ``limits``;
    each time, and on any error from the source or the writer, the writer is
    aborted before the error propagates. Errors from the source propagate
    unchanged; unexpected errors from the writer pass through ``on_backend_error``.
    ``inspector`` sees every chunk on this thread while the hash threads hash it (it
    costs microseconds a chunk once it has found the regions it looks for); what its
    policy refuses (:class:`DiskFormatMismatch`, :class:`UnsafeImage`) aborts the
    write, before commit at the latest.
    """
    writer = InOrder(writer)
    try:
        hashers = _Hashers(hash_algo, md5)
    except BaseException:
        writer.abort()
        raise
    try:
        if size is not None and size_cap and size > size_cap:
            raise SizeCapExceeded(
                f"{describe} is declared as {size} bytes, more than image_size_cap ({size_cap})"
            )
        # a known size was checked before the write began (Stores.add)
        largest = None if limits is None else limits.capacity(size)
        chunks = ChunkSource(source)
        depth = _buffer_count(chunk_size)
        ring = _Ring(chunk_size, depth)
        total = 0
        reported = 0
        while True:
            # the writer's own memory, where it lends some: it keeps the bytes uncopied
            space = _backend_call(writer.space, on_backend_error, chunk_size) or ring.next()
            hashers.make_room(space, depth)  # it may still hold a chunk being hashed
            view = space.view()
            count = chunks.fill(view)
            if not count:
                break
            total += count
            _check_growth(total, size, size_cap, limits, largest, describe)
            chunk = view[:count]
            hashers.start(chunk, space)
            if inspector is not None:  # while the hash threads hash the chunk
                inspector.update(chunk)
            _backend_call(writer.write, on_backend_error, chunk)
            if progress is not None:
                reported = _accepted(writer, total)
                progress(reported, size)
            if count < len(view):
                break
        hashers.wait()
        inspection = _at_the_end(total, size, inspector, describe)
        written = _backend_call(writer.commit, on_backend_error, total)
    except BaseException:
        hashers.wait_quietly()
        _abort(writer, describe)
        raise
    finally:
        hashers.close()
    if progress is not None and reported < total:
        progress(total, size)  # stored: what the writer held back is in too
    return PipelineResult(written, total, hashers.md5, hashers.multihash, inspection)


class InOrder(Writer):
    """A driver's writer, called only in the order :class:`~imgstore.driver.Writer`
    promises: writes, then one commit; one abort after any failure (a failed commit
    included), none after a commit that succeeded. A call out of that order is a bug
    in the caller and raises :class:`RuntimeError` without reaching the driver."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._state = "writing"

    @property
    def accepted(self) -> int | None:
        return self._writer.accepted

    def _expect_writing(self, call: str) -> None:
        if self._state != "writing":
            raise RuntimeError(f"{call} of {self._writer!r} after its {self._state}")

    def space(self, size: int) -> Space | None:
        self._expect_writing("space")
        return self._writer.space(size)

    def write(self, chunk: memoryview) -> None:
        self._expect_writing("write")
        self._writer.write(chunk)

    def commit(self, size: int) -> Written:
        self._expect_writing("commit")
        self._state = "commit"
        written = self._writer.commit(size)
        self._state = "successful commit"
        return written

    def abort(self) -> None:
        if self._state in ("successful commit", "abort"):
            return
        self._state = "abort"
        self._writer.abort()

    def __repr__(self) -> str:
        return repr(self._writer)


def _at_the_end(
    total: int, size: int | None, inspector: StreamInspector | None, describe: str
) -> Inspection | None:
    """Once the data ended: :class:`SizeMismatch` when it was not ``size`` bytes; what the
    image is, or what the inspector's policy refuses."""
    if size is not None and total != size:
        raise SizeMismatch(
            f"{describe}: the data ended after {total} bytes, but {size} were declared"
        )
    return None if inspector is None else inspector.conclude()


def _why(failure: Exception | None) -> str:
    """A short reason for a read that broke off, for the log (never a message: it may
    hold what the core scrubs)."""
    return "ended early" if failure is None else type(failure).__name__


def _check_growth(
    total: int,
    size: int | None,
    size_cap: int | None,
    limits: WriteLimits | None,
    largest: int | None,
    describe: str,
) -> None:
    """Stop a write whose ``total`` bytes so far passed its declared ``size``, the size
    cap, or the backend's ``largest`` image (:meth:`WriteLimits.capacity`)."""
    if size is not None and total > size:
        raise SizeMismatch(f"{describe}: the data is longer than the declared size {size}")
    if size_cap and total > size_cap:
        raise SizeCapExceeded(
            f"{describe} is larger than image_size_cap ({size_cap} bytes); upload stopped"
        )
    if limits is not None and largest is not None and total > largest:
        raise limits.refusal(describe, None)


def _accepted(writer: Writer, written: int) -> int:
    """Bytes of the ``written`` so far that the backend has taken (:attr:`Writer.accepted`)."""
    accepted = writer.accepted
    return written if accepted is None else min(accepted, written)


def _backend_call(
    fn: Callable[..., T], on_error: Callable[[Exception], ImgstoreError] | None, *args: Any
) -> T:
    try:
        return fn(*args)
    except Exception as exc:
        if on_error is None:
            raise
        error = on_error(exc)
        if error is exc:
            raise
        raise error from exc


def _abort(writer: Writer, describe: str) -> None:
    try:
        writer.abort()
    except Exception:
        LOG.exception("cleanup of a failed write of %s failed; leftovers may remain", describe)


class ImageReader:
    """An open image: iterate it for ``bytes`` chunks; use it as a context manager.

    It yields exactly :attr:`size` bytes or raises :class:`SizeMismatch`; with
    ``expected_multihash`` it raises :class:`ChecksumMismatch` at the end when
    the bytes differ from what was recorded.
    """

    def __init__(
        self,
        stream: ReadStream,
        *,
        describe: str,
        skip: int = 0,
        limit: int | None = None,
        hash_algo: str | None = None,
        expected_multihash: str | None = None,
        expected_checksum: str | None = None,
        on_error: Callable[[BaseException], BaseException] | None = None,
        operation: telemetry.Operation | None = None,
        reopen: Callable[[int, int], ReadStream] | None = None,
        resumes: int = 0,
    ) -> None:
        """``operation``: the ``get`` being measured (:mod:`imgstore.telemetry`); the
        reader counts its bytes, fetches each chunk as part of it, and ends it on
        :meth:`close` with the error iterating raised, if any.

        ``reopen(done, count)``: a new stream of the ``count`` bytes that follow the first
        ``done`` of ``stream``; given it, a read that breaks off (a temporary error,
        fewer bytes than announced) is resumed there, up to ``resumes`` times, when the
        stream has a :attr:`~imgstore.driver.ReadStream.version` and the new one has
        the same."""
        self._stream = stream
        self._reopen = reopen
        self._resumes = resumes
        self._operation = operation
        self._error: BaseException | None = None
        self._describe = describe
        self._skip = skip
        self._announced = stream.size
        """The bytes the first stream announced (a resumed one announces the rest)."""
        available = stream.size - skip
        self.size: int = available if limit is None else min(limit, available)
        # An emulated range reads part of the stream and stops; otherwise the
        # stream is read to its end, so a backend sending more than it
        # announced is caught even when the surplus comes in a later chunk.
        self._partial = self.size < stream.size
        try:
            self._hash = new_hash(hash_algo) if hash_algo else None
        except BaseException:
            stream.close()  # the reader owns the stream from here on
            raise
        self._expected = expected_multihash
        self._md5 = new_md5() if expected_checksum else None
        self._expected_md5 = expected_checksum
        self._on_error = on_error
        self._closed = False
        self.bytes_read = 0

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._chunks()
        except Exception as exc:
            error = exc if self._on_error is None else self._on_error(exc)
            self._error = error
            if error is exc:
                raise
            raise error from exc
        finally:
            self.close()

    def _pulled(self, stream: ReadStream) -> Iterator[bytes]:
        """``stream``'s chunks, each fetched as part of the reader's operation."""
        op = self._operation
        if op is None:
            yield from stream
            return
        chunks = iter(stream)
        while True:
            with op.current():
                data = next(chunks, None)
            if data is None:
                return
            yield data

    def _resumed(self) -> Iterator[bytes]:
        """The stream's chunks; where it breaks off and may be resumed, the rest from
        streams reopened at the byte where it stopped."""
        total = self._announced
        done = 0
        attempts = 0
        while True:
            failure: Exception | None = None
            try:
                for data in self._pulled(self._stream):
                    done += len(data)
                    yield data
            except Exception as exc:
                failure = exc
            if failure is None and done >= total:
                return
            if not self._may_resume(failure, attempts):
                if failure is not None:
                    raise failure
                return  # short: _chunks says by how much
            attempts = self._resume(done, total - done, attempts, failure)

    def _may_resume(self, failure: Exception | None, attempts: int) -> bool:
        if self._reopen is None or attempts >= self._resumes or self._stream.version is None:
            return False
        if failure is None:  # the stream ended early: the connection was cut
            return True
        error = failure if self._on_error is None else self._on_error(failure)
        return isinstance(error, BackendUnavailable)

    def _resume(self, done: int, count: int, attempts: int, failure: Exception | None) -> int:
        """Replace the stream with one of the ``count`` bytes after its first ``done``,
        of the same version; return the attempts made so far."""
        assert self._reopen is not None
        version = self._stream.version
        self._close_stream()
        backoff = Backoff(RESUME_FIRST_WAIT, RESUME_MAX_WAIT)
        while True:
            attempts += 1
            LOG.warning(
                "%s: the read broke off after %d of %d bytes (%s); resuming (%d/%d)",
                self._describe, done, done + count, _why(failure), attempts, self._resumes,
            )  # fmt: skip
            if self._operation is not None:  # counted on the read's own span
                self._operation.retried()
            else:
                telemetry.retried()
            backoff.wait()
            try:
                stream = self._reopen(done, count)
            except BackendUnavailable as exc:
                if attempts >= self._resumes:
                    raise
                failure = exc
                continue
            break
        if stream.version != version or stream.size != count:
            stream.close()
            raise BackendError(
                f"{self._describe}: the image changed while it was read (version "
                f"{version!r}, now {stream.version!r}); read it again"
            )
        self._stream = stream
        return attempts

    def _chunks(self) -> Iterator[bytes]:
        streamed = 0
        for data in self._resumed():
            if not data:
                continue
            streamed += len(data)
            if streamed > self._announced:
                raise SizeMismatch(
                    f"{self._describe}: the backend sent more than the {self._announced} "
                    "bytes it announced"
                )
            if self._skip:
                cut = min(self._skip, len(data))
                self._skip -= cut
                data = data[cut:]
                if not data:
                    continue
            room = self.size - self.bytes_read
            if len(data) > room:
                data = data[:room]
            if not data:
                break
            self._update(data)
            self.bytes_read += len(data)
            yield bytes(data) if not isinstance(data, bytes) else data
            if self._partial and self.bytes_read == self.size:
                break
        if self.bytes_read != self.size:
            # fewer bytes than the backend announced: the connection (or the file) broke
            # off, which another read may not see; never an integrity error
            raise BackendUnavailable(
                f"{self._describe}: the backend sent {self.bytes_read} of {self.size} bytes; "
                "the read was cut short, read it again"
            )
        self._verify()

    def _update(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        if self._md5 is not None:
            self._md5.update(data)

    def _verify(self) -> None:
        if self._hash is not None and self._expected is not None:
            got = self._hash.hexdigest()
            if got != self._expected.lower():
                raise ChecksumMismatch(
                    f"{self._describe}: multihash {got} differs from the recorded {self._expected}"
                )
        if self._md5 is not None and self._expected_md5 is not None:
            got = self._md5.hexdigest()
            if got != self._expected_md5.lower():
                raise ChecksumMismatch(
                    f"{self._describe}: md5 {got} differs from the recorded {self._expected_md5}"
                )

    @property
    def multihash(self) -> str | None:
        """The hash of what was read so far, when the reader was asked to hash."""
        return self._hash.hexdigest() if self._hash is not None else None

    def read_all(self) -> bytes:
        """All the bytes at once; only for small images."""
        return b"".join(self)

    def _close_stream(self) -> None:
        try:
            self._stream.close()
        except Exception:
            LOG.warning("closing the stream of %s failed", self._describe, exc_info=True)

    def close(self) -> None:
        """Release the driver's stream; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._close_stream()
            if self._operation is not None:
                self._operation.bytes = self.bytes_read
                self._operation.end(self._error)

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ImageReader {self._describe} size={self.size}>"
