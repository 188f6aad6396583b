"""glance_store._drivers.http by name: the compat Store; imgstore's driver does the work."""

from glance_store.driver import Store
from glance_store.location import StoreLocation

__all__ = ["Store", "StoreLocation"]
