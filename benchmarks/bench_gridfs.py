"""GridFS benchmark: imgstore's gridfs driver against bare pymongo GridFSBucket.

Not a test. Needs the MongoDB-protocol test server from the harness::

    .venv/bin/python -m tests.functional.services up mongo
    .venv/bin/python benchmarks/bench_gridfs.py [--size-mib 256] [--chunk-kib 255 1024 4096]
    .venv/bin/python benchmarks/bench_gridfs.py --size-mib 32      # quick

For each GridFS chunk size, one add and one get of the same file of random
bytes (read from the page cache) by each of:

* imgstore ``Stores.add`` (md5 + sha512, the default) with
  ``mongodb_store_chunk_size`` set to the chunk size, and ``Stores.get`` with
  the chunks written to /dev/null;
* bare pymongo ``GridFSBucket.upload_from_stream_with_id`` (chunk size
  ``chunk_size_bytes``, no hashing at all) and ``download_to_stream`` into
  /dev/null: the transport's own figure.

Every contender runs ``--repeat`` times, interleaved round by round (the order
of imgstore and pymongo flips every round), and the best time counts. The
server (SecantusDB, a Python reimplementation of the wire protocol, not the
genuine mongod) runs on the same cores, so the figures depend on the load: the
load average is printed with them. The client's CPU seconds (user + system of
this process, hashing threads included) are shown per contender too.

Everything goes to a bucket of its own (``bench_<random>``) in ``--db``; every
image and file is deleted after its round, the bucket's collections are
dropped at the end (and the database, when that leaves it empty). The source
file lives in ``.cache/bench/gridfs-run-PID/`` and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".cache" / "bench"
DETAILS = ROOT / ".cache" / "services" / "mongo" / "details.json"
MIB = 1024 * 1024
KIB = 1024
READ_CHUNK = 4 * MIB
TARGET = 0.9
"""imgstore (hashing) / bare pymongo (not hashing), for add and for get."""


@dataclass
class Timings:
    """Best-of-N bookkeeping for one contender: wall and client CPU seconds."""

    name: str
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, seconds: float, cpu: float) -> None:
        self.seconds.append(seconds)
        self.cpu.append(cpu)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def best_cpu(self) -> float:
        return self.cpu[self.seconds.index(self.best)]

    def mbps(self, size: int) -> float:
        return size / 1e6 / self.best


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Clock:
    """Wall time and this process's CPU time (all threads) since it was made."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = self._cpu()

    @staticmethod
    def _cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, self._cpu() - self.cpu


# -- setup ------------------------------------------------------------------


def make_source(path: Path, size: int) -> tuple[str, str]:
    """Write ``size`` random bytes to ``path`` (fsynced); return their md5 and sha512."""
    md5, sha512 = hashlib.md5(), hashlib.sha512()
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(16 * MIB, left))
            fh.write(block)
            md5.update(block)
            sha512.update(block)
            left -= len(block)
        fh.flush()
        os.fsync(fh.fileno())
    return md5.hexdigest(), sha512.hexdigest()


def warm(path: Path) -> None:
    """Read ``path`` once so it sits in the page cache."""
    buf = bytearray(READ_CHUNK)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass


def server_details() -> dict[str, Any]:
    if not DETAILS.exists():
        raise SystemExit(
            "mongo is not up: run `.venv/bin/python -m tests.functional.services up mongo`"
        )
    return json.loads(DETAILS.read_text())  # type: ignore[no-any-return]


def imgstore_stores(work: Path, uri: str, db: str, bucket: str, chunk: int):  # type: ignore[no-untyped-def]
    """A Stores with one gridfs backend writing ``chunk``-byte GridFS chunks."""
    from imgstore import Stores

    conf = work / f"imgstore-{chunk}.conf"
    conf.write_text(
        "[DEFAULT]\n"
        "enabled_backends = mongo:gridfs\n"
        "[glance_store]\n"
        "default_backend = mongo\n"
        "[mongo]\n"
        f"mongodb_store_uri = {uri}\n"
        f"mongodb_store_db = {db}\n"
        f"mongodb_store_bucket = {bucket}\n"
        f"mongodb_store_chunk_size = {chunk}\n"
    )
    conf.chmod(0o600)  # the URI holds the password
    return Stores.from_config_files(conf)


