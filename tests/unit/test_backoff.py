"""The core's waits: Backoff's schedule and poll's end conditions."""

from __future__ import annotations

import time
from typing import NoReturn

import pytest

from imgstore.backoff import Backoff, poll, retry


def test_delays_grow_to_the_cap_without_jitter() -> None:
    backoff = Backoff(0.5, 4.0, jitter=False)
    assert [backoff.delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_full_jitter_stays_below_each_bound() -> None:
    backoff = Backoff(1.0, 8.0)
    delays = [backoff.delay() for _ in range(200)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert 0 <= delays[0] <= 1.0
    assert len(set(delays)) > 100, "the delays are drawn at random"


def test_wait_refuses_to_end_past_the_deadline() -> None:
    backoff = Backoff(5.0, 5.0, jitter=False)
    started = time.monotonic()
    assert backoff.wait(deadline=started + 1.0) is False
    assert time.monotonic() - started < 0.5, "it did not sleep"


@pytest.mark.parametrize("args", [(-1.0, 1.0), (1.0, -1.0)])
def test_bad_schedules_are_refused(args: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(*args)


def test_poll_returns_the_first_answer_that_is_not_none() -> None:
    answers = iter([None, None, "ready"])
    assert poll(lambda: next(answers), first=0.001, cap=0.001) == "ready"


def test_poll_times_out_through_on_timeout() -> None:
    calls = 0

    def never_ready() -> None:
        nonlocal calls
        calls += 1

    def too_long() -> NoReturn:
        raise TimeoutError(f"after {calls} calls")

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        poll(never_ready, 0.2, too_long, first=0.01, cap=0.05)
    took = time.monotonic() - started
    assert 0.2 <= took < 1.0
    assert calls >= 3


def test_poll_needs_timeout_and_on_timeout_together() -> None:
    with pytest.raises(ValueError):
        poll(lambda: 1, timeout=1.0)


def test_retry_tries_again_only_on_the_given_errors() -> None:
    outcomes: list[Exception | str] = [TimeoutError("1"), TimeoutError("2"), "done"]
    seen: list[int] = []

    def call() -> str:
        item = outcomes.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    backoff = Backoff(0.001, 0.001)
    assert retry(call, 3, backoff, TimeoutError, on_retry=lambda n, _e: seen.append(n)) == "done"
    assert seen == [1, 2]
    with pytest.raises(KeyError):  # not retried
        retry(lambda: {}["x"], 5, backoff, TimeoutError)


def test_retry_raises_the_last_error_when_tries_or_time_run_out() -> None:
    calls = 0

    def failing() -> None:
        nonlocal calls
        calls += 1
        raise TimeoutError(f"try {calls}")

    with pytest.raises(TimeoutError, match="try 3"):
        retry(failing, 3, Backoff(0.001, 0.001), TimeoutError)
    calls = 0
    with pytest.raises(TimeoutError, match="try 1"):  # the first wait would end too late
        retry(failing, 3, Backoff(5.0, 5.0, jitter=False), TimeoutError, deadline=time.monotonic())
