"""Where a migration journal lives: a sqlite file, with the standard library only, or a
database server named by a SQLAlchemy URL (``mysql+pymysql://``, ``postgresql+psycopg://``,
``sqlite:///``; needs ``imgstore[distributed]``). Both hold one schema, the Alembic
revisions of :mod:`imgstore.journal_schema`.

The journal speaks to either through three calls with named parameters (``:name``),
each its own transaction: :meth:`Database.execute` (returns the rows it matched),
:meth:`Database.query` and :meth:`Database.insert` (False when the row exists). Every
state change is one compare-and-set ``UPDATE``, atomic in sqlite, MariaDB and
PostgreSQL alike, so no statement needs a lock or a dialect of its own.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from imgstore.backoff import Backoff, retry
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendUnavailable,
    BadConfiguration,
    ImgstoreError,
    InvalidArgument,
)
from imgstore.scrubbing import scrub

LOG = logging.getLogger(__name__)
T = TypeVar("T")

HEAD = "j0002"
"""The newest revision of :mod:`imgstore.journal_schema`."""

SCHEMA_DIR = Path(__file__).with_name("journal_schema")

RETRY_SECONDS = 120.0
"""How long a journal on a server keeps trying a statement while the server is away
(restarted, failed over) before the run stops with BackendUnavailable."""

UNTIL_DEADLINE = 1 << 30
"""Tries of a statement: in effect, as many as fit before the deadline."""


class Database(Protocol):
    """What the journal needs of its database."""

    shown: str
    """The database's name without any password (for messages and reprs)."""

    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        """Run one statement in its own transaction; the number of rows it matched."""

    def query(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of one ``SELECT``."""

    def insert(self, sql: str, params: Mapping[str, Any]) -> bool:
        """Run one ``INSERT``; False, changing nothing, when the row exists."""

    def close(self) -> None:
        """Let go of the connections."""


def is_url(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names a database by URL (else it is a sqlite file's path)."""
    return isinstance(spec, str) and "://" in spec


def open_database(spec: str | os.PathLike[str]) -> Database:
    """The database of a journal: a sqlite file's path (``":memory:"``: none kept) or a
    SQLAlchemy URL; created or upgraded to :data:`HEAD` on the way."""
    if is_url(spec):
        return ServerDatabase(str(spec))
    return SqliteFile(os.fspath(spec))


# -- a sqlite file, standard library only ------------------------------------------

_SQLITE_HEAD = """
CREATE TABLE meta (key VARCHAR(64) NOT NULL PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    image_id VARCHAR(255) NOT NULL PRIMARY KEY,
    source TEXT NOT NULL,
    state VARCHAR(16) NOT NULL,
    target_location TEXT,
    attempts INTEGER DEFAULT '0' NOT NULL,
    size BIGINT,
    checksum VARCHAR(64),
    hash_algo VARCHAR(32),
    multihash VARCHAR(255),
    source_deleted INTEGER DEFAULT '0' NOT NULL,
    error_type VARCHAR(255),
    error TEXT,
    updated DOUBLE NOT NULL,
    lease_owner VARCHAR(255),
    lease_expires DOUBLE,
    worker VARCHAR(255),
    finished DOUBLE,
    outcome TEXT
);
CREATE INDEX ix_images_state ON images (state);
"""
"""The schema at :data:`HEAD`, as Alembic makes it in sqlite."""

_SQLITE_UPGRADES = {
    "j0001": """
ALTER TABLE images ADD COLUMN lease_owner VARCHAR(255);
ALTER TABLE images ADD COLUMN lease_expires DOUBLE;
ALTER TABLE images ADD COLUMN worker VARCHAR(255);
ALTER TABLE images ADD COLUMN finished DOUBLE;
ALTER TABLE images ADD COLUMN outcome TEXT;
CREATE INDEX ix_images_state ON images (state);
""",
}
"""From each revision to the next (j0001 -> j0002), as the Alembic revisions do it."""

_NEXT = {"j0001": "j0002"}


class SqliteFile:
    """A journal in a sqlite file: WAL, ``synchronous=FULL``, so each statement is on
    disk when it returns and a run killed at any moment finds every state it wrote."""

    def __init__(self, path: str) -> None:
        self.shown = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise InvalidArgument(f"cannot open the journal {path}: {exc}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._upgrade()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise InvalidArgument(f"{path} is not a usable migration journal: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def _upgrade(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
            if "images" not in tables:
                _script(self._db, _SQLITE_HEAD)
                version = HEAD
            elif "alembic_version" in tables:
                (version,) = self._db.execute("SELECT version_num FROM alembic_version").fetchone()
            else:
                version = "j0001"  # written before the journal had revisions
            if "alembic_version" not in tables:
                self._db.execute(
                    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                    "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
                )
                self._db.execute("INSERT INTO alembic_version VALUES (:v)", {"v": version})
            while version != HEAD:
                if version not in _SQLITE_UPGRADES:
                    raise InvalidArgument(
                        f"{self.shown}: journal revision {version!r} is newer than this "
                        f"imgstore knows ({HEAD}); use a newer imgstore"
                    )
                _script(self._db, _SQLITE_UPGRADES[version])
                version = _NEXT[version]
                self._db.execute("UPDATE alembic_version SET version_num = :v", {"v": version})
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        with self._lock:
            return self._db.execute(sql, params).rowcount

    def query(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def insert(self, sql: str, params: Mapping[str, Any]) -> bool:
        try:
            self.execute(sql, params)
        except sqlite3.IntegrityError:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _script(db: sqlite3.Connection, statements: str) -> None:
    """Each ``;``-separated statement of ``statements``, in the open transaction
    (``executescript`` would commit it first)."""
    for statement in statements.split(";"):
        if statement.strip():
            db.execute(statement)


# -- a database server, through SQLAlchemy ----------------------------------------


class ServerDatabase:
    """A journal in the database a SQLAlchemy URL names. A statement that fails because
    the server went away is tried again, with backoff, for :data:`RETRY_SECONDS`; a
    compare-and-set whose answer was lost is recognised by the journal (the row already
    holds what it wrote)."""

    def __init__(self, url: str, retry_seconds: float = RETRY_SECONDS) -> None:
        try:
            import sqlalchemy as sa
        except ImportError:
            raise BadConfiguration(
                "a journal URL needs SQLAlchemy and a database driver: "
                "pip install 'imgstore[distributed]'"
            ) from None
        self._sa = sa
        self.retry_seconds = retry_seconds
        try:
            parsed = sa.engine.make_url(url)
        except (sa.exc.ArgumentError, ValueError):
            raise InvalidArgument(
                f"not a database URL: {_redacted(url)} (e.g. mysql+pymysql://user:...@host/db)"
            ) from None
        self.shown = parsed.render_as_string(hide_password=True)
        self._secrets = [parsed.password] if parsed.password else []
        try:
            # no pre-ping (a round trip before every statement): a connection the server
            # dropped fails its statement, SQLAlchemy empties the pool, and _call retries
            self._engine = sa.create_engine(parsed)
        except (ImportError, sa.exc.NoSuchModuleError) as exc:
            raise BadConfiguration(
                f"journal {self.shown}: no database driver for it ({exc}): "
                "pip install 'imgstore[distributed]'"
            ) from None
        # the first connection fails at once: a wrong URL or password, or a server that is
        # not there, is one clear error now rather than two minutes of retries
        self._call("create or upgrade the journal's schema", self._upgrade, seconds=0)

    def _upgrade(self) -> None:
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(SCHEMA_DIR))
        with self._engine.connect() as conn:
            # workers starting together upgrade one at a time, and each lets the lock go
            # only once its schema and version are committed (MariaDB's GET_LOCK lasts
            # until released: released before the commit, the next one found j0001 still
            # and added j0002's columns again)
            mysql = conn.dialect.name in ("mysql", "mariadb")
            if mysql:
                conn.exec_driver_sql("SELECT GET_LOCK('imgstore_journal_schema', 60)")
            elif conn.dialect.name == "postgresql":  # held until the commit
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7129046)")
            try:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                conn.commit()
            finally:
                if mysql:
                    conn.rollback()
                    conn.exec_driver_sql("SELECT RELEASE_LOCK('imgstore_journal_schema')")
                    conn.commit()

    def _call(self, what: str, call: Callable[[], T], seconds: float | None = None) -> T:
        sa = self._sa
        deadline = time.monotonic() + (self.retry_seconds if seconds is None else seconds)

        def logged(attempt: int, exc: BaseException) -> None:
            LOG.warning("journal %s: %s failed (try %d), trying again: %s",
                        self.shown, what, attempt, self._clean(exc))  # fmt: skip

        try:
            return retry(
                call,
                tries=UNTIL_DEADLINE,
                backoff=Backoff(0.2, 5.0),
                retry_on=(sa.exc.OperationalError, sa.exc.InterfaceError),
                deadline=deadline,
                on_retry=logged if deadline > time.monotonic() else None,
            )
        except (ImgstoreError, sa.exc.IntegrityError):
            raise
        except sa.exc.DBAPIError as exc:
            raise self._error(what, exc) from None
        except TypeError as exc:  # the driver refused an option of the URL's query
            raise InvalidArgument(f"journal {self.shown}: {self._clean(exc)}") from None

    def _clean(self, exc: BaseException) -> str:
        orig = getattr(exc, "orig", None) or exc
        text = str(orig).strip().splitlines()
        return scrub(text[0] if text else type(orig).__name__, self._secrets)

    def _error(self, what: str, exc: Any) -> ImgstoreError:
        message = f"journal {self.shown}: {what} failed: {self._clean(exc)}"
        lowered = message.lower()
        if "access denied" in lowered or "authentication failed" in lowered:
            return AuthenticationFailed(message)
        if isinstance(exc, (self._sa.exc.OperationalError, self._sa.exc.InterfaceError)):
            return BackendUnavailable(message)
        return InvalidArgument(message)

    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        def run() -> int:
            with self._engine.begin() as conn:
                return int(conn.execute(self._sa.text(sql), dict(params)).rowcount)

        return self._call("a journal update", run)

    def query(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            with self._engine.connect() as conn:
                return [tuple(r) for r in conn.execute(self._sa.text(sql), dict(params))]

        return self._call("a journal query", run)

    def insert(self, sql: str, params: Mapping[str, Any]) -> bool:
        try:
            self.execute(sql, params)
        except self._sa.exc.IntegrityError:
            return False
        return True

    def close(self) -> None:
        self._engine.dispose()


def _redacted(url: str) -> str:
    """``url`` with anything between ``://`` and ``@`` replaced (it may hold a password)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}" if "@" in rest else url
