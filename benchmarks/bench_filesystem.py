"""Filesystem-store benchmark: imgstore against glance_store and the raw limits.

Not a test. Run from the repository root::

    .venv/bin/python benchmarks/bench_filesystem.py [--size-mib 1024] [--rss-gib 4]
    .venv/bin/python benchmarks/bench_filesystem.py --size-mib 64   # quick (tox -e bench)

In one run it measures, on a file of random bytes held in the page cache:

* ``cat FILE > /dev/null`` -- the read limit;
* md5 and sha512 of the file in two threads, each reading the file itself in
  4 MiB chunks (like ``md5sum & sha512sum``) -- the hashing limit of an add;
* imgstore ``add`` (filesystem store, md5 + sha512) and ``get`` (chunks written
  to /dev/null, the way ``cat`` consumes them);
* glance_store ``add_to_backend_with_multihash`` (sha512; it always adds md5)
  and ``get_from_backend``, from the package index in its own venv
  (``.cache/bench/glance-venv``, made on the first run and reused), driven by
  ``benchmarks/glance_driver.py`` in a subprocess;
* the peak RSS of a child process adding a generated image of ``--rss-gib``.

Every contender runs ``--repeat`` times, interleaved, and the best time counts
(the machine is noisy). Writing into the page cache costs far more on memory the
kernel freed a few seconds earlier and gave back to the hypervisor (virtio-balloon
free page reporting) than on memory freed just before, so every add -- imgstore's
and glance_store's -- starts after the same pause (``--settle``) since the
previous image was deleted. The page cache cannot be dropped here, so the file is
read once before measuring and every contender reads it from the page cache.
imgstore fsyncs the image before it reports success; glance_store does not.
Images go to ``.cache/bench/run-PID/`` and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".cache" / "bench"
GLANCE_VENV = BENCH_DIR / "glance-venv"
GLANCE_DRIVER = Path(__file__).resolve().with_name("glance_driver.py")
MIB = 1024 * 1024
HASH_CHUNK = 4 * MIB

TARGETS = {
    "imgstore add / glance_store add": 2.0,
    "imgstore add / md5||sha512 limit": 0.85,
    "imgstore get / cat": 0.9,
}
RSS_TARGET_MIB = 200


@dataclass
class Timings:
    """Best-of-N bookkeeping for one contender."""

    name: str
    seconds: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.seconds.append(seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    def mbps(self, size: int) -> float:
        return size / 1e6 / self.best


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# -- setup ------------------------------------------------------------------


def make_source(path: Path, size: int) -> None:
    """A file of ``size`` random bytes, on disk (fsynced) and in the page cache."""
    block = 16 * MIB
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(block, left)
            fh.write(os.urandom(n))
            left -= n
        fh.flush()
        os.fsync(fh.fileno())  # no writeback of the source competes with the contenders


def warm(path: Path) -> None:
    """Read ``path`` once so it sits in the page cache."""
    buf = bytearray(HASH_CHUNK)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass


def ensure_glance_venv(spec: str) -> Path:
    """The python of a venv with glance_store installed (made once, then reused)."""
    python = GLANCE_VENV / "bin" / "python"
    marker = GLANCE_VENV / ".bench-installed"
    if python.exists() and marker.exists() and marker.read_text() == spec:
        return python
    log(f"creating {GLANCE_VENV.relative_to(ROOT)} with {spec} (once)")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(GLANCE_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", spec],
        check=True,
    )
    marker.write_text(spec)
    return python


def imgstore_stores(datadir: Path):  # type: ignore[no-untyped-def]
    """imgstore configured like the glance_store side: one filesystem store."""
    from imgstore import Stores

    conf_file = datadir.parent / "imgstore-bench.conf"
    conf_file.write_text(
        "[glance_store]\n"
        "stores = file\n"
        "default_store = file\n"
        f"filesystem_store_datadir = {datadir}\n"
    )
    return Stores.from_config_files(conf_file)


# -- contenders -----------------------------------------------------------


def time_cat(source: Path) -> float:
    with open(os.devnull, "wb") as devnull:
        start = time.perf_counter()
        subprocess.run(["cat", str(source)], stdout=devnull, check=True)
        return time.perf_counter() - start


def time_hash_limit(source: Path) -> tuple[float, str, str]:
    """md5 and sha512 of the file, each in its own thread reading the file itself."""
    results: dict[str, str] = {}

    def run(name: str) -> None:
        h = hashlib.new(name)
        buf = bytearray(HASH_CHUNK)
        view = memoryview(buf)
        with open(source, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                h.update(view[:n])
        results[name] = h.hexdigest()

    threads = [threading.Thread(target=run, args=(name,)) for name in ("md5", "sha512")]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, results["md5"], results["sha512"]


def time_imgstore(stores, source: Path, size: int, settle: float) -> tuple[float, float, str, str]:  # type: ignore[no-untyped-def]
    """One add and one get of the image just added; the image is deleted afterwards."""
    image_id = str(uuid.uuid4())
    time.sleep(settle)
    with open(source, "rb") as fh:
        start = time.perf_counter()
        result = stores.add(image_id, fh, size=size, hash_algo="sha512")
        add_seconds = time.perf_counter() - start
    # imgstore writes with O_DIRECT, so the new image is not in the page cache;
    # get is compared with cat from the page cache, so warm it the same way.
    from imgstore.location import parse

    warm(Path(parse(result.location).path))  # type: ignore[attr-defined]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        read = 0
        start = time.perf_counter()
        with stores.get(result.location) as reader:
            for chunk in reader:
                os.write(devnull, chunk)
                read += len(chunk)
        get_seconds = time.perf_counter() - start
    finally:
        os.close(devnull)
    stores.delete(result.location)
    if read != size or result.size != size:
        raise SystemExit(f"imgstore stored {result.size} and read back {read} of {size} bytes")
    return add_seconds, get_seconds, result.checksum, result.multihash


def run_json(cmd: list[str]) -> dict[str, object]:
    """Run ``cmd`` and parse the JSON it prints; show its stderr if it fails."""
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"{Path(cmd[1]).name if cmd[1] != '-c' else 'child'} failed")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def time_glance(python: Path, datadir: Path, source: Path, settle: float) -> dict[str, object]:
    """One glance_store add and get of ``source``, timed inside the driver process."""
    return run_json(
        [
            str(python),
            str(GLANCE_DRIVER),
            "--datadir",
            str(datadir),
            "--source",
            str(source),
            "--settle",
            str(settle),
        ]
    )


RSS_CHILD = r"""
import json, os, sys
from imgstore import Stores

