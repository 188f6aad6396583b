"""The journal of a migration: one sqlite row per image and its state.

Each state change is its own transaction in WAL mode with ``synchronous=FULL``,
so it is on disk before the next step starts and a run killed at any moment
(even by SIGKILL) finds every image in the state it had reached::

    pending -> copying -> verified -> done
       |          |           |
       +----------+-----------+--> failed -> pending (only when retrying failures)
    pending -> done            (the target already held the same bytes)

``copying`` records the target location *before* the first byte is written:
a resumed run finds it there and removes a half-written copy before retrying.
Only secret-free text goes in: redacted source locations, locations imgstore
emitted, and error messages (which imgstore keeps free of secrets).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
import time
from typing import Any

from imgstore.exceptions import InvalidArgument

PENDING = "pending"
COPYING = "copying"
VERIFIED = "verified"
DONE = "done"
FAILED = "failed"
STATES = (PENDING, COPYING, VERIFIED, DONE, FAILED)

TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({COPYING, DONE, FAILED}),
    COPYING: frozenset({COPYING, VERIFIED, FAILED}),
    VERIFIED: frozenset({DONE, FAILED}),
    DONE: frozenset(),
    FAILED: frozenset({PENDING}),
}
"""The allowed state changes; ``copying -> copying`` is a resumed copy's retry."""

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    image_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    target_location TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    size INTEGER,
    checksum TEXT,
    hash_algo TEXT,
    multihash TEXT,
    source_deleted INTEGER NOT NULL DEFAULT 0,
    error_type TEXT,
    error TEXT,
    updated REAL NOT NULL
);
"""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One image's row."""

    image_id: str
    source: str
    """The source location, redacted."""
    state: str
    target_location: str | None
    attempts: int
    """How many times a copy of this image was started."""
    size: int | None
    checksum: str | None
    hash_algo: str | None
    multihash: str | None
    source_deleted: bool
    error_type: str | None
    error: str | None
    updated: float


_COLUMNS = [f.name for f in dataclasses.fields(Entry)]


class Journal:
    """A migration journal in the sqlite file ``path`` (``":memory:"``: none kept).

    A journal belongs to one target backend; opening it for another raises
    :class:`InvalidArgument`. Safe to use from several threads.
    """

    def __init__(self, path: str | os.PathLike[str], target: str) -> None:
        self.path = os.fspath(path)
        self.target = target
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise InvalidArgument(f"cannot open the journal {self.path}: {exc}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
            self._check_meta()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise InvalidArgument(f"{self.path} is not a usable migration journal: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def _check_meta(self) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            with self._tx():
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema", str(SCHEMA_VERSION)),
                        ("target", self.target),
                        ("created", str(time.time())),
                    ],
                )
            return
        if meta.get("schema") != str(SCHEMA_VERSION):
            raise InvalidArgument(
                f"{self.path}: journal schema {meta.get('schema')!r}, expected {SCHEMA_VERSION}"
            )
        if meta.get("target") != self.target:
            raise InvalidArgument(
                f"{self.path} is the journal of a migration to backend {meta.get('target')!r}, "
                f"not {self.target!r}; use another journal file"
            )

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self._db = db

        def __enter__(self) -> None:
            self._db.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")

    def _tx(self) -> Journal._Tx:
        return Journal._Tx(self._db)

    # -- reading -------------------------------------------------------------

    def get(self, image_id: str) -> Entry | None:
        """The row of ``image_id``, or None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM images WHERE image_id = ?",  # noqa: S608
                (image_id,),
            ).fetchone()
        return None if row is None else _entry(row)

    def entries(self) -> list[Entry]:
        """Every row, by image id."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM images ORDER BY image_id"  # noqa: S608
            ).fetchall()
        return [_entry(r) for r in rows]

    # -- state changes ---------------------------------------------------------

    def add(self, image_id: str, source: str) -> Entry:
        """Record ``image_id`` as pending unless the journal has it; return its row."""
        with self._lock, self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO images (image_id, source, state, updated) "
                "VALUES (?, ?, ?, ?)",
                (image_id, source, PENDING, time.time()),
            )
        entry = self.get(image_id)
        assert entry is not None
        return entry

    def _move(self, image_id: str, to: str, **values: Any) -> None:
        with self._lock, self._tx():
            row = self._db.execute(
                "SELECT state FROM images WHERE image_id = ?", (image_id,)
            ).fetchone()
            if row is None:
                raise InvalidArgument(f"journal: no image {image_id!r}")
            if to not in TRANSITIONS[row[0]]:
                raise InvalidArgument(f"journal: image {image_id} cannot go from {row[0]} to {to}")
            sets = ["state = ?", "updated = ?", *(f"{k} = ?" for k in values)]
            self._db.execute(
                f"UPDATE images SET {', '.join(sets)} WHERE image_id = ?",  # noqa: S608 - fixed names
                (to, time.time(), *values.values(), image_id),
            )

    def start_copy(self, image_id: str, target_location: str | None) -> None:
        """``copying``: a copy to ``target_location`` starts now; counts one attempt."""
        with self._lock:
            attempts = self._db.execute(
                "SELECT attempts FROM images WHERE image_id = ?", (image_id,)
            ).fetchone()
        self._move(
            image_id,
            COPYING,
            target_location=target_location,
            attempts=(attempts[0] if attempts else 0) + 1,
            error_type=None,
            error=None,
        )

    def verified(
        self,
        image_id: str,
        target_location: str,
        size: int,
        checksum: str | None,
        hash_algo: str,
        multihash: str,
    ) -> None:
        """``verified``: the copy at ``target_location`` matches the source and the record."""
        self._move(
            image_id,
            VERIFIED,
            target_location=target_location,
            size=size,
            checksum=checksum,
            hash_algo=hash_algo,
            multihash=multihash,
        )

    def present(
        self, image_id: str, target_location: str, size: int, hash_algo: str | None
    ) -> None:
        """``pending -> done``: the target already held these very bytes; nothing copied."""
        self._move(image_id, DONE, target_location=target_location, size=size, hash_algo=hash_algo)

    def done(self, image_id: str, source_deleted: bool) -> None:
        """``done``: verified, and the source deleted when that was asked for."""
        self._move(image_id, DONE, source_deleted=int(source_deleted), error_type=None, error=None)

    def failed(self, image_id: str, error_type: str, error: str) -> None:
        """``failed`` with a (secret-free) reason."""
        self._move(image_id, FAILED, error_type=error_type, error=error)

    def retry(self, image_id: str) -> None:
        """``failed -> pending``, to try a failed image again."""
        self._move(image_id, PENDING)

    def note(self, image_id: str, error_type: str, error: str) -> None:
        """Record a problem without changing the state (e.g. the source could not be deleted)."""
        with self._lock, self._tx():
            self._db.execute(
                "UPDATE images SET error_type = ?, error = ?, updated = ? WHERE image_id = ?",
                (error_type, error, time.time(), image_id),
            )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Journal {self.path} target={self.target!r}>"


def _entry(row: tuple[Any, ...]) -> Entry:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["source_deleted"] = bool(values["source_deleted"])
    return Entry(**values)
