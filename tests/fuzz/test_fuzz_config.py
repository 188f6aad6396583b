"""Fuzz the configuration loader: only imgstore's exceptions, whatever the file says.

Targets:

* legacy ``[glance_store]`` files (``stores``/``default_store`` and every
  driver's options with random values);
* multi-store files (``enabled_backends`` with random names and drivers,
  per-backend groups, ``[backend_defaults]``);
* files of arbitrary text.

Each file goes through ``config_from_files`` and ``Stores`` (``read_settings``
and every driver's ``configure``), which must either work or raise an
:class:`ImgstoreError` subclass; the Stores is closed again. Paths in the
generated values stay inside a temporary directory (a data directory is
created on configure) or come from a fixed list of existing, missing and
unreadable-as-a-file paths; no value names a network host other than
127.0.0.1, and nothing connects: drivers open connections on first use.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from imgstore import Stores
from imgstore.config import _loadable_drivers, config_from_files, read_settings
from imgstore.exceptions import ImgstoreError
from tests.fuzz.profiles import FUZZ, scaled
from tests.fuzz.strategies import char

DRIVER_NAMES = [
    "file", "http", "s3", "swift", "gridfs", "rbd", "filesystem", "https", "FILE", " file ",
    "glance.store.filesystem.store", "glance.store.rbd.store", "vmware", "cinder", "nosuch", "",
]  # fmt: skip
OPTIONS = {opt.dest: type(opt).__name__ for cls in _loadable_drivers() for opt in cls.options()}
CORE_OPTIONS = {"stores": "ListOpt", "default_store": "StrOpt", "default_backend": "StrOpt",
                "image_size_cap": "IntOpt", "md5_checksum": "BoolOpt"}  # fmt: skip
DATADIR_OPTIONS = {"filesystem_store_datadir", "filesystem_store_datadirs"}
PATH_OPTIONS = {
    "filesystem_store_metadata_file", "https_ca_certificates_file", "swift_store_config_file",
    "swift_store_cacert", "s3_store_cacert", "rbd_store_ceph_conf",
}  # fmt: skip


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="imgstore-fuzz-") as tmp:
        root = Path(tmp)
        (root / "garbage.conf").write_bytes(b"[x\n\xff\xfe = \x00\n%(y)s $z\n")
        (root / "refs.conf").write_text("[ref1]\nauth_address = http://127.0.0.1:9/v3\nuser = u\n")
        (root / "meta.json").write_text('{"id": "x", "mountpoint": "/"}')
        (root / "meta-list.json").write_text('[{"id": 1}, 2, null]')
        os.mkfifo(root / "fifo")  # never opened for reading: a FIFO would block
        yield root


def line_text(max_size: int = 30) -> st.SearchStrategy[str]:
    """Text for one INI value: mostly one line, sometimes a continuation or a new section."""
    return st.text(char, max_size=max_size)


def value_for(name: str, kind: str, root: Path) -> st.SearchStrategy[str]:
    """A random value for option ``name`` of oslo.config type ``kind``."""
    if name in DATADIR_OPTIONS:
        safe = st.from_regex(r"\A[a-z0-9:, -]{0,12}\Z")
        return st.one_of(
            safe.map(lambda s: f"{root}/data/{s}"),
            st.lists(
                st.builds(lambda s, p: f"{root}/data/{s}:{p}", safe, st.integers(-5, 300)),
                max_size=3,
            ).map(", ".join),
            line_text().filter(lambda t: not t.strip().startswith("/")),
            st.just(""),
        )
    if name in PATH_OPTIONS:
        return st.sampled_from([
            str(root / "garbage.conf"), str(root / "refs.conf"), str(root / "meta.json"),
            str(root / "meta-list.json"), str(root / "missing"), str(root), "relative/x", "",
        ])  # fmt: skip
    generic = st.one_of(
        line_text(),
        # oslo.config substitutions: of itself, of another option, of nothing
        st.sampled_from([f"${name}", f"${{{name}}}", "$stores", "$nosuch", "$", "${", "$$x"]),
    )
    typed = {
        "IntOpt": st.integers(-(2**70), 2**70).map(str),
        "FloatOpt": st.one_of(st.floats(allow_nan=True).map(str), st.integers().map(str)),
        "BoolOpt": st.sampled_from(["true", "false", "yes", "no", "1", "0", "on", "maybe"]),
        "ListOpt": st.lists(line_text(10), max_size=4).map(",".join),
        "DictOpt": st.lists(
            st.builds(lambda k, v: f"{k}:{v}", line_text(8), line_text(12)), max_size=3
        ).map(",".join),
    }.get(kind, generic)
    special = {
        "mongodb_store_uri": st.sampled_from([
            "mongodb://127.0.0.1:9/", "mongodb://u:Zqsecret@127.0.0.1:9/?authSource=admin",
            "mongodb://127.0.0.1:9/?directConnection=maybe", "mongodb://", "mongodb://[::1",
            "http://127.0.0.1/", "mongodb://127.0.0.1:99999/",
        ]),
        "http_proxy_information": st.sampled_from([
            "http:http://127.0.0.1:9", "https:http://u:Zqsecret@127.0.0.1:9", "ftp:x", "http:",
        ]),
        "s3_store_host": st.sampled_from([
            "http://127.0.0.1:9", "https://127.0.0.1:9/path", "127.0.0.1", "http://", "https:///",
        ]),
        "swift_store_auth_address": st.sampled_from([
            "http://127.0.0.1:9/auth/v1.0", "https://127.0.0.1:9/v3", "127.0.0.1", "http://",
        ]),
        "http_allowed_networks": st.sampled_from(["127.0.0.0/8", "::1/128,10.0.0.0/33", "x", ""]),
    }.get(name)  # fmt: skip
    choices = [typed, typed, typed, generic] + ([special] * 4 if special is not None else [])
    return st.one_of(*choices)


@st.composite
def option_lines(draw: st.DrawFn, root: Path, names: list[str] | None = None) -> list[str]:
    """``name = value`` lines for a random subset of every driver's options."""
    pool = sorted(names if names is not None else [*OPTIONS, *CORE_OPTIONS])
    chosen = draw(st.lists(st.sampled_from(pool), max_size=5, unique=True))
    lines = []
    for name in chosen:
        kind = OPTIONS.get(name) or CORE_OPTIONS.get(name, "StrOpt")
        lines.append(f"{name} = {draw(value_for(name, kind, root))}")
    return lines


