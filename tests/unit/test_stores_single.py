"""Stores.single: one backend configured from one option group, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from oslo_config import cfg

import imgstore
from imgstore import config


def _conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    conf(args=[], default_config_files=[], default_config_dirs=[])
    return conf


def test_stores_single_reads_one_group_only(tmp_path: Path) -> None:
    conf = _conf()
    config.register_core_opts(conf)
    conf.set_override("stores", ["nosuchdriver"], "glance_store")  # ignored by single()
    conf.register_opts(config.load_driver_class("file").options(), "staging")
    conf.set_override("filesystem_store_datadir", str(tmp_path / "s"), "staging")
    with imgstore.Stores.single(conf, "file", group="staging") as stores:
        assert stores.backends == ["staging"]
        assert stores.default_backend == "staging"
        result = stores.add("img-11", b"abc")
        assert result.location == f"file://{tmp_path}/s/img-11"
        assert result.metadata == {"store": "staging"}
    with pytest.raises(imgstore.BadConfiguration):
        imgstore.Stores.single(conf, "nosuchdriver")


def test_stores_single_in_the_store_group_is_named_after_its_driver(tmp_path: Path) -> None:
    conf = _conf()
    config.register_core_opts(conf)
    conf.register_opts(config.load_driver_class("file").options(), "glance_store")
    conf.set_override("filesystem_store_datadir", str(tmp_path), "glance_store")
    with imgstore.Stores.single(conf, "filesystem") as stores:  # glance_store's alias
        assert stores.backends == ["file"]
        assert stores.describe()[0].driver == "file"


def test_stores_single_misconfigured_is_bad_configuration() -> None:
    conf = _conf()
    config.register_core_opts(conf)
    conf.register_opts(config.load_driver_class("file").options(), "g")
    conf.set_override("filesystem_store_datadir", "relative/path", "g")
    with pytest.raises(imgstore.BadConfiguration, match="absolute"):
        imgstore.Stores.single(conf, "file", group="g")
