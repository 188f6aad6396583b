"""glance_store._drivers.swift by name: the compat Store; imgstore's swift driver does the work."""

from glance_store._drivers.swift.store import *  # noqa: F403
from glance_store._drivers.swift.store import __all__  # noqa: F401