# -- contenders -------------------------------------------------------------


class Sink:
    """A write-only file object on /dev/null counting what it is given."""

    def __init__(self) -> None:
        self.fd = os.open(os.devnull, os.O_WRONLY)
        self.written = 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        return os.write(self.fd, data)

    def close(self) -> None:
        os.close(self.fd)


def run_imgstore(stores, source: Path, size: int, digests: tuple[str, str]):  # type: ignore[no-untyped-def]
    """One imgstore add and get of ``source``; the image is deleted afterwards."""
    image_id = f"bench-{uuid.uuid4().hex}"
    with open(source, "rb") as fh:
        clock = Clock()
        result = stores.add(image_id, fh, size=size)
        add = clock.stop()
    try:
        if (result.checksum, result.multihash) != digests or result.size != size:
            raise SystemExit("imgstore stored other bytes than the source's")
        read = 0
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            clock = Clock()
            with stores.get(result.location) as reader:
                for chunk in reader:
                    os.write(fd, chunk)
                    read += len(chunk)
            get = clock.stop()
        finally:
            os.close(fd)
    finally:
        stores.delete(result.location)
    if read != size:
        raise SystemExit(f"imgstore read back {read} of {size} bytes")
    return add, get


def run_pymongo(bucket, source: Path, size: int, chunk: int):  # type: ignore[no-untyped-def]
    """One bare GridFSBucket upload and download of ``source``; deleted afterwards."""
    file_id = f"bare-{uuid.uuid4().hex}"
    with open(source, "rb") as fh:
        clock = Clock()
        bucket.upload_from_stream_with_id(file_id, file_id, fh, chunk_size_bytes=chunk)
        add = clock.stop()
    try:
        sink = Sink()
        try:
            clock = Clock()
            bucket.download_to_stream(file_id, sink)
            get = clock.stop()
        finally:
            sink.close()
        read = sink.written
    finally:
        bucket.delete(file_id)
    if read != size:
        raise SystemExit(f"pymongo read back {read} of {size} bytes")
    return add, get


