"""An example imgstore driver from another distribution: images in an SQLite file.

Enable it with ``enabled_backends = db:sqlite`` and ``[db] sqlite_store_path``.
"""

from imgstore_sqlite.driver import SqliteDriver
from imgstore_sqlite.location import SqliteLocation

__all__ = ["SqliteDriver", "SqliteLocation"]
