"""The conformance suite against the filesystem driver, on a real temporary directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore import Capability, Stores
from imgstore.testing import ConformanceTests, ReadConformanceTests, StoreUnderTest

pytestmark = pytest.mark.functional


def _listing(root: Path) -> set[str]:
    """Every entry below ``root``, hidden and partial files included."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def _write_config(path: Path, datadir: Path, extra: dict[str, Any]) -> Path:
    lines = [
        "[glance_store]",
        "stores = file",
        "default_store = file",
        f"filesystem_store_datadir = {datadir}",
        *(f"{key} = {value}" for key, value in extra.items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class TestFilesystemConformance(ConformanceTests):
    """Legacy ``[glance_store]`` configuration, default 4 MiB chunks."""

    extra: dict[str, Any] = {}  # noqa: RUF012 - read-only class default

    @pytest.fixture
    def store_under_test(self, tmp_path: Path) -> Iterator[StoreUnderTest]:
        datadir = tmp_path / "images"
        configs = iter(range(1000))

        def make_stores(overrides: dict[str, Any]) -> Stores:
            conf = tmp_path / f"imgstore-{next(configs)}.conf"
            return Stores.from_config_files(
                _write_config(conf, datadir, {**self.extra, **overrides})
            )

        with make_stores({}) as stores:
            yield StoreUnderTest(
                stores=stores,
                backend="file",
                listing=lambda: _listing(datadir),
                make_stores=make_stores,
                no_secrets=True,  # a local directory: no credential to leak
            )


class TestFilesystemConformanceSmallChunksThin(TestFilesystemConformance):
    """Smallest chunk size and thin provisioning: reads yield 4 KiB chunks, 4 KiB holes."""

    extra = {  # noqa: RUF012
        "filesystem_store_chunk_size": 4096,
        "filesystem_thin_provisioning": True,
    }


class TestFilesystemReadConformanceEmulatedRanges(ReadConformanceTests):
    """The read suite with images placed out of band (``seed``, as a read-only backend
    would), and the driver told not to claim READ_RANDOM, so that ranged reads go
    through the core's emulation instead of the driver's native seek."""

    @pytest.fixture
    def store_under_test(self, tmp_path: Path) -> Iterator[StoreUnderTest]:
        datadir = tmp_path / "images"
        conf = _write_config(tmp_path / "imgstore.conf", datadir, {})

        def seed(image_id: str, data: bytes) -> str:
            path = datadir / image_id
            path.write_bytes(data)
            return path.as_uri()

        with Stores.from_config_files(conf) as stores:
            driver = stores.driver("file")
            driver.reads_ranges = False
            assert Capability.READ_RANDOM not in stores.capabilities("file")
            yield StoreUnderTest(
                stores=stores,
                backend="file",
                seed=seed,
                listing=lambda: _listing(datadir),
                no_secrets=True,  # a local directory: no credential to leak
            )
