"""A backend that cannot be configured: fail fast by default, or stay loaded as unusable.

``Stores(conf)`` refuses a configuration with a broken backend (the library's default);
``Stores(conf, keep_unusable=True)`` - the glance_store compat package, ``imgstore
stores`` - keeps the others serving and reports the broken one with its reason. The
broken backend here is a filesystem store whose data directory lies under a regular
file, which no driver can create.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from oslo_config import cfg

from imgstore import Capability, Stores
from imgstore.cli import main
from imgstore.exceptions import BadConfiguration, BadLocation
from tests.functional.conftest import import_or_fail

glance_store = import_or_fail("glance_store", "install imgstore's compat package (compat/)")


def _config(tmp_path: Path) -> Path:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    conf = tmp_path / "stores.conf"
    conf.write_text(
        "[DEFAULT]\nenabled_backends = good:file, broken:file\n"
        "[glance_store]\ndefault_backend = good\n"
        f"[good]\nfilesystem_store_datadir = {tmp_path / 'good'}\n"
        f"[broken]\nfilesystem_store_datadir = {blocker / 'images'}\n"
    )
    return conf


def test_by_default_a_broken_backend_fails_the_whole_construction(tmp_path: Path) -> None:
    with pytest.raises(BadConfiguration, match="broken"):
        Stores.from_config_files(_config(tmp_path))


def test_kept_unusable_the_others_serve_and_it_says_why(tmp_path: Path) -> None:
    with Stores.from_config_files(_config(tmp_path), keep_unusable=True) as stores:
        assert stores.backends == ["good", "broken"]
        info = {i.name: i for i in stores.describe()}
        assert info["good"].unusable is None
        assert info["broken"].unusable and "broken" in info["broken"].unusable
        assert info["broken"].capabilities == Capability(0)
        assert info["broken"].schemes == ("file",)
        result = stores.add("img-1", io.BytesIO(b"bytes"), backend="good")
        assert b"".join(stores.get(result.location)) == b"bytes"
        with pytest.raises(BadConfiguration, match=r"backend 'broken' is unusable: "):
            stores.add("img-2", io.BytesIO(b"bytes"), backend="broken")
        with pytest.raises(BadConfiguration, match=r"backend 'broken' is unusable"):
            stores.driver("broken")
        # a location only the broken backend could hold says so (not "no backend")
        with pytest.raises(BadConfiguration, match="unusable"):
            stores.size(f"file://{tmp_path / 'a-file' / 'images' / 'img-2'}")
        with pytest.raises(BadLocation, match="no configured backend reads"):
            stores.size("rbd://img-3")  # no backend of that kind at all


def test_cli_stores_lists_the_unusable_backend_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = str(_config(tmp_path))
    assert main(["--config-file", conf, "stores"]) == 2
    out, err = capsys.readouterr()
    assert "UNUSABLE" in out and "broken: unusable: " in out
    assert "unusable backends: broken" in err
    assert main(["--config-file", conf, "stores", "--json"]) == 2
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["good"]["unusable"] is None and rows["broken"]["unusable"]
    # other commands still refuse a broken configuration
    assert main(["--config-file", conf, "size", f"file://{tmp_path}/good/x"]) == 2


def test_compat_loads_a_broken_backend_unusable_like_glance_store(tmp_path: Path) -> None:
    conf = cfg.ConfigOpts()
    conf(args=[], default_config_files=[str(_config(tmp_path))], default_config_dirs=[])
    conf.register_opt(cfg.DictOpt("enabled_backends"))  # Glance registers this one
    glance_store.register_store_opts(conf)
    assert glance_store.create_multi_stores(conf) == 2
    glance_store.verify_store()
    broken = glance_store.get_store_from_store_identifier("broken")
    good = glance_store.get_store_from_store_identifier("good")
    assert broken.unusable and good.unusable is None
    assert broken.get_schemes() == ("file",)
    assert not broken.is_capable(glance_store.capabilities.BitMasks.WRITE_ACCESS)
    assert good.is_capable(glance_store.capabilities.BitMasks.WRITE_ACCESS)
    assert broken.url_prefix is None
    assert broken.store_conf.filesystem_store_datadir.endswith("images")
    with pytest.raises(glance_store.StoreAddDisabled, match="broken"):
        glance_store.add_with_multihash(conf, "img-1", io.BytesIO(b"x"), 1, "broken", "sha512")
    uri, size, *_ = glance_store.add_with_multihash(
        conf, "img-1", io.BytesIO(b"x"), 1, "good", "sha512"
    )
    assert size == 1 and uri.endswith("/good/img-1")
