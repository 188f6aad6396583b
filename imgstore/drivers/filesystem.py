"""The filesystem driver (``file://``): the embedded default store.

Images are files directly inside one of the configured data directories.
Writes go to a hidden temporary file in the same directory (name ending in
``.imgstore-partial``), are fsynced and then linked to the final name, which
fails if it already exists: no half-written image is ever visible under its
final name and an existing image is never overwritten. Reads, sizes and
deletes refuse any path that is not a regular file directly inside a
configured data directory (no ``..``, no symlinks, no other absolute paths).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import functools
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from oslo_config import cfg

from imgstore.config import read_option_file
from imgstore.driver import (
    DEFAULT_CHUNK_SIZE,
    Driver,
    Leftover,
    RangeStream,
    ReadStream,
    Writer,
    Written,
    clamp_range,
    is_partial_name,
    partial_name,
)
from imgstore.errnos import for_file_errno
from imgstore.exceptions import (
    BadConfiguration,
    BadLocation,
    ImgstoreError,
    NotFound,
)
from imgstore.location import (
    Location,
    quote_path,
    register,
    require_utf8,
    shown,
    unquote_path,
    urlsplit,
)

WRITEBACK_BYTES = 32 * 1024 * 1024
"""A writer asks the kernel to start writing back every this many bytes."""
DIRECT_ALIGN = 4096
"""Buffer address, length and file offset alignment used for O_DIRECT writes."""


@register
class FileLocation(Location):
    """``file:///absolute/path/to/image`` (the form glance_store writes)."""

    schemes = ("file",)

    def __init__(self, path: str) -> None:
        if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
            raise BadLocation("a file location needs an absolute path without NUL bytes")
        require_utf8("file", "path", path)  # what the OS could return passes (surrogateescape)
        self.path = path

    @classmethod
    def from_uri(cls, uri: str) -> FileLocation:
        parts = urlsplit(uri)
        if parts.scheme.lower() != "file":
            raise BadLocation(f"not a file location: {shown(uri)!r}")
        if parts.netloc not in ("", "localhost"):
            raise BadLocation(f"file locations cannot name a host: {shown(uri)!r}")
        if parts.query or parts.fragment or "?" in uri or "#" in uri:
            raise BadLocation(f"file locations take no query or fragment: {shown(uri)!r}")
        return cls(unquote_path(parts.path))

    def to_uri(self) -> str:
        return "file://" + quote_path(self.path)


@dataclasses.dataclass(frozen=True)
class DataDir:
    """One configured data directory."""

    path: str
    priority: int
    real: str


def parse_datadirs(values: list[str]) -> list[tuple[str, int]]:
    """``(path, priority)`` of ``/a:200, /b:100`` entries (priority defaults to 0)."""
    dirs: list[tuple[str, int]] = []
    for entry in (e.strip() for value in values for e in value.split(",")):
        if not entry:
            continue
        path, sep, prio = entry.rpartition(":")
        if not sep or not prio.strip().lstrip("-").isdigit():
            path, prio = entry, "0"
        dirs.append((path.strip(), int(prio)))
    return dirs


