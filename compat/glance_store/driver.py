"""Store objects: one configured imgstore backend with glance_store's Store methods.

A :class:`Store` holds an :class:`imgstore.Stores` and a backend name; its
``add``/``get``/``get_size``/``delete`` call that Stores and translate
arguments, return shapes and exceptions. It also answers the attributes
Glance reads for ``GET /v2/info/stores/detail`` (``datadir``, ``chunk_size``,
``thin_provisioning``, ``pool``, ``url_prefix``, ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from oslo_config import cfg

import imgstore
from glance_store import exceptions
from glance_store.capabilities import BitMasks
from glance_store.location import Location, StoreLocation
from imgstore import exceptions as imgstore_exc
from imgstore.capabilities import Capability
from imgstore.location import parse as parse_location
from imgstore.scrubbing import backend_error

LOG = logging.getLogger(__name__)

# glance_store attribute -> option name, for stores whose attribute is just an option
_OPTION_ATTRIBUTES = {
    "container": "swift_store_container",
    "large_object_size": "swift_store_large_object_size",
    "large_object_chunk_size": "swift_store_large_object_chunk_size",
}


def _uri_of(location: Any) -> str:
    if isinstance(location, Location):
        return location.get_store_uri()
    if isinstance(location, StoreLocation):
        return location.get_uri()
    if isinstance(location, str):
        return location
    raise exceptions.BadStoreUri(uri=type(location).__name__)


class _VerifyingReader:
    """Hands every chunk read from ``data`` to a signature verifier, too."""

    def __init__(self, data: Any, verifier: Any) -> None:
        self._data = data
        self._verifier = verifier
        self._iter: Iterator[bytes] | None = None

    def read(self, n: int = -1) -> bytes:
        if hasattr(self._data, "read"):
            chunk = self._data.read(n)
        else:
            if self._iter is None:
                self._iter = iter(self._data)
            chunk = next(self._iter, b"")
        if chunk:
            self._verifier.update(chunk)
        return bytes(chunk)


class ImageIterator:
    """The chunks of an open image; exceptions come out as glance_store's."""

    def __init__(self, reader: imgstore.ImageReader) -> None:
        self._reader = reader
        self._chunks = iter(reader)
        self.size = reader.size

    def __iter__(self) -> ImageIterator:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except imgstore_exc.ImgstoreError as exc:
            raise exceptions.from_imgstore(exc, "get") from exc

    def __len__(self) -> int:
        return self.size

    def close(self) -> None:
        """Release the open image (also done when it is read to its end)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        self._reader.close()


class Store:
    """One backend of an :class:`imgstore.Stores`, with glance_store's Store interface.

    ``factory`` builds the Stores; :meth:`configure` calls it again, so that
    options changed since (Glance's ``set_override`` on a private config)
    apply, as glance_store's ``configure()`` re-reads them.
    """

    READ_CHUNKSIZE = 4 * 1024 * 1024
    WRITE_CHUNKSIZE = READ_CHUNKSIZE

    def __init__(
        self,
        factory: Callable[[], imgstore.Stores],
        backend: str,
        conf: cfg.ConfigOpts,
        backend_group: str | None = None,
        store_entry: str | None = None,
    ) -> None:
        self._factory = factory
        self.backend = backend
        self.conf = conf
        self.backend_group = backend_group
        self.store_entry = store_entry or backend
        self.stores = self._build()

    def _build(self) -> imgstore.Stores:
        try:
            return self._factory()
        except imgstore_exc.ImgstoreError as exc:
            raise exceptions.BadStoreConfiguration(
                store_name=self.backend_group or self.backend, reason=exc.msg
            ) from exc

    # -- glance_store's Store interface --------------------------------------------

    def configure(self, re_raise_bsc: bool = False) -> None:
        """Re-read the configuration (a new imgstore Stores for this backend)."""
        old, self.stores = self.stores, self._build()
        if old is not self.stores:
            old.close()

    def configure_add(self) -> None:
        """Nothing to do: imgstore checks the configuration when it builds the driver."""

    @property
    def driver(self) -> imgstore.driver.Driver:
        """The imgstore driver serving this backend."""
        return self.stores.driver(self.backend)

    def _info(self) -> imgstore.api.BackendInfo:
        for info in self.stores.describe():
            if info.name == self.backend:
                return info
        raise exceptions.UnknownScheme(f"Store for identifier {self.backend} not found")

    @property
    def unusable(self) -> str | None:
        """Why this backend could not be configured (it stays loaded, unusable), or None.

        glance_store's ``configure(re_raise_bsc=False)`` keeps a store that failed to
        configure, without write access, so glance-api starts and serves the others."""
        return self._info().unusable

    def _as_caller(self, context: Any) -> contextlib.AbstractContextManager[None]:
        """Act with the request's own credentials where the backend has none of its own
        (a cinder backend without service credentials, a multi-tenant swift backend:
        glance_store takes the context's token, project and service catalog); otherwise
        nothing changes."""
        if context is None or self.unusable is not None:
            return contextlib.nullcontext()
        drv = self.driver
        if not getattr(drv, "per_request", False):
            return contextlib.nullcontext()
        project = getattr(context, "project_id", None) or getattr(context, "project", None)
        return drv.credentials(  # type: ignore[attr-defined,no-any-return]
            token=getattr(context, "auth_token", None) or "",
            project_id=project or "",
            catalog=getattr(context, "service_catalog", None),
        )

    def get_schemes(self) -> tuple[str, ...]:
        """The URI schemes this store reads."""
        return tuple(self._info().schemes)

    def get_store_location_class(self) -> type[StoreLocation]:
        """The location class (one for all schemes: imgstore parses)."""
        return StoreLocation

    def is_capable(self, *capabilities: Any) -> bool:
        """Whether the backend has every one of glance_store's ``BitMasks`` given."""
        have = self.capabilities
        wanted = BitMasks(0)
        for cap in capabilities:
            wanted |= BitMasks(cap)
        if wanted & BitMasks.READ_ACCESS and Capability.READ not in have:
            return False
        if (wanted & BitMasks.READ_RANDOM) & ~BitMasks.READ_ACCESS and (
            Capability.READ_RANDOM not in have
        ):
            return False
        if wanted & BitMasks.WRITE_ACCESS and Capability.WRITE not in have:
            return False
        # WRITE_OFFSET/CHUNK/RANDOM: no imgstore driver writes at offsets
        return not (wanted & BitMasks.WRITE_RANDOM) & ~BitMasks.WRITE_ACCESS

    @property
    def capabilities(self) -> Capability:
        """imgstore's capabilities of this backend (none while it is unusable)."""
        return self._info().capabilities

    def add(
        self,
        image_id: str,
        image_file: Any,
        image_size: int | None,
        hashing_algo: str | None = None,
        context: Any = None,
        verifier: Any = None,
    ) -> tuple[Any, ...]:
        """Store an image; ``image_size`` 0 or None means unknown.

        Returns ``(uri, size, md5, multihash, metadata)`` when ``hashing_algo``
        is given, else glance_store's older ``(uri, size, md5, metadata)``.
        """
        reason = self.unusable
        if reason is not None:  # glance_store: write access removed, StoreAddDisabled
            raise exceptions.StoreAddDisabled(
                f"Adding images to store {self.backend_group or self.backend} is disabled: {reason}"
            )
        algo = hashing_algo or imgstore.api.DEFAULT_HASH_ALGO
        if algo not in hashlib.algorithms_available:
            raise exceptions.UnknownHashingAlgo(algo=algo)
        data = image_file if verifier is None else _VerifyingReader(image_file, verifier)
        try:
            with self._as_caller(context):
                result = self.stores.add(
                    str(image_id),  # glance_store takes any id and calls str() on it
                    data, size=image_size or None, backend=self.backend, hash_algo=algo,
                )  # fmt: skip
        except imgstore_exc.ImgstoreError as exc:
            raise exceptions.from_imgstore(exc, "add") from exc
        metadata = dict(result.metadata)
        if self.backend_group is None:
            metadata.pop("store", None)  # single-store glance_store reports no store id
        else:
            metadata["store"] = self.backend_group
        if hashing_algo is None:
            return result.location, result.size, result.checksum, metadata
        return result.location, result.size, result.checksum, result.multihash, metadata

    def get(
        self, location: Any, offset: int = 0, chunk_size: int | None = None, context: Any = None
    ) -> tuple[ImageIterator, int]:
        """``(chunk iterator, size)`` of ``chunk_size`` bytes (None: all) from ``offset``."""
        try:
            with self._as_caller(context):
                reader = self.stores.get(
                    _uri_of(location), offset=offset, length=chunk_size, backend=self.backend
                )
        except imgstore_exc.ImgstoreError as exc:
            raise exceptions.from_imgstore(exc, "get") from exc
        it = ImageIterator(reader)
        return it, it.size

    def get_size(self, location: Any, context: Any = None) -> int:
        """The image's size in bytes."""
        try:
            with self._as_caller(context):
                return self.stores.size(_uri_of(location), backend=self.backend)
        except imgstore_exc.ImgstoreError as exc:
            raise exceptions.from_imgstore(exc, "size") from exc

    def delete(self, location: Any, context: Any = None) -> None:
        """Delete the image."""
        try:
            with self._as_caller(context):
                self.stores.delete(_uri_of(location), backend=self.backend)
        except imgstore_exc.ImgstoreError as exc:
            raise exceptions.from_imgstore(exc, "delete") from exc

    def set_acls(
        self,
        location: Any,
        public: bool = False,
        read_tenants: Any = None,
        write_tenants: Any = None,
        context: Any = None,
    ) -> None:
        """Share the image with projects where the backend keeps ACLs (a multi-tenant
        swift backend); NotImplementedError elsewhere, as glance_store's other stores."""
        set_acls = getattr(self.driver, "set_acls", None)
        if set_acls is None:
            raise NotImplementedError
        try:
            with self._as_caller(context):
                set_acls(
                    parse_location(_uri_of(location)),
                    public=public,
                    read_tenants=list(read_tenants or ()),
                    write_tenants=list(write_tenants or ()),
                )
        except imgstore_exc.ImgstoreError as exc:
            raise exceptions.from_imgstore(exc, "set_acls") from exc

    # -- attributes Glance reads ---------------------------------------------------

    @property
    def weight(self) -> int:
        """``[<backend>] weight`` (0 for a single store)."""
        if self.backend_group is None:
            return 0
        try:
            return int(getattr(self.conf, self.backend_group).weight or 0)
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError, AttributeError):
            return 0

    @property
    def store_conf(self) -> Any:
        """The backend's option group, as glance_store's ``store_conf`` (Glance reads
        e.g. ``store_conf.cinder_volume_type`` for ``GET /v2/info/stores/detail``)."""
        return getattr(self.conf, self.backend_group or "glance_store")

    @property
    def chunk_size(self) -> int:
        """The chunk size imgstore uses for this backend."""
        return self.stores.chunk_size(self.backend)

    @property
    def thin_provisioning(self) -> bool:
        """Whether all-zero chunks are left unallocated."""
        return Capability.THIN_PROVISIONING in self.driver.capabilities

    @property
    def datadir(self) -> str | None:
        """The (first) data directory of a filesystem store."""
        dirs = getattr(self.driver, "datadirs", None)
        return dirs[0].path if dirs else None

    @property
    def url_prefix(self) -> str | None:
        """What every location of this backend starts with, as glance_store reports it.

        Glance matches a location to its backend by this prefix
        (``file://<datadir>``, ``rbd://<fsid>/<pool>/``, ``http`` ...).
        """
        if self.unusable is not None:
            return None
        drv = self.driver
        if drv.name == "cinder":  # glance_store: cinder://<backend id> (multi-store)
            return f"cinder://{self.backend_group}" if self.backend_group else "cinder://"
        if drv.name == "file":
            return f"file://{self.datadir}"
        if drv.name == "rbd":
            return f"rbd://{drv.fsid}/{drv.pool}/"  # type: ignore[attr-defined]
        if drv.name == "http":
            return "http"
        if drv.name == "s3":
            host = str(drv.conf.get("s3_store_host") or "").split("://", 1)[-1].rstrip("/")
            return f"s3://{host}/{drv.conf.get('s3_store_bucket')}"
        return None

    def is_image_associated_with_store(self, context: Any, volume_id: str) -> bool:
        """Whether Cinder volume ``volume_id`` belongs to this backend: its volume type
        is this backend's ``cinder_volume_type`` (or Cinder's default type when none is
        set). Glance asks it on each image GET to rewrite a legacy ``cinder://<volume>``
        location to ``cinder://<backend>/<volume>``; any failure is False (as
        glance_store), logged."""
        if self.unusable is not None:
            return False
        drv = self.driver
        belongs = getattr(drv, "volume_belongs", None)
        if belongs is None:
            return False
        try:
            with self._as_caller(context):
                return bool(belongs(volume_id))
        except Exception as exc:  # a driver's own call: its error is scrubbed here
            clean = backend_error(exc, f"checking volume {volume_id}", drv.secrets)
            LOG.warning(
                "store %s: cannot tell whether volume %s is its own: %s",
                self.backend_group or self.backend,
                volume_id,
                clean.msg,
            )
            return False

    def __getattr__(self, name: str) -> Any:
        # the remaining attributes Glance reads are options (s3_store_*, swift's container...)
        if name.startswith("_") or name in ("stores", "backend"):
            raise AttributeError(name)
        option = _OPTION_ATTRIBUTES.get(name, name)
        drv = self.stores.driver(self.backend)
        if hasattr(drv, name):
            return getattr(drv, name)
        value = drv.conf.get(option, _MISSING)
        if value is _MISSING:
            raise AttributeError(name)
        return value

    def __repr__(self) -> str:
        return f"<glance_store Store {self.backend_group or self.backend} ({self.store_entry})>"


_MISSING = object()
