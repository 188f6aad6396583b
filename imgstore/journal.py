"""The journal of a migration: one row per image and its state, in a sqlite file or in
a database server (MariaDB, PostgreSQL) that workers on many hosts share
(:mod:`imgstore.journal_db`).

Each state change is its own transaction, a compare-and-set on the image's state, so
it is stored before the next step starts, a run killed at any moment (even by SIGKILL)
finds every image in the state it had reached, and two workers can never both make
the same move::

    pending -> copying -> verified -> done
       |          |           |
       +----------+-----------+--> failed -> pending (only when retrying failures)
    pending -> done            (the target already held the same bytes)

``copying`` records the target location *before* the first byte is written:
a resumed run finds it there and removes a half-written copy before retrying.
Only secret-free text goes in: redacted source locations, locations imgstore
emitted, and error messages (which imgstore keeps free of secrets).

A worker holds a *lease* on an image while it works on it (:meth:`Journal.claim`): no
other worker claims it until the lease lapses, so an image whose worker died is taken
up again after its lease's time, and never by two workers at once.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import uuid
from typing import Any

from imgstore.exceptions import InvalidArgument
from imgstore.journal_db import Database, is_url, open_database

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
    lease_owner: str | None = None
    """The worker working on the image now (with :attr:`lease_expires`), if any."""
    lease_expires: float | None = None
    worker: str | None = None
    """The worker that finished the image (done or failed)."""
    finished: float | None = None
    outcome: str | None = None
    """The image's outcome as the report of the run that finished it shows it (JSON)."""


_COLUMNS = [f.name for f in dataclasses.fields(Entry)]
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM images"  # noqa: S608 - fixed names


def read_meta(db: Database) -> dict[str, str]:
    """The journal's ``meta`` rows: ``target``, ``created``."""
    return {str(k): str(v) for k, v in db.query("SELECT * FROM meta", {})}


