"""Load: N concurrent clients doing add/get/delete for D seconds against each store.

    python benchmarks/load.py                       # 16 clients, 300 s, every store that is up
    python benchmarks/load.py --clients 4 --duration 20 --backends file,s3
    tox -e load

Backends: ``file`` (a temporary directory), ``s3`` (radosgw of the ``ceph``
test server), ``swift`` (the ``swift`` test server); start the servers first
with ``python -m tests.functional.services up ceph swift``. All clients share
one :class:`imgstore.Stores`, as an image service's workers do. Each client
loops: add an image of a random size (up to ``--max-kib``), read it back whole
and compare its sha256, read a random range, delete it, and check that it is
gone (NotFound). Every failure is counted as an error with its message.

For each backend the report gives operations, errors, and the open file
descriptors (sockets ``s`` + the others) and threads at four points: before
the Stores opened | after a warm-up round -> at the end (clients stopped,
garbage collected) | after the Stores closed; and the peak RSS. The exit
status is non-zero when any backend had an error; when descriptors other
than sockets, or threads, grew during the run beyond ``--slack``; when any
descriptor or thread outlived the Stores (sockets may grow during the run: a
connection pool keeps idle connections up to its cap, and closes them with
the Stores); or when its peak RSS exceeded ``--max-rss-mib``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imgstore import Stores  # noqa: E402
from imgstore.exceptions import NotFound  # noqa: E402

KIB = 1024


def open_fds() -> dict[str, int]:
    """This process's descriptors: sockets, and everything else (files, pipes...)."""
    counts = {"sockets": 0, "other": 0}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed meanwhile
        counts["sockets" if target.startswith("socket:") else "other"] += 1
    return counts


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: that survives exec, so
    a process spawned by a large one (a pytest worker of 1 GiB, through vfork) starts
    with its parent's peak."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def details(name: str) -> dict[str, Any]:
    path = ROOT / ".cache" / "services" / name / "details.json"
    return dict(json.loads(path.read_text()))


