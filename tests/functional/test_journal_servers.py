"""The migration journal in MariaDB and PostgreSQL (the harness's servers): the schema
made by Alembic, once, by workers starting together; leases and state changes that only
one of many racing workers wins; the errors of wrong credentials and of no server."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from imgstore.exceptions import AuthenticationFailed, BackendUnavailable, InvalidArgument
from imgstore.journal import DONE, Journal
from imgstore.journal_db import HEAD
from tests.functional.journal_databases import SERVERS, fresh_database, sqlalchemy

pytestmark = pytest.mark.functional


@pytest.fixture(params=SERVERS)
def journal_url(request: pytest.FixtureRequest) -> Any:
    with fresh_database(request.param) as url:
        yield url


def race(count: int, call: Any) -> list[Any]:
    """``call(i)`` on ``count`` threads released at once; their results (or errors)."""
    start = threading.Barrier(count)
    results: list[Any] = [None] * count

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = call(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("server", SERVERS)
def test_workers_starting_together_make_the_schema_once(server: str) -> None:
    """8 processes' worth of journals opening a new database at once, 4 times: one makes
    the schema, the others wait for it to be committed (clean run 26 caught MariaDB's
    lock let go before the commit: "Duplicate column name 'lease_owner'")."""
    for _ in range(4):
        with fresh_database(server) as url:
            journals = race(8, lambda i, url=url: Journal(url, "dst", worker=f"w{i}"))
            assert all(isinstance(j, Journal) for j in journals), journals
            for j in journals:
                j.close()
            engine = sqlalchemy.create_engine(url)
            with engine.connect() as conn:
                versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
                assert versions == [(HEAD,)]
                assert ("target", "dst") in conn.exec_driver_sql("SELECT * FROM meta").all()
            engine.dispose()


def test_one_worker_wins_a_lease_and_a_state_change(journal_url: str) -> None:
    journals = [Journal(journal_url, "dst", worker=f"w{i}") for i in range(6)]
    try:
        journals[0].add("img", "file:///src/img")
        won = race(6, lambda i: journals[i].claim("img", 30))
        assert sum(1 for w in won if w is True) == 1, won
        owner = journals[won.index(True)]
        owner.start_copy("img", "rbd://pool/img")
        owner.verified("img", "rbd://pool/img", 5, None, "sha512", "ab")
        finished = race(6, lambda i: journals[i].done("img", source_deleted=False))
        assert sum(1 for f in finished if f is None) == 1, finished
        assert all(isinstance(f, InvalidArgument) for f in finished if f is not None)
        entry = owner.get("img")
        assert entry is not None and entry.state == DONE and entry.attempts == 1
        assert entry.worker == journals[finished.index(None)].worker
        kept = race(6, lambda i: journals[i].record_outcome("img", f'{{"by": {i}}}'))
        assert kept.count(True) == 1, kept
    finally:
        for j in journals:
            j.close()


def test_a_lapsed_lease_is_taken_up(journal_url: str) -> None:
    with (
        Journal(journal_url, "dst", worker="dead") as dead,
        Journal(journal_url, "dst", worker="alive") as alive,
    ):
        dead.add("img", "file:///src/img")
        assert dead.claim("img", 0.5)
        assert not alive.claim("img", 30)
        time.sleep(0.7)
        assert alive.claim("img", 30)
        assert not dead.claim("img", 30)


def test_another_target_is_refused(journal_url: str) -> None:
    Journal(journal_url, "dst").close()
    with pytest.raises(InvalidArgument, match="not 'other'"):
        Journal(journal_url, "other")


@pytest.mark.parametrize("server", SERVERS)
def test_a_wrong_password_is_refused_clearly(server: str) -> None:
    with fresh_database(server) as url:
        parsed = sqlalchemy.engine.make_url(url)
        wrong = parsed.set(password="not-the-password").render_as_string(hide_password=False)
        with pytest.raises(AuthenticationFailed) as err:
            Journal(wrong, "dst")
    assert "not-the-password" not in str(err.value) and str(parsed.password) not in str(err.value)


@pytest.mark.parametrize("server", SERVERS)
def test_no_server_is_unavailable_at_once(server: str) -> None:
    with fresh_database(server) as url:
        parsed = sqlalchemy.engine.make_url(url)
        nowhere = parsed.set(port=1).render_as_string(hide_password=False)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as err:
            Journal(nowhere, "dst")
    assert time.monotonic() - started < 15
    assert str(parsed.password) not in str(err.value)
