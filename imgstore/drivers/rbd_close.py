"""Closing librbd images never right after librbd finished an action on them.

librbd 16 (Ceph Pacific, Debian 12's) frees an image too early when it is closed at
once: ``ImageState::complete_action_unlock`` first wakes the caller waiting for an
open (or a refresh, or a snapshot change) to finish, and only then takes the image's
own lock again. A caller that closes the image straight away can have it freed in
between; the librbd thread then locks freed memory, and the whole process aborts
(``terminate called after throwing an instance of 'std::system_error'``, ``what():
Invalid argument``) or dies of a segmentation fault. Under CPU load a loop of
read-only open, size and close meets it within seconds (``tests/functional/test_rbd.py``,
``test_quick_opens_and_closes_under_load_keep_the_process_alive``); with the close a
few milliseconds later, never in tens of thousands of opens.

So every image imgstore opens goes through an :class:`ImageCloser`:

- an image opened read-only holds no lock and no watch (nobody waits for it to go), so
  it is closed ``grace`` seconds after its user let go, by the core's
  :class:`imgstore.deferred.Deferred`;
- an image opened for writing holds the exclusive lock and a watch that other clients
  wait for, so it is closed by its user, at once if it has been open ``grace`` seconds,
  else once it has (a delete's quick snapshot removal, say);
- an image whose cluster stopped answering is closed on that same thread too
  (:meth:`ImageCloser.close_in_background`): its close flushes, releases the lock and
  unwatches, each waiting an op timeout, and nobody should stand still for that.

:meth:`ImageCloser.flush` closes what is pending (each at its time) before the cluster
connection goes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from imgstore.backoff import sleep_until
from imgstore.deferred import Deferred

GRACE = 0.05
"""Seconds an image stays open after librbd's last action on it, at least (25 times the
pause that was enough in the measurements above)."""

try:  # Debian's python3-rbd (the driver's import reports its absence)
    import rbd
except ImportError:  # pragma: no cover - depends on the machine
    rbd = None


class ImageCloser:
    """Opens librbd images and closes them no sooner than ``grace`` seconds after librbd
    last acted on them (see the module's text for why)."""

    def __init__(self, name: str, grace: float = GRACE) -> None:
        self.grace = grace
        self._lock = threading.Lock()
        self._opened: dict[int, tuple[float, bool]] = {}  # id(image) -> (when, read-only)
        self._later = Deferred(f"rbd-close-{name}")

    def open(
        self, ioctx: Any, name: str, *, snapshot: str | None = None, read_only: bool = False
    ) -> Any:
        """``rbd.Image(ioctx, name, snapshot=…, read_only=…)``, to be given back to
        :meth:`close` (not closed by its own ``close``)."""
        image = rbd.Image(ioctx, name, snapshot=snapshot, read_only=read_only)
        with self._lock:
            self._opened[id(image)] = (time.monotonic(), read_only)
        return image

    def opened(
        self, ioctx: Any, name: str, *, snapshot: str | None = None, read_only: bool = False
    ) -> contextlib.AbstractContextManager[Any]:
        """:meth:`open` for a ``with`` block, :meth:`close` at its end."""
        return self.closing(self.open(ioctx, name, snapshot=snapshot, read_only=read_only))

    @contextlib.contextmanager
    def closing(self, image: Any) -> Iterator[Any]:
        """``image`` (from :meth:`open`) for a ``with`` block, :meth:`close` at its end."""
        try:
            yield image
        finally:
            self.close(image)

    def close(self, image: Any) -> None:
        """Close ``image`` (from :meth:`open`): later if it is read-only; now, or once it
        has been open ``grace`` seconds, if not."""
        now = time.monotonic()
        with self._lock:
            opened_at, read_only = self._opened.pop(id(image), (now, False))
        if read_only:
            self._later.call_at(now + self.grace, image.close)
        else:
            sleep_until(opened_at + self.grace)
            image.close()

    def close_in_background(self, image: Any, then: Callable[[], None]) -> None:
        """Close ``image`` (from :meth:`open`), then call ``then()``, on the closing
        thread; the caller waits for neither. A failure of either is logged."""
        now = time.monotonic()
        with self._lock:
            opened_at, _ = self._opened.pop(id(image), (now, False))

        def close_then() -> None:
            try:
                image.close()
            finally:
                then()

        self._later.call_at(max(now, opened_at + self.grace), close_then)

    def flush(self) -> None:
        """Close every image still waiting, each at its time (at most ``grace`` seconds)."""
        self._later.flush()
