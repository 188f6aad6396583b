"""ImageCloser's timing (imgstore.drivers.rbd_close), with stand-in images that only record
when they were closed: the librbd race it avoids is shown on the real cluster by
tests/functional/test_rbd.py::test_quick_opens_and_closes_under_load_keep_the_process_alive."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from imgstore.drivers import rbd_close
from imgstore.drivers.rbd_close import ImageCloser


class Recorded:
    """Stands in for an rbd.Image: remembers when, and on which thread, it was closed."""

    def __init__(self, ioctx: Any, name: str, snapshot: str | None, read_only: bool) -> None:
        self.name, self.read_only = name, read_only
        self.closed_at: float | None = None
        self.closed_by: str | None = None
        self.closed = threading.Event()

    def close(self) -> None:
        assert self.closed_at is None, "closed twice"
        self.closed_at = time.monotonic()
        self.closed_by = threading.current_thread().name
        self.closed.set()


class FakeRbd:
    @staticmethod
    def Image(ioctx: Any, name: str, snapshot: str | None = None, read_only: bool = False):
        return Recorded(ioctx, name, snapshot, read_only)


@pytest.fixture(autouse=True)
def fake_rbd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rbd_close, "rbd", FakeRbd)


def test_a_read_only_image_is_closed_later_on_the_cores_thread() -> None:
    closer = ImageCloser("t", grace=0.2)
    image = closer.open(None, "a", snapshot="snap", read_only=True)
    let_go = time.monotonic()
    closer.close(image)
    assert time.monotonic() - let_go < 0.1  # the caller does not wait
    assert image.closed_at is None
    assert image.closed.wait(5)
    assert image.closed_at - let_go >= 0.2
    assert image.closed_by == "imgstore-rbd-close-t"


def test_an_image_open_for_writing_is_closed_by_its_user_once_open_long_enough() -> None:
    closer = ImageCloser("t", grace=0.2)
    image = closer.open(None, "w")
    opened = time.monotonic()
    closer.close(image)
    assert image.closed_by == threading.current_thread().name
    assert image.closed_at - opened >= 0.2
    older = closer.open(None, "old")
    time.sleep(0.25)
    start = time.monotonic()
    closer.close(older)
    assert older.closed_at - start < 0.1  # open long enough: closed at once


def test_flush_closes_everything_pending_at_its_time() -> None:
    closer = ImageCloser("t", grace=0.2)
    images = [closer.open(None, str(n), read_only=True) for n in range(5)]
    let_go = time.monotonic()
    for image in images:
        closer.close(image)
    closer.flush()
    assert all(i.closed_at is not None and i.closed_at - let_go >= 0.2 for i in images)


def test_a_failing_close_is_logged_and_the_rest_still_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closer = ImageCloser("t", grace=0.05)
    bad, good = closer.open(None, "bad", read_only=True), closer.open(None, "good", read_only=True)

    def fail() -> None:
        raise OSError("gone")

    bad.close = fail  # type: ignore[method-assign]
    # the logger's own level: an earlier test (the CLI's) may have raised imgstore's
    with caplog.at_level(logging.WARNING, logger="imgstore.deferred"):
        closer.close(bad)
        closer.close(good)
        closer.flush()
    assert good.closed_at is not None
    assert "rbd-close-t: a deferred call failed" in caplog.text


def test_opened_and_closing_close_at_the_end_of_the_block_even_when_it_fails() -> None:
    closer = ImageCloser("t", grace=0.0)
    with closer.opened(None, "w") as image:
        assert image.name == "w" and image.closed_at is None
    assert image.closed_at is not None
    other = closer.open(None, "x")
    with pytest.raises(RuntimeError, match="boom"), closer.closing(other) as same:
        assert same is other
        raise RuntimeError("boom")
    assert other.closed_at is not None


def test_close_in_background_closes_then_calls_on_the_closing_thread() -> None:
    closer = ImageCloser("t", grace=0.05)
    image = closer.open(None, "stuck")
    release, called = threading.Event(), threading.Event()
    after: list[tuple[float | None, str]] = []
    slow_close = image.close

    def close() -> None:  # a close that waits, as librbd's does for a cluster not answering
        release.wait(5)
        slow_close()

    def then() -> None:
        after.append((image.closed_at, threading.current_thread().name))
        called.set()

    image.close = close  # type: ignore[method-assign]
    start = time.monotonic()
    closer.close_in_background(image, then)
    assert time.monotonic() - start < 0.1  # the caller does not wait
    assert image.closed_at is None and not after
    release.set()
    # waited for, not flushed: a flush makes what is due on the flushing thread
    assert called.wait(5)
    assert after == [(image.closed_at, "imgstore-rbd-close-t")]  # closed first, then called
    assert image.closed_at is not None and image.closed_at - start >= 0.05


def test_close_in_background_calls_on_even_when_the_close_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closer = ImageCloser("t", grace=0.0)
    image = closer.open(None, "bad")
    called = threading.Event()

    def fail() -> None:
        raise OSError("timed out")

    image.close = fail  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="imgstore.deferred"):
        closer.close_in_background(image, called.set)
        closer.flush()
    assert called.is_set()
    assert "rbd-close-t: a deferred call failed" in caplog.text
