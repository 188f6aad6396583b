"""The glance_store compatibility package (compat/) on filesystem stores.

These call the functions the way Glance does (see the surface table in the
compat README); Glance's own functional suite runs against the package in
``tox -e glance-functional``.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from oslo_config import cfg

import imgstore
from tests.functional.conftest import import_or_fail, skip_or_fail

glance_store = import_or_fail("glance_store", "install imgstore's compat package (compat/)")
if "imgstore" not in (glance_store.__doc__ or ""):
    skip_or_fail("glance_store here is not imgstore's compat package (install compat/)")

RESERVED = {"os_glance_staging_store": "file", "os_glance_tasks_store": "file"}
DATA = os.urandom(300_000)


def _conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    conf(args=[], default_config_files=[], default_config_dirs=[])
    return conf


@pytest.fixture
def legacy(tmp_path: Path) -> cfg.ConfigOpts:
    conf = _conf()
    glance_store.register_opts(conf)
    conf.set_override("filesystem_store_datadir", str(tmp_path / "images"), "glance_store")
    conf.set_override("default_store", "file", "glance_store")
    assert glance_store.create_stores(conf) == 2  # file and http (the default stores)
    glance_store.verify_default_store()
    return conf


@pytest.fixture
def multi(tmp_path: Path) -> cfg.ConfigOpts:
    conf = _conf()
    conf.register_opt(cfg.DictOpt("enabled_backends"))  # Glance registers this one
    conf.set_override("enabled_backends", {"fast": "file", "slow": "file", "web": "http"})
    glance_store.register_store_opts(conf, reserved_stores=RESERVED)
    conf.set_override("default_backend", "fast", "glance_store")
    for group in ("fast", "slow", *RESERVED):
        conf.set_override("filesystem_store_datadir", str(tmp_path / group), group)
    conf.set_override("store_description", "quick disks", "fast")
    conf.set_override("weight", 7, "slow")
    assert glance_store.create_multi_stores(conf, reserved_stores=RESERVED) == 5
    glance_store.verify_store()
    return conf


def test_exceptions_are_one_class_under_both_names_and_carry_msg() -> None:
    for name in glance_store.exceptions.__all__:
        assert getattr(glance_store, name) is getattr(glance_store.exceptions, name)
    assert issubclass(glance_store.StoreRandomGetNotSupported, glance_store.StoreGetNotSupported)
    assert issubclass(glance_store.UnsupportedBackend, glance_store.BackendException)
    assert glance_store.NotFound(image="abc").msg == "Image abc not found"
    assert glance_store.Invalid().msg == glance_store.Invalid.message


def test_legacy_add_get_size_delete(legacy: cfg.ConfigOpts, tmp_path: Path) -> None:
    uri, size, md5, multihash, meta = glance_store.add_to_backend_with_multihash(
        legacy, "img-1", io.BytesIO(DATA), 0, "sha512"
    )
    assert uri == f"file://{tmp_path}/images/img-1"
    assert (size, md5, multihash) == (
        len(DATA),
        hashlib.md5(DATA).hexdigest(),
        hashlib.sha512(DATA).hexdigest(),
    )
    assert meta == {}  # a single store reports no store id, like glance_store
    assert (tmp_path / "images" / "img-1").read_bytes() == DATA
    assert glance_store.get_size_from_backend(uri) == len(DATA)

    chunks, size = glance_store.get_from_backend(uri)
    assert (b"".join(chunks), size) == (DATA, len(DATA))
    chunks, size = glance_store.get_from_backend(uri, offset=1000, chunk_size=5000)
    assert (b"".join(chunks), size) == (DATA[1000:6000], 5000)

    with pytest.raises(glance_store.Duplicate):
        glance_store.add_to_backend(legacy, "img-1", io.BytesIO(b"x"), 0)
    glance_store.delete_from_backend(uri)
    assert not (tmp_path / "images" / "img-1").exists()
    with pytest.raises(glance_store.exceptions.NotFound):
        glance_store.get_from_backend(uri)
    with pytest.raises(glance_store.NotFound):
        glance_store.delete_from_backend(uri)


def test_legacy_four_tuple_and_declared_size(legacy: cfg.ConfigOpts) -> None:
    uri, size, md5, meta = glance_store.add_to_backend(legacy, "img-2", io.BytesIO(DATA), len(DATA))
    assert (size, md5, meta) == (len(DATA), hashlib.md5(DATA).hexdigest(), {})
    # data shorter than declared: Invalid, and nothing is left behind
    with pytest.raises(glance_store.Invalid):
        glance_store.add_to_backend(legacy, "img-3", io.BytesIO(DATA), len(DATA) + 1)
    with pytest.raises(glance_store.NotFound):
        glance_store.get_size_from_backend(uri.replace("img-2", "img-3"))


def test_source_errors_propagate_unchanged(legacy: cfg.ConfigOpts, tmp_path: Path) -> None:
    class SizeLimit(Exception):
        """Stands in for Glance's ImageSizeLimitExceeded raised by its LimitingReader."""

    class Limited:
        def __init__(self) -> None:
            self.left = 3

        def read(self, n: int = -1) -> bytes:
            self.left -= 1
            if self.left < 0:
                raise SizeLimit("too large")
            return b"a" * 65536

    with pytest.raises(SizeLimit):
        glance_store.add_to_backend(legacy, "img-4", Limited(), 0)
    assert os.listdir(tmp_path / "images") == []