def write_conf(path: Path, driver: str, options: dict[str, Any]) -> Path:
    lines = ["[glance_store]", f"stores = {driver}", f"default_store = {driver}"]
    lines += [f"{k} = {v}" for k, v in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def open_backend(name: str, tmp: Path) -> Iterator[Stores]:
    """Stores with one backend ``name`` on its own directory, bucket or container."""
    if name == "file":
        conf = write_conf(tmp / "file.conf", "file", {"filesystem_store_datadir": tmp / "data"})
    elif name == "s3":
        d = details("ceph")
        conf = write_conf(tmp / "s3.conf", "s3", {
            "s3_store_host": d["rgw_endpoint"], "s3_store_access_key": d["s3_access_key"],
            "s3_store_secret_key": d["s3_secret_key"],
            "s3_store_bucket": f"imgstore-load-{uuid.uuid4().hex[:12]}",
            "s3_store_create_bucket_on_put": True, "s3_store_bucket_url_format": "path",
            "s3_store_large_object_size": 1, "s3_store_large_object_chunk_size": 5,
        })  # fmt: skip
    elif name == "swift":
        d = details("swift")
        conf = write_conf(tmp / "swift.conf", "swift", {
            "swift_store_auth_address": d["auth_url"], "swift_store_user": d["user"],
            "swift_store_key": d["key"], "swift_store_auth_version": "1",
            "swift_store_container": f"imgstore-load-{uuid.uuid4().hex[:12]}",
            "swift_store_create_container_on_put": True,
            "swift_store_large_object_size": 1, "swift_store_large_object_chunk_size": 1,
        })  # fmt: skip
    else:
        raise SystemExit(f"unknown backend {name!r}")
    with Stores.from_config_files(conf) as stores:
        yield stores


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def op(self, name: str) -> None:
        with self.lock:
            self.ops[name] += 1

    def error(self, what: str, exc: BaseException) -> None:
        with self.lock:
            self.errors[f"{what}: {type(exc).__name__}: {str(exc)[:160]}"] += 1


def one_round(stores: Stores, rng: random.Random, max_bytes: int, stats: Stats) -> None:
    """add, get whole + verify, get a range, delete, get -> NotFound."""
    size = rng.choice([0, 1, rng.randrange(1, max_bytes + 1), max_bytes])
    data = rng.randbytes(size)
    image_id = str(uuid.uuid4())
    try:
        result = stores.add(image_id, data, size=size)
        stats.op("add")
    except Exception as exc:
        stats.error("add", exc)
        return
    try:
        with stores.get(result.location) as reader:
            got = b"".join(reader)
        stats.op("get")
        if hashlib.sha256(got).digest() != hashlib.sha256(data).digest():
            stats.error("get", ValueError(f"{len(got)} bytes differ from the {size} added"))
        if size:
            offset = rng.randrange(size)
            length = rng.randrange(1, size - offset + 1)
            with stores.get(result.location, offset=offset, length=length) as reader:
                part = b"".join(reader)
            stats.op("get-range")
            if part != data[offset : offset + length]:
                stats.error("get-range", ValueError(f"range {offset}+{length} differs"))
    except Exception as exc:
        stats.error("get", exc)
    try:
        stores.delete(result.location)
        stats.op("delete")
    except Exception as exc:
        stats.error("delete", exc)
        return
    try:
        with stores.get(result.location) as reader:
            b"".join(reader)
        stats.error("get-after-delete", ValueError("the deleted image is still readable"))
    except NotFound:
        stats.op("get-deleted")
    except Exception as exc:
        stats.error("get-after-delete", exc)


def run_backend(name: str, clients: int, duration: float, max_bytes: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"imgstore-load-{name}-"))
    gc.collect()
    before = {"fds": open_fds(), "threads": threading.active_count()}
    try:
        with open_backend(name, tmp) as stores:
            stats = Stats()

            def run_clients(seconds: float, seed: int) -> None:
                deadline = time.monotonic() + seconds

                def client(n: int) -> None:
                    rng = random.Random(seed + n)
                    while time.monotonic() < deadline:
                        one_round(stores, rng, max_bytes, stats)

                workers = [
                    threading.Thread(target=client, args=(i,), name=f"load-{i}")
                    for i in range(clients)
                ]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()

            # warm-up with every client at once: connection pools reach the size
            # the concurrency needs before the descriptors are counted
            run_clients(min(10.0, max(2.0, duration / 20)), seed=1000)
            gc.collect()
            time.sleep(0.5)
            warmup_ops = sum(stats.ops.values())
            start = {"fds": open_fds(), "threads": threading.active_count(), "rss": rss_mib()}
            t0 = time.monotonic()
            run_clients(duration, seed=1)
            elapsed = time.monotonic() - t0
            gc.collect()
            time.sleep(0.5)  # let pools settle
            end = {"fds": open_fds(), "threads": threading.active_count(), "rss": rss_mib()}
            leftovers = None
            if name == "file":
                leftovers = sorted(os.listdir(tmp / "data"))
        gc.collect()
        time.sleep(0.5)
        closed = {"fds": open_fds(), "threads": threading.active_count()}
        return {
            "backend": name,
            "clients": clients,
            "seconds": round(elapsed, 1),
            "ops": dict(stats.ops),
            "warmup_ops": warmup_ops,
            "ops_total": sum(stats.ops.values()) - warmup_ops,
            "ops_per_s": round((sum(stats.ops.values()) - warmup_ops) / elapsed, 1),
            "errors": dict(stats.errors),
            "error_total": sum(stats.errors.values()),
            "before": before,
            "start": start,
            "end": end,
            "closed": closed,
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "leftovers": leftovers,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fds(point: dict[str, Any]) -> str:
    """``<sockets>s+<other>`` descriptors at one point of the run."""
    return f"{point['fds']['sockets']}s+{point['fds']['other']}"


def verdict(r: dict[str, Any], slack: int, max_rss: float) -> list[str]:
    """What went wrong. While the clients run, descriptors other than sockets and threads
    must not grow at all; sockets may (a connection pool keeps idle connections, up to its
    cap), but once the Stores is closed every descriptor and thread must be gone again."""
    problems = []
    if r["error_total"]:
        problems.append(f"{r['error_total']} errors")
    grew = r["end"]["fds"]["other"] - r["start"]["fds"]["other"]
    if grew > slack:
        problems.append(f"descriptors other than sockets grew by {grew}")
    grew = r["end"]["threads"] - r["start"]["threads"]
    if grew > slack:
        problems.append(f"threads grew by {grew}")
    for key in ("sockets", "other"):
        kept = r["closed"]["fds"][key] - r["before"]["fds"][key]
        if kept > slack:
            problems.append(f"{kept} {key} descriptors still open after the Stores closed")
    kept = r["closed"]["threads"] - r["before"]["threads"]
    if kept > slack:
        problems.append(f"{kept} threads still running after the Stores closed")
    if r["peak_rss_mib"] > max_rss:
        problems.append(f"peak RSS {r['peak_rss_mib']} MiB > {max_rss}")
    if r["leftovers"]:
        problems.append(f"{len(r['leftovers'])} files left in the data directory")
    if not r["ops_total"]:
        problems.append("no operation ran")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=300.0, help="seconds per backend")
    p.add_argument("--backends", default="file,s3,swift")
    p.add_argument("--max-kib", type=int, default=2048, help="largest image, KiB")
    p.add_argument("--slack", type=int, default=0, help="allowed growth of fds and threads")
    p.add_argument("--max-rss-mib", type=float, default=1024.0)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)

    results, failed = [], False
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        service = {"s3": "ceph", "swift": "swift"}.get(name)
        if service and not (ROOT / ".cache" / "services" / service / "details.json").exists():
            print(f"load: {name}: the {service} server is not up; skipped", file=sys.stderr)
            continue
        print(f"load: {name}: {args.clients} clients for {args.duration:g} s ...", file=sys.stderr)
        r = run_backend(name, args.clients, args.duration, args.max_kib * KIB)
        problems = verdict(r, args.slack, args.max_rss_mib)
        r["problems"] = problems
        failed |= bool(problems)
        results.append(r)
        print(
            f"{name:6} ops {r['ops_total']:7d} ({r['ops_per_s']:.1f}/s) errors {r['error_total']}"
            f"  fds {fds(r['before'])}|{fds(r['start'])}->{fds(r['end'])}|{fds(r['closed'])}"
            f"  threads {r['before']['threads']}|{r['start']['threads']}->{r['end']['threads']}"
            f"|{r['closed']['threads']}"
            f"  rss {r['start']['rss']:.0f}->{r['end']['rss']:.0f} MiB"
            f" (peak {r['peak_rss_mib']:.0f})"
            f"  {'FAIL: ' + '; '.join(problems) if problems else 'ok'}"
        )
        for message, count in sorted(r["errors"].items(), key=lambda kv: -kv[1])[:10]:
            print(f"    {count} x {message}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if not results:
        print("load: no backend ran", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
