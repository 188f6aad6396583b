"""The ``glance_store`` import name, backed by imgstore.

Installed by the ``imgstore-glance-store-compat`` distribution in place of
glance_store, so that OpenStack Glance stores its images through
:class:`imgstore.Stores`. Like glance_store, this package re-exports its
multi-store and legacy functions, the Store class and every exception at the
top level (``glance_store.NotFound is glance_store.exceptions.NotFound``).
"""

from glance_store import backend, capabilities, driver, exceptions, location, multi_backend  # noqa: F401
from glance_store.backend import *  # noqa: F403 - legacy names win, as in glance_store
from glance_store.driver import Store  # noqa: F401
from glance_store.exceptions import *  # noqa: F403
from glance_store.multi_backend import *  # noqa: F403
