"""Migration benchmark: ``imgstore migrate`` of 20 x 64 MiB images, filesystem -> RBD.

Not a test. Needs the test cluster (``python -m tests.functional.services up ceph``).
Run from the repository root::

    .venv/bin/python benchmarks/bench_migrate.py [--images 20] [--size-mib 64] [--repeat 1]

The images are added once to a filesystem store under ``.cache/bench`` (read
into the page cache); then, in one run, the real command (a process of its
own, with its journal, md5 + sha512 of every source, every copy read back)
migrates them into a fresh RBD pool with ``--concurrency 1`` and with
``--concurrency 4``, ``--repeat`` times interleaved; the median counts.
Reported: images/s and MB/s (source bytes / wall seconds) and the speed-up.
The OSD shares the machine's cores with the client.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import BENCH_DIR, MIB, ROOT, make_source

DETAILS = ROOT / ".cache" / "services" / "ceph" / "details.json"
SCRIPT = Path(sys.executable).with_name("imgstore")
CONCURRENCIES = (1, 4)


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def prepare_source(count: int, size: int) -> tuple[Path, Path]:
    """A filesystem store holding ``count`` images of ``size`` bytes; its dir and listing."""
    from imgstore import Stores

    datadir = BENCH_DIR / f"migrate-src-{count}x{size}"
    listing = datadir.with_suffix(".jsonl")
    if listing.exists():
        return datadir, listing
    blob = make_source("migrate", size)
    conf = BENCH_DIR / "migrate-src.conf"
    conf.write_text(f"[glance_store]\nstores = file\nfilesystem_store_datadir = {datadir}\n")
    rows = []
    with Stores.from_config_files(conf) as stores:
        for n in range(count):
            with open(blob, "rb") as fh:
                r = stores.add(f"bench-{n:03d}", fh, size=size)
            rows.append(
                {
                    "image_id": r.image_id,
                    "location": r.location,
                    "size": r.size,
                    "checksum": r.checksum,
                    "os_hash_algo": r.hash_algo,
                    "os_hash_value": r.multihash,
                }
            )
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return datadir, listing


def warm(datadir: Path) -> None:
    for path in datadir.iterdir():
        with open(path, "rb") as fh:
            while fh.read(16 * MIB):
                pass


def run_once(
    details: dict[str, str], datadir: Path, listing: Path, concurrency: int
) -> tuple[float, int]:
    """Migrate everything into a new pool; (wall seconds, images migrated). Pool removed after."""
    import rados
    import rbd

    pool = f"bench-migrate-{uuid.uuid4().hex[:6]}"
    cluster = rados.Rados(conffile=details["ceph_conf"], rados_id=details["user"])
    cluster.connect()
    cluster.create_pool(pool)
    try:
        with cluster.open_ioctx(pool) as ioctx:
            rbd.RBD().pool_init(ioctx, False)
        with tempfile.TemporaryDirectory() as tmp:
            conf = Path(tmp) / "migrate.conf"
            conf.write_text(
                "[DEFAULT]\nenabled_backends = src:file, dst:rbd\n"
                "[glance_store]\ndefault_backend = src\n"
                f"[src]\nfilesystem_store_datadir = {datadir}\n"
                f"[dst]\nrbd_store_pool = {pool}\nrbd_store_user = {details['user']}\n"
                f"rbd_store_ceph_conf = {details['ceph_conf']}\n"
            )
            report = Path(tmp) / "report.json"
            cmd = [
                str(SCRIPT) if SCRIPT.exists() else sys.executable,
                *([] if SCRIPT.exists() else ["-m", "imgstore"]),
                "--config-file", str(conf), "migrate", str(listing), "--to", "dst",
                "--concurrency", str(concurrency), "--journal", str(Path(tmp) / "journal"),
                "--report", str(report), "-q",
            ]  # fmt: skip
            warm(datadir)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"migrate failed:\n{proc.stderr[-3000:]}")
            migrated = json.loads(report.read_text())["summary"]["outcomes"].get("migrated", 0)
    finally:
        cluster.delete_pool(pool)
        cluster.shutdown()
    return wall, migrated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if not DETAILS.exists():
        raise SystemExit(
            "the ceph test server is not up: python -m tests.functional.services up ceph"
        )
    details = json.loads(DETAILS.read_text())
    size = args.size_mib * MIB
    total = args.images * size
    log(f"preparing {args.images} x {args.size_mib} MiB in a filesystem store")
    datadir, listing = prepare_source(args.images, size)
    walls: dict[int, list[float]] = {c: [] for c in CONCURRENCIES}
    for round_ in range(args.repeat):
        for c in CONCURRENCIES:
            wall, migrated = run_once(details, datadir, listing, c)
            if migrated != args.images:
                raise SystemExit(f"only {migrated} of {args.images} images migrated")
            walls[c].append(wall)
            log(f"round {round_ + 1}: --concurrency {c}: {wall:.2f} s")
    print(f"imgstore migrate, {args.images} x {args.size_mib} MiB, filesystem -> RBD "
          f"(median of {args.repeat}; md5 + sha512 of each source, copies read back)")  # fmt: skip
    print(f"{'concurrency':>11} {'seconds':>8} {'images/s':>9} {'MB/s':>8}")
    medians = {}
    for c in CONCURRENCIES:
        wall = statistics.median(walls[c])
        medians[c] = wall
        print(f"{c:>11} {wall:8.2f} {args.images / wall:9.2f} {total / 1e6 / wall:8.1f}")
    print(f"speed-up --concurrency 4 vs 1: {medians[1] / medians[4]:.2f}x "
          f"on {os.cpu_count()} CPUs (the OSD shares them)")  # fmt: skip


if __name__ == "__main__":
    main()
