"""The ``sqlite`` driver: each image is a row in ``images`` plus fixed-size chunk rows.

Schema::

    images(id TEXT PRIMARY KEY, size INTEGER, chunk_size INTEGER)
    chunks(image_id TEXT, seq INTEGER, data BLOB, PRIMARY KEY (image_id, seq))

Every chunk row but the last of an image holds exactly ``chunk_size`` bytes,
so byte ``n`` is in row ``n // chunk_size``: ranged reads fetch only the rows
they need, and neither writing nor reading ever holds more than one row in
memory. A write is one transaction (``BEGIN IMMEDIATE``) that ``commit()``
commits and ``abort()`` rolls back, so a failed add leaves nothing behind.

Only the public contract of imgstore is used: :mod:`imgstore.driver`,
:mod:`imgstore.location` and :mod:`imgstore.exceptions`. The core does hashing, size
checks, the size cap and calls :meth:`SqliteWriter.abort` on any failure.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator

from oslo_config import cfg

from imgstore.driver import Driver, ReadStream, Writer, Written, clamp_range
from imgstore.exceptions import (
    BackendError,
    BackendUnavailable,
    BadConfiguration,
    Duplicate,
    ImgstoreError,
    NotFound,
    StorageFull,
)
from imgstore.location import Location
from imgstore_sqlite.location import SqliteLocation

LOG = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1024 * 1024

# SQLite primary result codes (sqlite3 exposes them as constants only from 3.11).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_FULL = 13

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS images ("
    " id TEXT PRIMARY KEY, size INTEGER, chunk_size INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS chunks ("
    " image_id TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,"
    " PRIMARY KEY (image_id, seq)) WITHOUT ROWID",
)


def _error(exc: sqlite3.Error, doing: str) -> ImgstoreError:
    """Map an sqlite3 error to the imgstore exception a caller can act on."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary == _SQLITE_FULL or "database or disk is full" in text:
        return StorageFull(f"cannot {doing}: the SQLite database or its disk is full")
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text:
        return BackendUnavailable(f"cannot {doing}: the SQLite database stayed locked ({text})")
    return BackendError(f"cannot {doing}: {type(exc).__name__}: {text}")


