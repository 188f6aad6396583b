"""The Ceph RBD driver (``rbd://``).

Each image is an RBD image named after the image id, in ``rbd_store_pool``,
with the chunk size as its object size. ``add`` writes it with librbd's
asynchronous writes, at most ``rbd_store_write_window`` chunks in flight (each
in a buffer of this writer's own, so the core may reuse its buffer as soon as
``write`` returns), then creates and protects the snapshot ``snap``: Nova and
Cinder clone from it, and the location names it. The snapshot is what makes
an image visible: until it exists, the location does not resolve, and on any
failure the snapshot and the image are removed.

Reads come from the snapshot, at any offset (``READ_RANDOM``), with a few
asynchronous reads ahead of the consumer. Delete refuses an image that has
clones (:class:`~imgstore.exceptions.InUse`) and leaves it intact.

Locations are glance_store's: ``rbd://<fsid>/<pool>/<image>/<snapshot>`` (each
part percent-quoted) and the legacy ``rbd://<image>`` (configured pool, no
snapshot). One cluster connection per backend is opened on first use, shared
by all threads and closed by :meth:`RbdDriver.close`.

The bindings (``rados``, ``rbd``) come from Debian's python3-rados and
python3-rbd; ``scripts/setup`` links them into the venv.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from oslo_config import cfg

from imgstore.driver import Driver, Leftover, ReadStream, Writer, Written, clamp_range
from imgstore.drivers.rbd_aio import READ_DEPTH, AioWindow, aio_read
from imgstore.drivers.rbd_close import ImageCloser
from imgstore.errnos import for_errno
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendUnavailable,
    BadConfiguration,
    BadLocation,
    ImgstoreError,
    InUse,
    NotFound,
)
from imgstore.location import Location, after_scheme, register, require_utf8, shown
from imgstore.parallel import MiB, Space

try:  # Debian's python3-rados / python3-rbd
    import rados
    import rbd
except ImportError:  # pragma: no cover - depends on the machine
    rados = None
    rbd = None

LOG = logging.getLogger(__name__)

SNAPSHOT = "snap"
"""The snapshot every added image gets (glance_store's name)."""
WRITING_KEY = "imgstore.writing"
"""Image metadata set while an add writes the image (its start time); removed on commit."""

DEFAULT_POOL = "images"
DEFAULT_CONF = "/etc/ceph/ceph.conf"
DEFAULT_CHUNK_MIB = 8
MAX_GROW_STEP = 8 * 1024 * MiB

FEATURE_NAMES = {
    "layering": "RBD_FEATURE_LAYERING",
    "striping": "RBD_FEATURE_STRIPINGV2",
    "exclusive-lock": "RBD_FEATURE_EXCLUSIVE_LOCK",
    "object-map": "RBD_FEATURE_OBJECT_MAP",
    "fast-diff": "RBD_FEATURE_FAST_DIFF",
    "deep-flatten": "RBD_FEATURE_DEEP_FLATTEN",
    "journaling": "RBD_FEATURE_JOURNALING",
}


@register
class RbdLocation(Location):
    """``rbd://<fsid>/<pool>/<image>/<snapshot>`` or the legacy ``rbd://<image>``."""

    schemes = ("rbd",)

    def __init__(
        self,
        image: str,
        fsid: str | None = None,
        pool: str | None = None,
        snapshot: str | None = None,
    ) -> None:
        parts = (fsid, pool, snapshot)
        if not isinstance(image, str) or not image:
            raise BadLocation("an rbd location needs an image name")
        if any(p is None for p in parts) and any(p is not None for p in parts):
            raise BadLocation("an rbd location has fsid, pool and snapshot, or none of them")
        if any(p == "" for p in parts):
            raise BadLocation("an rbd location cannot have empty parts")
        if fsid is None and ("/" in image or "@" in image):
            raise BadLocation(f"a one-part rbd location cannot name the image {image[:200]!r}")
        require_utf8("rbd", "parts", image, *(p for p in parts if p is not None), escaped=False)
        self.image = image
        self.fsid = fsid
        self.pool = pool
        self.snapshot = snapshot

    @property
    def image_id(self) -> str:
        """The image's name: the default id of a copy (``Stores.copy``)."""
        return self.image

    @property
    def legacy(self) -> bool:
        """Whether this is the one-part ``rbd://<image>`` form."""
        return self.fsid is None

    @classmethod
    def from_uri(cls, uri: str) -> RbdLocation:
        pieces = after_scheme(uri, "rbd").split("/")
        if any(p == "" for p in pieces):
            raise BadLocation(f"rbd location with an empty part: {shown(uri)!r}")
        if "@" in uri:
            # Ceph names cannot hold a raw '@' (it starts a snapshot name), and a
            # user:password@ prefix must not be taken for a name and shown back
            raise BadLocation(f"rbd location with an '@': {shown(uri)!r}")
        if len(pieces) == 1:
            return cls(pieces[0])  # glance_store writes and reads this form unquoted
        if len(pieces) == 4:
            fsid, pool, image, snap = (urllib.parse.unquote(p, errors="strict") for p in pieces)
            return cls(image, fsid, pool, snap)
        raise BadLocation(
            f"an rbd location has 1 or 4 parts (rbd://fsid/pool/image/snapshot): {shown(uri)!r}"
        )

    def to_uri(self) -> str:
        if self.fsid is None:
            return "rbd://" + self.image
        parts = (self.fsid, self.pool or "", self.image, self.snapshot or "")
        return "rbd://" + "/".join(urllib.parse.quote(p, safe="") for p in parts)


class RbdDriver(Driver):
    """Stores images as RBD images (with a protected snapshot) in one Ceph pool."""

    name = "rbd"
    location_class = RbdLocation

    @classmethod
    def options(cls) -> list[cfg.Opt]:
        return [
            cfg.StrOpt(
                "rbd_store_pool", default=DEFAULT_POOL, help="Ceph pool where images are stored."
            ),
            cfg.StrOpt(
                "rbd_store_user",
                help="Ceph user (without 'client.') to connect as; unset: librados' default.",
            ),
            cfg.StrOpt(
                "rbd_store_ceph_conf",
                default=DEFAULT_CONF,
                help="Path of the ceph.conf to read (monitors, keyring).",
            ),
            cfg.IntOpt(
                "rbd_store_chunk_size",
                default=DEFAULT_CHUNK_MIB,
                min=1,
                help="Size in MiB of the RADOS objects an image is striped into, and of "
                "each write; a power of two.",
            ),
            cfg.IntOpt(
                "rados_connect_timeout",
                default=30,
                help="Seconds to wait for the cluster when connecting; <= 0 leaves "
                "librados' client_mount_timeout (300 s unless ceph.conf says otherwise).",
            ),
            cfg.IntOpt(
                "rados_op_timeout",
                default=0,
                min=0,
                help="Seconds after which a single monitor or OSD request fails instead "
                "of waiting; 0 keeps ceph.conf's rados_mon/osd_op_timeout (default: wait).",
            ),
            cfg.BoolOpt(
                "rbd_thin_provisioning",
                default=False,
                help="Do not write all-zero chunks: they stay unallocated in the image.",
            ),
            cfg.ListOpt(
                "rbd_store_image_features",
                default=[],
                help="Features of new images, e.g. 'layering, exclusive-lock, object-map, "
                "fast-diff, deep-flatten'; empty: ceph.conf's rbd_default_features. "
                "'layering' is always added (snapshots are cloned).",
            ),
            cfg.IntOpt(
                "rbd_store_write_window",
                default=8,
                min=1,
                max=256,
                help="Chunks in flight while writing (asynchronous writes) and read ahead "
                "while reading; memory use is about this many chunks per transfer.",
            ),
        ]

    def configure(self) -> None:
        if rados is None or rbd is None:
            raise BadConfiguration(
                f"backend {self.backend!r}: the rbd driver needs Ceph's Python bindings: "
                "apt-get install python3-rados python3-rbd, then scripts/setup to link them "
                "into the venv (CPython 3.11)"
            )
        self.pool = str(self.conf.rbd_store_pool)
        self.user = self.conf.rbd_store_user or None
        self.conf_file = str(self.conf.rbd_store_ceph_conf)
        mib = int(self.conf.rbd_store_chunk_size)
        self.chunk_size = mib * MiB
        self.order = int(math.log2(self.chunk_size))
        if 1 << self.order != self.chunk_size:
            LOG.warning(
                "backend %r: rbd_store_chunk_size %d MiB is not a power of two; RBD objects "
                "will be %d MiB",
                self.backend,
                mib,
                (1 << self.order) // MiB,
            )
        self.connect_timeout = int(self.conf.rados_connect_timeout)
        self.op_timeout = int(self.conf.rados_op_timeout)
        self.thin = bool(self.conf.rbd_thin_provisioning)
        self.window = int(self.conf.rbd_store_write_window)
        names = [f.strip().lower() for f in self.conf.rbd_store_image_features]
        self._features = _parse_features(names, self.backend) if names else None
        self._lock = threading.Lock()
        self._cluster: Any = None
        self._fsid: str | None = None
        self._ioctxs: dict[str, Any] = {}
        self._closer = ImageCloser(self.backend)  # every image goes through it

    # -- connection ------------------------------------------------------

    def _connect(self) -> Any:
        """The backend's cluster connection, opened on first use."""
        with self._lock:
            if self._cluster is not None:
                return self._cluster
            if not os.path.isfile(self.conf_file):
                raise BadConfiguration(
                    f"backend {self.backend!r}: rbd_store_ceph_conf {self.conf_file} does not exist"
                )
            try:
                cluster = rados.Rados(conffile=self.conf_file, rados_id=self.user)
            except rados.Error as exc:
                raise BadConfiguration(
                    f"backend {self.backend!r}: cannot read {self.conf_file}: {exc}"
                ) from None
            try:
                self._set_timeouts(cluster)
                cluster.connect()
                fsid = cluster.get_fsid()
            except rados.PermissionDeniedError:
                cluster.shutdown()
                raise AuthenticationFailed(
                    f"backend {self.backend!r}: the Ceph cluster refused user "
                    f"{self.user or '(default)'}; check the keyring named in {self.conf_file}"
                ) from None
            except rados.Error as exc:
                cluster.shutdown()
                raise BackendUnavailable(
                    f"backend {self.backend!r}: cannot connect to the Ceph cluster of "
                    f"{self.conf_file}: {exc}"
                ) from None
            self._cluster, self._fsid = cluster, fsid
            LOG.debug("backend %r: connected to Ceph cluster %s", self.backend, fsid)
            return cluster

    def _set_timeouts(self, cluster: Any) -> None:
        """Rados.connect(timeout) ignores its argument: set librados' own knobs."""
        if self.connect_timeout > 0:
            cluster.conf_set("client_mount_timeout", str(self.connect_timeout))
        if self.op_timeout > 0:
            cluster.conf_set("rados_mon_op_timeout", str(self.op_timeout))
            cluster.conf_set("rados_osd_op_timeout", str(self.op_timeout))

    def fsid(self) -> str:
        """The cluster's fsid (connects if needed)."""
        self._connect()
        assert self._fsid is not None
        return self._fsid

    def _ioctx(self, pool: str, *, for_write: bool = False) -> Any:
        """An I/O context on ``pool``, opened once and shared."""
        cluster = self._connect()
        with self._lock:
            ioctx = self._ioctxs.get(pool)
            if ioctx is not None:
                return ioctx
            try:
                ioctx = cluster.open_ioctx(pool)
            except rados.ObjectNotFound:
                if for_write:
                    raise BadConfiguration(
                        f"backend {self.backend!r}: Ceph pool {pool!r} does not exist; create "
                        f"it: ceph osd pool create {pool} && rbd pool init {pool}"
                    ) from None
                raise NotFound(f"Ceph pool {pool!r} does not exist") from None
            except rados.Error as exc:
                raise self.map_error(exc, f"opening pool {pool!r}") from None
            self._ioctxs[pool] = ioctx
            return ioctx

    chain_errors = False

    def library_errors(self) -> tuple[type[BaseException], ...]:
        """What librados or librbd raise, and an aio read or write (its :class:`OSError`)."""
        return (rbd.Error, rados.Error, OSError)

    def classify_error(self, exc: BaseException, doing: str) -> ImgstoreError:
        """The imgstore error of a rados/rbd exception, of the class its errno says
        (:func:`imgstore.errnos.for_errno`: not found, exists, busy, full, refused...)."""
        where = f"backend {self.backend!r}: {doing}"
        return for_errno(getattr(exc, "errno", None))(f"{where}: {type(exc).__name__}: {exc}")

    def _features_for_new(self) -> int:
        if self._features is None:
            value = 0
            with contextlib.suppress(rados.Error, ValueError, TypeError):
                value = int(self._connect().conf_get("rbd_default_features") or 0)
            self._features = value or rbd.RBD_FEATURE_LAYERING
        return int(self._features | rbd.RBD_FEATURE_LAYERING)

    def owns(self, location: Location) -> bool:
        if not isinstance(location, RbdLocation):
            return False
        if location.legacy:
            return True
        return location.pool == self.pool and location.fsid == self.fsid()

    def _location(self, image_id: str) -> RbdLocation:
        return RbdLocation(image_id, self.fsid(), self.pool, SNAPSHOT)

    def location_for(self, image_id: str) -> Location | None:
        return self._location(image_id)

    def discard(self, image_id: str) -> bool:
        """Remove image ``image_id`` of the pool with its snapshots, finished or not."""
        ioctx = self._ioctx(self.pool, for_write=True)
        with self.mapped(f"discarding {image_id}"):
            return self._remove(ioctx, image_id)

    # -- operations ------------------------------------------------------

    def begin_write(self, image_id: str, size: int | None) -> Writer:
        ioctx = self._ioctx(self.pool, for_write=True)
        initial = size if size is not None else 0
        features = self._features_for_new()
        with self.mapped(f"creating image {image_id}"):  # an existing image: Duplicate
            rbd.RBD().create(
                ioctx, image_id, initial, order=self.order, old_format=False, features=features
            )
            try:
                image = self._closer.open(ioctx, image_id)
                try:
                    _mark_writing(image)
                except BaseException:
                    self._closer.close(image)
                    raise
            except BaseException:
                _remove_quietly(ioctx, image_id, self._closer)
                raise
        return RbdWriter(self, ioctx, image, image_id, initial)

    def _open_image(self, location: Location, snapshot: str | None, read_only: bool) -> Any:
        assert isinstance(location, RbdLocation)
        if not self.owns(location):
            raise BadLocation(f"{location.redacted()} is not in backend {self.backend!r}")
        ioctx = self._ioctx(location.pool or self.pool)
        with self.mapped(f"opening {location.redacted()}"):  # not there: NotFound
            return self._closer.open(ioctx, location.image, snapshot=snapshot, read_only=read_only)

    def open(self, location: Location, offset: int, length: int | None) -> ReadStream:
        assert isinstance(location, RbdLocation)
        image = self._open_image(location, location.snapshot, read_only=True)
        try:
            start, count = clamp_range(image.size(), offset, length)
        except BaseException:
            self._closer.close(image)
            raise
        return RbdStream(self, image, start, count)

    def size(self, location: Location) -> int:
        assert isinstance(location, RbdLocation)
        image = self._open_image(location, location.snapshot, read_only=True)
        with self._closer.closing(image):
            return int(image.size())

    def delete(self, location: Location) -> None:
        assert isinstance(location, RbdLocation)
        ioctx = self._ioctx(location.pool or self.pool)
        name, snap = location.image, location.snapshot
        shown = location.redacted()
        if snap is not None:
            # the committed image is its snapshot: without it, there is nothing here
            try:
                reader = self._open_image(location, snap, read_only=True)
            except NotFound:
                if self._finish_cut_removal(ioctx, name, shown):
                    return
                raise
            with self._closer.closing(reader), self.mapped(f"inspecting {shown}"):
                children = [f"{c['pool']}/{c['image']}" for c in reader.list_children2() if c]
                others = [s["name"] for s in reader.list_snaps() if s["name"] != snap]
            if children:
                raise InUse(
                    f"{shown} has {len(children)} clone(s) ({', '.join(sorted(children)[:5])}); "
                    "delete or flatten them first. The image was left intact"
                )
            if others:
                raise InUse(
                    f"{shown} has other snapshots ({', '.join(sorted(others)[:5])}); "
                    "remove them first. The image was left intact"
                )
            image = self._open_image(location, None, read_only=False)
            # busy: clones appeared meanwhile
            with self._closer.closing(image), self.mapped(f"removing the snapshot of {shown}"):
                if image.is_protected_snap(snap):
                    image.unprotect_snap(snap)
                image.remove_snap(snap)
        with self.mapped(f"deleting {shown}"):  # not there: NotFound
            try:
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageHasSnapshots:
                raise InUse(f"{shown} has snapshots; remove them first") from None
            except rbd.ImageBusy:
                raise InUse(f"{shown} is open elsewhere (it has watchers); retry later") from None

    def _finish_cut_removal(self, ioctx: Any, name: str, shown: str) -> bool:
        """Finish removing ``name`` if an earlier removal was cut short; whether it was."""
        with self.mapped(f"deleting {shown}"):
            try:
                with self._closer.opened(ioctx, name, read_only=True):
                    return False  # the image is there (without that snapshot): not ours
            except rbd.ImageNotFound:
                pass
            try:
                rbd.RBD().remove(ioctx, name)
            except rbd.ImageNotFound:
                return False
        LOG.info(
            "backend %r: finished removing %s (an earlier removal was cut short)",
            self.backend,
            shown,
        )
        return True

    def copy_from(
        self, source_driver: Driver, source_location: Location, image_id: str
    ) -> Written | None:
        """Clone the source's snapshot and flatten it, inside the cluster.

        Returns None (the core streams the bytes instead) when the source is
        not an rbd image of this same cluster with a snapshot to clone from,
        or when this backend's user may not read the source pool.
        """
        src = source_location
        if not isinstance(source_driver, RbdDriver) or not isinstance(src, RbdLocation):
            return None
        if src.legacy or src.snapshot is None or source_driver.fsid() != self.fsid():
            return None
        try:
            src_ioctx = self._ioctx(src.pool or self.pool)
        except (NotFound, AuthenticationFailed):
            return None
        dst_ioctx = self._ioctx(self.pool, for_write=True)
        features = self._features_for_new()
        # the copy exists already: Duplicate; the source is not there: NotFound
        with self.mapped(f"cloning {src.redacted()} into {image_id}"):
            try:
                rbd.RBD().clone(
                    src_ioctx, src.image, src.snapshot, dst_ioctx, image_id,
                    features=features, order=self.order,
                )  # fmt: skip
            except (rbd.PermissionError, rbd.InvalidArgument, rbd.FunctionNotSupported) as exc:
                LOG.info(
                    "backend %r: cannot clone (%s); copying through the client", self.backend, exc
                )
                return None
        try:
            with self.mapped(f"flattening the copy {image_id}"):
                with self._closer.opened(dst_ioctx, image_id) as image:
                    _mark_writing(image)
                    image.flatten()
                    _publish(image)
        except BaseException:
            _remove_quietly(dst_ioctx, image_id, self._closer)
            raise
        LOG.info(
            "backend %r: copied %s inside the cluster (clone + flatten)",
            self.backend,
            src.redacted(),
        )
        return Written(self._location(image_id))

    def leftovers(self, older_than: float) -> Iterator[Leftover]:
        """Images of the pool still flagged as being written (metadata ``imgstore.writing``),
        and removals cut short (listed, but they cannot be opened any more).

        Only imgstore sets that flag, and a finished add removes it last, so
        images made by others (volumes, instance disks) are never listed.
        """
        ioctx = self._ioctx(self.pool)
        with self.mapped(f"listing pool {self.pool!r}"):
            names = list(rbd.RBD().list(ioctx))
        now = time.time()
        unopenable = []
        for name in names:
            try:
                with self._closer.opened(ioctx, name, read_only=True) as image:
                    started = image.metadata_get(WRITING_KEY)
                    size = int(image.size())
            except KeyError:
                continue  # not flagged
            except rbd.ImageNotFound:
                unopenable.append(name)  # gone meanwhile, or a removal cut short
                continue
            except (rbd.Error, rados.Error) as exc:
                LOG.warning("backend %r: cannot inspect image %s: %s", self.backend, name, exc)
                continue
            listed, age = Leftover.aged(started, now, older_than)
            if listed:
                yield Leftover(
                    self.backend, "unfinished image", f"{self.pool}/{name}", age, size, name
                )
        if unopenable:
            with self.mapped(f"listing pool {self.pool!r}"):
                still = set(rbd.RBD().list(ioctx)).intersection(unopenable)
            for name in sorted(still):  # listed, yet it cannot be opened: killed mid-removal
                yield Leftover(self.backend, "removal cut short", f"{self.pool}/{name}", ref=name)

    def remove_leftover(self, leftover: Leftover) -> None:
        ioctx = self._ioctx(self.pool, for_write=True)
        name = str(leftover.ref)
        with self.mapped(f"removing {leftover.kind} {leftover.name}"):
            try:
                self._remove(ioctx, name, only_if_flagged=True)
            except rbd.ImageBusy:
                raise InUse(
                    f"backend {self.backend!r}: {leftover.kind} {leftover.name} is still in use "
                    f"({self._users(ioctx, name)}); retry once its watchers have lapsed"
                ) from None

    def _remove(self, ioctx: Any, name: str, *, only_if_flagged: bool = False) -> bool:
        """``_remove_image``, once more after breaking a stale lock of this process's own
        (see ``_break_own_stale_lock``) when librbd finds the image busy."""
        try:
            return _remove_image(ioctx, name, self._closer, only_if_flagged=only_if_flagged)
        except rbd.ImageBusy:
            if not self._break_own_stale_lock(ioctx, name):
                raise
        return _remove_image(ioctx, name, self._closer, only_if_flagged=only_if_flagged)

    def _break_own_stale_lock(self, ioctx: Any, name: str) -> bool:
        """Break the exclusive lock on image ``name`` that this process's own Ceph client
        still holds although nothing has the image open (no watcher); whether it did.

        Such a lock is left when a writer's close cannot reach a stalled OSD: the lock
        request sent before the stall is granted once the OSD runs again, after the
        client gave it up. librbd breaks a lock whose owner has no watch only after
        blocklisting that owner, and it will not blocklist its own client, so removal
        fails with EBUSY for as long as this process lives. A second, short-lived client
        with ``rbd_blocklist_on_break_lock = false`` breaks it (blocklisting our own
        client would cut every image this process has open).
        """
        own = str(self._connect().get_addrs())
        try:
            with self._closer.opened(ioctx, name, read_only=True) as image:
                if list(image.watchers_list()):
                    return False  # open somewhere: not stale
        except rbd.ImageNotFound:
            # a removal cut short whose killed client still watches the image: its watch
            # lapses by itself (the caller reports the image in use, and is retried)
            return False
        helper = rados.Rados(conffile=self.conf_file, rados_id=self.user)
        try:
            helper.conf_set("rbd_blocklist_on_break_lock", "false")
            self._set_timeouts(helper)
            helper.connect()
            helper_ioctx = helper.open_ioctx(ioctx.get_pool_name())
            try:
                # opened for writing: a read-only image lists no lock owners
                with self._closer.opened(helper_ioctx, name) as image:
                    try:
                        owners = [str(o["owner"]) for o in image.lock_get_owners()]
                    except rbd.InvalidArgument:
                        owners = []  # not locked
                    if own not in owners:
                        return False
                    image.lock_break(rbd.RBD_LOCK_MODE_EXCLUSIVE, own)
            finally:
                helper_ioctx.close()
        finally:
            helper.shutdown()
        LOG.warning(
            "backend %r: broke the stale exclusive lock this process held on image %s "
            "(left by a writer that could not reach the cluster)",
            self.backend,
            name,
        )
        return True

    def _users(self, ioctx: Any, name: str) -> str:
        """Who watches and who locks image ``name`` (for an error message): client ids
        and addresses, this process's own client marked."""
        try:
            cluster = self._cluster
            own = int(cluster.get_instance_id()) if cluster is not None else None
            with self._closer.opened(ioctx, name, read_only=True) as image:
                found = [
                    f"client.{w['id']} at {w['addr']}"
                    + (" (this process)" if own is not None and int(w["id"]) == own else "")
                    for w in image.watchers_list()
                ]
        except Exception as exc:  # only for the message
            return f"cannot list its watchers: {type(exc).__name__}"
        return f"watchers: {', '.join(found) or 'none left'}"

    def close(self) -> None:
        self._closer.flush()  # images first, then their pools' contexts and the connection
        with self._lock:
            ioctxs, self._ioctxs = list(self._ioctxs.values()), {}
            cluster, self._cluster = self._cluster, None
        for ioctx in ioctxs:
            with contextlib.suppress(Exception):
                ioctx.close()
        if cluster is not None:
            cluster.shutdown()


def _parse_features(names: list[str], backend: str) -> int:
    value = 0
    for name in names:
        if not name:
            continue
        if name.isdigit():
            value |= int(name)
            continue
        attr = FEATURE_NAMES.get(name)
        if attr is None:
            raise BadConfiguration(
                f"backend {backend!r}: unknown RBD image feature {name!r}; "
                f"known: {', '.join(FEATURE_NAMES)}"
            )
        value |= int(getattr(rbd, attr))
    return value


def _mark_writing(image: Any) -> None:
    """Flag an image as being written (``imgstore cleanup`` finds it if the add dies)."""
    image.metadata_set(WRITING_KEY, str(int(time.time())))


def _remove_image(
    ioctx: Any, name: str, closer: ImageCloser, *, only_if_flagged: bool = False
) -> bool:
    """Remove image ``name`` with its snapshots; whether there was anything to remove.

    An image that cannot be opened may be a removal that was cut short (its
    process killed): librbd lists it but cannot open it, and only a second
    ``remove`` by name finishes it, so that is always tried. With
    ``only_if_flagged``, an image no longer flagged as being written is left
    alone (its add finished after all).
    """
    try:
        with closer.opened(ioctx, name) as image:
            if only_if_flagged:
                try:
                    image.metadata_get(WRITING_KEY)
                except KeyError:
                    return False
            for snap in list(image.list_snaps()):
                if image.is_protected_snap(snap["name"]):
                    image.unprotect_snap(snap["name"])
                image.remove_snap(snap["name"])
    except rbd.ImageNotFound:
        LOG.debug("rbd image %s cannot be opened; finishing any removal cut short", name)
    try:
        rbd.RBD().remove(ioctx, name)
    except rbd.ImageNotFound:
        return False
    return True


def _remove_quietly(ioctx: Any, name: str, closer: ImageCloser) -> None:
    """Remove image ``name`` and its snapshots (cleanup after a failure); log, never raise."""
    try:
        _remove_image(ioctx, name, closer)
    except Exception:
        LOG.warning("cleanup: cannot remove rbd image %s; remove it by hand", name, exc_info=True)


def _publish(image: Any) -> None:
    """Create and protect the snapshot of a written image, then unflag it: the commit point."""
    image.create_snap(SNAPSHOT)
    image.protect_snap(SNAPSHOT)
    image.metadata_remove(WRITING_KEY)


class RbdWriter(Writer):
    """Writes one image with asynchronous writes, at most ``window`` chunks in flight."""

    def __init__(self, driver: RbdDriver, ioctx: Any, image: Any, image_id: str, size: int) -> None:
        self._driver = driver
        self._ioctx = ioctx
        self._image: Any = image
        self._image_id = image_id
        self._image_size = size
        self._grow_step = driver.chunk_size * driver.window
        self._offset = 0
        self._zero = bytes(driver.chunk_size) if driver.thin else b""
        self._aio = AioWindow(image, driver.window, driver.chunk_size)
        self._unanswered = False
        """A step failed as unavailable (the cluster stopped answering, say)."""

    @contextlib.contextmanager
    def _step(self, doing: str) -> Iterator[None]:
        """``driver.mapped(doing)``, remembering an unavailable cluster for :meth:`abort`."""
        try:
            with self._driver.mapped(doing):
                yield
        except BackendUnavailable:
            self._unanswered = True
            raise

    @property
    def accepted(self) -> int:
        """Bytes the cluster has acknowledged (writes still in the aio window are not)."""
        return self._aio.stored

    def _grow(self, needed: int) -> None:
        self._aio.finish()
        new = max(needed, self._image_size + self._grow_step)
        self._grow_step = min(self._grow_step * 2, MAX_GROW_STEP)
        self._image.resize(new)
        self._image_size = new

    def space(self, size: int) -> Space | None:
        """A buffer of the aio window, for the core to read the next chunk into."""
        return self._aio.space(size)

    def write(self, chunk: memoryview) -> None:
        n, offset = len(chunk), self._offset
        with self._step(f"writing image {self._image_id}"):
            self._aio.check()
            if offset + n > self._image_size:
                self._grow(offset + n)
            self._offset = offset + n
            if self._zero and chunk == self._zero[:n]:  # thin provisioning: leave it unallocated
                self._aio.skip(n, chunk)
            else:
                self._aio.write(chunk, offset)

    def commit(self, size: int) -> Written:
        image = self._image
        with self._step(f"writing image {self._image_id}"):
            self._aio.finish()
        with self._step(f"finishing image {self._image_id}"):
            image.flush()
            if image.size() != size:
                image.resize(size)  # unknown size: trim to what was written
            _publish(image)
        self._image = None
        try:
            self._driver._closer.close(image)
        except (rbd.Error, rados.Error):  # stored whole: its lock lapses with our watch
            LOG.warning(
                "backend %r: closing image %s after its commit failed",
                self._driver.backend,
                self._image_id,
                exc_info=True,
            )
        return Written(self._driver._location(self._image_id))

    def abort(self) -> None:
        """Close and remove the image. When the cluster stopped answering, both go on in
        the background (closing alone waits several op timeouts there, and removing
        needs it closed); an image still flagged when the process ends is
        ``imgstore cleanup``'s."""
        image, self._image = self._image, None
        closer = self._driver._closer
        remove = functools.partial(_remove_quietly, self._ioctx, self._image_id, closer)
        if image is None:
            remove()
            return
        try:
            self._aio.drain()
        finally:
            if self._unanswered:
                LOG.warning(
                    "backend %r: the cluster does not answer: closing and removing image %s "
                    "in the background",
                    self._driver.backend,
                    self._image_id,
                )
                closer.close_in_background(image, remove)
            else:
                with contextlib.suppress(Exception):
                    closer.close(image)
                remove()


class RbdStream(ReadStream):
    """Reads ``count`` bytes from ``offset`` of an open image, a few chunks ahead."""

    def __init__(self, driver: RbdDriver, image: Any, offset: int, count: int) -> None:
        self._image: Any = image
        self._driver = driver
        self.size = count
        depth = max(1, min(driver.window, READ_DEPTH))
        self._reads = aio_read(image, offset, count, driver.chunk_size, depth)

    def __iter__(self) -> Iterator[bytes]:
        with self._driver.mapped("reading the image"):
            yield from self._reads

    def close(self) -> None:
        image, self._image = self._image, None
        if image is not None:
            self._reads.close()  # the reads in flight finish before the image goes
            self._driver._closer.close(image)
