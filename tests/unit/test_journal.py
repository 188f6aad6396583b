"""The migration journal's database layer: one schema in a sqlite file (standard
library) and through SQLAlchemy/Alembic, upgrades of older journals, leases, and the
errors of a bad journal URL. The same checks against MariaDB and PostgreSQL are in
tests/functional/test_journal_servers.py."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from imgstore.exceptions import BadConfiguration, InvalidArgument
from imgstore.journal import COPYING, DONE, PENDING, Journal
from imgstore.journal_db import HEAD, ServerDatabase

sa = pytest.importorskip("sqlalchemy", reason="imgstore[distributed] is not installed")

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    image_id TEXT PRIMARY KEY, source TEXT NOT NULL, state TEXT NOT NULL,
    target_location TEXT, attempts INTEGER NOT NULL DEFAULT 0, size INTEGER,
    checksum TEXT, hash_algo TEXT, multihash TEXT,
    source_deleted INTEGER NOT NULL DEFAULT 0, error_type TEXT, error TEXT,
    updated REAL NOT NULL
);
INSERT INTO meta VALUES ('schema', '1'), ('target', 'dst');
INSERT INTO images (image_id, source, state, attempts, updated)
    VALUES ('img-1', 'file:///a', 'copying', 2, 1.0);
"""
"""A journal as imgstore wrote it before the journal had Alembic revisions."""


def schema_of(path: Path) -> dict[str, Any]:
    """Tables with their columns (name, declared type, not null, default, primary key),
    indexes and the Alembic revision of a sqlite file."""
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {
            "tables": {
                t: [tuple(c[1:]) for c in db.execute(f"PRAGMA table_info({t})")]
                for t in sorted(tables)
            },
            "indexes": sorted(
                r[0]
                for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")
                if not r[0].startswith("sqlite_autoindex")
            ),
            "revision": db.execute("SELECT version_num FROM alembic_version").fetchall(),
        }
    finally:
        db.close()


def test_a_sqlite_file_has_the_schema_alembic_makes(tmp_path: Path) -> None:
    """The standard-library journal and Alembic's revisions make the same tables."""
    Journal(tmp_path / "stdlib.journal", "dst").close()
    Journal(f"sqlite:///{tmp_path / 'alembic.journal'}", "dst").close()
    stdlib = schema_of(tmp_path / "stdlib.journal")
    alembic = schema_of(tmp_path / "alembic.journal")
    assert stdlib == alembic
    assert stdlib["revision"] == [(HEAD,)]
    assert {"lease_owner", "lease_expires", "worker"} <= {c[0] for c in stdlib["tables"]["images"]}


def test_alembic_takes_up_a_journal_the_standard_library_made(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with Journal(path, "dst") as j:
        j.add("img-1", "file:///a")
    with Journal(f"sqlite:///{path}", "dst") as j:  # Alembic: already at head, no change
        assert j.get("img-1") is not None
    assert schema_of(path)["revision"] == [(HEAD,)]


@pytest.mark.parametrize("opener", ["stdlib", "alembic"])
def test_a_journal_from_before_the_revisions_is_upgraded_in_place(
    tmp_path: Path, opener: str
) -> None:
    path = tmp_path / "old.journal"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.close()
    if opener == "alembic":  # Alembic needs to be told where an unversioned journal is
        db = sqlite3.connect(path)
        db.executescript(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY);"
            "INSERT INTO alembic_version VALUES ('j0001');"
        )
        db.close()
    spec = str(path) if opener == "stdlib" else f"sqlite:///{path}"
    with Journal(spec, "dst") as j:
        entry = j.get("img-1")
        assert entry is not None
        assert (entry.state, entry.attempts, entry.lease_owner) == (COPYING, 2, None)
        assert j.claim("img-1", 30)
    assert schema_of(path)["revision"] == [(HEAD,)]


def test_a_journal_of_a_newer_imgstore_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    Journal(path, "dst").close()
    db = sqlite3.connect(path)
    db.execute("UPDATE alembic_version SET version_num = 'j9999'")
    db.commit()
    db.close()
    with pytest.raises(InvalidArgument, match=r"j9999.*newer"):
        Journal(path, "dst")


