"""The conformance suite against the gridfs driver and a real MongoDB-protocol server.

The server is SecantusDB from ``tests/functional/services/mongo.py`` (started by
``python -m tests.functional.services up mongo``), with authentication on: the
configured URI carries a password, which the suite checks never shows.

Each test gets a database of its own, dropped afterwards. The listing is every
``<bucket>.files`` id and every distinct ``files_id`` in ``<bucket>.chunks``, so
an orphaned chunk or a files document left by a failed add is caught.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from imgstore import Stores
from imgstore.testing import ConformanceTests, StoreUnderTest
from tests.functional.conftest import require_service

pytestmark = pytest.mark.functional


def gridfs_listing(client: pymongo.MongoClient[Any], db: str, bucket: str) -> set[str]:
    """Every GridFS entry of ``bucket``: files documents and chunk owners, told apart."""
    database = client[db]
    files = {f"files:{d['_id']}" for d in database[f"{bucket}.files"].find({}, {"_id": 1})}
    chunks = {f"chunks:{i}" for i in database[f"{bucket}.chunks"].distinct("files_id")}
    return files | chunks


def write_config(path: Path, options: dict[str, Any]) -> Path:
    """A multi-store config with one gridfs backend named ``mongo``."""
    lines = [
        "[DEFAULT]",
        "enabled_backends = mongo:gridfs",
        "[glance_store]",
        "default_backend = mongo",
        *(f"{k} = {v}" for k, v in options.items() if k in ("image_size_cap",)),
        "[mongo]",
        *(f"{k} = {v}" for k, v in options.items() if k != "image_size_cap"),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def mongo() -> dict[str, Any]:
    """The details of the running server (skip, or fail in CI, when it is down)."""
    return require_service("mongo")


class TestGridFSConformance(ConformanceTests):
    """Default GridFS chunks (255 KiB; the core streams 16 of them at a time)."""

    extra: dict[str, Any] = {}  # noqa: RUF012 - read-only class default
    bucket = "fs"

    @pytest.fixture
    def store_under_test(self, tmp_path: Path, mongo: dict[str, Any]) -> Iterator[StoreUnderTest]:
        db = f"imgstore_{uuid.uuid4().hex[:12]}"
        options = {
            "mongodb_store_uri": mongo["uri_with_password"],
            "mongodb_store_db": db,
            "mongodb_store_bucket": self.bucket,
            "mongodb_store_server_selection_timeout": 10,
            **self.extra,
        }
        configs = iter(range(1000))

        def make_stores(overrides: dict[str, Any]) -> Stores:
            conf = tmp_path / f"imgstore-{next(configs)}.conf"
            return Stores.from_config_files(write_config(conf, {**options, **overrides}))

        admin: pymongo.MongoClient[Any] = pymongo.MongoClient(
            mongo["uri_with_password"], serverSelectionTimeoutMS=10_000
        )
        try:
            with make_stores({}) as stores:
                yield StoreUnderTest(
                    stores=stores,
                    backend="mongo",
                    secrets=[mongo["password"], mongo["uri_with_password"]],
                    listing=lambda: gridfs_listing(admin, db, self.bucket),
                    make_stores=make_stores,
                )
        finally:
            admin.drop_database(db)
            admin.close()


class TestGridFSConformanceOddChunks(TestGridFSConformance):
    """Odd GridFS chunks (65521 bytes, a prime; the core streams 16 of them) in a bucket
    of another name: no chunk edge lines up with a power of two or with the test
    sources' pieces. (1 KiB chunks were tried: 64 MiB is then 65536 documents and
    takes minutes on this server; the edges are crossed the same way with these.)"""

    extra = {"mongodb_store_chunk_size": 65521}  # noqa: RUF012
    bucket = "images"
