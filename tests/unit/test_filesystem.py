"""Filesystem driver specifics: path safety, several data directories, atomic writes..."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgstore import (
    BackendError,
    BadLocation,
    Duplicate,
    InvalidArgument,
    StorageFull,
    Stores,
)
from imgstore.driver import PARTIAL_SUFFIX
from imgstore.drivers import filesystem as fs
from imgstore.drivers.filesystem import FileLocation
from imgstore.location import parse


def write_conf(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "imgstore.conf"
    text = "[glance_store]\nstores = file\ndefault_store = file\n" + "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def make_stores(tmp_path: Path) -> Iterator[Callable[..., Stores]]:
    opened: list[Stores] = []

    def make(*lines: str) -> Stores:
        stores = Stores.from_config_files(write_conf(tmp_path, *lines))
        opened.append(stores)
        return stores

    yield make
    for stores in opened:
        stores.close()


def listing(*dirs: Path) -> dict[str, bytes | str]:
    """Every entry in ``dirs`` (recursively, hidden ones too) with its content or kind."""
    out: dict[str, bytes | str] = {}
    for root in dirs:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    out[path] = "-> " + os.readlink(path)
                elif os.path.isdir(path):
                    out[path] = "dir"
                else:
                    out[path] = Path(path).read_bytes()
    return out


def read(stores: Stores, location: str, **kw: object) -> bytes:
    with stores.get(location, **kw) as reader:  # type: ignore[arg-type]
        return b"".join(reader)


# -- bad locations ------------------------------------------------------------


@pytest.fixture
def jail(tmp_path: Path, make_stores: Callable[..., Stores]) -> dict[str, object]:
    """A store in ``data``, a precious file outside it, and traps inside it."""
    data = tmp_path / "data"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"must never be read or deleted")
    stores = make_stores(f"filesystem_store_datadir = {data}")
    (data / "link-to-file").symlink_to(outside / "precious")
    (data / "link-to-dir").symlink_to(outside)
    (data / "adir").mkdir()
    (data / "adir" / "nested").write_bytes(b"nested")
    (data / f".abc.0123456789ab{PARTIAL_SUFFIX}").write_bytes(b"half written")
    (data / ".hidden").write_bytes(b"hidden")
    (data / "real-image").write_bytes(b"a real image")
    return {"stores": stores, "data": data, "outside": outside, "root": tmp_path}


BAD_LOCATIONS = {
    "dotdot": "file://{data}/../outside/precious",
    "dotdot-encoded": "file://{data}/%2e%2e/outside/precious",
    "dotdot-then-back": "file://{data}/../data/real-image",
    "outside-absolute": "file://{outside}/precious",
    "system-file": "file:///etc/passwd",
    "the-datadir-itself": "file://{data}",
    "the-datadir-slash": "file://{data}/",
    "symlinked-file": "file://{data}/link-to-file",
    "through-symlinked-dir": "file://{data}/link-to-dir/precious",
    "a-directory": "file://{data}/adir",
    "nested-in-subdir": "file://{data}/adir/nested",
    "hidden-partial": f"file://{{data}}/.abc.0123456789ab{PARTIAL_SUFFIX}",
    "hidden": "file://{data}/.hidden",
    "other-host": "file://otherhost/x",
    "other-host-with-path": "file://otherhost{data}/real-image",
    "query-string": "file://{data}/real-image?x=1",
    "empty-query": "file://{data}/real-image?",
    "fragment": "file://{data}/real-image#frag",
    "nul-byte": "file://{data}/real%00image",
    "relative": "file:real-image",
    "no-path": "file://",
}


@pytest.mark.parametrize("via_backend", [False, True], ids=["any-backend", "named-backend"])
@pytest.mark.parametrize("name", sorted(BAD_LOCATIONS))
def test_bad_location(jail: dict[str, object], name: str, via_backend: bool) -> None:
    stores = jail["stores"]
    assert isinstance(stores, Stores)
    location = BAD_LOCATIONS[name].format(data=jail["data"], outside=jail["outside"])
    root = jail["root"]
    assert isinstance(root, Path)
    before = listing(root)
    backend = "file" if via_backend else None
    with pytest.raises(BadLocation):
        read(stores, location, backend=backend)
    with pytest.raises(BadLocation):
        stores.size(location, backend=backend)
    with pytest.raises(BadLocation):
        stores.delete(location, backend=backend)
    assert listing(root) == before


def test_bad_location_straight_to_the_driver(jail: dict[str, object]) -> None:
    """The driver itself refuses, even when the core's ownership check is bypassed."""
    stores = jail["stores"]
    assert isinstance(stores, Stores)
    driver = stores.driver("file")
    data, outside = jail["data"], jail["outside"]
    for path in (
        f"{data}/../outside/precious",
        f"{outside}/precious",
        f"{data}/link-to-file",
        f"{data}/adir",
    ):
        loc = FileLocation(path)
        with pytest.raises(BadLocation):
            driver.open(loc, 0, None)
        with pytest.raises(BadLocation):
            driver.size(loc)
        with pytest.raises(BadLocation):
            driver.delete(loc)
    assert (Path(str(outside)) / "precious").exists()
    assert (Path(str(data)) / "link-to-file").is_symlink()


