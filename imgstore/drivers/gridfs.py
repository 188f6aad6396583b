"""The GridFS driver (``gridfs://<image id>``): images in MongoDB's GridFS.

An image is one GridFS file whose ``_id`` is the image id (the form Glance's
GridFS store used), in the bucket ``mongodb_store_bucket`` (``fs``: the
collections ``fs.files`` and ``fs.chunks``) of ``mongodb_store_db``.

* ``add`` writes the chunks as they stream in (one ``insert_many`` per core
  chunk, never holding the image) and the ``files`` document last, so a
  reader never sees a half-written image. The unique ``(files_id, n)`` index
  on the chunks and the ``_id`` of the files document make a second add of
  the same id fail with :class:`Duplicate`, also when two adds race.
* Any failure removes what this writer wrote. The driver writes the GridFS
  documents itself (standard GridFS layout, read back with pymongo's
  ``GridFSBucket``) rather than through ``GridIn``, because ``GridIn.abort``
  deletes *every* chunk and the files document with that id: after losing a
  race it would destroy the image of the writer that won. Here a writer
  knows exactly which chunks it inserted, and it owns the id's chunks only
  once its chunk 0 is in (the unique index lets only one writer have it).
  Chunks are removed highest first and chunk 0 last, so no other writer can
  start on the id before the last chunk of the old one is gone.
* ``get`` opens a ``GridFSBucket`` download stream and seeks (READ_RANDOM);
  ``size`` is the files document's ``length``; ``delete`` removes the files
  document, then the chunks.
* A server that cannot be reached raises :class:`BackendUnavailable` once
  ``mongodb_store_server_selection_timeout`` has passed.

``mongodb_store_uri`` may carry a password: it is never put in a location, a
log line, an exception message or a repr (:meth:`GridFSDriver.secrets`).
"""

from __future__ import annotations

import datetime
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

from oslo_config import cfg

from imgstore.driver import IMAGE_ID_RE, Driver, Leftover, RangeStream, Writer, Written, clamp_range
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    BadConfiguration,
    BadLocation,
    ImgstoreError,
    IntegrityError,
    NotFound,
    StorageFull,
)
from imgstore.location import Location, after_scheme, redact_uri, register, shown

LOG = logging.getLogger(__name__)

SCHEME = "gridfs"
DEFAULT_GRIDFS_CHUNK = 255 * 1024
"""The GridFS default chunk size (pymongo's ``DEFAULT_CHUNK_SIZE``)."""
MAX_GRIDFS_CHUNK = 15 * 1024 * 1024
"""A chunk document must stay under MongoDB's 16 MiB BSON limit."""
READ_AHEAD_BYTES = 16 * 1024 * 1024
WRITING_FIELD = "imgstore_writing"
"""Set on chunk 0 while an add runs (its start time); cleared when the image is complete."""
TARGET_CORE_CHUNK = 4 * 1024 * 1024
"""The core's chunk: this many bytes of whole GridFS chunks (up to 16), one ``insert_many``
each (pymongo splits a message above the server's limit itself)."""
MAX_CHUNKS_PER_CORE_CHUNK = 16

_AUTH_CODES = frozenset({13, 18})  # Unauthorized, AuthenticationFailed
_AUTH_FAILURE_RE = re.compile(r"'code': 18\b|'codeName': 'AuthenticationFailed'")
_DUPLICATE_CODES = frozenset({11000, 11001, 12582})
_NO_SPACE_CODES = frozenset({14031})  # OutOfDiskSpace


@register
class GridFSLocation(Location):
    """``gridfs://<image id>``: the GridFS file whose ``_id`` is the image id."""

    schemes = (SCHEME,)

    def __init__(self, file_id: str) -> None:
        if not isinstance(file_id, str) or not IMAGE_ID_RE.fullmatch(file_id):
            raise BadLocation(
                f"a gridfs location needs a file id of 1-255 letters, digits, '.', '_' or '-', "
                f"not {shown(file_id)[:80]!r}"
            )
        self.file_id = file_id

    @classmethod
    def from_uri(cls, uri: str) -> GridFSLocation:
        rest = after_scheme(uri, SCHEME)
        if not IMAGE_ID_RE.fullmatch(rest):
            raise BadLocation(
                f"malformed gridfs location {shown(uri)!r}: expected "
                "gridfs://<file id> with no host, path, query or credentials"
            )
        return cls(rest)

    def to_uri(self) -> str:
        return f"{SCHEME}://{self.file_id}"


