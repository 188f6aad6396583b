"""The public entry point: :class:`Stores`, the configured set of backends."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from oslo_config import cfg

from imgstore import config as config_mod
from imgstore import telemetry
from imgstore.capabilities import Capability
from imgstore.driver import IMAGE_ID_RE, Driver, Leftover, ReadStream
from imgstore.exceptions import (
    BadConfiguration,
    BadLocation,
    ImgstoreError,
    IntegrityError,
    InvalidArgument,
    NotSupported,
    ReadOnlyStore,
    SizeCapExceeded,
    SizeMismatch,
    UnknownBackend,
)
from imgstore.inspection import Inspection, InspectionPolicy, Safety
from imgstore.location import Location, parse
from imgstore.pipeline import (
    ImageReader,
    Progress,
    new_hash,
    new_md5,
    write_image,
)
from imgstore.readahead import ReadAhead
from imgstore.scrubbing import backend_error

LOG = logging.getLogger(__name__)

DEFAULT_HASH_ALGO = "sha512"
DEFAULT_CLEANUP_AGE = 3600.0
"""Leftovers younger than this (seconds) may belong to an add still running."""


@dataclasses.dataclass(frozen=True)
class AddResult:
    """What :meth:`Stores.add` stored, and where."""

    location: str
    size: int
    checksum: str | None
    """md5 hex digest (None when md5 is turned off for FIPS)."""
    multihash: str
    hash_algo: str
    backend: str
    metadata: Mapping[str, Any]
    image_id: str
    disk_format: str | None = None
    """The disk format the inspector found (None: not inspected, or several formats)."""
    virtual_size: int | None = None
    """The virtual size of the disk the image describes, in bytes (None: unknown)."""
    safety: Safety | None = None
    """The inspector's safety checks: passed, or failed with each check named (None:
    not inspected, ``image_inspection = off``)."""

    def as_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready values."""
        out = dataclasses.asdict(self)
        out["metadata"] = dict(self.metadata)
        out["safety"] = None if self.safety is None else self.safety.as_dict()
        return out


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """A configured backend as :meth:`Stores.describe` shows it."""

    name: str
    driver: str
    capabilities: Capability
    default: bool
    schemes: tuple[str, ...]
    unusable: str | None = None
    """Why the backend could not be configured (only with ``keep_unusable``), else None."""


@dataclasses.dataclass(frozen=True)
class _Unusable:
    """A backend whose driver could not be configured, kept to be reported."""

    spec: config_mod.BackendSpec
    reason: str


