"""The gridfs driver against the real server, beyond the conformance suite.

What a failed add leaves (nothing, queried in the collections themselves),
adds racing on one id (the loser never harms the winner's chunks), concurrent
adds of distinct ids, files written by bare pymongo (as Glance wrote them),
a damaged file, a wrong password and a server that is not there.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gridfs
import pymongo
import pytest

from imgstore import Stores
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendUnavailable,
    Duplicate,
    IntegrityError,
    NotFound,
    SizeMismatch,
)
from imgstore.testing.conformance import Payload, SourceFailure, drain
from tests.functional.conftest import require_service
from tests.functional.test_gridfs_conformance import write_config

pytestmark = pytest.mark.functional

CHUNK = 65536  # GridFS chunk; the core then streams 1 MiB at a time


@pytest.fixture(scope="module")
def mongo() -> dict[str, Any]:
    return require_service("mongo")


class Env:
    """A Stores with one gridfs backend ``mongo`` in a fresh database, plus raw access."""

    def __init__(self, tmp_path: Path, mongo: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.details = mongo
        self.db_name = f"imgstore_{uuid.uuid4().hex[:12]}"
        self.options: dict[str, Any] = {
            "mongodb_store_uri": mongo["uri_with_password"],
            "mongodb_store_db": self.db_name,
            "mongodb_store_chunk_size": CHUNK,
            "mongodb_store_server_selection_timeout": 10,
        }
        self.client: pymongo.MongoClient[Any] = pymongo.MongoClient(
            mongo["uri_with_password"], serverSelectionTimeoutMS=10_000
        )
        self.db = self.client[self.db_name]
        self.stores = self.make({})
        self._n = 0

    def make(self, overrides: dict[str, Any]) -> Stores:
        self._n = getattr(self, "_n", 0) + 1
        path = self.tmp_path / f"imgstore-{self._n}.conf"
        return Stores.from_config_files(write_config(path, {**self.options, **overrides}))

    def docs_for(self, image_id: str) -> tuple[int, int]:
        """(files documents, chunk documents) stored under ``image_id``."""
        return (
            self.db["fs.files"].count_documents({"_id": image_id}),
            self.db["fs.chunks"].count_documents({"files_id": image_id}),
        )

    def everything(self) -> tuple[int, int]:
        return self.db["fs.files"].count_documents({}), self.db["fs.chunks"].count_documents({})

    def close(self) -> None:
        self.stores.close()
        self.client.drop_database(self.db_name)
        self.client.close()


@pytest.fixture
def env(tmp_path: Path, mongo: dict[str, Any]) -> Iterator[Env]:
    e = Env(tmp_path, mongo)
    yield e
    e.close()


# -- failed adds leave nothing ------------------------------------------------


@pytest.mark.parametrize("fail_after", [0, 100, 3 * CHUNK + 5, 40 * CHUNK])
def test_failed_add_leaves_no_document(env: Env, fail_after: int) -> None:
    image_id = str(uuid.uuid4())
    payload = Payload(50 * CHUNK, seed=1)
    boom = SourceFailure("broken on purpose")

    def source() -> Iterator[bytes]:
        sent = 0
        for piece in payload.pieces():
            if sent + len(piece) > fail_after:
                yield piece[: fail_after - sent]
                # chunks really were in the database before the failure
                if fail_after >= 2 * env.stores.chunk_size("mongo"):
                    assert env.docs_for(image_id)[1] > 0
                raise boom
            sent += len(piece)
            yield piece

    with pytest.raises(SourceFailure):
        env.stores.add(image_id, source(), size=payload.size)
    assert env.docs_for(image_id) == (0, 0)
    assert env.everything() == (0, 0)
    # the id is free again
    result = env.stores.add(image_id, payload.pieces(), size=payload.size)
    assert env.docs_for(image_id) == (1, 50)
    assert drain(env.stores.get(result.location), keep=False).sha512 == payload.hexdigest("sha512")


def test_size_mismatch_at_commit_leaves_no_document(env: Env) -> None:
    image_id = str(uuid.uuid4())
    payload = Payload(5 * CHUNK + 3, seed=2)
    with pytest.raises(SizeMismatch):
        env.stores.add(image_id, payload.pieces(), size=payload.size + 1)
    assert env.everything() == (0, 0)


# -- one id, several writers ----------------------------------------------------


class Gate:
    """A source that stops after ``hold`` bytes until released (a slow uploader)."""

    def __init__(self, payload: Payload, hold: int) -> None:
        self.payload = payload
        self.hold = hold
        self.reached = threading.Event()
        self.release = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        held = False
        for piece in self.payload.pieces():
            if not held and sent + len(piece) > self.hold:
                cut = self.hold - sent
                yield piece[:cut]
                # the core has handed the first core chunks to the driver by now
                self.reached.set()
                assert self.release.wait(60)
                held = True
                piece = piece[cut:]
            sent += len(piece)
            yield piece


def test_racing_add_of_one_id_never_harms_the_winner(env: Env) -> None:
    """A second add of an id whose first add is still streaming (no files document
    yet, so the up-front check passes) gets Duplicate from the chunk index; it and a
    failing third add clean up without touching the first add's chunks."""
    image_id = str(uuid.uuid4())
    core = env.stores.chunk_size("mongo")
    winner = Payload(6 * core + 11, seed=3)
    gate = Gate(winner, hold=3 * core)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(env.stores.add, image_id, gate, winner.size)
        release_on_failure = threading.Timer(90, gate.release.set)
        release_on_failure.start()
        assert gate.reached.wait(60)
        deadline = time.monotonic() + 30
        while env.docs_for(image_id)[1] < 2 * core // CHUNK and time.monotonic() < deadline:
            time.sleep(0.05)
        chunks_in_flight = env.docs_for(image_id)[1]
        assert chunks_in_flight >= 2 * core // CHUNK
        assert env.docs_for(image_id)[0] == 0

        other = Payload(4 * core, seed=4)
        with pytest.raises(Duplicate):
            env.stores.add(image_id, other.pieces(), other.size)
        with pytest.raises(SourceFailure):
            env.stores.add(image_id, _failing([b"x" * 10], SourceFailure("boom")), None)
        assert env.docs_for(image_id) == (0, chunks_in_flight)

        gate.release.set()
        release_on_failure.cancel()
        result = first.result(timeout=120)
    assert env.docs_for(image_id) == (1, -(-winner.size // CHUNK))
    got = drain(env.stores.get(result.location), keep=False)
    assert got.sha512 == winner.hexdigest("sha512")


def test_empty_add_committing_first_wins_over_a_streaming_add(env: Env) -> None:
    """An empty image has no chunk to collide on: it commits while a bigger add of the
    same id streams; that add then meets the files document at commit, gets
    Duplicate, and removes the chunks it wrote (all of them were its own)."""
    image_id = str(uuid.uuid4())
    core = env.stores.chunk_size("mongo")
    streaming = Payload(4 * core + 3, seed=12)
    gate = Gate(streaming, hold=2 * core)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(env.stores.add, image_id, gate, streaming.size)
        try:
            assert gate.reached.wait(60)
            assert env.docs_for(image_id) == (0, 2 * core // CHUNK)
            empty = env.stores.add(image_id, b"", 0)
        finally:
            gate.release.set()
        with pytest.raises(Duplicate):
            first.result(timeout=120)
    assert env.docs_for(image_id) == (1, 0)
    assert env.stores.size(empty.location) == 0
    assert drain(env.stores.get(empty.location)).data == b""


def _failing(pieces: list[bytes], exc: BaseException) -> Iterator[bytes]:
    yield from pieces
    raise exc


def test_racing_adds_of_one_id(env: Env) -> None:
    """Three adds of one id in parallel (one empty): exactly one wins, nothing else stays.

    The conformance kit races adds of one id on every driver (test_race_one_id_*); this
    one also counts GridFS's documents while the winner is stored: one files document
    and exactly the winner's chunks, none of a loser's under its files_id."""
    image_id = str(uuid.uuid4())
    payloads = [Payload(0), Payload(3 * CHUNK + 1, seed=5), Payload(CHUNK, seed=6)]
    barrier = threading.Barrier(len(payloads))

    def add(p: Payload) -> str:
        barrier.wait(30)
        try:
            return env.stores.add(image_id, p.pieces(), p.size).multihash
        except Duplicate:
            return "duplicate"

    with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
        outcomes = list(pool.map(add, payloads))
    winners = [(o, p) for o, p in zip(outcomes, payloads, strict=True) if o != "duplicate"]
    assert len(winners) == 1, outcomes
    _, won = winners[0]
    assert env.docs_for(image_id) == (1, -(-won.size // CHUNK))
    got = drain(env.stores.get(f"gridfs://{image_id}"), keep=False)
    assert got.sha512 == won.hexdigest("sha512")


def test_concurrent_adds_of_distinct_ids(env: Env) -> None:
    payloads = [Payload(i * CHUNK * 7 + i, seed=20 + i, keep=False) for i in range(8)]
    ids = [str(uuid.uuid4()) for _ in payloads]
    barrier = threading.Barrier(len(payloads))

    def add(i: int) -> str:
        barrier.wait(30)
        return env.stores.add(ids[i], payloads[i].pieces(), None).location

    with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
        locations = list(pool.map(add, range(len(payloads))))
    assert locations == [f"gridfs://{i}" for i in ids]
    for image_id, payload, location in zip(ids, payloads, locations, strict=True):
        assert env.docs_for(image_id) == (1, -(-payload.size // CHUNK))
        assert env.stores.size(location) == payload.size
        assert drain(env.stores.get(location), keep=False).sha512 == payload.hexdigest("sha512")


# -- interoperability with bare pymongo GridFS -------------------------------------


def test_reads_files_written_by_pymongo_and_the_other_way(env: Env) -> None:
    """Glance wrote GridFS files with _id = image id: imgstore reads them (ranged too),
    and pymongo reads what imgstore wrote."""
    data = Payload(5 * 261120 + 17, seed=7).data
    assert data is not None
    legacy = gridfs.GridFS(env.db)  # pymongo's own writer, default 255 KiB chunks
    legacy.put(data, _id="glance-image-1")
    loc = "gridfs://glance-image-1"
    assert env.stores.size(loc) == len(data)
    assert drain(env.stores.get(loc)).data == data
    assert (
        drain(env.stores.get(loc, offset=261119, length=300_000)).data
        == data[261119 : 261119 + 300_000]
    )

    result = env.stores.add("imgstore-image-1", data, len(data))
    bucket = gridfs.GridFSBucket(env.db)
    assert bucket.open_download_stream("imgstore-image-1").read() == data
    doc = env.db["fs.files"].find_one({"_id": "imgstore-image-1"})
    assert doc is not None
    assert (doc["length"], doc["chunkSize"]) == (len(data), CHUNK)
    env.stores.delete(result.location)
    env.stores.delete(loc)
    assert env.everything() == (0, 0)


def test_damaged_file_is_an_integrity_error(env: Env) -> None:
    payload = Payload(3 * CHUNK + 9, seed=8)
    result = env.stores.add("damaged", payload.pieces(), payload.size)
    # fault injection through the real server: a chunk disappears behind imgstore's back
    env.db["fs.chunks"].delete_one({"files_id": "damaged", "n": 1})
    with pytest.raises(IntegrityError):
        drain(env.stores.get(result.location), keep=False)


def test_delete_of_an_id_without_files_document_leaves_its_chunks(env: Env) -> None:
    """Chunks without a files document are an add in progress (or a crashed one):
    delete says NotFound and leaves them, and a new add of the id is a Duplicate."""
    env.db["fs.chunks"].insert_one({"files_id": "in-flight", "n": 0, "data": b"x" * 10})
    with pytest.raises(NotFound):
        env.stores.delete("gridfs://in-flight")
    with pytest.raises(Duplicate):
        env.stores.add("in-flight", b"y" * (2 * CHUNK), None)
    assert env.docs_for("in-flight") == (0, 1)


# -- credentials and reachability ---------------------------------------------------


def test_wrong_password_is_authentication_failed(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = env.details["uri_with_password"].replace(
        env.details["uri_with_password"].split("@")[0].rsplit(":", 1)[1], "not-the-password"
    )
    assert wrong != env.details["uri_with_password"]
    with env.make(
        {"mongodb_store_uri": wrong, "mongodb_store_server_selection_timeout": 2}
    ) as stores:
        with pytest.raises(AuthenticationFailed) as raised:
            stores.size("gridfs://anything")
        with pytest.raises(AuthenticationFailed):
            stores.add(str(uuid.uuid4()), b"data", 4)
    assert "not-the-password" not in str(raised.value)
    assert "not-the-password" not in caplog.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("operation", ["add", "get", "size", "delete"])
def test_unreachable_server_is_backend_unavailable_within_the_timeout(
    env: Env, operation: str
) -> None:
    port = _free_port()  # nothing listens there once the socket is closed
    uri = f"mongodb://imgstore:pw-secret-1@127.0.0.1:{port}/?directConnection=true"
    timeout = 1.0
    with env.make(
        {
            "mongodb_store_uri": uri,
            "mongodb_store_server_selection_timeout": timeout,
            "mongodb_store_connect_timeout": timeout,
        }
    ) as stores:
        calls = {
            "add": lambda: stores.add(str(uuid.uuid4()), b"x" * 100, 100),
            "get": lambda: drain(stores.get("gridfs://some-image")),
            "size": lambda: stores.size("gridfs://some-image"),
            "delete": lambda: stores.delete("gridfs://some-image"),
        }
        start = time.monotonic()
        with pytest.raises(BackendUnavailable) as raised:
            calls[operation]()
        elapsed = time.monotonic() - start
    assert timeout * 0.9 <= elapsed < timeout + 3, elapsed
    assert "pw-secret-1" not in str(raised.value)
    assert f"127.0.0.1:{port}" in str(raised.value)


def test_driver_closes_its_client(env: Env) -> None:
    stores = env.make({})
    client = stores.driver("mongo").client  # type: ignore[attr-defined]
    with pytest.raises(NotFound):
        stores.size("gridfs://nothing-here")
    stores.close()
    with pytest.raises(pymongo.errors.InvalidOperation):
        client["x"]["y"].find_one({})


def test_sha_of_written_chunks_matches(env: Env) -> None:
    """The bytes in the chunk documents are the image, in order (no copy reuse bug)."""
    payload = Payload(4 * CHUNK + 100, seed=9)
    assert payload.data is not None
    env.stores.add("chunks", payload.file(), None)
    h = hashlib.sha256()
    for doc in env.db["fs.chunks"].find({"files_id": "chunks"}).sort("n", 1):
        h.update(doc["data"])
    assert h.hexdigest() == payload.hexdigest("sha256")