def test_verifier_sees_every_byte(legacy: cfg.ConfigOpts) -> None:
    seen = hashlib.sha256()

    class Verifier:
        def update(self, chunk: bytes) -> None:
            seen.update(chunk)

    glance_store.add_to_backend(legacy, "img-5", io.BytesIO(DATA), 0, verifier=Verifier())
    assert seen.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_legacy_schemes_and_lookup_errors(legacy: cfg.ConfigOpts) -> None:
    assert {"file", "http", "https"} <= set(glance_store.get_known_schemes())
    assert glance_store.get_store_from_scheme("file").datadir.endswith("images")
    with pytest.raises(glance_store.UnknownScheme):
        glance_store.get_from_backend("swift://example/container/obj")
    with pytest.raises(glance_store.BadStoreUri):
        glance_store.get_size_from_backend("file:///etc/passwd")  # outside the data dir
    with pytest.raises(glance_store.exceptions.BackendException):
        glance_store.check_location_metadata({"a": [1]})
    glance_store.check_location_metadata({"a": ["b", {"c": "d"}]})


def test_private_staging_store_like_glance(tmp_path: Path) -> None:
    """Glance's single-store staging: a private ConfigOpts, set_override, _load_store."""
    conf = cfg.ConfigOpts()
    glance_store.backend.register_opts(conf)
    conf.set_override("filesystem_store_datadir", str(tmp_path / "staging"), "glance_store")
    store = glance_store.backend._load_store(conf, "file")
    store.configure()
    uri, size, _md5, _meta = store.add("img-6", io.BytesIO(b"staged"), 0)
    assert (uri, size) == (f"file://{tmp_path}/staging/img-6", 6)
    loc = glance_store.location.Location("file", glance_store.location.StoreLocation, conf, uri=uri)
    store.delete(loc)
    assert not (tmp_path / "staging" / "img-6").exists()
    assert store.datadir == str(tmp_path / "staging")
    assert store.thin_provisioning is False


def test_multi_store(multi: cfg.ConfigOpts, tmp_path: Path) -> None:
    uri, _size, _md5, multihash, meta = glance_store.add_with_multihash(
        multi, "img-7", io.BytesIO(DATA), len(DATA), "slow", "sha512"
    )
    assert uri == f"file://{tmp_path}/slow/img-7"
    assert meta == {"store": "slow"}
    assert multihash == hashlib.sha512(DATA).hexdigest()
    assert glance_store.get_size_from_uri_and_backend(uri, "slow") == len(DATA)
    chunks, _ = glance_store.get(uri, "slow", offset=10, chunk_size=20)
    assert b"".join(chunks) == DATA[10:30]
    chunks, _ = glance_store.get(uri, None)  # no backend recorded: found by location
    assert b"".join(chunks) == DATA
    with pytest.raises(glance_store.UnknownScheme):
        glance_store.get(uri, "nosuch")
    with pytest.raises(glance_store.BadStoreUri):
        glance_store.get(uri, "fast")  # not inside that backend

    loc = glance_store.location.get_location_from_uri_and_backend(uri, "slow")
    glance_store.get_store_from_store_identifier("slow").delete(loc)
    with pytest.raises(glance_store.NotFound):
        glance_store.delete(uri, "slow")

    # the default backend when none is named
    uri, *_ = glance_store.add_with_multihash(multi, "img-8", io.BytesIO(b"z"), 1, None, "sha256")
    assert uri.startswith(f"file://{tmp_path}/fast/")


