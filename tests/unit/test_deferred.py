"""The core's deferred calls (imgstore.deferred)."""

from __future__ import annotations

import threading
import time

from imgstore.deferred import Deferred


def test_flush_waits_for_a_call_already_under_way_on_the_thread() -> None:
    """What the calls need (a cluster connection) goes once flush returns: a call the
    thread started just before must have ended by then. Flush used to return as soon as
    nothing was pending, with the thread's call still running (a clean run's unit test
    read the call's log line before it was written)."""
    deferred = Deferred("t")
    started, ended = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        time.sleep(0.3)
        ended.set()

    deferred.call_at(time.monotonic(), slow)
    assert started.wait(5), "the thread never made the call"
    deferred.flush()
    assert ended.is_set(), "flush returned while the call was still under way"


def test_calls_are_made_in_time_order_and_a_failure_does_not_stop_the_rest() -> None:
    deferred = Deferred("t")
    made: list[str] = []
    now = time.monotonic()

    def fail() -> None:
        made.append("fail")
        raise OSError("gone")

    deferred.call_at(now + 0.2, lambda: made.append("late"))
    deferred.call_at(now + 0.1, fail)
    deferred.call_at(now + 0.05, lambda: made.append("early"))
    deferred.flush()
    assert made == ["early", "fail", "late"]
    assert time.monotonic() >= now + 0.2
