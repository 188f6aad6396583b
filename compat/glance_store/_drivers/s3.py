"""glance_store._drivers.s3 by name: the compat Store; imgstore's driver does the work."""

from glance_store._drivers import optional_module
from glance_store.driver import Store
from glance_store.location import StoreLocation

boto3 = optional_module("boto3")

__all__ = ["Store", "StoreLocation", "boto3"]
