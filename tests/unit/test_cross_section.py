"""The cross-sections of the conformance kit (tests/conftest.py): what a class keeps,
what is deselected, and a name that matches no test is refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import cross_section


class Whole:
    def test_round_trip(self) -> None: ...

    def test_delete(self) -> None: ...


class Section(Whole):
    CROSS_SECTION = ("test_round_trip[small]", "test_delete")


class Typo(Whole):
    CROSS_SECTION = ("test_round_trp",)


@dataclass
class Item:
    cls: Any
    name: str
    originalname: str


def items_of(cls: type) -> list[Any]:
    return [
        Item(cls, f"test_round_trip[{case}]", "test_round_trip") for case in ("small", "big")
    ] + [Item(cls, "test_delete", "test_delete")]


def test_a_class_without_cross_section_keeps_everything() -> None:
    kept, dropped = cross_section(items_of(Whole))
    assert [i.name for i in kept] == [
        "test_round_trip[small]",
        "test_round_trip[big]",
        "test_delete",
    ]
    assert dropped == []


def test_a_cross_section_keeps_the_named_cases_and_functions() -> None:
    kept, dropped = cross_section(items_of(Whole) + items_of(Section))
    assert [(i.cls, i.name) for i in dropped] == [(Section, "test_round_trip[big]")]
    assert [(i.cls, i.name) for i in kept if i.cls is Section] == [
        (Section, "test_round_trip[small]"),
        (Section, "test_delete"),
    ]


def test_a_name_of_no_test_is_refused() -> None:
    with pytest.raises(pytest.UsageError, match="test_round_trp"):
        cross_section(items_of(Typo))
