"""Waiting between tries, in one place: the only sleeps in imgstore's drivers are here.

A driver that retries a request spaces its tries with :class:`Backoff`; a driver that
waits for the backend to reach a state (a volume to become available, a task to end)
uses :func:`poll`. Both wait exponentially longer each time, up to a cap, with full
jitter for retries (many clients retrying a server that just came back do not all
come back at the same instant).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

from imgstore import telemetry

T = TypeVar("T")


class Backoff:
    """The waits of an exponential backoff: the n-th is ``first * factor**n`` capped at
    ``cap`` (with ``jitter``, a uniform draw between 0 and that: full jitter)."""

    def __init__(self, first: float, cap: float, factor: float = 2.0, jitter: bool = True) -> None:
        if first < 0 or cap < 0 or factor < 1:
            raise ValueError("a backoff needs first >= 0, cap >= 0 and factor >= 1")
        self._next = first
        self._cap = cap
        self._factor = factor
        self._jitter = jitter

    def delay(self) -> float:
        """The next wait, in seconds (each call moves on to the next one)."""
        bound = min(self._next, self._cap)
        self._next = min(self._next * self._factor, self._cap)
        return random.uniform(0, bound) if self._jitter else bound  # noqa: S311 - not crypto

    def wait(self, deadline: float | None = None) -> bool:
        """Sleep the next wait; False, without sleeping, if it would end past ``deadline``
        (a :func:`time.monotonic` value)."""
        delay = self.delay()
        if deadline is not None and time.monotonic() + delay >= deadline:
            return False
        time.sleep(delay)
        return True


def poll(
    probe: Callable[[], T | None],
    timeout: float | None = None,
    on_timeout: Callable[[], NoReturn] | None = None,
    first: float = 0.05,
    cap: float = 2.0,
    factor: float = 1.5,
) -> T:
    """Call ``probe`` until it returns something other than None and return that; wait
    ``first`` seconds, then ``factor`` times longer each time up to ``cap``, between
    calls. When ``timeout`` seconds have passed, ``on_timeout()`` raises (without a
    timeout, ``probe`` alone decides when the wait ends: it returns or raises)."""
    if (timeout is None) != (on_timeout is None):
        raise ValueError("poll needs both timeout and on_timeout, or neither")
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    backoff = Backoff(first, cap, factor=factor, jitter=False)
    while True:
        found = probe()
        if found is not None:
            return found
        if on_timeout is not None and time.monotonic() >= deadline:
            on_timeout()
        time.sleep(min(backoff.delay(), max(0.0, deadline - time.monotonic())))


def retry(
    call: Callable[[], T],
    tries: int,
    backoff: Backoff,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    deadline: float | None = None,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """``call()``, tried up to ``tries`` times while it raises ``retry_on``, with
    ``backoff`` between tries; the last error is raised (also when the next wait would
    end past ``deadline``). ``on_retry(attempt, error)`` runs before each new try."""
    for attempt in range(1, tries + 1):
        try:
            return call()
        except retry_on as exc:
            if attempt == tries:
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            if not backoff.wait(deadline):
                raise
            telemetry.retried()
    raise ValueError("retry needs at least one try")


def sleep_until(when: float) -> None:
    """Sleep until :func:`time.monotonic` reaches ``when`` (at once if it has)."""
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)
