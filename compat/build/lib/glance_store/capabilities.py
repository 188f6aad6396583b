"""glance_store's capability names; imgstore checks capabilities per operation instead."""

from __future__ import annotations

import enum


class BitMasks(enum.IntFlag):
    """glance_store.capabilities.BitMasks (values as in glance_store)."""

    NONE = 0b00000000
    ALL = 0b11111111
    READ_ACCESS = 0b00000001
    READ_OFFSET = 0b00000011
    READ_CHUNK = 0b00000101
    READ_RANDOM = 0b00000111
    WRITE_ACCESS = 0b00001000
    WRITE_OFFSET = 0b00011000
    WRITE_CHUNK = 0b00101000
    WRITE_RANDOM = 0b00111000
    RW_ACCESS = 0b00001001
    RW_OFFSET = 0b00011011
    RW_CHUNK = 0b00101101
    RW_RANDOM = 0b00111111
    DRIVER_REUSABLE = 0b01000000
