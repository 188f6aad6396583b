"""SwiftDriver.delete_segments with a stand-in for its one request (``call``): once Swift
does not answer, the other segments are not tried, as each would wait a timeout. A
proxy that stands still is shown end to end by tests/functional/test_faults.py (the
stalled add's abort)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from imgstore.drivers.swift import SwiftDriver
from imgstore.exceptions import BackendError, BackendUnavailable, NotFound


class Calls:
    """Stands in for the driver: ``call`` raises what ``answers`` holds for an object."""

    backend = "swift"

    def __init__(self, answers: dict[str, Exception]) -> None:
        self.answers = answers
        self.tried: list[str] = []

    def call(self, account: Any, doing: str, method: str, container: str, obj: str) -> None:
        assert method == "delete_object"
        self.tried.append(obj)
        if obj in self.answers:
            raise self.answers[obj]


SEGMENTS = [("c", f"img-0000000{n}") for n in range(1, 6)]


def test_an_unavailable_swift_stops_the_deletes_and_all_that_is_left_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = Calls({"img-00000002": BackendUnavailable("backend 'swift': timed out")})
    with caplog.at_level(logging.WARNING, logger="imgstore.drivers.swift"):
        SwiftDriver.delete_segments(calls, None, SEGMENTS, "swift://x")  # type: ignore[arg-type]
    assert calls.tried == ["img-00000001", "img-00000002"]
    assert "not trying the other segments" in caplog.text
    assert "4 segments of swift://x could not be deleted" in caplog.text
    assert "img-00000002, img-00000003, img-00000004, img-00000005" in caplog.text


def test_other_failures_and_missing_segments_do_not_stop_the_deletes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = Calls({"img-00000001": NotFound("gone"), "img-00000003": BackendError("refused")})
    with caplog.at_level(logging.WARNING, logger="imgstore.drivers.swift"):
        SwiftDriver.delete_segments(calls, None, SEGMENTS, "swift://x")  # type: ignore[arg-type]
    assert calls.tried == [name for _, name in SEGMENTS]
    assert "1 segments of swift://x could not be deleted: img-00000003" in caplog.text