def worker_name() -> str:
    """A name for this process as a journal's worker: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Journal:
    """A migration journal: a sqlite file's path (``":memory:"``: none kept) or a
    SQLAlchemy URL of a database that workers on many hosts share.

    A journal belongs to one target backend; opening it for another raises
    :class:`InvalidArgument`. Safe to use from several threads and processes.
    ``worker`` names this process in leases and in the rows it finishes.
    """

    id: str
    """The journal's own name, the same for every process that opens it (a random hex
    string chosen when it was made)."""

    @classmethod
    def existing(cls, spec: str | os.PathLike[str], worker: str | None = None) -> Journal:
        """A journal that a migration has used already, for the target it names."""
        if not is_url(spec) and not os.path.exists(spec):
            raise InvalidArgument(f"no journal at {os.fspath(spec)}")
        db = open_database(spec)
        try:
            target = read_meta(db).get("target")
        finally:
            db.close()
        if target is None:
            raise InvalidArgument(f"{db.shown}: no migration has used this journal yet")
        return cls(spec, target, worker)

    def __init__(
        self, spec: str | os.PathLike[str], target: str, worker: str | None = None
    ) -> None:
        self.db: Database = open_database(spec)
        self.path = self.db.shown
        self.target = target
        self.worker = worker or worker_name()
        try:
            self._check_meta()
        except BaseException:
            self.db.close()
            raise

    def _check_meta(self) -> None:
        # meta's columns go unnamed: "key" is a reserved word in MariaDB
        for key, value in (
            ("target", self.target),
            ("created", str(time.time())),
            ("id", uuid.uuid4().hex),  # the first to open the journal names it
        ):
            self.db.insert("INSERT INTO meta VALUES (:key, :value)", {"key": key, "value": value})
        meta = read_meta(self.db)
        self.id = meta["id"]
        if meta.get("target") != self.target:
            raise InvalidArgument(
                f"{self.path} is the journal of a migration to backend {meta.get('target')!r}, "
                f"not {self.target!r}; use another journal"
            )

    # -- reading -------------------------------------------------------------

    def get(self, image_id: str) -> Entry | None:
        """The row of ``image_id``, or None."""
        rows = self.db.query(f"{_SELECT} WHERE image_id = :id", {"id": image_id})
        return _entry(rows[0]) if rows else None

    def entries(self) -> list[Entry]:
        """Every row, by image id."""
        return [_entry(r) for r in self.db.query(f"{_SELECT} ORDER BY image_id", {})]

    def finished_count(self, since: float) -> tuple[int, int]:
        """How many images are finished, and how many of those failed: with an outcome
        kept, or done before ``since`` (a :func:`time.time`). One cheap query, for
        progress shown many times a second."""
        (row,) = self.db.query(
            "SELECT count(*), sum(CASE WHEN state = :failed THEN 1 ELSE 0 END) FROM images "
            "WHERE outcome IS NOT NULL OR (state = :done AND finished < :since)",
            {"failed": FAILED, "done": DONE, "since": since},
        )
        return int(row[0] or 0), int(row[1] or 0)

    # -- state changes ---------------------------------------------------------

    def add(self, image_id: str, source: str) -> Entry:
        """Record ``image_id`` as pending unless the journal has it; return its row."""
        self.db.insert(
            "INSERT INTO images (image_id, source, state, attempts, source_deleted, updated) "
            "VALUES (:id, :source, :state, 0, 0, :now)",
            {"id": image_id, "source": source, "state": PENDING, "now": time.time()},
        )
        entry = self.get(image_id)
        assert entry is not None
        return entry

    def _move(self, image_id: str, to: str, sets: str = "", **values: Any) -> None:
        """``image_id`` to state ``to`` if its state allows it (one compare-and-set),
        with ``values`` (and the SQL assignments ``sets``) stored in the same update."""
        sources = [state for state, allowed in TRANSITIONS.items() if to in allowed]
        names = {f"from{i}": state for i, state in enumerate(sources)}
        assignments = [
            "state = :to",
            "updated = :now",
            *(f"{k} = :{k}" for k in values),
            *([sets] if sets else []),
        ]
        if to in (DONE, FAILED):
            assignments += ["worker = :worker", "finished = :now"]
        changed = self.db.execute(
            f"UPDATE images SET {', '.join(assignments)} "  # noqa: S608 - fixed names
            f"WHERE image_id = :id AND state IN ({', '.join(':' + n for n in names)})",
            {**values, **names, "to": to, "now": time.time(), "id": image_id,
             "worker": self.worker},
        )  # fmt: skip
        if changed:
            return
        entry = self.get(image_id)
        if entry is None:
            raise InvalidArgument(f"journal: no image {image_id!r}")
        mine = entry.worker if to in (DONE, FAILED) else entry.lease_owner
        if entry.state == to and mine == self.worker:
            # this worker's own update, whose answer was lost when the database went
            # away and which was sent again (a finish records its worker; any other move
            # is made by the lease holder only)
            return
        raise InvalidArgument(f"journal: image {image_id} cannot go from {entry.state} to {to}")

    def start_copy(self, image_id: str, target_location: str | None) -> None:
        """``copying``: a copy to ``target_location`` starts now; counts one attempt."""
        self._move(
            image_id,
            COPYING,
            sets="attempts = attempts + 1",
            target_location=target_location,
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
        self._move(image_id, PENDING, outcome=None)

    def record_outcome(self, image_id: str, outcome: str) -> bool:
        """Keep the report's ``outcome`` (JSON) of an image just finished, unless one is
        kept already (a copy delivered twice is reported once); whether it was kept."""
        return bool(
            self.db.execute(
                "UPDATE images SET outcome = :outcome WHERE image_id = :id "
                "AND outcome IS NULL AND state IN (:done, :failed)",
                {"outcome": outcome, "id": image_id, "done": DONE, "failed": FAILED},
            )
        )

    def note(self, image_id: str, error_type: str, error: str) -> None:
        """Record a problem without changing the state (e.g. the source could not be deleted)."""
        self.db.execute(
            "UPDATE images SET error_type = :type, error = :error, updated = :now "
            "WHERE image_id = :id",
            {"type": error_type, "error": error, "now": time.time(), "id": image_id},
        )

    # -- leases ----------------------------------------------------------------

    def claim(self, image_id: str, seconds: float) -> bool:
        """Lease ``image_id`` to this worker for ``seconds`` (or renew its lease): True,
        unless another worker holds a lease on it that has not lapsed. Time is each
        host's clock: keep the hosts' clocks in step (NTP) well within ``seconds``."""
        now = time.time()
        return bool(
            self.db.execute(
                "UPDATE images SET lease_owner = :me, lease_expires = :until "
                "WHERE image_id = :id AND (lease_owner IS NULL OR lease_owner = :me "
                "OR lease_expires < :now)",
                {"me": self.worker, "until": now + seconds, "id": image_id, "now": now},
            )
        )

    def release(self, image_id: str) -> None:
        """Give up this worker's lease on ``image_id`` (nothing if it holds none)."""
        self.db.execute(
            "UPDATE images SET lease_owner = NULL, lease_expires = NULL "
            "WHERE image_id = :id AND lease_owner = :me",
            {"id": image_id, "me": self.worker},
        )

    def close(self) -> None:
        """Let go of the database."""
        self.db.close()

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
