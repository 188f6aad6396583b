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
  it is closed by the closer's own thread ``grace`` seconds after its user let go;
- an image opened for writing holds the exclusive lock and a watch that other clients
  wait for, so it is closed by its user, at once if it has been open ``grace`` seconds,
  else once it has (a delete's quick snapshot removal, say).

:meth:`ImageCloser.flush` closes what is pending (each at its time) before the cluster
connection goes.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from imgstore import threads

LOG = logging.getLogger(__name__)

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
        self._name = name
        self._cond = threading.Condition()
        self._opened: dict[int, tuple[float, bool]] = {}  # id(image) -> (when, read-only)
        self._due: list[tuple[float, int, Any]] = []  # (close at, tiebreak, image)
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def open(
        self, ioctx: Any, name: str, *, snapshot: str | None = None, read_only: bool = False
    ) -> Any:
        """``rbd.Image(ioctx, name, snapshot=…, read_only=…)``, to be given back to
        :meth:`close` (not closed by its own ``close``)."""
        image = rbd.Image(ioctx, name, snapshot=snapshot, read_only=read_only)
        with self._cond:
            self._opened[id(image)] = (time.monotonic(), read_only)
        return image

    @contextlib.contextmanager
    def opened(
        self, ioctx: Any, name: str, *, snapshot: str | None = None, read_only: bool = False
    ) -> Iterator[Any]:
        """:meth:`open` for a ``with`` block, :meth:`close` at its end."""
        image = self.open(ioctx, name, snapshot=snapshot, read_only=read_only)
        try:
            yield image
        finally:
            self.close(image)

    def close(self, image: Any) -> None:
        """Close ``image`` (from :meth:`open`): later, on the closer's thread, if it is
        read-only; now, or once it has been open ``grace`` seconds, if not."""
        now = time.monotonic()
        with self._cond:
            opened_at, read_only = self._opened.pop(id(image), (now, False))
            if read_only:
                heapq.heappush(self._due, (now + self.grace, next(self._order), image))
                self._start()
                self._cond.notify_all()
                return
        wait = opened_at + self.grace - time.monotonic()
        if wait > 0:
            threading.Event().wait(wait)
        image.close()

    def flush(self) -> None:
        """Close every image still waiting, each at its time (at most ``grace`` seconds)."""
        with self._cond:
            while self._due:
                self._close_due()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"imgstore-rbd-close-{self._name}", daemon=True
            )
            threads.start_without_signals(self._thread)

    def _run(self) -> None:
        with self._cond:
            while self._due:
                self._close_due()
            self._thread = None  # the next close starts a new one

    def _close_due(self) -> None:
        """Close the first image waiting once its time has come (the condition held)."""
        when, _, image = self._due[0]
        wait = when - time.monotonic()
        if wait > 0:
            self._cond.wait(wait)
            return
        heapq.heappop(self._due)
        self._cond.release()  # others may queue theirs meanwhile
        try:
            image.close()
        except Exception:  # a read-only image: nothing is lost if its close fails
            LOG.warning("closing an rbd image failed", exc_info=True)
        finally:
            self._cond.acquire()