def test_good_location_in_the_jail_still_works(jail: dict[str, object]) -> None:
    stores = jail["stores"]
    assert isinstance(stores, Stores)
    location = f"file://{jail['data']}/real-image"
    assert read(stores, location) == b"a real image"
    assert stores.size(location) == len(b"a real image")


# -- several data directories --------------------------------------------------


@pytest.fixture
def two_dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "a", tmp_path / "b"


DATADIR_FORMS = {
    "comma": lambda a, b: [f"filesystem_store_datadirs = {a}:200, {b}:100"],
    "repeated": lambda a, b: [
        f"filesystem_store_datadirs = {b}:100",
        f"filesystem_store_datadirs = {a}:200",
    ],
}


def fake_free_space(monkeypatch: pytest.MonkeyPatch, free: dict[str, int]) -> None:
    """Fault injection: pretend some directories are (nearly) full."""
    real = fs._free_bytes
    monkeypatch.setattr(fs, "_free_bytes", lambda path: free.get(os.path.abspath(path), real(path)))


@pytest.mark.parametrize("form", sorted(DATADIR_FORMS))
def test_highest_priority_datadir_is_used(
    make_stores: Callable[..., Stores], two_dirs: tuple[Path, Path], form: str
) -> None:
    a, b = two_dirs
    stores = make_stores(*DATADIR_FORMS[form](a, b))
    result = stores.add("img1", b"x" * 100, size=100)
    assert parse(result.location) == FileLocation(str(a / "img1"))
    assert os.listdir(b) == []
    assert read(stores, result.location) == b"x" * 100