class SqliteDriver(Driver):
    """Stores images in one SQLite database file."""

    name = "sqlite"
    location_class = SqliteLocation

    @classmethod
    def options(cls) -> list[cfg.Opt]:
        """The options read from the backend's group."""
        return [
            cfg.StrOpt(
                "sqlite_store_path",
                help="Absolute path of the SQLite database file holding the images. "
                "It and its directory are created if missing.",
            ),
            cfg.IntOpt(
                "sqlite_store_chunk_size",
                default=DEFAULT_CHUNK_SIZE,
                min=4096,
                max=256 * 1024 * 1024,
                help="Bytes per chunk row of new images; the most memory one add or "
                "one read holds. Images keep the chunk size they were written with.",
            ),
            cfg.FloatOpt(
                "sqlite_store_busy_timeout",
                default=120.0,
                min=0,
                help="Seconds to wait for the database lock. SQLite has one writer at "
                "a time: concurrent adds queue for up to this long.",
            ),
        ]

    def configure(self) -> None:
        """Check the options, create the database and its tables, turn on WAL."""
        path = self.conf.sqlite_store_path
        if not path:
            raise BadConfiguration(f"backend {self.backend!r}: set sqlite_store_path")
        if not os.path.isabs(path):
            raise BadConfiguration(
                f"backend {self.backend!r}: sqlite_store_path must be absolute: {path!r}"
            )
        self.path = os.path.abspath(path)
        self.chunk_size = int(self.conf.sqlite_store_chunk_size)
        self.busy_timeout = float(self.conf.sqlite_store_busy_timeout)
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
        except OSError as exc:
            raise BadConfiguration(
                f"backend {self.backend!r}: cannot create the directory of {self.path}: "
                f"{exc.strerror}"
            ) from None
        try:
            conn = self._connect()
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                for statement in _SCHEMA:
                    conn.execute(statement)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise BadConfiguration(
                f"backend {self.backend!r}: cannot use {self.path} as an SQLite database: {exc}"
            ) from None

    def _connect(self) -> sqlite3.Connection:
        """A new connection in autocommit mode; transactions are opened explicitly.

        One connection per operation keeps threads apart; a connection is only
        ever used by one thread at a time, but a stream may be consumed on
        another thread than the one that opened it, hence check_same_thread.
        """
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return conn

    def owns(self, location: Location) -> bool:
        """Only locations in this backend's database file."""
        return isinstance(location, SqliteLocation) and (
            location.db_path == self.path
            or os.path.realpath(location.db_path) == os.path.realpath(self.path)
        )

    def _check(self, location: Location) -> SqliteLocation:
        loc = self.parse(location)
        assert isinstance(loc, SqliteLocation)
        return loc

    def begin_write(self, image_id: str, size: int | None) -> Writer:
        """Open the write transaction; :class:`Duplicate` if ``image_id`` exists."""
        return SqliteWriter(self, image_id)

    def open(self, location: Location, offset: int, length: int | None) -> ReadStream:
        """A stream of the image's bytes from ``offset``, read in one snapshot."""
        loc = self._check(location)
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise _error(exc, f"open {loc.redacted()}") from None
        try:
            conn.execute("BEGIN")  # one read snapshot for the whole stream
            row = conn.execute(
                "SELECT size, chunk_size FROM images WHERE id = ? AND size IS NOT NULL",
                (loc.image_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no image at {loc.redacted()}")
            start, count = clamp_range(int(row[0]), offset, length)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _error(exc, f"open {loc.redacted()}") from None
            raise
        return SqliteStream(conn, loc, int(row[1]), start, count)

    def size(self, location: Location) -> int:
        """The stored size; :class:`NotFound` when there is no such image."""
        loc = self._check(location)
        try:
            conn = self._connect()
            try:
                row = conn.execute(
                    "SELECT size FROM images WHERE id = ? AND size IS NOT NULL",
                    (loc.image_id,),
                ).fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise _error(exc, f"read the size of {loc.redacted()}") from None
        if row is None:
            raise NotFound(f"no image at {loc.redacted()}")
        return int(row[0])

    def delete(self, location: Location) -> None:
        """Remove the image row and its chunks in one transaction."""
        loc = self._check(location)
        try:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    gone = conn.execute(
                        "DELETE FROM images WHERE id = ? AND size IS NOT NULL", (loc.image_id,)
                    ).rowcount
                    conn.execute("DELETE FROM chunks WHERE image_id = ?", (loc.image_id,))
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                if not gone:
                    conn.execute("ROLLBACK")
                    raise NotFound(f"no image at {loc.redacted()}")
                conn.execute("COMMIT")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise _error(exc, f"delete {loc.redacted()}") from None


class SqliteWriter(Writer):
    """Writes one image inside one transaction; rows become visible on commit."""

    def __init__(self, driver: SqliteDriver, image_id: str) -> None:
        self._driver = driver
        self._image_id = image_id
        self._chunk_size = driver.chunk_size
        self._buffer = bytearray(self._chunk_size)
        self._filled = 0
        self._seq = 0
        self._conn: sqlite3.Connection | None = None
        try:
            conn = driver._connect()
        except sqlite3.Error as exc:
            raise _error(exc, f"start writing image {image_id}") from None
        try:
            # IMMEDIATE takes SQLite's single write lock now (waiting up to the busy
            # timeout), so the insert below is the authoritative duplicate check.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO images (id, size, chunk_size) VALUES (?, NULL, ?)",
                (image_id, self._chunk_size),
            )
        except sqlite3.IntegrityError:
            conn.close()  # closing rolls the transaction back
            raise Duplicate(
                f"image {image_id} already exists in backend {driver.backend!r}"
            ) from None
        except sqlite3.Error as exc:
            conn.close()
            raise _error(exc, f"start writing image {image_id}") from None
        self._conn = conn

    def _flush(self) -> None:
        assert self._conn is not None
        if not self._filled:
            return
        self._conn.execute(
            "INSERT INTO chunks (image_id, seq, data) VALUES (?, ?, ?)",
            (self._image_id, self._seq, memoryview(self._buffer)[: self._filled]),
        )
        self._seq += 1
        self._filled = 0

    def write(self, chunk: memoryview) -> None:
        """Copy ``chunk`` into fixed-size rows (the core reuses its buffer)."""
        assert self._conn is not None
        view = chunk.cast("B") if chunk.format != "B" or chunk.ndim != 1 else chunk
        try:
            while view:
                take = min(len(view), self._chunk_size - self._filled)
                self._buffer[self._filled : self._filled + take] = view[:take]
                self._filled += take
                view = view[take:]
                if self._filled == self._chunk_size:
                    self._flush()
        except sqlite3.Error as exc:
            raise _error(exc, f"write image {self._image_id}") from None

    def commit(self, size: int) -> Written:
        """Write the last row, record the size and commit the transaction."""
        conn = self._conn
        assert conn is not None
        try:
            self._flush()
            conn.execute("UPDATE images SET size = ? WHERE id = ?", (size, self._image_id))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _error(exc, f"commit image {self._image_id}") from None
        self._conn = None
        conn.close()
        LOG.debug("committed %s: %d bytes in %d rows", self._image_id, size, self._seq)
        return Written(
            SqliteLocation(self._driver.path, self._image_id),
            {"chunk_size": self._chunk_size},
        )

    def abort(self) -> None:
        """Roll the transaction back; nothing of the image remains."""
        conn, self._conn = self._conn, None
        if conn is None:  # the commit closed it already
            return
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            LOG.warning("rollback of image %s failed: %s", self._image_id, exc)
        finally:
            conn.close()  # closing without commit also discards the transaction


class SqliteStream(ReadStream):
    """``count`` bytes from ``offset``, fetched one chunk row at a time."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        location: SqliteLocation,
        chunk_size: int,
        offset: int,
        count: int,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._location = location
        self._chunk_size = chunk_size
        self._offset = offset
        self.size = count

    def __iter__(self) -> Iterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        seq, skip = divmod(self._offset, self._chunk_size)
        left = self.size
        while left > 0:
            try:
                row = conn.execute(
                    "SELECT data FROM chunks WHERE image_id = ? AND seq = ?",
                    (self._location.image_id, seq),
                ).fetchone()
            except sqlite3.Error as exc:
                raise _error(exc, f"read {self._location.redacted()}") from None
            if row is None:
                raise BackendError(f"{self._location.redacted()}: chunk {seq} is missing")
            data = bytes(row[0])
            piece = data[skip : skip + left]
            if not piece:
                raise BackendError(f"{self._location.redacted()}: chunk {seq} is short")
            left -= len(piece)
            yield piece
            seq += 1
            skip = 0

    def close(self) -> None:
        """End the read snapshot and close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
