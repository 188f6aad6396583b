"""Leftover.aged: which of an interrupted write's leftovers a driver lists, by age."""

from __future__ import annotations

from imgstore.driver import Leftover


def test_a_leftover_is_listed_once_old_enough_and_always_when_its_age_is_unknown() -> None:
    assert Leftover.aged("1000.5", 1100.5, 60) == (True, 100.0)  # a stamp kept as text
    assert Leftover.aged(1000, 1030, 60) == (False, 30.0)  # too recent: another add's
    assert Leftover.aged(1000, 1060, 60) == (True, 60.0)  # exactly as old: listed
    assert Leftover.aged("garbled", 1100, 60) == (True, None)
    assert Leftover.aged(None, 1100, 60) == (True, None)  # no stamp at all
    assert Leftover.aged(1000, 1000, 0) == (True, 0.0)