# -- main -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark imgstore's gridfs driver against bare pymongo GridFSBucket."
    )
    parser.add_argument("--size-mib", type=int, default=256, help="test file size (256)")
    parser.add_argument(
        "--chunk-kib",
        type=int,
        nargs="+",
        default=[255, 1024, 4096],
        help="GridFS chunk sizes in KiB (255 1024 4096)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender, best counts")
    parser.add_argument("--db", default="imgstore_bench", help="database (imgstore_bench)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.repeat < 1 or any(c < 1 for c in args.chunk_kib):
        parser.error("sizes and --repeat must be positive")

    details = server_details()
    size = args.size_mib * MIB
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    work = BENCH_DIR / f"gridfs-run-{os.getpid()}"
    work.mkdir()
    try:
        return run(args, details, size, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, details: dict[str, Any], size: int, work: Path) -> int:
    import pymongo
    from gridfs import GridFSBucket

    uri = details["uri_with_password"]
    bucket_name = f"bench_{uuid.uuid4().hex[:12]}"
    chunks = [c * KIB for c in args.chunk_kib]
    client: Any = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000)
    db = client[args.db]
    bare = GridFSBucket(db, bucket_name=bucket_name)
    all_stores = {}
    load_before = loadavg()
    try:
        all_stores = {c: imgstore_stores(work, uri, args.db, bucket_name, c) for c in chunks}
        source = work / "source.bin"
        log(f"writing {args.size_mib} MiB of random bytes; bucket {args.db}.{bucket_name}")
        digests = make_source(source, size)
        warm(source)

        # both sides create the GridFS indexes on their first write: not in the timings
        small = work / "small.bin"
        small_digests = make_source(small, MIB)
        for c, stores in all_stores.items():
            run_imgstore(stores, small, MIB, small_digests)
            run_pymongo(bare, small, MIB, c)

        timings = {
            c: {
                k: Timings(f"{k} {c // KIB} KiB")
                for k in ("imgstore add", "pymongo add", "imgstore get", "pymongo get")
            }
            for c in chunks
        }
        for rnd in range(args.repeat):
            log(f"round {rnd + 1}/{args.repeat} (load average {loadavg()})")
            for c, stores in all_stores.items():
                warm(source)
                t = timings[c]
                order = ("imgstore", "pymongo") if rnd % 2 == 0 else ("pymongo", "imgstore")
                for who in order:
                    if who == "imgstore":
                        add, get = run_imgstore(stores, source, size, digests)
                    else:
                        add, get = run_pymongo(bare, source, size, c)
                    t[f"{who} add"].add(*add)
                    t[f"{who} get"].add(*get)
                    log(f"  {c // KIB:>5} KiB {who:<8} add {add[0]:6.2f} s  get {get[0]:6.2f} s")
        load_after = loadavg()
        left = db[f"{bucket_name}.files"].count_documents({}) + db[
            f"{bucket_name}.chunks"
        ].count_documents({})
        if left:
            raise SystemExit(f"{left} GridFS documents were left behind in {bucket_name}")
    finally:
        for stores in all_stores.values():
            stores.close()
        for coll in ("files", "chunks"):
            db.drop_collection(f"{bucket_name}.{coll}")
        if not db.list_collection_names():
            client.drop_database(args.db)
        client.close()

    return report(args, details, size, chunks, timings, load_before, load_after)


def report(
    args: argparse.Namespace,
    details: dict[str, Any],
    size: int,
    chunks: list[int],
    timings: dict[int, dict[str, Timings]],
    load_before: str,
    load_after: str,
) -> int:
    print(
        f"GridFS, {args.size_mib} MiB of random bytes from the page cache, best of "
        f"{args.repeat}, {os.cpu_count()} CPUs"
    )
    print(f"server: {details.get('server', '?')}, on the same machine")
    print(f"load average (1 5 15 min): before {load_before}, after {load_after}")
    print("imgstore hashes md5 + sha512; bare pymongo hashes nothing")
    print()
    print(f"{'contender':<22} {'MB/s':>7} {'best s':>8} {'CPU s':>7}   all runs (s)")
    for c in chunks:
        for one in timings[c].values():
            runs = " ".join(f"{s:.2f}" for s in one.seconds)
            print(
                f"{one.name:<22} {one.mbps(size):>7.1f} {one.best:>8.2f} "
                f"{one.best_cpu:>7.2f}   {runs}"
            )
    print()
    print(f"{'chunk':>9} {'add imgstore/pymongo':>21} {'get imgstore/pymongo':>21}")
    missed = []
    for c in chunks:
        t = timings[c]
        ratios = []
        for op in ("add", "get"):
            ratio = t[f"imgstore {op}"].mbps(size) / t[f"pymongo {op}"].mbps(size)
            ok = ratio >= TARGET
            if not ok:
                missed.append(f"{op} {c // KIB} KiB")
            ratios.append(f"{ratio:.2f}x {'ok' if ok else 'MISSED':>6}")
        print(f"{c // KIB:>5} KiB {ratios[0]:>21} {ratios[1]:>21}")
    print(f"(target >= {TARGET:g}x of bare pymongo while hashing)")
    print()
    for who in ("imgstore", "pymongo"):
        for op in ("add", "get"):
            best = max(chunks, key=lambda c: timings[c][f"{who} {op}"].mbps(size))
            mbps = timings[best][f"{who} {op}"].mbps(size)
            print(f"best chunk size for {who} {op}: {best // KIB} KiB ({mbps:.1f} MB/s)")
    if missed:
        print(f"missed: {', '.join(missed)}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
