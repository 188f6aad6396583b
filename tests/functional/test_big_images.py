"""One big image through filesystem, RBD, S3 (radosgw) and Swift, on the real servers.

Each crosses the limits big images hit in its backend: 4 GiB (32-bit sizes and
offsets) everywhere, so filesystem and RBD take 4.25 GiB; and 5 GiB, the most one S3
PUT or one Swift object may hold, so S3 and Swift take 5.5 GiB (S3 goes multipart and
Swift writes a segmented object). The image is a generated
stream, never held in memory nor on local disk; it is added, read back in full and
hashed apart from imgstore, then deleted, in a process of its own
(``big_image_client.py``) whose peak RSS must stay below 250 MiB. Nothing may be left
in the backend afterwards.

Memory is bounded by chunk size x concurrency, so the settings that set them are
chosen for 250 MiB where the defaults are larger: RBD writes 4 chunks of 8 MiB at a
time (the default window of 8 measured 255 MiB), Swift 32 MiB segments on 2 threads
(Glance's default 200 MiB segments on 4 threads measured 699 MiB: segments are
buffered whole until a streaming segment writer replaces the buffers).

``IMGSTORE_BIG_IMAGE_MIB`` sets one size for all, for a quick local run; CI runs the
sizes below.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore import Stores
from tests.functional.big_image_client import digests
from tests.functional.conftest import in_ci

pytestmark = [pytest.mark.functional, pytest.mark.slow]

MiB = 1 << 20
SIZES = {"file": 4352 * MiB, "rbd": 4352 * MiB, "s3": 5632 * MiB, "swift": 5632 * MiB}
"""Past 4 GiB for all; past 5 GiB where one object or PUT may hold no more."""
if "IMGSTORE_BIG_IMAGE_MIB" in os.environ:
    SIZES = dict.fromkeys(SIZES, int(os.environ["IMGSTORE_BIG_IMAGE_MIB"]) * MiB)
PEAK_RSS_LIMIT = 250 * MiB
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def expected() -> dict[int, dict[str, str]]:
    """md5 and sha512 of the stream at each size, computed once by the test itself."""
    if in_ci():
        assert "IMGSTORE_BIG_IMAGE_MIB" not in os.environ, "CI runs the sizes in SIZES"
    return digests(*SIZES.values())


@contextlib.contextmanager
def _file(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], set[str]]]]:
    data = tmp_path / "images"
    data.mkdir()
    conf = tmp_path / "file.conf"
    conf.write_text(f"[glance_store]\nstores = file\ndefault_store = file\n"
                    f"filesystem_store_datadir = {data}\n")  # fmt: skip
    yield conf, lambda: {p.name for p in data.iterdir()}


@contextlib.contextmanager
def _rbd(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], set[str]]]]:
    from tests.functional.rbd_helpers import (
        admin_cluster,
        ceph_details,
        pool_listing,
        rbd_options,
        temp_pool,
        write_config,
    )

    details = ceph_details()
    with admin_cluster(details) as cluster, temp_pool(cluster, "imgstore-big") as pool:
        options = rbd_options(details, pool, rbd_store_write_window=4)  # 4 x 8 MiB in flight
        conf = write_config(tmp_path / "rbd.conf", {"rbd": options}, {})
        yield conf, lambda: pool_listing(cluster, pool)


@contextlib.contextmanager
def _s3(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], set[str]]]]:
    from tests.functional.test_s3_conformance import (
        bucket_listing,
        new_bucket,
        purge_bucket,
        rgw_collect_garbage,
        s3_options,
        server,
        write_config,
    )

    details = server("ceph")
    conf = write_config(tmp_path / "s3.conf", s3_options(details, new_bucket()))
    with Stores.from_config_files(conf) as stores:
        try:
            yield conf, bucket_listing(stores, "s3", details)
        finally:
            purge_bucket(stores.driver("s3"))
            rgw_collect_garbage(details)  # frees the memstore OSD's RAM now


@contextlib.contextmanager
def _swift(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], set[str]]]]:
    from tests.functional.swift_helpers import (
        container_listing,
        new_container,
        raw_connection,
        server,
        swift_options,
        write_config,
    )

    srv = server("swift")
    container = new_container()
    # 32 MiB segments, 2 uploading while the next fills: Glance's default 200 MiB segments
    # on 4 threads hold up to 5 x 200 MiB (measured: 699 MiB peak RSS)
    options = swift_options(
        srv, container, swift_store_large_object_chunk_size=32, swift_store_thread_pools=2
    )
    conf = write_config(tmp_path / "swift.conf", options)
    try:
        yield conf, container_listing(srv, container)
    finally:
        conn = raw_connection(srv)
        with contextlib.suppress(Exception):
            for obj in conn.get_container(container, full_listing=True)[1]:
                conn.delete_object(container, obj["name"])
            conn.delete_container(container)
        conn.close()


BACKENDS: dict[str, Callable[[Path], Any]] = {
    "file": _file,
    "rbd": _rbd,
    "s3": _s3,
    "swift": _swift,
}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_big_image_round_trip(
    backend: str, tmp_path: Path, expected: dict[int, dict[str, str]]
) -> None:
    size, digest = SIZES[backend], expected[SIZES[backend]]
    with BACKENDS[backend](tmp_path) as (conf, listing):
        before = listing()
        proc = subprocess.run(
            [sys.executable, "-m", "tests.functional.big_image_client", str(conf), backend,
             str(size)],
            cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.splitlines()[-1])
        added, read = result["added"], result["read"]
        assert added["size"] == size
        assert added["checksum"] == digest["md5"]
        assert (added["hash_algo"], added["multihash"]) == ("sha512", digest["sha512"])
        assert read == {"size": size, "md5": digest["md5"]}, "the bytes read back differ"
        peak = result["peak_rss_kib"] * 1024
        assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / MiB:.0f} MiB"
        assert listing() == before, "the image was deleted: nothing may be left"