@pytest.mark.parametrize("form", sorted(DATADIR_FORMS))
def test_full_datadir_is_skipped(
    make_stores: Callable[..., Stores],
    two_dirs: tuple[Path, Path],
    form: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = two_dirs
    stores = make_stores(*DATADIR_FORMS[form](a, b))
    fake_free_space(monkeypatch, {str(a): 50})
    result = stores.add("img1", b"x" * 100, size=100)
    assert parse(result.location) == FileLocation(str(b / "img1"))
    assert os.listdir(a) == []
    small = stores.add("img2", b"y" * 10, size=10)
    assert parse(small.location) == FileLocation(str(a / "img2"))


def test_equal_priority_prefers_more_free_space(
    make_stores: Callable[..., Stores], two_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_dirs
    stores = make_stores(f"filesystem_store_datadirs = {a}:100, {b}:100")
    fake_free_space(monkeypatch, {str(a): 10_000, str(b): 20_000})
    result = stores.add("img1", b"z" * 10, size=10)
    assert parse(result.location) == FileLocation(str(b / "img1"))


def test_no_room_anywhere_is_storage_full(
    make_stores: Callable[..., Stores], two_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_dirs
    stores = make_stores(f"filesystem_store_datadirs = {a}:200, {b}:100")
    fake_free_space(monkeypatch, {str(a): 99, str(b): 10})
    with pytest.raises(StorageFull):
        stores.add("img1", b"x" * 100, size=100)
    assert os.listdir(a) == [] and os.listdir(b) == []


def test_duplicate_across_datadirs(
    make_stores: Callable[..., Stores], two_dirs: tuple[Path, Path]
) -> None:
    a, b = two_dirs
    stores = make_stores(f"filesystem_store_datadirs = {a}:200, {b}:100")
    (b / "img1").write_bytes(b"already here, in the lower-priority directory")
    for size in (3, None):
        with pytest.raises(Duplicate):
            stores.add("img1", b"new", size=size)
    assert os.listdir(a) == []
    assert sorted(os.listdir(b)) == ["img1"]
    assert (b / "img1").read_bytes() == b"already here, in the lower-priority directory"


def test_duplicate_appearing_during_the_write(
    make_stores: Callable[..., Stores], tmp_path: Path
) -> None:
    """Another writer creates the final name while we stream: commit refuses to overwrite."""
    data = tmp_path / "data"
    stores = make_stores(f"filesystem_store_datadir = {data}")

    def racing_writer(done: int, total: int | None) -> None:
        if not (data / "img1").exists():
            (data / "img1").write_bytes(b"the other writer")

    with pytest.raises(Duplicate):
        stores.add("img1", b"ours" * 1000, progress=racing_writer)
    assert os.listdir(data) == ["img1"]
    assert (data / "img1").read_bytes() == b"the other writer"


# -- writes ----------------------------------------------------------------------


def test_write_is_atomic(make_stores: Callable[..., Stores], tmp_path: Path) -> None:
    data = tmp_path / "data"
    stores = make_stores(f"filesystem_store_datadir = {data}")
    seen: list[tuple[bool, list[str]]] = []

    def check(done: int, total: int | None) -> None:
        names = os.listdir(data)
        seen.append(((data / "img1").exists(), names))

    payload = os.urandom(3 * stores.driver().write_chunk_size + 5)
    result = stores.add("img1", iter([payload]), progress=check)
    assert len(seen) == 4
    for final_exists, names in seen:
        assert not final_exists
        assert len(names) == 1
        assert names[0].startswith(".img1.") and names[0].endswith(PARTIAL_SUFFIX)
    assert os.listdir(data) == ["img1"]
    assert read(stores, result.location) == payload


@pytest.mark.parametrize(("perm", "mode"), [("640", 0o640), ("600", 0o600), ("644", 0o644)])
def test_file_mode_option(
    make_stores: Callable[..., Stores], tmp_path: Path, perm: str, mode: int
) -> None:
    data = tmp_path / "data"
    stores = make_stores(
        f"filesystem_store_datadir = {data}", f"filesystem_store_file_perm = {perm}"
    )
    stores.add("img1", b"abc", size=3)
    assert stat.S_IMODE(os.stat(data / "img1").st_mode) == mode


def test_file_mode_default_follows_umask(
    make_stores: Callable[..., Stores], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    stores = make_stores(f"filesystem_store_datadir = {data}")
    old = os.umask(0o027)
    try:
        stores.add("img1", b"abc", size=3)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(data / "img1").st_mode) == 0o640


@pytest.mark.parametrize("thin", [True, False])
def test_thin_provisioning(make_stores: Callable[..., Stores], tmp_path: Path, thin: bool) -> None:
    data = tmp_path / "data"
    chunk = 64 * 1024
    stores = make_stores(
        f"filesystem_store_datadir = {data}",
        f"filesystem_store_chunk_size = {chunk}",
        f"filesystem_thin_provisioning = {thin}",
    )
    zeros = bytes(chunk)
    image = zeros * 40 + b"\x01" + zeros * 10 + b"tail" + zeros * 20  # ends in a hole
    result = stores.add("img1", image, size=len(image))
    used = os.stat(data / "img1").st_blocks * 512
    if thin:
        assert used < len(image) // 4, f"{used} bytes used for a {len(image)}-byte sparse image"
    else:
        assert used > len(image) // 2
    assert os.path.getsize(data / "img1") == len(image)
    assert hashlib.sha256(read(stores, result.location)).digest() == hashlib.sha256(image).digest()
    assert result.checksum == hashlib.md5(image, usedforsecurity=False).hexdigest()


def test_small_chunk_size_governs_reads_not_writes(
    make_stores: Callable[..., Stores], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """glance_store's 64 KiB chunk size: reads yield 64 KiB chunks, the store reports it,
    and writes still go in 4 MiB chunks (small O_DIRECT writes each wait for the disk)."""
    chunk = 64 * 1024
    stores = make_stores(
        f"filesystem_store_datadir = {tmp_path / 'data'}", f"filesystem_store_chunk_size = {chunk}"
    )
    written: list[int] = []
    original = fs.FileWriter.write

    def spy(self: fs.FileWriter, data: memoryview) -> None:  # records, then writes for real
        written.append(len(data))
        original(self, data)

    monkeypatch.setattr(fs.FileWriter, "write", spy)
    image = os.urandom(9 * 1024 * 1024 + 7)
    result = stores.add("img1", image, size=len(image))
    assert written == [4 << 20, 4 << 20, (1 << 20) + 7]
    assert stores.chunk_size() == chunk
    with stores.get(result.location) as reader:
        sizes = [len(c) for c in reader]
    assert sizes == [chunk] * (len(image) // chunk) + [len(image) % chunk]
    assert hashlib.sha256(read(stores, result.location)).digest() == hashlib.sha256(image).digest()


@pytest.mark.parametrize(
    ("err", "expected"),
    [(errno.ENOSPC, StorageFull), (errno.EDQUOT, StorageFull), (errno.EIO, BackendError)],
)
def test_write_error_leaves_nothing(
    make_stores: Callable[..., Stores],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    err: int,
    expected: type[Exception],
) -> None:
    data = tmp_path / "data"
    stores = make_stores(f"filesystem_store_datadir = {data}", "filesystem_store_chunk_size = 4096")
    real_write = os.write
    calls = []

    def failing_write(fd: int, buf: bytes) -> int:
        """Fault injection: the disk fills up after the first chunk."""
        calls.append(len(buf))
        if len(calls) > 1:
            raise OSError(err, os.strerror(err))
        return real_write(fd, buf)

    monkeypatch.setattr(os, "write", failing_write)  # the driver calls os.write
    with pytest.raises(expected):
        stores.add("img1", b"q" * 20_000, size=20_000)
    monkeypatch.undo()
    assert len(calls) == 2
    assert os.listdir(data) == []
    stores.add("img1", b"q" * 10, size=10)  # the id is free


# -- legacy locations ------------------------------------------------------------


def test_glance_store_location_round_trip(
    make_stores: Callable[..., Stores], tmp_path: Path
) -> None:
    """Images glance_store wrote (``file:///path``) read, size and delete as before."""
    data = tmp_path / "glance images"  # a space, percent-encoded in our own locations
    stores = make_stores(f"filesystem_store_datadir = {data}")
    image_id = "8a2ea42d-06b5-42c2-a54d-97105420f2bb"
    (data / image_id).write_bytes(b"written by glance_store")
    legacy = f"file://{data}/{image_id}"
    assert legacy.startswith("file:///")
    assert read(stores, legacy) == b"written by glance_store"
    assert read(stores, f"file://localhost{data}/{image_id}") == b"written by glance_store"
    assert stores.size(legacy) == len(b"written by glance_store")
    assert read(stores, legacy, offset=8, length=2) == b"by"
    stores.delete(legacy)
    assert os.listdir(data) == []

    result = stores.add(image_id, b"ours", size=4)
    assert result.location.startswith("file:///")
    assert parse(result.location) == FileLocation(str(data / image_id))
    assert parse(str(parse(result.location))) == parse(result.location)
    assert "%20" in result.location
    assert read(stores, result.location) == b"ours"


def test_concurrent_adds_of_one_id(make_stores: Callable[..., Stores], tmp_path: Path) -> None:
    """Eight writers race for one id: exactly one wins, the rest get Duplicate, no leftovers."""
    data = tmp_path / "data"
    stores = make_stores(f"filesystem_store_datadir = {data}", "filesystem_store_chunk_size = 4096")
    barrier = threading.Barrier(8)
    payloads = [bytes([i]) * (50_000 + i) for i in range(8)]

    def add(payload: bytes) -> str:
        barrier.wait(timeout=60)
        try:
            return stores.add("same-id", iter([payload[:7], payload[7:]])).location
        except Duplicate:
            return "duplicate"

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(add, payloads))
    winners = [o for o in outcomes if o != "duplicate"]
    assert len(winners) == 1, outcomes
    assert os.listdir(data) == ["same-id"]
    assert read(stores, winners[0]) == payloads[outcomes.index(winners[0])]


def test_get_with_a_bad_hash_algo_leaves_no_open_file(
    make_stores: Callable[..., Stores], tmp_path: Path
) -> None:
    stores = make_stores(f"filesystem_store_datadir = {tmp_path / 'data'}")
    location = stores.add("img1", b"abc", size=3).location
    for _ in range(20):
        with pytest.raises(InvalidArgument):
            stores.get(location, hash_algo="no-such-hash")
    # the files this process holds open in the store (a count of all its descriptors
    # moves with what other tests' objects the garbage collector closes meanwhile)
    assert _open_files_under(tmp_path / "data") == []


def _open_files_under(folder: Path) -> list[str]:
    """The paths under ``folder`` that this process has a descriptor open on."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own, say)
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"{folder}/"):
                found.append(target)
    return found


# -- O_DIRECT writes ----------------------------------------------------------------


def _open_flags(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


@pytest.mark.parametrize("size", [0, 4096, 3 * 65536 + 7, 1 << 20])
@pytest.mark.parametrize("direct", [True, False])
def test_direct_io_writes_exact_bytes(
    make_stores: Callable[..., Stores],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    direct: bool,
) -> None:
    """Aligned chunks go out with O_DIRECT, an unaligned tail the ordinary way;
    the option turns it off. The bytes read back are the bytes sent."""
    data = tmp_path / "data"
    stores = make_stores(
        f"filesystem_store_datadir = {data}",
        "filesystem_store_chunk_size = 65536",
        f"filesystem_store_direct_io = {direct}",
    )
    seen: list[bool] = []
    real_write = os.write

    def spying_write(fd: int, buf: bytes) -> int:
        """Observes (does not change) each write's open flags."""
        seen.append(bool(_open_flags(fd) & os.O_DIRECT))
        return real_write(fd, buf)

    monkeypatch.setattr(fs.os, "write", spying_write)
    payload = os.urandom(size)
    result = stores.add("direct", payload, size=size)
    with stores.get(result.location) as reader:
        assert reader.read_all() == payload
    if size >= 65536:
        assert seen[0] is direct
    if size % 4096:
        assert seen[-1] is False  # the tail is written without O_DIRECT


def test_direct_io_refused_falls_back(
    make_stores: Callable[..., Stores], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: a filesystem that refuses O_DIRECT (EINVAL at open)."""
    data = tmp_path / "data"
    stores = make_stores(f"filesystem_store_datadir = {data}")
    real_open = os.open

    def refusing_open(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_open(path, flags, mode)

    monkeypatch.setattr(fs.os, "open", refusing_open)
    payload = os.urandom(5 << 20)
    result = stores.add("fallback", payload)
    monkeypatch.undo()
    with stores.get(result.location) as reader:
        assert reader.read_all() == payload
    assert sorted(os.listdir(data)) == ["fallback"]