def load(path: Path) -> None:
    """Read ``path`` as the loader and Stores do; only ImgstoreError may come out."""
    try:
        conf = config_from_files([path])
        read_settings(conf)
        with Stores.from_config_files(path) as stores:
            stores.describe()
            repr(stores)
            event(f"loaded: {','.join(sorted(stores.backends))}"[:60])
    except ImgstoreError as exc:
        assert str(exc)
        event(f"refused: {type(exc).__name__}")


@st.composite
def legacy_files(draw: st.DrawFn, root: Path) -> str:
    stores = draw(st.lists(st.sampled_from(DRIVER_NAMES), min_size=0, max_size=4))
    lines = ["[glance_store]"]
    if draw(st.booleans()):
        lines.append(f"stores = {', '.join(stores)}")
    if draw(st.booleans()):
        lines.append(f"default_store = {draw(st.sampled_from([*DRIVER_NAMES, *stores]))}")
    lines += draw(option_lines(root))
    return "\n".join(lines) + "\n"


@st.composite
def multi_store_files(draw: st.DrawFn, root: Path) -> str:
    names = draw(st.lists(
        st.one_of(st.from_regex(r"\A[a-z][a-z0-9_-]{0,8}\Z"),
                  st.sampled_from(["glance_store", "DEFAULT", "backend_defaults", "", "a:b", " "])),
        min_size=0, max_size=4,
    ))  # fmt: skip
    pairs = [f"{n}:{draw(st.sampled_from(DRIVER_NAMES))}" for n in names]
    if draw(st.integers(0, 9)) == 0:
        pairs.append(draw(line_text(12)))
    lines = ["[DEFAULT]", f"enabled_backends = {', '.join(pairs)}", "[glance_store]"]
    if draw(st.booleans()):
        lines.append(f"default_backend = {draw(st.sampled_from([*names, 'nosuch', '']))}")
    lines += draw(option_lines(root, list(CORE_OPTIONS)))
    for group in [*dict.fromkeys(names), "backend_defaults"]:
        if draw(st.booleans()):
            lines.append(f"[{group}]")
            lines += draw(option_lines(root, list(OPTIONS)))
    return "\n".join(lines) + "\n"


def _write(root: Path, text: str) -> Path:
    path = root / "fuzz.conf"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")  # lone surrogates: bad UTF-8
    return path


@scaled(0.5)
@given(data=st.data())
def test_fuzz_legacy_config(workdir: Path, data: st.DataObject) -> None:
    load(_write(workdir, data.draw(legacy_files(workdir))))


@scaled(0.5)
@given(data=st.data())
def test_fuzz_multi_store_config(workdir: Path, data: st.DataObject) -> None:
    load(_write(workdir, data.draw(multi_store_files(workdir))))


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["[DEFAULT]", "[glance_store]", "[backend_defaults]", "[a]", "[",
                             "enabled_backends = a:file", "stores = file, http", "= x",
                             "default_backend = a", "  continued", "#", ";x", "%(x)s", "$y"]),
            line_text(40),
            st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(sorted(OPTIONS)), line_text(20)),
        ),
        max_size=10,
    ).map("\n".join)
)  # fmt: skip
def test_fuzz_arbitrary_config_text(workdir: Path, text: str) -> None:
    load(_write(workdir, text))
