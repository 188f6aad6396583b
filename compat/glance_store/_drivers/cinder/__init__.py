"""glance_store._drivers.cinder by name: the compat Store; imgstore's driver does the work."""

from glance_store._drivers.cinder.store import *  # noqa: F403
from glance_store._drivers.cinder.store import __all__  # noqa: F401
