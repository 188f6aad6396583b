"""Configuration: the legacy and multi-store forms of glance-api.conf, errors, defaults."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import textwrap

import pytest
from oslo_config import cfg

import imgstore
from imgstore import config
from imgstore.capabilities import Capability
from imgstore.exceptions import BadConfiguration, InvalidArgument, UnknownBackend
from imgstore.location import parse
from tests.functional.conftest import skip_or_fail

# A realistic glance-api.conf excerpt: many sections and options imgstore does
# not know, including options of glance_store drivers that are not enabled.
GLANCE_API_CONF_NOISE = """\
[DEFAULT]
bind_host = 0.0.0.0
bind_port = 9292
workers = 4
debug = false
log_file = /var/log/glance/api.log
show_image_direct_url = True
show_multiple_locations = False
image_cache_dir = /var/lib/glance/image-cache/
transport_url = rabbit://openstack:RABBIT_PASS@controller

[database]
connection = mysql+pymysql://glance:GLANCE_DBPASS@controller/glance
max_retries = -1

[keystone_authtoken]
www_authenticate_uri = http://controller:5000
auth_url = http://controller:5000
memcached_servers = controller:11211
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = glance
password = GLANCE_PASS

[paste_deploy]
flavor = keystone

[oslo_limit]
auth_url = http://controller:5000
endpoint_id = 340be3625e9b4239a6415d034e98aace
region_name = RegionOne

[oslo_policy]
enforce_new_defaults = true

[image_format]
disk_formats = ami,ari,aki,vhd,vhdx,vmdk,raw,qcow2,vdi,iso,ploop
"""

UNKNOWN_STORE_OPTIONS = """\
swift_store_auth_address = http://controller:5000/v3
swift_store_user = service:glance
swift_store_key = SWIFT_KEY
swift_store_container = glance
rbd_store_pool = images
rbd_store_ceph_conf = /etc/ceph/ceph.conf
s3_store_host = http://127.0.0.1:9000
s3_store_access_key = AKIA
s3_store_secret_key = S3_SECRET
"""


def write_conf(tmp_path: pathlib.Path, text: str, name: str = "glance-api.conf") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def add_and_read(stores: imgstore.Stores, image_id: str, data: bytes, **kw: object) -> str:
    result = stores.add(image_id, data, size=len(data), **kw)  # type: ignore[arg-type]
    with stores.get(result.location) as reader:
        assert reader.read_all() == data
    return result.location


# -- legacy single-store form ---------------------------------------------


def test_legacy_single_store_from_glance_api_conf(tmp_path: pathlib.Path) -> None:
    datadir = tmp_path / "images"
    path = write_conf(
        tmp_path,
        GLANCE_API_CONF_NOISE
        + "\n[glance_store]\nstores = file\ndefault_store = file\n"
        + f"filesystem_store_datadir = {datadir}/\n"
        + UNKNOWN_STORE_OPTIONS,
    )
    with imgstore.Stores.from_config_files(path) as stores:
        assert stores.backends == ["file"]
        assert stores.default_backend == "file"
        assert datadir.is_dir()  # created on demand
        location = add_and_read(stores, "6f1b0d3c-4c8e-4f4e-9b0a-1e2f3a4b5c6d", b"legacy" * 1000)
        assert location == f"file://{datadir}/6f1b0d3c-4c8e-4f4e-9b0a-1e2f3a4b5c6d"
        assert (datadir / "6f1b0d3c-4c8e-4f4e-9b0a-1e2f3a4b5c6d").read_bytes() == b"legacy" * 1000
        assert stores.chunk_size() == 4 * 1024 * 1024  # the option's default


def test_legacy_glance_store_aliases(tmp_path: pathlib.Path) -> None:
    # old glance configs name drivers by class path or as "filesystem"
    path = write_conf(
        tmp_path,
        f"""\
        [glance_store]
        stores = glance.store.filesystem.Store, filesystem
        default_store = filesystem
        filesystem_store_datadir = {tmp_path / "img"}
        """,
    )
    with imgstore.Stores.from_config_files(path) as stores:
        assert stores.backends == ["file"]
        assert stores.default_backend == "file"
        assert stores.describe()[0].driver == "file"


def test_legacy_file_and_http_from_the_issue(tmp_path: pathlib.Path) -> None:
    if "http" not in config.installed_driver_names():
        skip_or_fail("the http driver is not installed (the http extra)")
    datadir = tmp_path / "images"
    path = write_conf(
        tmp_path,
        GLANCE_API_CONF_NOISE
        + f"""