def test_multi_store_objects_and_options(multi: cfg.ConfigOpts, tmp_path: Path) -> None:
    staging = glance_store.get_store_from_store_identifier("os_glance_staging_store")
    uri, _size, _md5, meta = staging.add("img-9", io.BytesIO(b"staged"), 0)
    assert uri == f"file://{tmp_path}/os_glance_staging_store/img-9"
    assert meta == {"store": "os_glance_staging_store"}
    assert glance_store.get_store_weight("slow") == 7
    assert glance_store.get_store_weight("fast") == 0
    assert multi.fast.store_description == "quick disks"
    fast = glance_store.get_store_from_store_identifier("fast")
    assert fast.datadir == str(tmp_path / "fast")
    assert fast.chunk_size == imgstore.Stores(multi).chunk_size("fast") == 64 * 1024
    assert fast.url_prefix == f"file://{tmp_path}/fast"
    assert set(glance_store.get_known_schemes_for_multi_store()) >= {"file", "http"}
    assert set(glance_store.location.SCHEME_TO_CLS_BACKEND_MAP["file"]) == {
        "fast",
        "slow",
        *RESERVED,
    }
    with pytest.raises(glance_store.UnknownScheme):
        glance_store.get_store_from_store_identifier("nosuch")
    bits = glance_store.capabilities.BitMasks
    assert fast.is_capable(bits.READ_RANDOM, bits.WRITE_ACCESS, bits.DRIVER_REUSABLE)
    # read-only backends refuse adds with glance_store's class
    web = glance_store.get_store_from_store_identifier("web")
    assert web.is_capable(bits.READ_ACCESS)
    assert web.url_prefix == "http"  # Glance matches locations to backends by it
    assert not web.is_capable(bits.WRITE_ACCESS)
    with pytest.raises(glance_store.StoreAddDisabled):
        web.add("img-10", io.BytesIO(b"x"), 1, "sha512")


def test_verify_store_without_default(tmp_path: Path) -> None:
    conf = _conf()
    conf.register_opt(cfg.DictOpt("enabled_backends"))
    conf.set_override("enabled_backends", {"only": "file"})
    glance_store.register_store_opts(conf)
    conf.set_override("filesystem_store_datadir", str(tmp_path), "only")
    glance_store.create_multi_stores(conf)
    with pytest.raises(RuntimeError, match="default_backend"):
        glance_store.verify_store()


def test_legacy_driver_alias(tmp_path: Path) -> None:
    """A filesystem alias in the legacy default_store ("filesystem") still finds the store."""
    conf = _conf()
    glance_store.register_opts(conf)
    conf.set_override("filesystem_store_datadir", str(tmp_path), "glance_store")
    conf.set_override("stores", ["filesystem"], "glance_store")
    glance_store.create_stores(conf)
    store: Any = glance_store.get_store_from_scheme("filesystem")
    assert store.datadir == str(tmp_path)


def test_glance_store_chunk_size_default_and_explicit_values(tmp_path: Path) -> None:
    """glance_store's 64 KiB default (what Glance reports) unless the config says otherwise,
    in a backend's own group or in [backend_defaults]."""
    conf = _conf()
    conf.register_opt(cfg.DictOpt("enabled_backends"))
    conf.set_override("enabled_backends", {"a": "file", "b": "file", "c": "file"})
    glance_store.register_store_opts(conf)
    conf.set_override("default_backend", "a", "glance_store")
    for group in "abc":
        conf.set_override("filesystem_store_datadir", str(tmp_path / group), group)
    conf.set_override("filesystem_store_chunk_size", 4 << 20, "b")
    glance_store.create_multi_stores(conf)
    sizes = {g: glance_store.get_store_from_store_identifier(g).chunk_size for g in "abc"}
    assert sizes == {"a": 64 * 1024, "b": 4 << 20, "c": 64 * 1024}
    store = glance_store.get_store_from_store_identifier("a")
    uri, size, _md5, _meta = store.add("img-1", io.BytesIO(DATA), len(DATA))
    chunks, got = glance_store.get(uri, "a")
    assert size == got == len(DATA)
    assert [len(c) for c in chunks] == [64 * 1024] * 4 + [len(DATA) - 4 * 64 * 1024]

    legacy = _conf()
    glance_store.register_opts(legacy)
    legacy.set_override("filesystem_store_datadir", str(tmp_path / "legacy"), "glance_store")
    legacy.set_override("default_store", "file", "glance_store")
    glance_store.create_stores(legacy)
    assert glance_store.get_store_from_scheme("file").chunk_size == 64 * 1024


