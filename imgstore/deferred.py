"""Work done later, at a given time, on one thread of the core's (never a driver's own).

A driver hands over a call that must not happen before some moment and that nobody
needs to wait for (closing a librbd image a little after its last use, say:
:mod:`imgstore.drivers.rbd_close`); :meth:`Deferred.flush` runs what is pending, each
call at its time, before the driver lets go of what those calls need.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

from imgstore import threads

LOG = logging.getLogger(__name__)


class Deferred:
    """Calls made at their time on a thread of their own (started when there is work,
    ended when there is none); a failing call is logged and the rest still made."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._calling = 0
        """Calls under way (on the thread, or on a flushing caller's)."""
        self._order = itertools.count()
        self._running = False

    def call_at(self, when: float, call: Callable[[], None]) -> None:
        """Make ``call()`` once :func:`time.monotonic` has reached ``when``."""
        with self._cond:
            heapq.heappush(self._due, (when, next(self._order), call))
            self._cond.notify_all()
            if not self._running:
                self._running = True
                threads.start_without_signals(
                    threading.Thread(target=self._run, name=f"imgstore-{self._name}", daemon=True)
                )

    def flush(self) -> None:
        """Make every pending call, each once its time has come, and return once none is
        under way (also on the thread: what the calls need may go when this returns)."""
        with self._cond:
            while self._due or self._calling:
                if self._due:
                    self._next()
                else:
                    self._cond.wait()

    def _run(self) -> None:
        with self._cond:
            while self._due:
                self._next()
            self._running = False  # the next call_at starts a new thread

    def _next(self) -> None:
        """Make the first pending call if its time has come, else wait for it (or for an
        earlier one); the condition is held, and released during the call."""
        when, _, call = self._due[0]
        wait = when - time.monotonic()
        if wait > 0:
            self._cond.wait(wait)
            return
        heapq.heappop(self._due)
        self._calling += 1
        self._cond.release()
        try:
            call()
        except Exception:
            LOG.warning("%s: a deferred call failed", self._name, exc_info=True)
        finally:
            self._cond.acquire()
            self._calling -= 1
            self._cond.notify_all()
