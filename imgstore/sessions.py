"""Sessions that end, renewed in one way for every driver that logs in; a request's own
credentials, set for a block (:func:`acting_as`).

A driver whose backend hands out a session (a vSphere session cookie, a Keystone
token) renews it ahead of its end where it knows that end (:func:`renew_margin`), and
when a call finds it ended anyway (the server refused it: :class:`SessionExpired`),
:class:`Renewal` logs in again once, whichever thread saw it first, and calls once more
with the new session. A second refusal is :class:`AuthenticationFailed`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from imgstore import telemetry
from imgstore.exceptions import AuthenticationFailed

LOG = logging.getLogger(__name__)

S = TypeVar("S")
T = TypeVar("T")

MOST_MARGIN = 120
"""Longest time before its end a session is renewed (keystoneauth's own margin)."""


class SessionExpired(Exception):
    """Raised by a call whose session the server refused: it ended."""


def renew_margin(lifetime: float, most: int = MOST_MARGIN) -> int:
    """Seconds before its end a session of ``lifetime`` seconds is renewed: a quarter of
    its lifetime, at most ``most``, at least 1 (so a short session is reused for three
    quarters of its life, not renewed before every use)."""
    return int(max(1, min(most, lifetime // 4)))


@contextlib.contextmanager
def acting_as(var: contextvars.ContextVar[T | None], value: T | None) -> Iterator[None]:
    """Run the block with ``var`` set to ``value`` (a request's own credentials) and
    reset after it; None leaves ``var`` as it is."""
    if value is None:
        yield
        return
    reset = var.set(value)
    try:
        yield
    finally:
        var.reset(reset)


class Renewal(Generic[S]):
    """Calls with the current session; on :class:`SessionExpired` renews it once and
    calls again.

    ``current()`` returns the session now (logging in on first use); ``login()`` logs
    in again, replacing it. Threads that find the same session ended renew it once."""

    def __init__(self, current: Callable[[], S], login: Callable[[], None], what: str) -> None:
        self._current = current
        self._login = login
        self._what = what
        self._lock = threading.Lock()

    def renew(self, stale: S) -> None:
        """Log in again, unless another thread already replaced the session ``stale``."""
        with self._lock:
            if self._current() != stale:
                return
            LOG.info("%s: the session ended; logging in again", self._what)
            self._login()

    def call(self, fn: Callable[[S], T], doing: str, again: bool = True) -> T:
        """``fn(session)``; when it raises :class:`SessionExpired`, the session is renewed
        and, when ``again`` (the call can be repeated: no body was consumed), ``fn`` is
        called once more with the new one. A refusal left is :class:`AuthenticationFailed`."""
        session = self._current()
        try:
            return fn(session)
        except SessionExpired:
            self.renew(session)
            if not again:
                raise AuthenticationFailed(f"{doing}: the server refused the session") from None
        telemetry.retried()
        try:
            return fn(self._current())
        except SessionExpired:
            raise AuthenticationFailed(f"{doing}: the server refused the session") from None


__all__ = ["MOST_MARGIN", "Renewal", "SessionExpired", "renew_margin"]