[glance_store]
stores = file,http
default_store = file
filesystem_store_datadir = {datadir}/
""",
    )
    with imgstore.Stores.from_config_files(path) as stores:
        assert sorted(stores.backends) == ["file", "http"]
        assert stores.default_backend == "file"
        add_and_read(stores, "issue-example", b"x" * 100)
        assert Capability.WRITE not in stores.capabilities("http")


def test_later_files_override_earlier_ones(tmp_path: pathlib.Path) -> None:
    first = write_conf(
        tmp_path,
        f"[glance_store]\nstores = file\nfilesystem_store_datadir = {tmp_path / 'a'}\n",
        "one.conf",
    )
    second = write_conf(
        tmp_path, f"[glance_store]\nfilesystem_store_datadir = {tmp_path / 'b'}\n", "two.conf"
    )
    with imgstore.Stores.from_config_files(first, second) as stores:
        location = stores.add("img", b"data").location
    assert parse(location) == parse(f"file://{tmp_path / 'b' / 'img'}")


# -- multi-store form ------------------------------------------------------


def multi_conf(tmp_path: pathlib.Path, extra: str = "") -> pathlib.Path:
    return write_conf(
        tmp_path,
        GLANCE_API_CONF_NOISE.replace(
            "[DEFAULT]\n", "[DEFAULT]\nenabled_backends = fast:file, slow:file\n"
        )
        + f"""
[glance_store]
default_backend = fast
{UNKNOWN_STORE_OPTIONS}
[fast]
filesystem_store_datadir = {tmp_path / "fast"}

[slow]
filesystem_store_datadir = {tmp_path / "slow"}
filesystem_thin_provisioning = false
filesystem_store_chunk_size = 131072

[backend_defaults]
filesystem_thin_provisioning = true
filesystem_store_chunk_size = 65536
filesystem_store_datadir = {tmp_path / "never-used"}

[os_glance_staging_store]
filesystem_store_datadir = {tmp_path / "staging"}

