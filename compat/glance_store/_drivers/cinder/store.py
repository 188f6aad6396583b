"""glance_store._drivers.cinder.store by name: the compat Store and the client library
module glance_store's cinder driver imported, so code importing it by name still runs."""

from glance_store._drivers import optional_module
from glance_store.driver import Store
from glance_store.location import StoreLocation

cinderclient = optional_module("cinderclient.v3.client")

__all__ = ["Store", "StoreLocation", "cinderclient"]
