"""pytest plugin (entry point ``pytest11``): registers the markers the conformance kit uses.

Loaded automatically wherever imgstore is installed, so a third-party driver's
test suite needs no marker configuration of its own. It imports nothing heavy.
"""

from __future__ import annotations

from typing import Any


def pytest_configure(config: Any) -> None:
    """Declare the kit's markers so ``--strict-markers`` runs accept them."""
    config.addinivalue_line("markers", "slow: a conformance case that moves 64 MiB or more")
