"""One streaming request whose body is written while it is being sent.

A driver that uploads an image as one request of unknown length, or of a length it
knows before it has the bytes (a Swift PUT, a vSphere datastore PUT), cannot hand the
HTTP client a finished body: the core writes the image chunk by chunk. So the request
runs on a thread of its own (:class:`FedRequest`) and reads a :class:`FedBody` that
the writer feeds; the queue between them is short, so memory stays at a few chunks.

The driver gives the request as a function that sends it and raises an imgstore error
when it fails; this module owns the thread, the feeding, the end and the abort.

The body lends the core its chunk buffers (:meth:`FedBody.lend`): the core reads a
chunk into one, the writer feeds that memory as it is, and the buffer comes back once
the HTTP client has sent it (when it takes the next chunk: clients read and send in
turn). A chunk read elsewhere is copied once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from imgstore.exceptions import BackendError
from imgstore.parallel import Lending, PieceBuffer, Space
from imgstore.threads import start_without_signals

END = object()
"""Fed last: the body ends here."""
DEPTH = 8
"""Chunks the body holds before the writer waits for the request to send them."""


class Aborted(Exception):
    """Fed to end a request on purpose (the writer was aborted)."""


class FedBody:
    """A request body fed chunk by chunk from another thread: a file (``read``) for
    clients that read, an iterable for those that iterate.

    A chunk is fed as ``bytes``, or as a ``memoryview`` of a buffer this body lent
    (:meth:`lend`, :meth:`kept`), which it takes back once the client has sent it."""

    def __init__(self, depth: int = DEPTH) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._view = memoryview(b"")
        self._ended = False
        self._sending: Any = None
        """The chunk the client took last (it is sending it)."""
        self._lending = Lending()
        self.taken = 0
        """Bytes of the chunks the HTTP client has taken (it sent a chunk before it takes
        the next one)."""
        self.sent = 0
        """Bytes of the chunks the HTTP client has sent: all taken but the last (which may
        be the body's last: :attr:`FedRequest.accepted` counts it once the server has
        answered)."""

    def lend(self, size: int) -> Space | None:
        """A chunk buffer no chunk of the body's holds, for the core to read the next
        chunk into (None for another size than the first)."""
        return self._lending.space(size)

    @property
    def buffers_allocated(self) -> int:
        """How many chunk buffers this body allocated (tests check the memory bound)."""
        return self._lending.pool.allocated

    def kept(self, chunk: memoryview) -> bytes | memoryview:
        """``chunk`` to feed: as it is when the core read it into the buffer :meth:`lend`
        gave (taken back once sent), else a copy (the core reuses its own buffers)."""
        return chunk if self._lending.taken(chunk) is not None else bytes(chunk)

    def _sent(self) -> None:
        """The client took the next chunk, so it has sent the last: a lent buffer is free."""
        item, self._sending = self._sending, None
        if isinstance(item, memoryview) and isinstance(item.obj, PieceBuffer):
            self._lending.pool.give(item.obj)

    def _next(self) -> bytes | memoryview | None:
        item = self.queue.get()
        self._sent()
        if item is END:
            self._ended = True
            return None
        if isinstance(item, BaseException):
            raise item
        data = item if isinstance(item, memoryview) else bytes(item)
        self._sending = data
        self.sent = self.taken
        self.taken += len(data)
        return data

    def read(self, size: int = -1) -> bytes | memoryview:
        while not self._view:
            if self._ended:
                return b""
            item = self._next()
            if item is None:
                return b""
            self._view = memoryview(item)
        n = len(self._view) if size is None or size < 0 else size
        data, self._view = self._view[:n], self._view[n:]
        return data

    def __iter__(self) -> Iterator[bytes | memoryview]:
        while not self._ended:
            item = self._next()
            if item is None:
                return
            yield item

    def __repr__(self) -> str:
        return "<streamed request body>"


class SizedFedBody(FedBody):
    """A :class:`FedBody` whose length is known (the client sends Content-Length)."""

    def __init__(self, size: int, depth: int = DEPTH) -> None:
        super().__init__(depth)
        self._size = size

    def __len__(self) -> int:
        return self._size


def _aborted(exc: BaseException) -> bool:
    """Whether ``exc`` came from an :class:`Aborted` fed to the body (the HTTP client
    may wrap it, and the driver map that)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, Aborted):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class FedRequest:
    """Runs ``send()`` (which sends a request that reads ``body``) on a thread of its own,
    started by the first :meth:`feed`."""

    def __init__(self, send: Callable[[], None], body: FedBody, name: str, what: str) -> None:
        self.body = body
        self._send = send
        self._name = name
        self._what = what
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        """What ``send`` raised (not an abort)."""
        self.sent = False
        """Whether ``send`` returned: the server took the whole request."""

    def _run(self) -> None:
        try:
            self._send()
            self.sent = True
        except BaseException as exc:
            if not _aborted(exc):
                self.error = exc

    def start(self) -> None:
        """Start the request (at most once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            start_without_signals(self._thread)

    def feed(self, item: Any) -> None:
        """Hand ``item`` (bytes, or :data:`END`) to the request; raise what it failed with,
        or :class:`BackendError` if it ended before the body did."""
        self.start()
        assert self._thread is not None
        while True:
            if self.error is not None:
                raise self.error
            if not self._thread.is_alive():
                if self.error is not None:
                    raise self.error
                if item is END and self.sent:
                    return  # a 0-byte request may end before the end marker is read
                raise BackendError(f"{self._what}: the upload ended early")
            try:
                self.body.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """End the body and wait for the answer; raise what the request failed with."""
        self.feed(END)
        self.join()
        if self.error is not None:
            raise self.error

    def join(self) -> None:
        """Wait until the request has ended."""
        if self._thread is not None:
            self._thread.join()

    def abort(self) -> None:
        """End the request without its body (it fails on the server's side) and wait."""
        thread = self._thread
        if thread is None:
            return
        while thread.is_alive():
            try:
                self.body.queue.put(Aborted(), timeout=0.2)
                break
            except queue.Full:
                try:
                    self.body.queue.get_nowait()
                except queue.Empty:
                    pass
        thread.join()

    @property
    def accepted(self) -> int:
        """Bytes the request has sent, all but the last chunk (a writer's ``accepted``):
        that one counts once the server has answered, so 100% means stored."""
        return self.body.taken if self.sent else self.body.sent

    @property
    def started(self) -> bool:
        """Whether the request was started."""
        return self._thread is not None


class FedWriting:
    """What a writer whose bytes go through a :class:`FedRequest` (its ``_request``) gives
    of them: ``write``, feeding a copy of each chunk, and ``accepted`` (mix in before
    :class:`~imgstore.driver.Writer`)."""

    _request: FedRequest

    @property
    def accepted(self) -> int:
        """Bytes the request has sent; its last chunk once the server has answered."""
        return self._request.accepted

    def space(self, size: int) -> Space | None:
        """A chunk buffer of the body's, for the core to read the next chunk into."""
        return self._request.body.lend(size)

    def kept(self, chunk: memoryview) -> bytes | memoryview:
        """``chunk`` to feed: as it is where :meth:`space` lent it, else a copy."""
        return self._request.body.kept(chunk)

    def write(self, chunk: memoryview) -> None:
        """Feed ``chunk`` to the request (a copy unless it is in lent memory)."""
        self._request.feed(self.kept(chunk))