size, conf_file = int(sys.argv[1]), sys.argv[2]

def vm(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0

stores = Stores.from_config_files(conf_file)
block = os.urandom(1024 * 1024)

def source():
    left = size
    while left:
        n = min(len(block), left)
        yield block[:n] if n < len(block) else block
        left -= n

before = vm("VmRSS")
result = stores.add("rss-probe", source(), size=size, hash_algo="sha512")
peak = vm("VmHWM")
stores.delete(result.location)
json.dump({"rss_before": before, "peak": peak, "size": result.size}, sys.stdout)
"""


def measure_rss(datadir: Path, size: int) -> dict[str, int]:
    """Peak RSS (VmHWM) of a fresh process adding a generated image of ``size`` bytes."""
    conf_file = datadir.parent / "imgstore-bench.conf"
    got = run_json([sys.executable, "-c", RSS_CHILD, str(size), str(conf_file)])
    return {k: int(v) for k, v in got.items()}  # type: ignore[call-overload]


# -- main -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark imgstore's filesystem store against glance_store and raw limits."
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="test file size (1024)")
    parser.add_argument(
        "--rss-gib",
        type=float,
        default=None,
        help="image size for the peak-RSS probe (4; 0.5 when --size-mib < 1024); 0 skips",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender, best counts")
    parser.add_argument(
        "--glance-spec", default="glance_store", help="pip requirement for glance_store"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds to pause before every add (3), so that every contender writes into "
        "memory in the same state (see the module docstring)",
    )
    parser.add_argument("--no-glance", action="store_true", help="skip glance_store")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.rss_gib is None:
        args.rss_gib = 4.0 if args.size_mib >= 1024 else 0.5

    size = args.size_mib * MIB
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    glance_python = None if args.no_glance else ensure_glance_venv(args.glance_spec)
    work = BENCH_DIR / f"run-{os.getpid()}"
    work.mkdir()
    try:
        return run(args, size, work, glance_python)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, size: int, work: Path, glance_python: Path | None) -> int:
    source = work / "source.bin"
    imgstore_dir = work / "imgstore"
    glance_dir = work / "glance"
    imgstore_dir.mkdir()
    glance_dir.mkdir()
    log(f"writing {args.size_mib} MiB of random bytes")
    make_source(source, size)
    warm(source)
    stores = imgstore_stores(imgstore_dir)

    cat = Timings("cat")
    limit = Timings("md5||sha512")
    img_add, img_get = Timings("imgstore add"), Timings("imgstore get")
    gl_add, gl_get = Timings("glance_store add"), Timings("glance_store get")
    glance_info: dict[str, object] = {}
    digests = None
    for rnd in range(args.repeat):
        log(f"round {rnd + 1}/{args.repeat}")
        warm(source)
        cat.add(time_cat(source))
        seconds, md5, sha512 = time_hash_limit(source)
        limit.add(seconds)
        digests = (md5, sha512)
        add_s, get_s, checksum, multihash = time_imgstore(stores, source, size, args.settle)
        if (checksum, multihash) != digests:
            raise SystemExit("imgstore returned hashes that differ from hashlib's")
        img_add.add(add_s)
        img_get.add(get_s)
        if glance_python is not None:
            glance_info = time_glance(glance_python, glance_dir, source, args.settle)
            if (glance_info["checksum"], glance_info["multihash"]) != digests:
                raise SystemExit("glance_store returned hashes that differ from hashlib's")
            if glance_info["read"] != size:
                raise SystemExit("glance_store read back the wrong number of bytes")
            gl_add.add(float(glance_info["add_seconds"]))  # type: ignore[arg-type]
            gl_get.add(float(glance_info["get_seconds"]))  # type: ignore[arg-type]
    stores.close()

    rss = None
    if args.rss_gib > 0:
        log(f"peak RSS probe: adding a generated {args.rss_gib:g} GiB image")
        rss = measure_rss(imgstore_dir, int(args.rss_gib * 1024 * MIB))

    return report(args, size, cat, limit, img_add, img_get, gl_add, gl_get, glance_info, rss)


def report(
    args: argparse.Namespace,
    size: int,
    cat: Timings,
    limit: Timings,
    img_add: Timings,
    img_get: Timings,
    gl_add: Timings,
    gl_get: Timings,
    glance_info: dict[str, object],
    rss: dict[str, int] | None,
) -> int:
    from imgstore.driver import DEFAULT_CHUNK_SIZE

    print(
        f"filesystem store, {args.size_mib} MiB of random bytes from the page cache, "
        f"best of {args.repeat}, {os.cpu_count()} CPUs"
    )
    print(
        f"imgstore chunk size {DEFAULT_CHUNK_SIZE // MIB} MiB; writes with O_DIRECT and fsyncs "
        "before returning; its get is timed from the page cache (warmed), like cat"
    )
    if glance_info:
        print(
            f"glance_store {glance_info['version']} chunk size "
            f"{int(glance_info['chunk_size']) // 1024} KiB (its default); does not fsync"  # type: ignore[call-overload]
        )
    print()
    print(f"{'contender':<22} {'MB/s':>9} {'best s':>8}   all runs (s)")
    for t in (cat, limit, img_add, gl_add, img_get, gl_get):
        if t.seconds:
            runs = " ".join(f"{s:.3f}" for s in t.seconds)
            print(f"{t.name:<22} {t.mbps(size):>9.0f} {t.best:>8.3f}   {runs}")
    print()
    ratios: dict[str, float] = {
        "imgstore add / md5||sha512 limit": img_add.mbps(size) / limit.mbps(size),
        "imgstore get / cat": img_get.mbps(size) / cat.mbps(size),
    }
    if gl_add.seconds:
        ratios["imgstore add / glance_store add"] = img_add.mbps(size) / gl_add.mbps(size)
        ratios["glance_store get / cat"] = gl_get.mbps(size) / cat.mbps(size)
        ratios["imgstore get / glance_store get"] = img_get.mbps(size) / gl_get.mbps(size)
    missed = []
    for name, value in ratios.items():
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            ok = value >= target
            verdict = f"(target >= {target:g}: {'ok' if ok else 'MISSED'})"
            if not ok:
                missed.append(name)
        print(f"{name:<34} {value:6.2f}x  {verdict}")
    if rss is not None:
        peak = rss["peak"] / MIB
        ok = peak < RSS_TARGET_MIB
        if not ok:
            missed.append("peak RSS")
        print(
            f"{'peak RSS adding ' + format(args.rss_gib, 'g') + ' GiB':<34} {peak:6.1f} MiB "
            f"(before the add {rss['rss_before'] / MIB:.1f} MiB; "
            f"target < {RSS_TARGET_MIB}: {'ok' if ok else 'MISSED'})"
        )
    if args.size_mib < 1024:
        print(f"note: targets are meant for --size-mib 1024; {args.size_mib} MiB is a smoke run")
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
