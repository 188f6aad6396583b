"""A one-line progress bar for the ``imgstore`` command.

:class:`ProgressBar` is a :data:`imgstore.pipeline.Progress` callback: call it
with ``(bytes_done, total_or_None)`` as often as you like; it redraws at most
``rate`` times a second, showing bytes, the percentage and a bar when the
total is known, the throughput and the time left. :func:`progress_bar` gives
one only when the stream is a terminal, so pipes and log files never see it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any, TextIO

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_TAIL_ROOM = 26  # "123.4 MiB/s  ETA 12:34:56": keeps the bar's width steady


def _columns(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    return columns if columns >= 20 else shutil.get_terminal_size((80, 24)).columns


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """``75`` -> ``'1:15'``, ``3725`` -> ``'1:02:05'``."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """Draws ``label  done / total  pct [bar]  rate  ETA`` on one terminal line."""

    def __init__(
        self,
        stream: TextIO,
        label: str,
        total: int | None = None,
        *,
        rate: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
    ) -> None:
        self._stream = stream
        self._label = label
        self.total = total
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._width = width
        self._start = clock()
        self._last_draw: float | None = None
        self.done = 0
        self.draws = 0
        self._finished = False

    def __call__(self, done: int, total: int | None = None) -> None:
        """Record progress; redraw when the last drawing is old enough."""
        self.done = done
        if total is not None:
            self.total = total
        now = self._clock()
        if self._last_draw is not None and now - self._last_draw < self._interval:
            return
        self._draw(now)

    def render(self, now: float | None = None) -> str:
        """The line as it would be drawn at ``now`` (without the leading ``\\r``)."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        speed = self.done / elapsed
        width = self._width or _columns(self._stream)
        parts = [self._label]
        if self.total is not None:
            total = max(self.total, 0)
            fraction = min(self.done / total, 1.0) if total else 1.0
            parts.append(f"{human_bytes(self.done)} / {human_bytes(total)}")
            parts.append(f"{fraction * 100:3.0f}%")
            tail = f"{human_bytes(speed)}/s"
            if self._finished:
                tail += f"  in {human_duration(elapsed)}"
            elif speed > 0:
                tail += f"  ETA {human_duration(max(total - self.done, 0) / speed)}"
            else:
                tail += "  ETA --:--"
            fixed = len("  ".join([*parts, tail.ljust(_TAIL_ROOM)])) + 4
            room = width - 1 - fixed
            if room >= 10:
                bar = min(room, 30)
                filled = int(bar * fraction)
                parts.append("[" + "#" * filled + "-" * (bar - filled) + "]")
            parts.append(tail)
        else:
            parts.append(human_bytes(self.done))
            parts.append(f"{human_bytes(speed)}/s")
            parts.append(("in " if self._finished else "") + human_duration(elapsed))
        return "  ".join(parts)[: max(width - 1, 1)]

    def _draw(self, now: float) -> None:
        self._last_draw = now
        self.draws += 1
        self._stream.write("\r\x1b[K" + self.render(now))
        self._stream.flush()

    def finish(self, ok: bool = True) -> None:
        """Draw the final state and end the line, or erase the bar when ``ok`` is false."""
        if self._finished:
            return
        self._finished = True
        if ok:
            self._draw(self._clock())
            self._stream.write("\n")
        elif self._last_draw is not None:
            self._stream.write("\r\x1b[K")
        self._stream.flush()


def progress_bar(
    stream: TextIO, label: str, total: int | None = None, *, enabled: bool = True
) -> ProgressBar | None:
    """A bar on ``stream`` if it is a terminal and ``enabled``; otherwise None."""
    if not enabled:
        return None
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return ProgressBar(stream, label, total) if tty else None


class CountBar:
    """Draws ``label  n/total images  bytes  rate  ETA`` for a run over many images.

    Call it with a :class:`imgstore.migration.Status` (images and bytes done,
    totals, elapsed seconds); it redraws at most ``rate`` times a second. The
    ETA follows the bytes when every size is known, else the image count.
    """

    def __init__(
        self,
        stream: TextIO,
        label: str,
        *,
        rate: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
    ) -> None:
        self._stream = stream
        self._label = label
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._width = width
        self._last_draw: float | None = None
        self._status: Any = None
        self._finished = False
        self.draws = 0

    def __call__(self, status: Any) -> None:
        """Record ``status``; redraw when the last drawing is old enough."""
        self._status = status
        now = self._clock()
        final = status.images_done == status.images_total
        if not final and self._last_draw is not None and now - self._last_draw < self._interval:
            return
        self._draw(now)

    def render(self) -> str:
        """The line as it would be drawn now (without the leading ``\\r``)."""
        s = self._status
        width = self._width or _columns(self._stream)
        if s is None:
            return self._label[: max(width - 1, 1)]
        elapsed = max(s.elapsed, 1e-9)
        speed = s.bytes_done / elapsed
        parts = [self._label, f"{s.images_done}/{s.images_total} images"]
        if s.images_failed:
            parts.append(f"{s.images_failed} failed")
        if s.bytes_total is not None:
            parts.append(f"{human_bytes(s.bytes_done)} / {human_bytes(s.bytes_total)}")
        else:
            parts.append(human_bytes(s.bytes_done))
        parts.append(f"{human_bytes(speed)}/s")
        if self._finished or s.images_done == s.images_total:
            parts.append(f"in {human_duration(elapsed)}")
        elif s.bytes_total is not None and speed > 0:
            parts.append(f"ETA {human_duration(max(s.bytes_total - s.bytes_done, 0) / speed)}")
        elif s.images_done:
            left = (s.images_total - s.images_done) * elapsed / s.images_done
            parts.append(f"ETA {human_duration(left)}")
        else:
            parts.append("ETA --:--")
        return "  ".join(parts)[: max(width - 1, 1)]

    def _draw(self, now: float) -> None:
        self._last_draw = now
        self.draws += 1
        self._stream.write("\r\x1b[K" + self.render())
        self._stream.flush()

    def finish(self, ok: bool = True) -> None:
        """Draw the final state and end the line, or erase the bar when ``ok`` is false."""
        if self._finished:
            return
        self._finished = True
        if ok and self._status is not None:
            self._draw(self._clock())
            self._stream.write("\n")
        elif self._last_draw is not None:
            self._stream.write("\r\x1b[K")
        self._stream.flush()


def count_bar(stream: TextIO, label: str, *, enabled: bool = True) -> CountBar | None:
    """A :class:`CountBar` on ``stream`` if it is a terminal and ``enabled``; otherwise None."""
    if not enabled:
        return None
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return CountBar(stream, label) if tty else None
