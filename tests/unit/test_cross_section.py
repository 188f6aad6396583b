"""The cross-sections of the conformance kit (tests/conftest.py): what a class keeps,
what is deselected, and a name that matches no test is refused."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cross_section

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONAL = ROOT / "tests" / "functional"


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


def test_every_case_a_cross_section_names_is_collected() -> None:
    """A ``name[case]`` whose case was renamed would keep nothing of that test, silently
    (the hook can tell only a missing function: a run of one node id collects one case).
    So the real cross-sections are checked against a real collection of their modules."""
    modules = sorted(
        p for p in FUNCTIONAL.glob("test_*.py") if "CROSS_SECTION" in p.read_text("utf-8")
    )
    assert modules, "no module declares a cross-section"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *map(str, modules)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    kept: dict[str, set[str]] = {}  # "module.py::Class" -> its collected test names
    for nodeid in re.findall(r"^tests/functional/(\S+::\S+::\S+)$", proc.stdout, re.M):
        where, _, test = nodeid.rpartition("::")
        kept.setdefault(where, set()).add(test)
    unmatched = []
    for module in modules:
        mod = importlib.import_module(f"tests.functional.{module.stem}")
        for name, cls in vars(mod).items():
            section = getattr(cls, "CROSS_SECTION", None) if isinstance(cls, type) else None
            if not section or cls.__module__ != mod.__name__:
                continue
            tests = kept.get(f"{module.name}::{name}", set())
            unmatched += [
                f"{name}: {entry}"
                for entry in section
                if not any(entry in (t, t.split("[", 1)[0]) for t in tests)
            ]
    assert not unmatched, f"cross-section entries that keep no test: {unmatched}"
