"""glance_store._drivers.vmware_datastore by name: the compat Store (imgstore does the work)."""

from glance_store._drivers import optional_module
from glance_store.driver import Store
from glance_store.location import StoreLocation

oslo_vmware = optional_module("oslo_vmware")

__all__ = ["Store", "StoreLocation", "oslo_vmware"]
