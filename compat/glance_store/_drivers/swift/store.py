"""glance_store._drivers.swift.store by name, with the class names glance_store has.

``BaseStore``, ``SingleTenantStore`` and ``MultiTenantStore`` are the compat
:class:`~glance_store.driver.Store` (imgstore's swift driver serves both tenancy modes),
so code that imports or patches them by name still runs.
"""

from glance_store._drivers import optional_module
from glance_store.driver import Store
from glance_store.location import StoreLocation

swiftclient = optional_module("swiftclient")


class BaseStore(Store):
    """glance_store's base of the two Swift stores: the compat Store."""


class SingleTenantStore(BaseStore):
    """glance_store's single-tenant Swift store: the compat Store."""


class MultiTenantStore(BaseStore):
    """glance_store's multi-tenant Swift store: the compat Store."""


__all__ = [
    "BaseStore",
    "MultiTenantStore",
    "SingleTenantStore",
    "Store",
    "StoreLocation",
    "swiftclient",
]
