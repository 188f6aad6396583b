"""What a backend can do, as flags the core and callers can test."""

from __future__ import annotations

import enum


class Capability(enum.Flag):
    """Capabilities a driver declares; combine with ``|``."""

    NONE = 0
    READ = enum.auto()
    """Whole images can be read."""
    READ_RANDOM = enum.auto()
    """Byte ranges can be read without reading what comes before them."""
    WRITE = enum.auto()
    """Images can be added."""
    DELETE = enum.auto()
    """Images can be deleted."""
    THIN_PROVISIONING = enum.auto()
    """Runs of zero bytes are stored as holes."""

    RW = READ | WRITE | DELETE

    def names(self) -> list[str]:
        """The names of the single flags set, lower case, for display."""
        return [
            flag.name.lower()
            for flag in Capability
            if flag.name and flag.value and flag.value & (flag.value - 1) == 0 and flag in self
        ]