def test_leases_keep_two_workers_off_one_image(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with Journal(path, "dst", worker="a") as a, Journal(path, "dst", worker="b") as b:
        a.add("img", "file:///x")
        assert a.claim("img", 30)
        assert a.claim("img", 30)  # renewing one's own lease
        assert not b.claim("img", 30)
        entry = b.get("img")
        assert entry is not None and entry.lease_owner == "a"
        a.release("img")
        assert b.claim("img", 0.2)
        assert not a.claim("img", 30)
        time.sleep(0.3)  # b's lease lapses: b died, a takes the image up
        assert a.claim("img", 30)
        b.release("img")  # b holds no lease any more: a's stays
        assert not b.claim("img", 30)


def test_one_claim_wins_when_many_race(tmp_path: Path) -> None:
    path = tmp_path / "j"
    Journal(path, "dst").close()
    journals = [Journal(path, "dst", worker=f"w{i}") for i in range(8)]
    journals[0].add("img", "file:///x")
    start = threading.Barrier(len(journals))
    won: list[str] = []

    def race(j: Journal) -> None:
        start.wait()
        if j.claim("img", 30):
            won.append(j.worker)

    threads = [threading.Thread(target=race, args=(j,)) for j in journals]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for j in journals:
        j.close()
    assert len(won) == 1


def test_a_state_change_happens_once_whoever_tries(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with Journal(path, "dst", worker="a") as a, Journal(path, "dst", worker="b") as b:
        a.add("img", "file:///x")
        a.start_copy("img", "file:///t")
        a.verified("img", "file:///t", 1, None, "sha512", "00")
        a.done("img", source_deleted=False)
        with pytest.raises(InvalidArgument, match="cannot go from done to done"):
            b.done("img", source_deleted=False)
        entry = a.get("img")
        assert entry is not None
        assert (entry.state, entry.worker, entry.attempts) == (DONE, "a", 1)
        assert entry.finished is not None
        assert a.add("img", "file:///x").state == DONE  # adding again changes nothing
        b.add("other", "file:///y")
        assert b.get("other") is not None and b.get("other").state == PENDING  # type: ignore[union-attr]


def test_a_bad_journal_url_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgument, match="not a database URL") as err:
        Journal("mysql+pymysql://u:hunter2@127.0.0.1:port/db", "dst")
    with pytest.raises(BadConfiguration, match="no database driver") as err2:
        Journal("nosuchdb://u:hunter2@127.0.0.1/db", "dst")
    with pytest.raises(InvalidArgument, match="unexpected keyword argument 'nosuch'") as err3:
        Journal("mysql+pymysql://u:hunter2@127.0.0.1:1/db?nosuch=1", "dst")
    for e in (err, err2, err3):
        assert "hunter2" not in str(e.value)


def test_a_journal_url_without_sqlalchemy_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # as if the extra were not installed
    with pytest.raises(BadConfiguration, match=r"imgstore\[distributed\]"):
        ServerDatabase("postgresql+psycopg://u:p@127.0.0.1/db")


def test_finished_count_is_outcomes_kept_and_images_done_before(tmp_path: Path) -> None:
    with Journal(tmp_path / "j", "dst") as j:
        for n in range(4):
            j.add(f"img{n}", "file:///x")
        j.start_copy("img0", "file:///t0")
        j.verified("img0", "file:///t0", 1, None, "sha512", "00")
        j.done("img0", source_deleted=False)  # done before the run below started
        since = time.time() + 1
        assert j.finished_count(since) == (1, 0)
        j.failed("img1", "Error", "broke")
        assert j.finished_count(since) == (1, 0)  # failed, but no outcome kept yet
        j.record_outcome("img1", '{"outcome": "failed"}')
        assert j.finished_count(since) == (2, 1)
        assert j.finished_count(0) == (1, 1)  # img0 was done after "since": not counted