[os_glance_tasks_store]
filesystem_store_datadir = {tmp_path / "tasks"}
{extra}
""",
    )


def test_multi_store_backends_and_default(tmp_path: pathlib.Path) -> None:
    with imgstore.Stores.from_config_files(multi_conf(tmp_path)) as stores:
        assert stores.backends == ["fast", "slow"]
        assert stores.default_backend == "fast"
        fast = add_and_read(stores, "on-fast", b"f" * 10)
        slow = add_and_read(stores, "on-slow", b"s" * 10, backend="slow")
    assert (tmp_path / "fast" / "on-fast").read_bytes() == b"f" * 10
    assert (tmp_path / "slow" / "on-slow").read_bytes() == b"s" * 10
    assert parse(fast) == parse(f"file://{tmp_path / 'fast' / 'on-fast'}")
    assert parse(slow) == parse(f"file://{tmp_path / 'slow' / 'on-slow'}")
    # the reserved glance stores and the backend_defaults datadir are not backends
    for unused in ("never-used", "staging", "tasks"):
        assert not (tmp_path / unused).exists()


def test_backend_defaults_fill_in_but_never_override(tmp_path: pathlib.Path) -> None:
    with imgstore.Stores.from_config_files(multi_conf(tmp_path)) as stores:
        # [fast] is silent on both: [backend_defaults] applies
        assert stores.chunk_size("fast") == 65536
        assert Capability.THIN_PROVISIONING in stores.capabilities("fast")
        # [slow] sets both explicitly, one of them to the option's own default
        # value (false): the explicit value still wins over [backend_defaults]
        assert stores.chunk_size("slow") == 131072
        assert Capability.THIN_PROVISIONING not in stores.capabilities("slow")
        # and the value is really used: zeros on fast become a hole
        stores.add("zeros", bytes(4 * 65536), backend="fast")
        stores.add("zeros", bytes(4 * 131072), backend="slow")
    fast_st = os.stat(tmp_path / "fast" / "zeros")
    slow_st = os.stat(tmp_path / "slow" / "zeros")
    assert fast_st.st_size == 4 * 65536
    assert slow_st.st_size == 4 * 131072
    assert fast_st.st_blocks * 512 < fast_st.st_size  # sparse
    assert slow_st.st_blocks * 512 >= slow_st.st_size  # fully allocated


def test_single_enabled_backend_needs_no_default(tmp_path: pathlib.Path) -> None:
    path = write_conf(
        tmp_path,
        f"""\
        [DEFAULT]
        enabled_backends = only:file
        [only]
        filesystem_store_datadir = {tmp_path / "only"}
        """,
    )
    with imgstore.Stores.from_config_files(path) as stores:
        assert stores.backends == ["only"]
        assert stores.default_backend == "only"


def test_two_backends_without_default_backend(tmp_path: pathlib.Path) -> None:
    path = write_conf(
        tmp_path,
        f"""\
        [DEFAULT]
        enabled_backends = fast:file, slow:file
        [fast]
        filesystem_store_datadir = {tmp_path / "fast"}
        [slow]
        filesystem_store_datadir = {tmp_path / "slow"}
        """,
    )
    with pytest.raises(BadConfiguration, match="default_backend") as info:
        imgstore.Stores.from_config_files(path)
    assert not isinstance(info.value, UnknownBackend)
    assert "fast" in str(info.value) and "slow" in str(info.value)


def test_default_backend_not_enabled(tmp_path: pathlib.Path) -> None:
    path = write_conf(
        tmp_path,
        f"""\
        [DEFAULT]
        enabled_backends = fast:file, slow:file
        [glance_store]
        default_backend = cheap
        [fast]
        filesystem_store_datadir = {tmp_path / "fast"}
        [slow]
        filesystem_store_datadir = {tmp_path / "slow"}
        """,
    )
    with pytest.raises(UnknownBackend, match="cheap"):
        imgstore.Stores.from_config_files(path)


def test_legacy_default_store_not_in_stores(tmp_path: pathlib.Path) -> None:
    path = write_conf(
        tmp_path,
        f"""\
        [glance_store]
        stores = file
        default_store = rbd
        filesystem_store_datadir = {tmp_path / "img"}
        """,
    )
    with pytest.raises(UnknownBackend, match="rbd"):
        imgstore.Stores.from_config_files(path)


@pytest.mark.parametrize(
    "text",
    [
        "[DEFAULT]\nenabled_backends = fast:nosuchdriver\n",
        "[glance_store]\nstores = file, nosuchdriver\n",
    ],
)
def test_unknown_driver_lists_installed_drivers(tmp_path: pathlib.Path, text: str) -> None:
    path = write_conf(tmp_path, text + f"filesystem_store_datadir = {tmp_path / 'x'}\n")
    with pytest.raises(BadConfiguration) as info:
        imgstore.Stores.from_config_files(path)
    message = str(info.value)
    assert "nosuchdriver" in message
    installed = config.installed_driver_names()
    assert "file" in installed
    for name in installed:
        assert name in message


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("[glance_store]\nstores = file\nimage_size_cap = lots\n", "image_size_cap"),
        ("[glance_store]\nstores = file\nimage_size_cap = -1\n", "image_size_cap"),
        ("[glance_store]\nstores = file\nmd5_checksum = maybe\n", "md5_checksum"),
        (
            "[glance_store]\nstores = file\nfilesystem_store_chunk_size = big\n",
            "filesystem_store_chunk_size",
        ),
        ("[DEFAULT]\nenabled_backends = fast\n", "enabled_backends"),
        ("[DEFAULT]\nenabled_backends = :file\n", "enabled_backends"),
        (
            "[DEFAULT]\nenabled_backends = fast:file\n[fast]\nfilesystem_store_chunk_size = 12\n",
            "filesystem_store_chunk_size",
        ),
        (
            "[DEFAULT]\nenabled_backends = fast:file\n[backend_defaults]\n"
            "filesystem_thin_provisioning = maybe\n",
            "filesystem_thin_provisioning",
        ),
        (
            "[DEFAULT]\nenabled_backends = fast:file\n[fast]\nfilesystem_store_file_perm = 9x\n",
            "filesystem_store_file_perm",
        ),
        (
            "[DEFAULT]\nenabled_backends = fast:file\n[fast]\nfilesystem_store_file_perm = 999\n",
            "filesystem_store_file_perm",
        ),
        ("[glance_store]\nstores = file\nfilesystem_store_datadir = relative/dir\n", "absolute"),
        ("[DEFAULT]\nenabled_backends = glance_store:file\n", "glance_store"),
        ("[glance_store]\nstores = ,\n", "stores"),
    ],
)
def test_bad_values_are_bad_configuration(tmp_path: pathlib.Path, text: str, mentions: str) -> None:
    # every case gets a valid datadir unless it sets its own
    if "filesystem_store_datadir" not in text:
        text += f"[backend_defaults]\nfilesystem_store_datadir = {tmp_path / 'd'}\n"
        text += f"[glance_store]\nfilesystem_store_datadir = {tmp_path / 'd'}\n"
    path = write_conf(tmp_path, text)
    with pytest.raises(BadConfiguration) as info:
        imgstore.Stores.from_config_files(path)
    assert type(info.value).__module__ == "imgstore.exceptions"
    assert mentions in str(info.value)


def test_missing_config_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(BadConfiguration, match="not found"):
        imgstore.Stores.from_config_files(tmp_path / "nope.conf")
    with pytest.raises(BadConfiguration, match="not a regular file"):
        imgstore.Stores.from_config_files(tmp_path)  # a directory is not a config file


def test_unparsable_config_file(tmp_path: pathlib.Path) -> None:
    path = write_conf(tmp_path, "this is not an ini file\n")
    with pytest.raises(BadConfiguration, match="cannot read"):
        imgstore.Stores.from_config_files(path)


def test_unreadable_config_file(tmp_path: pathlib.Path) -> None:
    if os.geteuid() != 0:
        path = write_conf(tmp_path, "[glance_store]\nstores = file\n")
        path.chmod(0)
        with pytest.raises(BadConfiguration, match="not readable"):
            imgstore.Stores.from_config_files(path)
        return
    # root reads any file: drop to an unprivileged uid in a forked child to get
    # a real "permission denied"; the child sends back the error it saw. The
    # directory must be traversable by that uid (pytest's tmp_path is not).
    with tempfile.TemporaryDirectory(prefix="imgstore-conf-") as d:
        os.chmod(d, 0o755)
        path = pathlib.Path(d) / "glance-api.conf"
        path.write_text("[glance_store]\nstores = file\n")
        path.chmod(0)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(read_end)
            try:
                os.setgid(65534)
                os.setuid(65534)
                config.config_from_files([path])
                outcome = "no error"
            except BaseException as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            os.write(write_end, outcome.encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            outcome = pipe.read().decode()
        os.waitpid(pid, 0)
    assert outcome.startswith("BadConfiguration: configuration file not readable"), outcome


# -- the no-configuration default -----------------------------------------


def test_default_uses_imgstore_data_dir(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGSTORE_DATA_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with imgstore.Stores.default() as stores:
        assert stores.backends == ["file"]
        location = stores.add("img", b"abc").location
    assert (tmp_path / "explicit" / "img").read_bytes() == b"abc"
    assert parse(location) == parse(f"file://{tmp_path / 'explicit' / 'img'}")
    assert not (tmp_path / "xdg").exists()


def test_default_uses_xdg_data_home(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMGSTORE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with imgstore.Stores.default() as stores:
        stores.add("img", b"abc")
    assert (tmp_path / "xdg" / "imgstore" / "images" / "img").read_bytes() == b"abc"


def test_default_falls_back_to_home(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMGSTORE_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config.default_data_dir() == tmp_path / ".local" / "share" / "imgstore" / "images"


def test_open_stores_without_files_is_the_default(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGSTORE_DATA_DIR", str(tmp_path / "d"))
    from imgstore.api import open_stores

    with open_stores() as stores:
        stores.add("img", b"abc")
    assert (tmp_path / "d" / "img").exists()


# -- private ConfigOpts only ------------------------------------------------


def test_global_conf_is_never_touched(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGSTORE_DATA_DIR", str(tmp_path / "default"))
    with imgstore.Stores.default():
        pass
    with imgstore.Stores.from_config_files(multi_conf(tmp_path)):
        pass
    legacy = write_conf(
        tmp_path,
        f"[glance_store]\nstores = file\nfilesystem_store_datadir = {tmp_path}\n",
        "l.conf",
    )
    with imgstore.Stores.from_config_files(legacy):
        pass
    own = cfg.ConfigOpts()
    own(args=[], default_config_files=[str(legacy)], default_config_dirs=[])
    with imgstore.Stores(own):
        pass
    config.list_opts()
    names = {"enabled_backends", "glance_store", "backend_defaults", "fast", "slow", "file"}
    for name in names:
        assert name not in cfg.CONF, f"imgstore registered {name!r} on the global cfg.CONF"
    # and the caller's own ConfigOpts got the options
    assert "glance_store" in own and "enabled_backends" in own


def test_stores_on_a_callers_conf_with_overrides(tmp_path: pathlib.Path) -> None:
    own = cfg.ConfigOpts()
    own(args=[], default_config_files=[], default_config_dirs=[])
    config.register_core_opts(own)
    own.set_override("stores", ["file"], "glance_store")
    own.register_opts(config.load_driver_class("file").options(), "glance_store")
    own.set_override("filesystem_store_datadir", str(tmp_path / "own"), "glance_store")
    own.set_override("image_size_cap", 10, "glance_store")
    with imgstore.Stores(own) as stores:
        stores.add("small", b"0123456789")
        with pytest.raises(imgstore.SizeCapExceeded):
            stores.add("big", b"0123456789a")
    assert sorted(os.listdir(tmp_path / "own")) == ["small"]


def test_default_backend_name_is_validated_by_the_api(tmp_path: pathlib.Path) -> None:
    with imgstore.Stores.from_config_files(multi_conf(tmp_path)) as stores:
        with pytest.raises(UnknownBackend):
            stores.add("x", b"", backend="file")
        with pytest.raises(InvalidArgument):
            stores.add("../x", b"")


def test_a_file_an_option_names_is_read_or_refused_naming_the_option(
    tmp_path: pathlib.Path,
) -> None:
    good = tmp_path / "refs.json"
    good.write_text('{"a": 1}', encoding="utf-8")
    read = config.read_option_file
    assert read("b1", "some_file", str(good), lambda f: f.read()) == '{"a": 1}'
    missing = tmp_path / "nope"
    with pytest.raises(BadConfiguration) as info:
        read("b1", "some_file", str(missing), lambda f: f.read())
    assert (
        str(info.value)
        == f"backend 'b1': cannot read some_file {missing}: No such file or directory"
    )
    with pytest.raises(BadConfiguration, match=r"cannot read some_file .*: Is a directory"):
        read("b1", "some_file", str(tmp_path), lambda f: f.read())
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(BadConfiguration, match=r"^backend 'b1': cannot read some_file .*: Expect"):
        read("b1", "some_file", str(bad), json.load, ValueError)
    with pytest.raises(ValueError):  # an error the caller did not name passes unchanged
        read("b1", "some_file", str(bad), json.load)
