"""What disk-format inspection costs an add: filesystem store, inspection on and off.

Not a test. Run from the repository root::

    .venv/bin/python benchmarks/bench_inspection.py [--size-mib 1024] [--repeat 3]

In one run, on an image file held in the page cache (random bytes, so raw; and the
same bytes converted to qcow2 by qemu-img when it is installed), it measures:

* imgstore ``add`` to the filesystem store with ``image_inspection = off``;
* the same with ``image_inspection = report`` (the default): the inspector runs on a
  worker thread of its own beside the md5 and sha512 threads;
* the inspector alone, fed the file's chunks on one thread (its own CPU cost, the
  reading not counted).

Adds are interleaved, each contender first in every other round, and each one's
median counts (the machine is noisy). Printed: throughputs, the ratio report/off (target:
at least 0.97, i.e. inspection costs at most 3% of the add's throughput), and the
inspector's own seconds per GiB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imgstore import Stores  # noqa: E402
from imgstore.inspection import InspectionPolicy, StreamInspector  # noqa: E402

MIB = 1 << 20
TARGET = 0.97


def _stores(work: Path, mode: str) -> Stores:
    data = work / f"store-{mode}"
    data.mkdir(exist_ok=True)
    conf = work / f"{mode}.conf"
    conf.write_text(
        f"[glance_store]\nstores = file\nfilesystem_store_datadir = {data}\n"
        f"image_inspection = {mode}\n"
    )
    return Stores.from_config_files(conf)


def _add_seconds(stores: Stores, image: Path, n: int) -> float:
    with open(image, "rb") as f:
        started = time.perf_counter()
        result = stores.add(f"bench-{n}", f, size=image.stat().st_size)
        seconds = time.perf_counter() - started
    stores.delete(result.location)
    return seconds


def _inspector_seconds(image: Path, chunk: int) -> float:
    """The inspector's own time over the image's chunks (read first, not timed)."""
    inspector = StreamInspector(InspectionPolicy("report"), None, "bench")
    spent = 0.0
    with open(image, "rb") as f:
        while piece := f.read(chunk):
            started = time.perf_counter()
            inspector.update(piece)
            spent += time.perf_counter() - started
    started = time.perf_counter()
    inspector.result()
    return spent + time.perf_counter() - started


def _bench(work: Path, image: Path, label: str, repeat: int) -> float:
    size = image.stat().st_size
    with open(image, "rb") as f:  # into the page cache
        while f.read(8 * MIB):
            pass
    times: dict[str, list[float]] = {"off": [], "report": []}
    with _stores(work, "off") as off, _stores(work, "report") as report:
        for n in range(repeat):
            pair = [("off", off), ("report", report)]
            for mode, stores in pair if n % 2 == 0 else pair[::-1]:  # neither always first
                time.sleep(1.0)  # the same settling pause before every add
                times[mode].append(_add_seconds(stores, image, n))
        chunk = report.driver().write_chunk_size
    alone = _inspector_seconds(image, chunk)
    gib = size / (1 << 30)
    off_s, on_s = statistics.median(times["off"]), statistics.median(times["report"])
    ratio = off_s / on_s
    print(f"{label}: {size // MIB} MiB")
    print(f"  add, image_inspection = off:    {size / MIB / off_s:8.1f} MiB/s (median of {repeat})")
    print(f"  add, image_inspection = report: {size / MIB / on_s:8.1f} MiB/s")
    print(f"  ratio report/off: {ratio:.3f} (target >= {TARGET})"
          f"{'' if ratio >= TARGET else '  BELOW TARGET'}")  # fmt: skip
    print(f"  the inspector alone: {alone / gib:.3f} s/GiB of CPU on one thread")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bench_dir = ROOT / ".cache" / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=bench_dir) as tmp:
        work = Path(tmp)
        raw = work / "image.raw"
        with open(raw, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        ratios = [_bench(work, raw, "raw", args.repeat)]
        qemu_img = shutil.which("qemu-img")
        if qemu_img:
            qcow2 = work / "image.qcow2"
            subprocess.run([qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(raw),
                            str(qcow2)], check=True)  # fmt: skip
            raw.unlink()
            ratios.append(_bench(work, qcow2, "qcow2", args.repeat))
        else:
            print("qcow2: skipped (qemu-img is not installed)")
    return 0 if min(ratios) >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
