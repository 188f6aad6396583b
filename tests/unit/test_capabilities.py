"""A backend's capabilities are read from what its driver implements, never declared."""

from __future__ import annotations

from typing import Any

from imgstore.capabilities import Capability
from imgstore.driver import Driver, ReadStream, Writer
from imgstore.drivers.http import HttpLocation


class ReadOnly(Driver):
    """Implements only what every driver must: open and size."""

    name = "readonly-test"
    location_class = HttpLocation

    def open(self, location: Any, offset: int, length: int | None) -> ReadStream:
        raise NotImplementedError

    def size(self, location: Any) -> int:
        raise NotImplementedError


class Writes(ReadOnly):
    def begin_write(self, image_id: str, size: int | None) -> Writer:
        raise NotImplementedError


class WritesAndDeletes(Writes):
    def delete(self, location: Any) -> None:
        raise NotImplementedError


class ConfiguredReadOnly(WritesAndDeletes):
    def can_write(self) -> bool:
        return False


def make(cls: type[Driver]) -> Driver:
    return cls({}, "b")  # type: ignore[arg-type]


def test_reads_only_unless_the_driver_writes_or_deletes() -> None:
    assert make(ReadOnly).capabilities == Capability.READ | Capability.READ_RANDOM
    assert make(Writes).capabilities == Capability.READ | Capability.READ_RANDOM | Capability.WRITE
    assert make(WritesAndDeletes).capabilities == Capability.RW | Capability.READ_RANDOM


def test_settings_take_away_writes_and_ranges_or_add_thin_provisioning() -> None:
    drv = make(ConfiguredReadOnly)
    assert drv.capabilities == Capability.READ | Capability.READ_RANDOM | Capability.DELETE
    drv.reads_ranges = False
    drv.thin = True
    assert drv.capabilities == Capability.READ | Capability.DELETE | Capability.THIN_PROVISIONING
