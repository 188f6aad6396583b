"""The Stores API on real filesystem backends: copy, verify, argument checks, introspection."""

from __future__ import annotations

import hashlib
import os
import pathlib
import textwrap
from collections.abc import Callable, Iterator

import pytest

import imgstore
from imgstore import Capability, Stores
from imgstore.driver import PARTIAL_SUFFIX, ReadStream
from imgstore.drivers.filesystem import FileLocation
from imgstore.exceptions import (
    BackendUnavailable,
    BadLocation,
    ChecksumMismatch,
    Duplicate,
    InvalidArgument,
    NotFound,
    SizeCapExceeded,
    SizeMismatch,
    UnknownBackend,
    UnknownScheme,
)
from imgstore.location import Location, parse

CHUNK = 65536


def payload(n: int, seed: int = 1) -> bytes:
    """``n`` bytes that differ from chunk to chunk (so a moved byte is noticed)."""
    out = bytearray()
    block = hashlib.sha512(seed.to_bytes(4, "big")).digest()
    while len(out) < n:
        out += block
        block = hashlib.sha512(block).digest()
    return bytes(out[:n])


def make_stores(tmp_path: pathlib.Path, store_options: str = "") -> Stores:
    conf = tmp_path / "glance-api.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            [DEFAULT]
            enabled_backends = fast:file, slow:file
            [glance_store]
            default_backend = fast
            {store_options}
            [backend_defaults]
            filesystem_store_chunk_size = {CHUNK}
            [fast]
            filesystem_store_datadir = {tmp_path / "fast"}
            [slow]
            filesystem_store_datadir = {tmp_path / "slow"}
            """
        )
    )
    return Stores.from_config_files(conf)


@pytest.fixture
def stores(tmp_path: pathlib.Path) -> Iterator[Stores]:
    with make_stores(tmp_path) as s:
        yield s


def listing(directory: pathlib.Path) -> list[str]:
    """Every entry in a data directory, hidden and partial files included."""
    return sorted(os.listdir(directory))


def flip_byte(path: pathlib.Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


# -- copy ------------------------------------------------------------------


def test_copy_between_filesystem_backends(stores: Stores, tmp_path: pathlib.Path) -> None:
    data = payload(3 * CHUNK + 123)
    added = stores.add("img-1", data, size=len(data))
    copied = stores.copy(added.location, to_backend="slow", verify=True)
    expected = hashlib.sha512(data).hexdigest()
    assert copied.multihash == added.multihash == expected
    assert copied.checksum == added.checksum == hashlib.md5(data).hexdigest()
    assert copied.size == len(data)
    assert copied.backend == "slow"
    assert copied.image_id == "img-1"
    assert parse(copied.location) == FileLocation(str(tmp_path / "slow" / "img-1"))
    # the copy holds the bytes; the source is untouched
    assert (tmp_path / "slow" / "img-1").read_bytes() == data
    assert (tmp_path / "fast" / "img-1").read_bytes() == data
    with stores.get(added.location) as reader:
        assert reader.read_all() == data
    assert stores.backend_for(copied.location) == "slow"
    assert listing(tmp_path / "slow") == ["img-1"]


def test_copy_with_new_id_and_algo(stores: Stores, tmp_path: pathlib.Path) -> None:
    data = payload(1000)
    added = stores.add("src", data)
    copied = stores.copy(added.location, "slow", image_id="dst", hash_algo="sha256")
    assert copied.multihash == hashlib.sha256(data).hexdigest()
    assert copied.hash_algo == "sha256"
    assert (tmp_path / "slow" / "dst").read_bytes() == data


def test_copy_to_a_backend_that_has_the_image(stores: Stores, tmp_path: pathlib.Path) -> None:
    added = stores.add("img", b"one")
    stores.add("img", b"other", backend="slow")
    with pytest.raises(Duplicate):
        stores.copy(added.location, "slow")
    assert (tmp_path / "slow" / "img").read_bytes() == b"other"
    assert listing(tmp_path / "slow") == ["img"]


def test_copy_of_a_missing_image(stores: Stores, tmp_path: pathlib.Path) -> None:
    with pytest.raises(NotFound):
        stores.copy(f"file://{tmp_path / 'fast' / 'ghost'}", "slow")
    assert listing(tmp_path / "slow") == []


def test_copy_that_fails_verification_is_deleted(stores: Stores, tmp_path: pathlib.Path) -> None:
    data = payload(2 * CHUNK + 5)
    added = stores.add("img", data)
    corrupted: list[str] = []

    def corrupt_target(done: int, total: int | None) -> None:
        # FAULT INJECTION: the storage under the target backend silently
        # corrupts a byte that was already written (bit rot, a bad disk).
        # No real filesystem does this on demand, so the test does it to the
        # real partial file through the progress callback, which runs after
        # each chunk reached the driver. The hashes were taken from the
        # source bytes, so only the read-back verification can notice.
        if corrupted:
            return
        partials = [n for n in os.listdir(tmp_path / "slow") if n.endswith(PARTIAL_SUFFIX)]
        assert len(partials) == 1
        flip_byte(tmp_path / "slow" / partials[0], 10)
        corrupted.append(partials[0])

    with pytest.raises(ChecksumMismatch):
        stores.copy(added.location, "slow", verify=True, progress=corrupt_target)
    assert corrupted, "the fault was never injected"
    assert listing(tmp_path / "slow") == []  # the bad copy and every partial file are gone
    assert (tmp_path / "fast" / "img").read_bytes() == data  # the source is untouched

    # the same fault without verification goes unnoticed, which is why verify exists
    corrupted.clear()
    copied = stores.copy(added.location, "slow", verify=False, progress=corrupt_target)
    assert corrupted
    assert (tmp_path / "slow" / "img").read_bytes() != data
    with pytest.raises(ChecksumMismatch):
        stores.verify(copied.location, "sha512", multihash=copied.multihash)


class _ShortStream(ReadStream):
    """Announces the real size but stops one byte early."""

    def __init__(self, real: ReadStream) -> None:
        self._real = real
        self.size = real.size

    def __iter__(self) -> Iterator[bytes]:
        left = self.size - 1
        for chunk in self._real:
            if left <= 0:
                return
            yield chunk[:left]
            left -= len(chunk)

    def close(self) -> None:
        self._real.close()


def test_copy_whose_read_back_is_short_is_deleted(
    stores: Stores, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(CHUNK + 9)
    added = stores.add("img", data)
    target = stores.driver("slow")
    real_open = target.open

    def short_open(location: Location, offset: int, length: int | None) -> ReadStream:
        # FAULT INJECTION: a backend whose read stops before the size it
        # announced (a dropped connection on a network store). A local file
        # cannot be made to do this, so the target backend's stream is
        # wrapped; the bytes themselves come from the real copied file.
        return _ShortStream(real_open(location, offset, length))

    monkeypatch.setattr(target, "open", short_open)
    # a read that broke off is temporary (try the copy again), and a copy that could not
    # be read back whole is not kept
    with pytest.raises(BackendUnavailable, match="cut short"):
        stores.copy(added.location, "slow", verify=True)
    assert listing(tmp_path / "slow") == []
    assert (tmp_path / "fast" / "img").read_bytes() == data


def test_copy_to_an_unknown_backend(stores: Stores, tmp_path: pathlib.Path) -> None:
    added = stores.add("img", b"abc")
    with pytest.raises(UnknownBackend):
        stores.copy(added.location, "nope")
    assert listing(tmp_path / "slow") == []


# -- verify ----------------------------------------------------------------


def test_verify_accepts_an_intact_image(stores: Stores) -> None:
    data = payload(CHUNK + 1)
    r = stores.add("img", data)
    stores.verify(r.location, r.hash_algo, multihash=r.multihash, checksum=r.checksum, size=r.size)
    stores.verify(r.location, r.hash_algo, multihash=r.multihash)
    stores.verify(r.location, r.hash_algo, checksum=r.checksum)


@pytest.mark.parametrize("offset", [0, CHUNK - 1, CHUNK, CHUNK + 1])
def test_verify_detects_a_flipped_byte(stores: Stores, tmp_path: pathlib.Path, offset: int) -> None:
    data = payload(CHUNK + 2)
    r = stores.add("img", data)
    flip_byte(tmp_path / "fast" / "img", offset)
    with pytest.raises(ChecksumMismatch, match="multihash"):
        stores.verify(r.location, r.hash_algo, multihash=r.multihash, size=r.size)
    with pytest.raises(ChecksumMismatch, match="md5"):
        stores.verify(r.location, r.hash_algo, checksum=r.checksum)
    # the stored file is reported, not repaired or removed
    assert (tmp_path / "fast" / "img").exists()


def test_verify_detects_a_wrong_size(stores: Stores, tmp_path: pathlib.Path) -> None:
    data = payload(5000)
    r = stores.add("img", data)
    with pytest.raises(SizeMismatch):
        stores.verify(r.location, r.hash_algo, multihash=r.multihash, size=r.size + 1)
    with pytest.raises(SizeMismatch):
        stores.verify(r.location, r.hash_algo, size=r.size - 1)
    # a truncated file: the recorded size no longer matches
    os.truncate(tmp_path / "fast" / "img", 4000)
    with pytest.raises(SizeMismatch):
        stores.verify(r.location, r.hash_algo, size=r.size)


def test_verify_needs_a_known_algorithm(stores: Stores) -> None:
    r = stores.add("img", b"abc")
    with pytest.raises(InvalidArgument):
        stores.verify(r.location, "nosuchhash", multihash=r.multihash)


# -- argument checks --------------------------------------------------------


@pytest.mark.parametrize(
    "image_id",
    [
        *["../x", "", ".hidden", "a/b", "x" * 300, "x" * 256, "-leading-dash"],
        *["a b", "a\x00b", "é", "abc\n"],
    ],
)
def test_invalid_image_ids(stores: Stores, tmp_path: pathlib.Path, image_id: str) -> None:
    with pytest.raises(InvalidArgument):
        stores.add(image_id, b"data")
    assert listing(tmp_path / "fast") == []
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("image_id", [None, 42, b"abc", ["a"]])
def test_non_str_image_ids(stores: Stores, tmp_path: pathlib.Path, image_id: object) -> None:
    with pytest.raises(InvalidArgument):
        stores.add(image_id, b"data")  # type: ignore[arg-type]
    assert listing(tmp_path / "fast") == []


def test_longest_valid_image_id(stores: Stores, tmp_path: pathlib.Path) -> None:
    image_id = "a" * 255
    r = stores.add(image_id, b"data")
    assert (tmp_path / "fast" / image_id).read_bytes() == b"data"
    assert r.image_id == image_id


@pytest.mark.parametrize("size", [-1, "3", 1.5])
def test_invalid_declared_size(stores: Stores, tmp_path: pathlib.Path, size: object) -> None:
    with pytest.raises(InvalidArgument):
        stores.add("img", b"abc", size=size)  # type: ignore[arg-type]
    assert listing(tmp_path / "fast") == []


@pytest.mark.parametrize(
    ("offset", "length"),
    [(-1, None), ("0", None), (1.0, None), (None, None), (0, -1), (0, "2"), (0, 2.0), (11, None)],
)
def test_invalid_offset_or_length(stores: Stores, offset: object, length: object) -> None:
    r = stores.add("img", b"0123456789")
    with pytest.raises(InvalidArgument):
        stores.get(r.location, offset=offset, length=length)  # type: ignore[arg-type]


def test_valid_ranges(stores: Stores) -> None:
    r = stores.add("img", b"0123456789")
    for offset, length, expected in [
        (0, None, b"0123456789"),
        (3, 4, b"3456"),
        (8, 100, b"89"),
        (10, None, b""),
        (0, 0, b""),
    ]:
        with stores.get(r.location, offset=offset, length=length) as reader:
            assert reader.size == len(expected)
            assert reader.read_all() == expected


def test_expected_multihash_needs_hash_algo(stores: Stores) -> None:
    r = stores.add("img", b"abc")
    with pytest.raises(InvalidArgument):
        stores.get(r.location, expected_multihash=r.multihash)


def test_unknown_backend_everywhere(stores: Stores) -> None:
    r = stores.add("img", b"abc")
    calls: list[Callable[[], object]] = [
        lambda: stores.add("other", b"abc", backend="nope"),
        lambda: stores.get(r.location, backend="nope"),
        lambda: stores.size(r.location, backend="nope"),
        lambda: stores.delete(r.location, backend="nope"),
        lambda: stores.verify(r.location, "sha512", backend="nope"),
        lambda: stores.copy(r.location, "nope"),
        lambda: stores.capabilities("nope"),
        lambda: stores.chunk_size("nope"),
        lambda: stores.driver("nope"),
    ]
    for call in calls:
        with pytest.raises(UnknownBackend, match="nope"):
            call()
    assert stores.size(r.location) == 3  # nothing was deleted on the way


# -- introspection ----------------------------------------------------------


def test_describe_and_capabilities(stores: Stores) -> None:
    info = {b.name: b for b in stores.describe()}
    assert list(info) == ["fast", "slow"]
    assert info["fast"].default and not info["slow"].default
    for b in info.values():
        assert b.driver == "file"
        assert b.schemes == ("file",)
        assert b.capabilities == stores.capabilities(b.name)
        assert {"read", "read_random", "write", "delete"} <= set(b.capabilities.names())
        assert Capability.THIN_PROVISIONING not in b.capabilities
    assert stores.capabilities() == stores.capabilities("fast")
    assert stores.chunk_size() == CHUNK
    assert repr(stores) == "<Stores default='fast' backends=['fast', 'slow']>"


def test_backend_for_picks_the_datadir_that_holds_the_file(
    stores: Stores, tmp_path: pathlib.Path
) -> None:
    on_fast = stores.add("a", b"1").location
    on_slow = stores.add("a", b"2", backend="slow").location
    assert stores.backend_for(on_fast) == "fast"
    assert stores.backend_for(on_slow) == "slow"
    assert stores.backend_for(parse(on_slow)) == "slow"
    # a file that does not exist (yet) is still placed by its directory
    assert stores.backend_for(f"file://{tmp_path / 'slow' / 'b'}") == "slow"
    # the operations follow the same choice
    with stores.get(on_slow) as reader:
        assert reader.read_all() == b"2"
    stores.delete(on_fast)
    assert listing(tmp_path / "fast") == []
    assert listing(tmp_path / "slow") == ["a"]


@pytest.mark.parametrize(
    "where",
    [
        "elsewhere/img",  # a directory no backend has
        "fast/../slow/a",  # '..' is never accepted
        "fast/sub/img",  # only files directly in a data directory
        "fast/.hidden",  # hidden names are partial files, not images
        "fast",  # the data directory itself
    ],
)
def test_location_in_no_backend(stores: Stores, tmp_path: pathlib.Path, where: str) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "img").write_bytes(b"outside")
    uri = f"file://{tmp_path}/{where}"
    with pytest.raises(BadLocation):
        stores.backend_for(uri)
    with pytest.raises(BadLocation):
        stores.get(uri)
    with pytest.raises(BadLocation):
        stores.delete(uri)
    assert (tmp_path / "elsewhere" / "img").read_bytes() == b"outside"


def test_location_of_another_backend(stores: Stores) -> None:
    on_fast = stores.add("a", b"1").location
    with pytest.raises(BadLocation, match="slow"):
        stores.get(on_fast, backend="slow")
    with pytest.raises(BadLocation):
        stores.delete(on_fast, backend="slow")
    assert stores.size(on_fast, backend="fast") == 1


def test_location_with_an_unknown_scheme(stores: Stores) -> None:
    with pytest.raises(UnknownScheme):
        stores.backend_for("nosuch://x/y")
    with pytest.raises(BadLocation):
        stores.get("not a uri")


# -- core options from the configuration ----------------------------------


def test_md5_checksum_off(tmp_path: pathlib.Path) -> None:
    data = payload(CHUNK * 2 + 3)
    with make_stores(tmp_path, "md5_checksum = false") as s:
        r = s.add("img", data)
        assert r.checksum is None
        assert r.multihash == hashlib.sha512(data).hexdigest()
        assert r.as_dict()["checksum"] is None
        copied = s.copy(r.location, "slow")
        assert copied.checksum is None
        assert copied.multihash == r.multihash


def test_md5_checksum_on_by_default(stores: Stores) -> None:
    r = stores.add("img", b"abc")
    assert r.checksum == hashlib.md5(b"abc").hexdigest()


def test_image_size_cap_from_config(tmp_path: pathlib.Path) -> None:
    cap = 2 * CHUNK + 10
    with make_stores(tmp_path, f"image_size_cap = {cap}") as s:
        r = s.add("exact", payload(cap))
        assert r.size == cap
        with pytest.raises(SizeCapExceeded):
            s.add("declared", payload(cap + 1), size=cap + 1)
        with pytest.raises(SizeCapExceeded):
            s.add("streamed", iter([payload(CHUNK)] * 4))  # size unknown, stopped on the way
        with pytest.raises(SizeCapExceeded):
            s.add("one-over", payload(cap + 1))
        # the cap applies to every backend, copies included
        s.add("exact-slow", payload(cap), backend="slow")
    assert listing(tmp_path / "fast") == ["exact"]
    assert listing(tmp_path / "slow") == ["exact-slow"]


def test_image_size_cap_zero_means_none(tmp_path: pathlib.Path) -> None:
    with make_stores(tmp_path, "image_size_cap = 0") as s:
        r = s.add("img", payload(3 * CHUNK))
    assert r.size == 3 * CHUNK


def test_add_result_fields(stores: Stores) -> None:
    data = payload(777)
    r = stores.add("img", data, hash_algo="sha3_256")
    d = r.as_dict()
    assert d["multihash"] == hashlib.sha3_256(data).hexdigest()
    assert d["hash_algo"] == "sha3_256"
    assert d["backend"] == "fast"
    assert d["metadata"]["store"] == "fast"
    assert d["size"] == 777
    assert d["image_id"] == "img"
    assert isinstance(r, imgstore.AddResult)