class FilesystemDriver(Driver):
    """Stores images as files in one or more local directories."""

    name = "file"
    location_class = FileLocation

    @classmethod
    def options(cls) -> list[cfg.Opt]:
        return [
            cfg.StrOpt(
                "filesystem_store_datadir",
                default="/var/lib/glance/images",
                help="Directory where images are stored. Created if missing. "
                "Use filesystem_store_datadirs instead for several directories.",
            ),
            cfg.MultiStrOpt(
                "filesystem_store_datadirs",
                default=[],
                help="Several directories with priorities, as 'path:priority' "
                "(repeat the option or separate with commas). A new image goes to "
                "the highest-priority directory with room for it.",
            ),
            cfg.StrOpt(
                "filesystem_store_metadata_file",
                help="JSON file whose content is returned as location metadata: an "
                "object, or a list of objects with 'id' and 'mountpoint'.",
            ),
            cfg.IntOpt(
                "filesystem_store_file_perm",
                default=0,
                help="Octal file mode of new image files, written as digits (e.g. 640); "
                "0 keeps the mode the process umask gives.",
            ),
            cfg.IntOpt(
                "filesystem_store_chunk_size",
                default=DEFAULT_CHUNK_SIZE,
                min=4096,
                help="Bytes per chunk a read yields, and the unit thin provisioning "
                "leaves unallocated. Writes go in chunks of at least 4 MiB whatever this is "
                "(O_DIRECT and parallel hashing need large ones). glance_store's default "
                "is 64 KiB; 4 MiB reads run about twice as fast.",
            ),
            cfg.BoolOpt(
                "filesystem_thin_provisioning",
                default=False,
                help="Store all-zero chunks as holes (sparse files).",
            ),
            cfg.BoolOpt(
                "filesystem_store_direct_io",
                default=True,
                help="Write new images with O_DIRECT, bypassing the page cache: "
                "much less CPU per byte, which leaves the cores to hashing. Falls "
                "back to ordinary writes where the filesystem refuses O_DIRECT.",
            ),
        ]

    def configure(self) -> None:
        conf = self.conf
        if conf.filesystem_store_datadirs:
            entries = parse_datadirs(conf.filesystem_store_datadirs)
        elif conf.filesystem_store_datadir:
            entries = [(conf.filesystem_store_datadir, 0)]
        else:
            raise BadConfiguration(
                f"backend {self.backend!r}: set filesystem_store_datadir "
                "or filesystem_store_datadirs"
            )
        for path, _ in entries:  # every one checked before any is created
            if not os.path.isabs(path):
                raise BadConfiguration(
                    f"backend {self.backend!r}: data directory {path!r} is not absolute"
                )
        dirs = [self._make_datadir(os.path.abspath(path), prio) for path, prio in entries]
        if len({d.real for d in dirs}) != len(dirs):
            raise BadConfiguration(f"backend {self.backend!r}: a data directory is listed twice")
        self.datadirs = sorted(dirs, key=lambda d: -d.priority)
        perm = conf.filesystem_store_file_perm
        try:
            self.file_mode = int(str(perm), 8) if perm else None
        except ValueError:
            raise BadConfiguration(
                f"filesystem_store_file_perm must be octal digits such as 640, not {perm}"
            ) from None
        self.chunk_size = conf.filesystem_store_chunk_size
        self.thin = bool(conf.filesystem_thin_provisioning)
        self.direct_io = bool(conf.filesystem_store_direct_io) and hasattr(os, "O_DIRECT")
        self.metadata = self._load_metadata(conf.filesystem_store_metadata_file)

    def _make_datadir(self, path: str, priority: int) -> DataDir:
        """The data directory at absolute ``path``, created if missing."""
        try:
            os.makedirs(path, mode=0o750, exist_ok=True)
        except OSError as exc:
            raise BadConfiguration(
                f"backend {self.backend!r}: cannot create data directory {path}: {exc.strerror}"
            ) from None
        if not os.path.isdir(path):
            raise BadConfiguration(f"backend {self.backend!r}: {path} is not a directory")
        return DataDir(path, priority, os.path.realpath(path))

    def os_error(self, exc: OSError, doing: str) -> ImgstoreError:
        """The imgstore error for ``exc``, raised while ``doing`` (``open file:///...``):
        no room (ENOSPC, EDQUOT) is :class:`StorageFull`, a symlink met by O_NOFOLLOW
        :class:`BadLocation`, anything else :class:`BackendError`."""
        return for_file_errno(exc.errno)(
            f"backend {self.backend!r}: cannot {doing}: {exc.strerror}"
        )

    @property
    def write_chunk_size(self) -> int:
        """At least 4 MiB: small O_DIRECT writes each wait for the device."""
        return max(self.chunk_size, DEFAULT_CHUNK_SIZE)

    def _load_metadata(self, path: str | None) -> Any:
        if not path:
            return {}
        option = "filesystem_store_metadata_file"
        data = read_option_file(self.backend, option, path, json.load, ValueError)
        if isinstance(data, dict) or (
            isinstance(data, list) and all(isinstance(x, dict) and "mountpoint" in x for x in data)
        ):
            return data
        raise BadConfiguration(
            f"{path}: metadata must be an object or a list of objects with 'mountpoint'"
        )

    def _metadata_for(self, path: str) -> dict[str, Any]:
        if isinstance(self.metadata, dict):
            return dict(self.metadata)
        for entry in self.metadata:
            if path.startswith(os.path.join(str(entry["mountpoint"]), "")):
                return dict(entry)
        return {}

    # -- paths ---------------------------------------------------------

    def _checked_path(self, location: Location) -> str:
        """The real path of an image location, or :class:`BadLocation`."""
        assert isinstance(location, FileLocation)
        path = location.path
        if ".." in path.split("/"):
            raise BadLocation(f"{location.redacted()}: '..' is not allowed in a file location")
        parent, name = os.path.split(os.path.normpath(path))
        if not name or name.startswith("."):
            raise BadLocation(f"{location.redacted()} does not name an image file")
        real_parent = os.path.realpath(parent)
        if real_parent not in {d.real for d in self.datadirs}:
            raise BadLocation(
                f"{location.redacted()} is outside the data directories of backend {self.backend!r}"
            )
        return os.path.join(real_parent, name)

    def owns(self, location: Location) -> bool:
        if not isinstance(location, FileLocation):
            return False
        try:
            self._checked_path(location)
        except BadLocation:
            return False
        return True

    def _stat(self, location: Location) -> os.stat_result:
        path = self._checked_path(location)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise NotFound(f"no image at {location.redacted()}") from None
        except OSError as exc:
            raise self.os_error(exc, f"stat {location.redacted()}") from None
        if not stat.S_ISREG(st.st_mode):
            raise BadLocation(f"{location.redacted()} is not a regular file (symlinks are refused)")
        return st

    # -- operations ----------------------------------------------------

    def _existing(self, image_id: str) -> str | None:
        """The path of image ``image_id`` in any data directory (a symlink counts)."""
        for d in self.datadirs:
            if os.path.lexists(os.path.join(d.path, image_id)):
                return os.path.join(d.path, image_id)
        return None

    def location_for(self, image_id: str) -> Location | None:
        """The image's file if it exists, else its place when there is one data directory."""
        path = self._existing(image_id)
        if path is None and len(self.datadirs) == 1:
            path = os.path.join(self.datadirs[0].path, image_id)
        return None if path is None else FileLocation(path)

    def discard(self, image_id: str) -> bool:
        """Delete the image's file and the partial files of unfinished writes of it."""
        removed = super().discard(image_id)
        for d in self.datadirs:
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(d.path):
                    if is_partial_name(name, image_id):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(d.path, name))
                            removed = True
        return removed

    def begin_write(self, image_id: str, size: int | None) -> Writer:
        if self._existing(image_id) is not None:
            raise self.duplicate(image_id)
        free = {d.path: _free_bytes(d.path) for d in self.datadirs}  # every one, then choose
        datadir = self.with_room(
            self.datadirs, lambda d: d.priority, lambda d: free[d.path], size or 0, "data directory"
        )
        return FileWriter(self, datadir, image_id)

    def leftovers(self, older_than: float) -> Iterator[Leftover]:
        """Partial files (``.<id>.<token>.imgstore-partial``) untouched for ``older_than`` s."""
        now = time.time()
        for d in self.datadirs:
            try:
                entries = list(os.scandir(d.path))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self.os_error(exc, f"list {d.path}") from None
            for entry in entries:
                if not is_partial_name(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # its writer just finished or cleaned up
                age = now - st.st_mtime
                if age >= older_than:
                    yield Leftover(
                        self.backend, "partial file", entry.path, age, st.st_size, entry.path
                    )

    def remove_leftover(self, leftover: Leftover) -> None:
        try:
            os.unlink(leftover.ref)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self.os_error(exc, f"remove {leftover.ref}") from None

    def open(self, location: Location, offset: int, length: int | None) -> ReadStream:
        path = self._checked_path(location)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"no image at {location.redacted()}") from None
        except OSError as exc:
            raise self.os_error(exc, f"open {location.redacted()}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadLocation(f"{location.redacted()} is not a regular file")
            start, count = clamp_range(st.st_size, offset, length)
        except BaseException:
            os.close(fd)
            raise
        return RangeStream(
            count, lambda at, n: os.pread(fd, n, at), self.chunk_size, offset=start,
            release=lambda: os.close(fd), name="FileStream",
        )  # fmt: skip

    def size(self, location: Location) -> int:
        return self._stat(location).st_size

    def delete(self, location: Location) -> None:
        self._stat(location)
        try:
            os.unlink(self._checked_path(location))
        except FileNotFoundError:
            raise NotFound(f"no image at {location.redacted()}") from None
        except OSError as exc:
            raise self.os_error(exc, f"delete {location.redacted()}") from None


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _address(view: memoryview) -> int:
    """The memory address of a writable buffer (O_DIRECT needs it aligned)."""
    if view.readonly:
        return 1  # never aligned: such buffers are written the ordinary way
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


@functools.cache
def _writeback_starter() -> Callable[[int, int, int], None] | None:
    """``start(fd, offset, nbytes)``: begin writeback of that range without waiting.

    Linux's ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` through libc (Python's
    ``os`` has no binding); None elsewhere. Starting writeback while the image
    is still streaming in lets the disk work in parallel, so the fsync at
    commit has only the tail left to wait for. It is only a hint: errors are
    ignored, the fsync at commit still reports them.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    sync_file_range_write = 2

    def start(fd: int, offset: int, nbytes: int) -> None:
        fn(fd, offset, nbytes, sync_file_range_write)

    return start


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileWriter(Writer):
    """Writes one image to a hidden temporary file, linked into place on commit."""

    def __init__(self, driver: FilesystemDriver, datadir: DataDir, image_id: str) -> None:
        self._driver = driver
        self._datadir = datadir.path
        self._final = os.path.join(datadir.path, image_id)
        self._image_id = image_id
        # the id is cut so that the temporary name fits NAME_MAX (255) for any valid id
        self._temp = os.path.join(datadir.path, partial_name(image_id))
        self._direct = driver.direct_io
        try:
            self._fd: int | None = self._open()
        except OSError as exc:
            raise self._os_error(exc, "create") from None
        self._size = 0
        self._flushed = 0
        self._writeback = _writeback_starter()
        self._zero = bytes(driver.chunk_size) if driver.thin else b""

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        if self._direct:
            try:
                return os.open(self._temp, flags | os.O_DIRECT, 0o666)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct = False  # this filesystem refuses O_DIRECT
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._temp)
        return os.open(self._temp, flags, 0o666)

    def _buffered(self) -> None:
        """Leave O_DIRECT for the rest of this file (an unaligned tail or buffer)."""
        if self._direct and self._fd is not None:
            fcntl.fcntl(
                self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT
            )
            self._direct = False

    def _write_all(self, view: memoryview) -> None:
        assert self._fd is not None
        if self._direct:
            aligned = len(view) - len(view) % DIRECT_ALIGN
            if aligned and _address(view) % DIRECT_ALIGN == 0:
                try:
                    done = os.write(self._fd, view[:aligned])
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    done = 0
                view = view[done:]
            if view:
                self._buffered()
        while view:
            done = os.write(self._fd, view)
            view = view[done:]

    def _write_sparse(self, chunk: memoryview) -> None:
        """Write ``chunk``, skipping (leaving as holes) its all-zero blocks of ``chunk_size``."""
        assert self._fd is not None
        step = len(self._zero)
        start = 0  # where the run of data not yet written begins
        for offset in range(0, len(chunk), step):
            block = chunk[offset : offset + step]
            if block == self._zero[: len(block)]:
                if start < offset:
                    self._write_all(chunk[start:offset])
                os.lseek(self._fd, len(block), os.SEEK_CUR)
                start = offset + len(block)
        if start < len(chunk):
            self._write_all(chunk[start:])

    def _os_error(self, exc: OSError, doing: str) -> ImgstoreError:
        return self._driver.os_error(exc, f"{doing} an image file in {self._datadir}")

    def write(self, chunk: memoryview) -> None:
        assert self._fd is not None
        try:
            if self._zero:
                self._write_sparse(chunk)
            else:
                self._write_all(chunk)
        except OSError as exc:
            raise self._os_error(exc, "write") from None
        self._size += len(chunk)
        if (
            not self._direct
            and self._writeback is not None
            and self._size - self._flushed >= WRITEBACK_BYTES
        ):
            self._writeback(self._fd, self._flushed, self._size - self._flushed)
            self._flushed = self._size

    def commit(self, size: int) -> Written:
        fd = self._fd
        assert fd is not None
        try:
            if self._zero:
                os.ftruncate(fd, size)
            os.fsync(fd)
            if self._driver.file_mode is not None:
                os.fchmod(fd, self._driver.file_mode)
        except OSError as exc:
            raise self._os_error(exc, "finish") from None
        finally:
            os.close(fd)
            self._fd = None
        try:
            os.link(self._temp, self._final)
        except FileExistsError:
            raise self._driver.duplicate(self._image_id) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise self._os_error(exc, "link") from None
            if os.path.lexists(self._final):  # no hard links here: rename, checked first
                raise self._driver.duplicate(self._image_id) from None
            os.rename(self._temp, self._final)
        else:
            os.unlink(self._temp)
        _fsync_dir(self._datadir)
        return Written(FileLocation(self._final), self._driver._metadata_for(self._final))

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)
