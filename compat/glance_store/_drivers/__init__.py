"""glance_store's private driver modules, by name only.

imgstore's drivers do the work (:mod:`imgstore.drivers`); these modules exist
so that code importing glance_store's private driver modules by name (Glance's
unit-test base class does, to mock their client libraries) still imports.
Each names the compat :class:`~glance_store.driver.Store` and
:class:`~glance_store.location.StoreLocation`, and the client library module
the glance_store driver imported (None when it is not installed).
"""

from __future__ import annotations

import importlib
from typing import Any


def optional_module(name: str) -> Any:
    """The module ``name``, or None when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