def uri_secrets(uri: str | None) -> list[str]:
    """The parts of a MongoDB URI that must never be shown: the URI and its password."""
    if not uri:
        return []
    found = [uri]
    try:
        netloc = urllib.parse.urlsplit(uri).netloc
    except ValueError:
        netloc = uri.split("://", 1)[-1].split("/", 1)[0]
    if "@" in netloc:
        userinfo = netloc.rpartition("@")[0]
        _user, sep, password = userinfo.partition(":")
        if sep and password:
            found += [password, urllib.parse.unquote(password), urllib.parse.unquote_plus(password)]
    return sorted({s for s in found if s}, key=len, reverse=True)


class GridFSDriver(Driver):
    """Stores images as GridFS files in a MongoDB (wire-protocol) database."""

    name = SCHEME
    location_class = GridFSLocation

    @classmethod
    def options(cls) -> list[cfg.Opt]:
        return [
            cfg.StrOpt(
                "mongodb_store_uri",
                secret=True,
                help="MongoDB connection URI, e.g. "
                "'mongodb://user:password@db.example.com:27017/glance?authSource=admin'. "
                "It may hold a password; it is never shown in locations, logs or errors.",
            ),
            cfg.StrOpt(
                "mongodb_store_db",
                help="Database holding the GridFS bucket; default: the URI's database.",
            ),
            cfg.StrOpt(
                "mongodb_store_bucket",
                default="fs",
                help="GridFS bucket name: images go to <bucket>.files and <bucket>.chunks.",
            ),
            cfg.IntOpt(
                "mongodb_store_chunk_size",
                default=DEFAULT_GRIDFS_CHUNK,
                min=1024,
                max=MAX_GRIDFS_CHUNK,
                help="Bytes per GridFS chunk document of new images (GridFS default 255 KiB). "
                "The core streams a multiple of it (up to 16 chunks, about 4 MiB) at a time.",
            ),
            cfg.FloatOpt(
                "mongodb_store_server_selection_timeout",
                default=10.0,
                min=0.1,
                help="Seconds to wait for a usable server before an operation fails "
                "with BackendUnavailable (pymongo's serverSelectionTimeoutMS).",
            ),
            cfg.FloatOpt(
                "mongodb_store_connect_timeout",
                default=10.0,
                min=0.1,
                help="Seconds to open a connection (pymongo's connectTimeoutMS).",
            ),
            cfg.FloatOpt(
                "mongodb_store_socket_timeout",
                default=120.0,
                min=0,
                help="Seconds to wait for a reply on an open connection; 0 waits for ever "
                "(pymongo's socketTimeoutMS).",
            ),
        ]

    def configure(self) -> None:
        import pymongo
        from pymongo.errors import ConfigurationError, InvalidURI

        conf = self.conf
        uri = conf.mongodb_store_uri
        self._secrets = uri_secrets(uri)
        self.require("mongodb_store_uri")
        bucket = (conf.mongodb_store_bucket or "").strip()
        if not bucket or "$" in bucket or "\x00" in bucket:
            raise BadConfiguration(f"backend {self.backend!r}: bad mongodb_store_bucket {bucket!r}")
        self.gridfs_chunk = int(conf.mongodb_store_chunk_size)
        per_core = max(1, min(MAX_CHUNKS_PER_CORE_CHUNK, TARGET_CORE_CHUNK // self.gridfs_chunk))
        self.chunk_size = self.gridfs_chunk * per_core
        # pymongo reads one batch, then waits for the caller: keep ~16 MiB in flight
        self.read_ahead = max(2, min(64, READ_AHEAD_BYTES // self.gridfs_chunk))
        socket_timeout = float(conf.mongodb_store_socket_timeout)
        try:
            self.client: Any = pymongo.MongoClient(
                uri,
                serverSelectionTimeoutMS=int(conf.mongodb_store_server_selection_timeout * 1000),
                connectTimeoutMS=int(conf.mongodb_store_connect_timeout * 1000),
                socketTimeoutMS=int(socket_timeout * 1000) if socket_timeout else None,
                appname="imgstore",
                connect=False,
            )
        except (ConfigurationError, InvalidURI, ValueError, TypeError) as exc:
            raise BadConfiguration(
                f"backend {self.backend!r}: bad mongodb_store_uri {redact_uri(uri)!r}: {exc}"
            ) from None
        try:
            db_name = conf.mongodb_store_db
            self.db = self.client[db_name] if db_name else self.client.get_default_database()
        except ConfigurationError:
            self.client.close()
            raise BadConfiguration(
                f"backend {self.backend!r}: set mongodb_store_db or name a database "
                "in mongodb_store_uri"
            ) from None
        except (pymongo.errors.InvalidName, ValueError, TypeError) as exc:
            self.client.close()
            raise BadConfiguration(f"backend {self.backend!r}: bad database name: {exc}") from None
        self.bucket_name = bucket
        self.files = self.db[f"{bucket}.files"]
        self.chunks = self.db[f"{bucket}.chunks"]
        self._indexes_ready = False
        self._index_lock = threading.Lock()

    def secrets(self) -> list[str]:
        return list(self._secrets)

    def __repr__(self) -> str:
        return f"<GridFSDriver backend={self.backend!r} bucket={self.bucket_name!r}>"

    # -- errors ------------------------------------------------------------

    chain_errors = False

    def library_errors(self) -> tuple[type[BaseException], ...]:
        from pymongo.errors import PyMongoError

        return (PyMongoError,)

    def classify_error(self, exc: BaseException, doing: str) -> ImgstoreError:
        """The imgstore exception for pymongo error ``exc`` while ``doing`` (the core
        scrubs its message)."""
        from gridfs.errors import CorruptGridFile, NoFile
        from pymongo import errors

        what = f"backend {self.backend!r}: {doing}"
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, NoFile):
            return NotFound(f"{what}: no such image")
        if isinstance(exc, CorruptGridFile):
            return IntegrityError(f"{what}: the GridFS file is damaged ({detail})")
        code = getattr(exc, "code", None) if isinstance(exc, errors.OperationFailure) else None
        unselected = isinstance(exc, errors.ServerSelectionTimeoutError)
        # a refused login during connection setup marks the server unusable, so
        # pymongo reports it as a selection timeout with the server's answer inside
        if code in _AUTH_CODES or (unselected and _AUTH_FAILURE_RE.search(str(exc))):
            return AuthenticationFailed(f"{what}: the server refused our credentials ({detail})")
        if unselected:
            return BackendUnavailable(f"{what}: no MongoDB server answered ({detail})")
        if isinstance(exc, (errors.ConnectionFailure, errors.NetworkTimeout)):
            return BackendUnavailable(f"{what}: {detail}")
        if code in _NO_SPACE_CODES:
            return StorageFull(f"{what}: {detail}")
        if isinstance(exc, errors.ConfigurationError):
            return BadConfiguration(f"{what}: {detail}")
        return BackendError(f"{what}: {detail}")

    # -- helpers -----------------------------------------------------------

    def _file_id(self, location: Location) -> str:
        assert isinstance(location, GridFSLocation)
        return location.file_id

    def ensure_indexes(self) -> None:
        """The GridFS indexes; the unique ``(files_id, n)`` one is what makes Duplicate safe."""
        with self._index_lock:
            if self._indexes_ready:
                return
            for coll, keys, unique in (
                (self.files, [("filename", 1), ("uploadDate", 1)], False),
                (self.chunks, [("files_id", 1), ("n", 1)], True),
            ):
                existing = self.call_mapped(
                    "listing the GridFS indexes",
                    lambda c=coll: [dict(i) for i in c.list_indexes()],
                )
                match = [i for i in existing if list(i["key"].items()) == keys]
                if unique and match and not match[0].get("unique"):
                    raise BackendError(
                        f"backend {self.backend!r}: the index {keys} on {coll.name} is not "
                        "unique; duplicate adds could not be detected"
                    )
                if not match:
                    self.call_mapped(
                        "creating the GridFS indexes", coll.create_index, keys, unique=unique
                    )
            self._indexes_ready = True

    def remove_chunks(self, file_id: str) -> None:
        """Delete every chunk of ``file_id``, chunk 0 last.

        Only called by the holder of chunk 0. While chunk 0 exists no other writer
        can begin the id (its chunk 0 would collide), so removing it last means no
        other writer's chunk is ever hit.
        """
        self.chunks.delete_many({"files_id": file_id, "n": {"$gt": 0}})
        self.chunks.delete_one({"files_id": file_id, "n": 0})

    # -- operations --------------------------------------------------------

    def begin_write(self, image_id: str, size: int | None) -> Writer:
        self.ensure_indexes()
        found = self.call_mapped(
            f"looking up image {image_id}",
            self.files.find_one,
            {"_id": image_id},
            projection={"_id": 1},
        )
        if found is not None:
            raise self.duplicate(image_id)
        return GridFSWriter(self, image_id)

    def open(self, location: Location, offset: int, length: int | None) -> RangeStream:
        from gridfs import GridFSBucket
        from pymongo.errors import PyMongoError

        bucket = GridFSBucket(self.db, bucket_name=self.bucket_name)
        doing = f"opening {location.redacted()}"
        grid_out = self.call_mapped(doing, bucket.open_download_stream, self._file_id(location))
        try:
            start, count = clamp_range(int(grid_out.length), offset, length)
            if start:
                self.call_mapped(doing, grid_out.seek, start)
        except BaseException:
            grid_out.close()
            raise

        def read(_at: int, _n: int) -> bytes:  # a whole GridFS chunk: the range cuts it
            try:
                data: bytes = grid_out.readchunk()
            except PyMongoError as exc:  # a damaged file (CorruptGridFile) among them
                raise self.map_error(exc, f"reading {location.redacted()}") from None
            return data

        return RangeStream(
            count, read, self.chunk_size, release=grid_out.close, name="GridFSStream"
        )

    def size(self, location: Location) -> int:
        doc = self.call_mapped(
            f"reading the size of {location.redacted()}",
            self.files.find_one,
            {"_id": self._file_id(location)},
            projection={"length": 1},
        )
        if doc is None:
            raise NotFound(f"no image at {location.redacted()}")
        return int(doc["length"])

    def delete(self, location: Location) -> None:
        file_id = self._file_id(location)
        doc = self.call_mapped(
            f"deleting {location.redacted()}",
            self.files.find_one_and_delete,
            {"_id": file_id},
            projection={"length": 1},
        )
        if doc is None:
            # the chunks of an id without files document belong to an add in progress
            raise NotFound(f"no image at {location.redacted()}")
        if int(doc.get("length", 0)) > 0:  # an empty file has no chunks: touch none
            self.call_mapped(
                f"deleting the chunks of {location.redacted()}", self.remove_chunks, file_id
            )

    def leftovers(self, older_than: float) -> Iterator[Leftover]:
        """Chunks of adds that never got their files document.

        Two kinds, both unreadable by any GridFS reader: chunks under a chunk 0
        that a writer marked with its start time (``imgstore_writing``, cleared
        once the files document is in), and chunks with neither a chunk 0 nor a
        files document (a write or a removal cut short, or chunks the server
        stored late, after the writer had given up). Their age is that of their
        newest chunk (from its ObjectId), so an add still writing is spared.
        Chunks under an unmarked chunk 0 are another writer's and are left alone.
        A maintenance task: it lists the ids of the chunks collection.
        """
        now = datetime.datetime.now(tz=datetime.timezone.utc).timestamp()
        owners = self.call_mapped("listing the chunks' files", self.chunks.distinct, "files_id")
        for file_id in owners:
            kind = self._unfinished(file_id)
            if kind is None:
                continue
            newest = self.call_mapped(
                "reading an unfinished add",
                self.chunks.find_one,
                {"files_id": file_id},
                projection={"_id": 1},
                sort=[("_id", -1)],
            )
            if newest is None:
                continue  # removed meanwhile
            made = getattr(newest["_id"], "generation_time", None)  # an ObjectId's, tz-aware
            listed, age = Leftover.aged(made and made.timestamp(), now, older_than)
            if listed:
                where = f"{self.bucket_name}/{file_id}"
                yield Leftover(self.backend, kind, where, age, None, (file_id, newest["_id"]))

    def _unfinished(self, file_id: Any) -> str | None:
        """``unfinished file`` or ``orphan chunks`` for leftovers under ``file_id``, else None."""
        if self.call_mapped("checking an unfinished add", self.files.find_one, {"_id": file_id}):
            return None  # a finished image
        first = self.call_mapped(
            "checking an unfinished add",
            self.chunks.find_one,
            {"files_id": file_id, "n": 0},
            projection={WRITING_FIELD: 1},
        )
        if first is None:
            return "orphan chunks"
        return "unfinished file" if WRITING_FIELD in first else None

    def remove_leftover(self, leftover: Leftover) -> None:
        file_id, newest = leftover.ref
        kind = self._unfinished(file_id)
        if kind == "unfinished file":
            self.call_mapped("removing an unfinished add", self.remove_chunks, file_id)
        elif kind == "orphan chunks":  # only what was listed: a new add's chunks are newer
            self.call_mapped(
                "removing orphan chunks",
                self.chunks.delete_many,
                {"files_id": file_id, "_id": {"$lte": newest}},
            )

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()


class GridFSWriter(Writer):
    """Writes one image's chunks as they come, then its files document."""

    def __init__(self, driver: GridFSDriver, image_id: str) -> None:
        self._driver = driver
        self._id = image_id
        self._describe = f"image {image_id}"
        self._cs = driver.gridfs_chunk
        self._pending = bytearray()
        self._total = 0
        self._inserted = 0
        """Chunks 0.._inserted-1 are in the database and ours."""
        self._unsure_first: bytes | None = None
        """Chunk 0's bytes when a network error hid whether it was inserted."""
        self._unsure_files: dict[str, Any] | None = None
        """The files document when a network error hid whether it was inserted."""

    @property
    def accepted(self) -> int:
        """Bytes of the chunks in the database (a short tail waits for the next write)."""
        return self._total - len(self._pending)

    def write(self, chunk: memoryview) -> None:
        # BSON encodes bytes only: one copy per GridFS chunk, made here (no other)
        view = chunk if chunk.format == "B" and chunk.ndim == 1 else chunk.cast("B")
        self._total += len(view)
        docs: list[bytes] = []
        if self._pending:
            take = min(self._cs - len(self._pending), len(view))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) == self._cs:
                docs.append(bytes(self._pending))
                self._pending.clear()
        while len(view) >= self._cs:
            docs.append(bytes(view[: self._cs]))
            view = view[self._cs :]
        if view:
            self._pending += view  # the core reuses its buffer: keep a copy of the tail
        self._insert(docs)

    def _insert(self, datas: list[bytes]) -> None:
        """Insert ``datas`` as the next chunks, in one ``insert_many`` (pymongo splits it
        into messages the server takes); chunk 0 carries the write marker. BSON encodes
        ``bytes`` as binary subtype 0, as ``Binary(d)`` would, without copying it again."""
        from pymongo.errors import BulkWriteError, PyMongoError

        if not datas:
            return
        docs: list[dict[str, Any]] = [
            {"files_id": self._id, "n": self._inserted + i, "data": d} for i, d in enumerate(datas)
        ]
        if self._inserted == 0:  # the marker `imgstore cleanup` looks for
            docs[0][WRITING_FIELD] = datetime.datetime.now(tz=datetime.timezone.utc)
        try:
            self._driver.chunks.insert_many(docs, ordered=True)
        except BulkWriteError as exc:
            self._inserted += int(exc.details.get("nInserted", 0))
            errors = exc.details.get("writeErrors") or []
            if any(e.get("code") in _DUPLICATE_CODES for e in errors):
                raise self._driver.duplicate(self._id) from None
            raise self._driver.map_error(exc, f"writing {self._describe}") from None
        except PyMongoError as exc:
            if self._inserted == 0:
                self._unsure_first = datas[0]
            raise self._driver.map_error(exc, f"writing {self._describe}") from None
        self._inserted += len(datas)

    def commit(self, size: int) -> Written:
        from bson.int64 import Int64
        from pymongo.errors import DuplicateKeyError, PyMongoError

        if self._pending:
            self._insert([bytes(self._pending)])
            self._pending.clear()
        doc = {
            "_id": self._id,
            "length": Int64(size),
            "chunkSize": self._cs,
            "uploadDate": datetime.datetime.now(tz=datetime.timezone.utc),
            "filename": self._id,
            "metadata": {},
        }
        try:
            self._driver.files.insert_one(dict(doc))
        except DuplicateKeyError:
            raise self._driver.duplicate(self._id) from None
        except PyMongoError as exc:
            self._unsure_files = doc
            raise self._driver.map_error(exc, f"finishing {self._describe}") from None
        try:  # the image is complete: the marker is no longer needed
            self._driver.chunks.update_one(
                {"files_id": self._id, "n": 0}, {"$unset": {WRITING_FIELD: ""}}
            )
        except PyMongoError:
            LOG.debug(
                "backend %r: could not clear the write marker of %s", self._driver.backend, self._id
            )
        return Written(GridFSLocation(self._id), {})

    def abort(self) -> None:
        self._pending.clear()
        driver = self._driver
        try:
            if (doc := self._unsure_files) is not None:
                # remove our files document if it went in: the very one we built
                driver.files.delete_one(
                    {"_id": self._id, "length": doc["length"], "uploadDate": doc["uploadDate"]}
                )
            # holding chunk 0 makes every chunk of the id ours (the unique index lets
            # no other writer begin it); when a network error hid whether our chunk 0
            # went in, it is ours if it holds our bytes
            owned = self._inserted > 0
            if not owned and self._unsure_first is not None:
                first = driver.chunks.find_one({"files_id": self._id, "n": 0})
                owned = first is not None and bytes(first["data"]) == self._unsure_first
            if owned:
                driver.remove_chunks(self._id)
        except Exception as exc:
            LOG.warning(
                "backend %r: cleanup of the failed add of %s failed; chunks may remain: %s",
                driver.backend,
                self._describe,
                driver.map_error(exc, "cleaning up"),
            )
