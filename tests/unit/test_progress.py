"""The progress bar: throttling, rendering, terminal detection (with a controlled clock)."""

from __future__ import annotations

import io
import os
import pty

from imgstore.progress import ProgressBar, human_bytes, human_duration, progress_bar

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(total: int | None = None, width: int = 100) -> tuple[ProgressBar, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    return ProgressBar(out, "add", total, clock=clock, width=width), out, clock


def test_human_units() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * MiB) == "3.0 MiB"
    assert human_bytes(5 * 1024**5) == "5.0 PiB"
    assert human_duration(0) == "0:00"
    assert human_duration(75) == "1:15"
    assert human_duration(3725) == "1:02:05"


def test_known_total_shows_percentage_rate_and_eta() -> None:
    bar, _, clock = make(total=100 * MiB)
    clock.now += 2
    bar.done = 25 * MiB
    line = bar.render()
    assert line.startswith("add  25.0 MiB / 100.0 MiB   25%  [")
    assert "12.5 MiB/s" in line
    assert "ETA 0:06" in line  # 75 MiB left at 12.5 MiB/s
    assert "#" in line and "-" in line


def test_unknown_total_shows_bytes_rate_and_elapsed() -> None:
    bar, _, clock = make(total=None)
    clock.now += 4
    bar.done = 8 * MiB
    line = bar.render()
    assert line == "add  8.0 MiB  2.0 MiB/s  0:04"
    assert "%" not in line


def test_redraws_are_throttled_to_ten_a_second() -> None:
    bar, out, clock = make(total=1000)
    for i in range(100):  # 100 updates within 50 ms
        bar(i, 1000)
        clock.now += 0.0005
    assert bar.draws == 1
    clock.now += 0.1
    bar(500, 1000)
    assert bar.draws == 2
    assert out.getvalue().count("\r") == 2
    bar.finish()
    assert bar.draws == 3
    assert out.getvalue().endswith("\n")
    final = out.getvalue().rsplit("\r", 1)[-1]
    assert "500 B / 1000 B   50%" in final and "in 0:00" in final and "ETA" not in final


def test_failure_erases_the_bar() -> None:
    bar, out, _ = make(total=1000)
    bar(10, 1000)
    bar.finish(ok=False)
    assert out.getvalue().endswith("\r\x1b[K")
    assert "\n" not in out.getvalue()
    bar.finish()  # a second finish does nothing
    assert "\n" not in out.getvalue()


def test_fits_the_terminal_width() -> None:
    bar, _, clock = make(total=10 * 1024**3, width=40)
    clock.now += 1
    bar.done = 3 * 1024**3
    assert len(bar.render()) <= 39


def test_only_on_a_terminal() -> None:
    assert progress_bar(io.StringIO(), "get", 10) is None
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert isinstance(progress_bar(tty, "get", 10), ProgressBar)
            assert progress_bar(tty, "get", 10, enabled=False) is None
    finally:
        os.close(slave)
        os.close(master)