@dataclasses.dataclass(frozen=True)
class CleanupOutcome:
    """One leftover :meth:`Stores.cleanup` found: ``found``, ``removed`` or ``failed``."""

    leftover: Leftover
    outcome: str
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The outcome as plain JSON-ready values."""
        item = self.leftover
        return {
            "backend": item.backend, "kind": item.kind, "name": item.name, "age": item.age,
            "size": item.size, "outcome": self.outcome, "error": self.error,
        }  # fmt: skip


def validate_image_id(image_id: object) -> str:
    """Image ids become object and file names: letters, digits, ``.``, ``_``, ``-`` only."""
    if not isinstance(image_id, str) or not IMAGE_ID_RE.fullmatch(image_id):
        raise InvalidArgument(
            f"invalid image id {str(image_id)[:80]!r}: use 1-255 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit (a UUID is typical)"
        )
    return image_id


def _what_it_is(found: Inspection | None) -> dict[str, Any]:
    """The :class:`AddResult` fields of an inspection (None: not inspected)."""
    if found is None:
        return {"disk_format": None, "virtual_size": None, "safety": None}
    return {
        "disk_format": found.disk_format,
        "virtual_size": found.virtual_size,
        "safety": found.safety,
    }


class Stores:
    """The configured backends and the operations on them.

    Build it from your own :class:`oslo_config.cfg.ConfigOpts`
    (``Stores(conf)``), from configuration files (:meth:`from_config_files`)
    or with no configuration at all (:meth:`default`).
    """

    def __init__(
        self,
        conf: cfg.ConfigOpts,
        *,
        settings: config_mod.StoreSettings | None = None,
        keep_unusable: bool = False,
    ) -> None:
        """``keep_unusable``: a backend whose driver cannot be configured (a missing
        library, a bad option, no credentials) is logged once and kept as unusable
        (:meth:`describe` says why; every operation on it raises
        :class:`BadConfiguration`) instead of failing the whole construction."""
        if settings is None:
            settings = config_mod.read_settings(conf)
        self._conf = conf
        self._size_cap = settings.image_size_cap
        self._md5 = settings.md5_checksum
        self._inspection = settings.inspection
        self.default_backend = settings.default_backend
        self._drivers: dict[str, Driver] = {}
        self._unusable: dict[str, _Unusable] = {}
        try:
            for name, spec in settings.backends.items():
                try:
                    self._drivers[name] = spec.instantiate()
                except ImgstoreError as exc:
                    if not keep_unusable:
                        raise
                    self._unusable[name] = _Unusable(spec, exc.msg)
                    LOG.error(
                        "backend %r (%s) is unusable until its configuration is fixed; "
                        "the other backends serve: %s",
                        name,
                        spec.driver_name,
                        exc.msg,
                    )
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_config_files(
        cls, *paths: str | os.PathLike[str], keep_unusable: bool = False
    ) -> Stores:
        """Stores configured by ``paths`` (e.g. an existing glance-api.conf)."""
        return cls(config_mod.config_from_files(paths), keep_unusable=keep_unusable)

    @classmethod
    def single(
        cls,
        conf: cfg.ConfigOpts,
        driver: str,
        group: str = config_mod.STORE_GROUP,
        name: str | None = None,
        keep_unusable: bool = False,
    ) -> Stores:
        """One backend of ``driver`` configured from ``[group]`` alone.

        For a private store beside the configured ones (a staging area, say):
        ``stores``/``enabled_backends`` in ``conf`` are not consulted.
        """
        settings = config_mod.read_single_settings(conf, driver, group, name)
        return cls(conf, settings=settings, keep_unusable=keep_unusable)

    @classmethod
    def default(cls) -> Stores:
        """One filesystem store in ``$IMGSTORE_DATA_DIR`` or the XDG data home."""
        return cls(config_mod.default_config())

    # -- introspection -------------------------------------------------

    @property
    def backends(self) -> list[str]:
        """The names of the configured backends (unusable ones included)."""
        return [*self._drivers, *self._unusable]

    def driver(self, backend: str | None = None) -> Driver:
        """The driver serving ``backend`` (the default when None)."""
        name = self.default_backend if backend is None else backend
        try:
            return self._drivers[name]
        except KeyError:
            unusable = self._unusable.get(name)
            if unusable is not None:
                raise BadConfiguration(f"backend {name!r} is unusable: {unusable.reason}") from None
            raise UnknownBackend(
                f"no backend named {name!r}; configured: {', '.join(self.backends)}"
            ) from None

    def capabilities(self, backend: str | None = None) -> Capability:
        """What ``backend`` can do."""
        return self.driver(backend).capabilities

    def chunk_size(self, backend: str | None = None) -> int:
        """The size of the chunks reads of ``backend`` yield (its ``*_chunk_size`` option)."""
        return self.driver(backend).chunk_size

    def describe(self) -> list[BackendInfo]:
        """Every backend with its driver, capabilities and whether it is the default."""
        usable = [
            BackendInfo(name, d.name, d.capabilities, name == self.default_backend, d.schemes)
            for name, d in self._drivers.items()
        ]
        unusable = [
            BackendInfo(
                name, u.spec.driver_class.name, Capability(0), name == self.default_backend,
                tuple(u.spec.driver_class.location_class.schemes), u.reason,
            )
            for name, u in self._unusable.items()
        ]  # fmt: skip
        return usable + unusable

    def backend_for(self, location: str | Location) -> str:
        """The name of the backend that holds ``location``."""
        loc = parse(location)
        candidates = [n for n, d in self._drivers.items() if isinstance(loc, d.location_class)]
        for name in candidates:
            if self._drivers[name].owns(loc):
                return name
        for name, u in self._unusable.items():  # it may be there: say so, not "nowhere"
            if isinstance(loc, u.spec.driver_class.location_class):
                raise BadConfiguration(
                    f"{loc.redacted()} is not in a usable backend; backend {name!r}, which "
                    f"may hold it, is unusable: {u.reason}"
                )
        if not candidates:
            raise BadLocation(
                f"no configured backend reads {loc.scheme}:// locations ({loc.redacted()})"
            )
        raise BadLocation(f"{loc.redacted()} is not inside any configured {loc.scheme} backend")

    def _resolve(self, location: str | Location, backend: str | None) -> tuple[Driver, Location]:
        if backend is not None:
            drv = self.driver(backend)
            loc = drv.parse(location)
            if not drv.owns(loc):
                raise BadLocation(f"{loc.redacted()} is not inside backend {backend!r}")
            return drv, loc
        loc = parse(location)
        return self._drivers[self.backend_for(loc)], loc

    def _wrap(self, drv: Driver, what: str) -> Callable[[BaseException], ImgstoreError]:
        doing = f"backend {drv.backend!r}: {what}"
        return lambda exc: backend_error(exc, doing, drv.secrets)

    def _call(self, drv: Driver, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            error = self._wrap(drv, what)(exc)
            if error is exc:
                raise
            raise error from exc

    def _reopen(self, drv: Driver, loc: Location, start: int, done: int, count: int) -> ReadStream:
        """A new stream of ``count`` bytes from ``start + done``, for a resumed read."""
        stream = self._call(drv, "reopening", drv.open, loc, start + done, count)
        return ReadAhead(stream, drv.read_ahead) if drv.read_ahead > 0 else stream

    # -- operations ----------------------------------------------------

    def add(
        self,
        image_id: str,
        data: Any,
        size: int | None = None,
        backend: str | None = None,
        hash_algo: str = DEFAULT_HASH_ALGO,
        progress: Progress | None = None,
        expected_disk_format: str | None = None,
        inspect: bool = False,
    ) -> AddResult:
        """Store ``data`` (file object, bytes or iterable of bytes) as ``image_id``.

        ``size`` is the declared size, or None when unknown. Returns the
        location, size, md5 ``checksum`` and ``multihash``, and what the image is
        (``disk_format``, ``virtual_size``, ``safety``: :mod:`imgstore.inspection`).
        ``expected_disk_format`` (Glance's ``disk_format``): bytes of another format
        are :class:`DiskFormatMismatch`. ``inspect``: inspect (report) even where the
        backend's ``image_inspection`` is off. On any failure nothing is left in the
        backend.
        """
        validate_image_id(image_id)
        if size is not None and (not isinstance(size, int) or size < 0):
            raise InvalidArgument(f"size must be a non-negative integer or None, not {size!r}")
        new_hash(hash_algo)
        drv = self.driver(backend)
        if Capability.WRITE not in drv.capabilities:
            raise ReadOnlyStore(f"backend {drv.backend!r} ({drv.name}) is read-only")
        describe = f"image {image_id} on backend {drv.backend!r}"
        inspector = self._policy(drv.backend, inspect).inspector(expected_disk_format, describe)
        with telemetry.measure("add", drv.backend, drv.name) as op:
            limits = self._call(drv, "reading its limits", drv.write_limits)
            if limits is not None and size is not None and size > limits.capacity(size):
                raise limits.refusal(describe, size)  # before anything is written
            writer = self._call(drv, "starting a write", drv.begin_write, image_id, size)
            result = write_image(
                data,
                writer,
                chunk_size=drv.write_chunk_size,
                size=size,
                size_cap=self._size_cap,
                hash_algo=hash_algo,
                md5=self._md5,
                progress=_counting(op, progress),
                describe=describe,
                on_backend_error=self._wrap(drv, "writing"),
                limits=limits,
                inspector=inspector,
            )
        location = result.written.location
        metadata = {"store": drv.backend, **result.written.metadata}
        found = result.inspection
        LOG.info(
            "added %s: %d bytes at %s%s", describe, result.size, location.redacted(),
            "" if found is None else f" ({found.disk_format}, safety {found.safety})",
        )  # fmt: skip
        return AddResult(
            location=str(location),
            size=result.size,
            checksum=result.checksum,
            multihash=result.multihash,
            hash_algo=hash_algo,
            backend=drv.backend,
            metadata=metadata,
            image_id=image_id,
            **_what_it_is(found),
        )

    def get(
        self,
        location: str | Location,
        offset: int = 0,
        length: int | None = None,
        backend: str | None = None,
        *,
        hash_algo: str | None = None,
        expected_multihash: str | None = None,
        expected_checksum: str | None = None,
    ) -> ImageReader:
        """Open an image, or ``length`` bytes of it from ``offset``.

        Returns a context-managed :class:`ImageReader` that iterates ``bytes``
        chunks and knows its ``size``. Given ``expected_multihash`` (with
        ``hash_algo``) or ``expected_checksum`` it raises
        :class:`ChecksumMismatch` at the end if the bytes differ.
        """
        if not isinstance(offset, int) or offset < 0:
            raise InvalidArgument(f"offset must be a non-negative integer, not {offset!r}")
        if length is not None and (not isinstance(length, int) or length < 0):
            raise InvalidArgument(f"length must be a non-negative integer or None, not {length!r}")
        if expected_multihash is not None and hash_algo is None:
            raise InvalidArgument("expected_multihash needs hash_algo")
        drv, loc = self._resolve(location, backend)
        if Capability.READ not in drv.capabilities:
            raise NotSupported(f"backend {drv.backend!r} ({drv.name}) cannot read images")
        ranged = offset != 0 or length is not None
        native = not ranged or Capability.READ_RANDOM in drv.capabilities
        op = telemetry.start("get", drv.backend, drv.name)  # ended by the reader's close
        try:
            with op.current():
                stream = self._call(
                    drv, "opening", drv.open, loc, *((offset, length) if native else (0, None))
                )
            if drv.read_ahead > 0:
                stream = ReadAhead(stream, drv.read_ahead)
            reopen = None
            if Capability.READ_RANDOM in drv.capabilities and drv.read_resumes > 0:
                reopen = functools.partial(self._reopen, drv, loc, offset)
            if ranged and not native and offset > stream.size:
                stream.close()
                raise InvalidArgument(
                    f"offset {offset} is past the end of the image ({stream.size} bytes)"
                )
            return ImageReader(
                stream,
                describe=loc.redacted(),
                skip=0 if native else offset,
                limit=None if native else length,
                hash_algo=hash_algo,
                expected_multihash=expected_multihash,
                expected_checksum=expected_checksum,
                on_error=self._wrap(drv, "reading"),
                operation=op,
                reopen=reopen,
                resumes=drv.read_resumes,
            )
        except BaseException as exc:
            op.end(exc)
            raise

    def size(self, location: str | Location, backend: str | None = None) -> int:
        """The size in bytes of the image at ``location``."""
        drv, loc = self._resolve(location, backend)
        with telemetry.measure("size", drv.backend, drv.name):
            return int(self._call(drv, "size", drv.size, loc))

    def delete(self, location: str | Location, backend: str | None = None) -> None:
        """Delete the image at ``location``; :class:`NotFound` if it is not there."""
        drv, loc = self._resolve(location, backend)
        if Capability.DELETE not in drv.capabilities:
            raise ReadOnlyStore(f"backend {drv.backend!r} ({drv.name}) cannot delete images")
        with telemetry.measure("delete", drv.backend, drv.name):
            self._call(drv, "delete", drv.delete, loc)
        LOG.info("deleted %s", loc.redacted())

    def location_for(self, image_id: str, backend: str | None = None) -> str | None:
        """Where adding ``image_id`` to ``backend`` will put it, when the driver can tell."""
        validate_image_id(image_id)
        drv = self.driver(backend)
        location = self._call(drv, "locating", drv.location_for, image_id)
        return None if location is None else str(location)

    def discard(self, image_id: str, backend: str | None = None) -> bool:
        """Remove what an interrupted add of ``image_id`` left in ``backend``, finished or not.

        Only for a caller that knows it was the one adding ``image_id`` (a
        journal says so): an image stored there by anyone else is removed too.
        Returns whether anything was removed.
        """
        validate_image_id(image_id)
        drv = self.driver(backend)
        if Capability.DELETE not in drv.capabilities:
            raise ReadOnlyStore(f"backend {drv.backend!r} ({drv.name}) cannot delete images")
        with telemetry.measure("discard", drv.backend, drv.name):
            removed = bool(self._call(drv, "discarding", drv.discard, image_id))
        if removed:
            LOG.info("discarded image %s in backend %r", image_id, drv.backend)
        return removed

    def copy(
        self,
        location: str | Location,
        to_backend: str,
        verify: bool = True,
        image_id: str | None = None,
        hash_algo: str = DEFAULT_HASH_ALGO,
        progress: Progress | None = None,
        backend: str | None = None,
        inspect: bool = False,
    ) -> AddResult:
        """Copy the image at ``location`` into ``to_backend``.

        With ``verify`` the copy is read back and its multihash compared with
        what was read from the source; on mismatch the copy is deleted and
        :class:`ChecksumMismatch` (:class:`SizeMismatch` for a short read) raised.
        The source is never modified.
        """
        drv, loc = self._resolve(location, backend)
        target = self.driver(to_backend)
        if image_id is None:
            image_id = _image_id_from(loc)
        with telemetry.measure("copy", target.backend, target.name) as op:
            result = self._copy_inside(drv, loc, target, image_id, hash_algo, progress, inspect)
            if result is None:
                with self.get(loc, backend=drv.backend) as reader:
                    result = self.add(
                        image_id,
                        reader,
                        size=reader.size,
                        backend=target.backend,
                        hash_algo=hash_algo,
                        progress=progress,
                        inspect=inspect,
                    )
            op.bytes = result.size
            if verify:
                self._verify_copy(result)
        return result

    def _policy(self, backend: str, inspect: bool) -> InspectionPolicy:
        """``backend``'s inspection policy; at least ``report`` with ``inspect``."""
        policy = self._inspection.get(backend) or InspectionPolicy()
        if inspect and policy.mode == "off":
            return InspectionPolicy("report", policy.allowed_formats)
        return policy

    def _copy_inside(
        self,
        drv: Driver,
        loc: Location,
        target: Driver,
        image_id: str,
        hash_algo: str,
        progress: Progress | None,
        inspect: bool = False,
    ) -> AddResult | None:
        """Let the target copy by itself when both backends use the same driver class.

        :meth:`Driver.copy_from` copies inside the storage (e.g. RBD clone +
        flatten) or returns None, and then the bytes are streamed as usual.
        After a copy inside the storage the source is read once here for the
        size, md5 and multihash (exactly what a streamed copy records), and
        :meth:`copy`'s read-back check compares the copy with them. On any
        failure the copy is deleted.
        """
        if type(target) is not type(drv) or Capability.WRITE not in target.capabilities:
            return None
        validate_image_id(image_id)
        multihash = new_hash(hash_algo)
        written = self._call(target, "copying", target.copy_from, drv, loc, image_id)
        if written is None:
            return None
        describe = f"image {image_id} on backend {target.backend!r}"
        inspector = self._policy(target.backend, inspect).inspector(None, describe)
        try:
            md5 = new_md5() if self._md5 else None
            with self.get(loc, backend=drv.backend) as reader:
                if self._size_cap and reader.size > self._size_cap:
                    raise SizeCapExceeded(
                        f"{loc.redacted()} has {reader.size} bytes, more than "
                        f"image_size_cap ({self._size_cap})"
                    )
                for chunk in reader:
                    multihash.update(chunk)
                    if md5 is not None:
                        md5.update(chunk)
                    if inspector is not None:
                        inspector.update(chunk)
                    if progress is not None:
                        progress(reader.bytes_read, reader.size)
                size = reader.size
            found = None if inspector is None else inspector.conclude()
        except BaseException:
            try:
                target.delete(written.location)
            except Exception:
                LOG.exception("cannot delete the copy at %s", written.location.redacted())
            raise
        LOG.info(
            "copied %s inside backend %r to %s",
            loc.redacted(),
            target.backend,
            written.location.redacted(),
        )
        return AddResult(
            location=str(written.location),
            size=size,
            checksum=md5.hexdigest() if md5 is not None else None,
            multihash=multihash.hexdigest(),
            hash_algo=hash_algo,
            backend=target.backend,
            metadata={"store": target.backend, **written.metadata},
            image_id=image_id,
            **_what_it_is(found),
        )

    def _verify_copy(self, result: AddResult) -> None:
        try:
            with self.get(
                result.location,
                backend=result.backend,
                hash_algo=result.hash_algo,
                expected_multihash=result.multihash,
            ) as reader:
                for _ in reader:
                    pass
        except IntegrityError:  # a wrong hash: the copy is not good
            LOG.error("copy at %s does not match its source; deleting it", result.location)
            self.delete(result.location, backend=result.backend)
            raise
        except Exception as exc:  # the read-back broke off: a copy nobody vouched for goes
            LOG.error("copy at %s could not be read back (%s); deleting it", result.location, exc)
            try:
                self.delete(result.location, backend=result.backend)
            except Exception as failed:  # the backend is away: the error says what happened
                LOG.error("deleting the unverified copy at %s failed: %s", result.location, failed)
            raise

    def verify(
        self,
        location: str | Location,
        hash_algo: str,
        multihash: str | None = None,
        checksum: str | None = None,
        size: int | None = None,
        backend: str | None = None,
    ) -> None:
        """Re-read the image and check it against recorded size and hashes."""
        drv, loc = self._resolve(location, backend)
        with (
            telemetry.measure("verify", drv.backend, drv.name) as op,
            self.get(
                loc,
                backend=drv.backend,
                hash_algo=hash_algo,
                expected_multihash=multihash,
                expected_checksum=checksum,
            ) as reader,
        ):
            if size is not None and reader.size != size:
                raise SizeMismatch(
                    f"{reader!r}: stored size {reader.size} differs from the recorded {size}"
                )
            for _ in reader:
                pass
            op.bytes = reader.bytes_read

    def cleanup(
        self,
        backends: Iterable[str] | None = None,
        older_than: float = DEFAULT_CLEANUP_AGE,
        remove: bool = True,
    ) -> list[CleanupOutcome]:
        """Find (and unless ``remove`` is False, remove) what interrupted adds left behind.

        Looks in ``backends`` (default: every configured one) for leftovers
        whose write started at least ``older_than`` seconds ago, so adds that
        are still running are spared. One outcome per leftover; a removal that
        fails is reported in its outcome, and the others go on.
        """
        if older_than < 0:
            raise InvalidArgument(f"older_than must be >= 0 seconds, not {older_than!r}")
        names = list(self._drivers) if backends is None else list(backends)
        outcomes: list[CleanupOutcome] = []
        for name in names:
            drv = self.driver(name)
            with telemetry.measure("cleanup", drv.backend, drv.name):
                found = self._call(
                    drv, "listing leftovers", lambda d=drv: list(d.leftovers(older_than))
                )
            for item in found:
                if not remove:
                    outcomes.append(CleanupOutcome(item, "found"))
                    continue
                try:
                    self._call(drv, "removing a leftover", drv.remove_leftover, item)
                except ImgstoreError as exc:
                    LOG.warning(
                        "backend %r: could not remove %s %s: %s", name, item.kind, item.name, exc
                    )
                    outcomes.append(CleanupOutcome(item, "failed", str(exc)))
                else:
                    LOG.info("backend %r: removed %s %s", name, item.kind, item.name)
                    outcomes.append(CleanupOutcome(item, "removed"))
        return outcomes

    def close(self) -> None:
        """Release every driver's connections."""
        for drv in getattr(self, "_drivers", {}).values():
            try:
                drv.close()
            except Exception:
                LOG.warning("closing backend %r failed", drv.backend, exc_info=True)

    def __enter__(self) -> Stores:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Stores default={self.default_backend!r} backends={self.backends}>"


def _counting(op: telemetry.Operation, progress: Progress | None) -> Progress:
    """``progress``, also telling ``op`` how many bytes went to the backend so far."""

    def report(done: int, total: int | None) -> None:
        op.bytes = done
        if progress is not None:
            progress(done, total)

    return report


def _image_id_from(location: Location) -> str:
    # a location class whose URI does not end with the id (rbd://fsid/pool/ID/snap)
    # names it in an ``image_id`` attribute
    named = getattr(location, "image_id", None)
    if isinstance(named, str):
        return validate_image_id(named)
    tail = location.to_uri().rstrip("/").rsplit("/", 1)[-1]
    return validate_image_id(tail.split("?", 1)[0])


def open_stores(config_files: Iterable[str] = (), keep_unusable: bool = False) -> Stores:
    """Stores from ``config_files``, or the embedded default when there are none."""
    files = list(config_files)
    if not files:
        return Stores.default()
    return Stores.from_config_files(*files, keep_unusable=keep_unusable)