def test_relative_datadir_is_taken_from_the_working_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """glance_store takes a relative filesystem_store_datadir relative to the working
    directory; the compat layer resolves it once, with a warning."""
    monkeypatch.chdir(tmp_path)
    conf = _conf()
    conf.register_opt(cfg.DictOpt("enabled_backends"))
    conf.set_override("enabled_backends", {"fast": "file", "many": "file"})
    glance_store.register_store_opts(conf, reserved_stores=RESERVED)
    conf.set_override("default_backend", "fast", "glance_store")
    conf.set_override("filesystem_store_datadir", "rel/images", "fast")
    conf.set_override("filesystem_store_datadirs", ["rel/a:100", str(tmp_path / "b")], "many")
    for group in RESERVED:
        conf.set_override("filesystem_store_datadir", f"rel/{group}", group)
    glance_store.create_multi_stores(conf, reserved_stores=RESERVED)
    assert conf.fast.filesystem_store_datadir == str(tmp_path / "rel" / "images")
    assert conf.many.filesystem_store_datadirs == [f"{tmp_path}/rel/a:100", str(tmp_path / "b")]
    assert "filesystem_store_datadir 'rel/images' is relative" in caplog.text
    monkeypatch.chdir("/")  # a later chdir does not move the store
    uri, *_ = glance_store.add_with_multihash(conf, "img-r", io.BytesIO(b"r"), 1, "fast", "sha512")
    assert uri == f"file://{tmp_path}/rel/images/img-r"
    assert (tmp_path / "rel" / "images" / "img-r").read_bytes() == b"r"


def test_image_id_that_is_not_a_str_is_taken_as_str(legacy: cfg.ConfigOpts) -> None:
    image_id = uuid.uuid4()  # glance_store calls str() on what it is given
    uri, size, *_ = glance_store.add_to_backend_with_multihash(
        legacy, image_id, io.BytesIO(b"u"), 1, "sha512"
    )
    assert uri.endswith(f"/{image_id}") and size == 1


def test_private_driver_modules_have_glance_store_class_names() -> None:
    from glance_store._drivers import cinder, filesystem, http, rbd, s3, swift, vmware_datastore
    from glance_store._drivers.cinder import store as cinder_store
    from glance_store._drivers.swift import store as swift_store

    for module in (cinder, cinder_store, filesystem, http, rbd, s3, swift, swift_store,
                   vmware_datastore):  # fmt: skip
        assert issubclass(module.Store, glance_store.driver.Store), module
        assert module.StoreLocation is glance_store.location.StoreLocation
    for name in ("BaseStore", "SingleTenantStore", "MultiTenantStore"):
        assert issubclass(getattr(swift, name), glance_store.driver.Store)
    with mock.patch("glance_store._drivers.swift.store.BaseStore.get_size", return_value=3):
        assert swift.SingleTenantStore.get_size(None, "loc") == 3  # type: ignore[arg-type]


def test_store_conf_is_the_backend_group(multi: cfg.ConfigOpts, legacy: cfg.ConfigOpts) -> None:
    fast = glance_store.get_store_from_store_identifier("fast")
    assert fast.store_conf.filesystem_store_datadir == multi.fast.filesystem_store_datadir
    assert fast.store_conf.store_description == "quick disks"
    file_store = glance_store.get_store_from_scheme("file")
    assert file_store.store_conf.default_store == "file"


def test_legacy_delete_of_glance_scratch_files(tmp_path: Path) -> None:
    """Glance's legacy task import writes into ``[task] work_dir`` (and web-download
    into ``node_staging_uri``) with a private file store, then removes the file with
    ``delete_from_backend``: those directories count as roots, no other does."""
    conf = _conf()
    conf.register_opt(cfg.StrOpt("work_dir"), group="task")  # Glance registers these
    conf.register_opt(cfg.StrOpt("node_staging_uri"))
    conf.set_override("work_dir", str(tmp_path / "work"), "task")
    conf.set_override("node_staging_uri", f"file://{tmp_path}/staging", None)
    glance_store.register_opts(conf)
    conf.set_override("filesystem_store_datadir", str(tmp_path / "images"), "glance_store")
    glance_store.create_stores(conf)
    for scratch in ("work", "staging"):
        (tmp_path / scratch).mkdir()
        leftover = tmp_path / scratch / "3a6d9a4e-5c2b-4f57-9c1e-0d6f0a1b2c3d"
        leftover.write_bytes(b"imported")
        uri = f"file://{leftover}"
        assert glance_store.get_size_from_backend(uri) == 8
        chunks, _ = glance_store.get_from_backend(uri)
        assert b"".join(chunks) == b"imported"
        glance_store.delete_from_backend(uri)
        assert not leftover.exists()
    outside = tmp_path / "elsewhere" / "img"
    outside.parent.mkdir()
    outside.write_bytes(b"precious")
    for uri in (f"file://{outside}", f"file://{tmp_path}/work/../elsewhere/img"):
        with pytest.raises(glance_store.BadStoreUri):
            glance_store.delete_from_backend(uri)
    assert outside.read_bytes() == b"precious"
