"""Read-ahead for driver streams: fetch the next chunks while the caller uses this one.

A backend whose client library reads synchronously (one request, then the
caller's work, then the next request) leaves the server idle while the caller
consumes a chunk. :class:`ReadAhead` iterates the driver's stream on a worker
thread into a bounded queue, so at most ``depth`` chunks wait in memory and the
next request is already on the wire. Drivers opt in with
:attr:`imgstore.driver.Driver.read_ahead`; the core does the wrapping.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

from imgstore.driver import ReadStream
from imgstore.threads import start_without_signals

LOG = logging.getLogger(__name__)

_END = object()
_JOIN_SECONDS = 5.0
"""How long :meth:`ReadAhead.close` waits for the worker before closing the stream under it."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead(ReadStream):
    """Iterates ``stream`` on a worker thread, at most ``depth`` chunks ahead of the caller."""

    def __init__(self, stream: ReadStream, depth: int) -> None:
        self._stream = stream
        self.size = stream.size
        self.version = stream.version
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            for chunk in self._stream:
                if self._stop.is_set() or not self._put(chunk):
                    return
        except BaseException as exc:  # handed to the caller's thread
            self._put(_Failed(exc))
            return
        self._put(_END)

    def _put(self, item: Any) -> bool:
        """Queue ``item``; False once the caller has stopped reading."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[bytes]:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="imgstore-readahead", daemon=True
            )
            start_without_signals(self._thread)
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(_JOIN_SECONDS)
            if thread.is_alive():
                LOG.debug(
                    "read-ahead worker still busy after %.0f s; closing its stream", _JOIN_SECONDS
                )
        self._stream.close()
        if thread is not None:
            thread.join(_JOIN_SECONDS)
        while not self._queue.empty():  # drop what was fetched and not used
            self._queue.get_nowait()
