"""glance_store._drivers.swift by name: the compat Store; imgstore's swift driver does the work."""

from glance_store._drivers import optional_module
from glance_store.driver import Store
from glance_store.location import StoreLocation

swiftclient = optional_module("swiftclient")

__all__ = ["Store", "StoreLocation", "swiftclient"]
