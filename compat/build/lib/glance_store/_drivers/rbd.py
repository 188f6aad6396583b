"""glance_store._drivers.rbd by name: the compat Store; imgstore's rbd driver does the work."""

from glance_store._drivers import optional_module
from glance_store.driver import Store
from glance_store.location import StoreLocation

rados = optional_module("rados")
rbd = optional_module("rbd")

__all__ = ["Store", "StoreLocation", "rados", "rbd"]
