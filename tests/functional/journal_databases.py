"""A database of its own for each test's journal, on the harness's MariaDB or PostgreSQL
(``services up mariadb postgresql``): made by the admin account, owned by (granted to)
the ``imgstore`` user, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.functional.conftest import import_or_fail, require_service

sqlalchemy = import_or_fail("sqlalchemy", "the distributed extra: pip install -e '.[distributed]'")

SERVERS = ("mariadb", "postgresql")


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """The URL (with the ``imgstore`` user's password) of a new empty database."""
    details: dict[str, Any] = require_service(server)
    name = f"j_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(  # no pool: a test may restart the server meanwhile
        details["admin_url_with_password"],
        isolation_level="AUTOCOMMIT",
        poolclass=sqlalchemy.pool.NullPool,
    )
    user = details["user"]
    try:
        with admin.connect() as conn:
            if server == "mariadb":
                conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
                conn.exec_driver_sql(f"GRANT ALL PRIVILEGES ON {name}.* TO '{user}'@'127.0.0.1'")
            else:
                conn.exec_driver_sql(f"CREATE DATABASE {name} OWNER {user}")
        url = sqlalchemy.engine.make_url(details["url_with_password"]).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            if server == "postgresql":  # a worker killed in the test may hold a session
                conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()
