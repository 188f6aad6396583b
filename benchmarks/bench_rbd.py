"""RBD benchmark: imgstore against glance_store's rbd driver and the raw limits.

Not a test. Needs the test cluster (``python -m tests.functional.services up ceph``).
Run from the repository root::

    .venv/bin/python benchmarks/bench_rbd.py [--size-mib 1024] [--repeat 3]

On one cluster, in one run, each contender adds the same file of random bytes
(held in /dev/shm, so no disk is involved) as an RBD image with 8 MiB objects,
then reads it back:

* imgstore ``add`` (md5 + sha512, asynchronous writes, 8 chunks in flight) and
  ``get`` (read-ahead from the snapshot);
* glance_store's rbd driver (``add_to_backend_with_multihash`` with sha512, plus
  its md5; ``get_from_backend``), from the package index in its own venv
  (``.cache/bench/glance-venv``) with Ceph's bindings linked in, driven by
  ``benchmarks/glance_rbd_driver.py``;
* ``rbd import`` / ``rbd export`` (C++, no hashing);
* bare librbd asynchronous writes from Python, 8 chunks of 8 MiB in flight,
  no hashing (the write limit for a Python client).

Every contender runs in a process of its own, ``--repeat`` times, interleaved;
the median counts. Client CPU is user + system seconds of that process (all its
threads, librbd's included), per GiB. The OSD shares the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from _common import (
    HashThreadCPU,
    floor_lines,
    hash_floor,
    link_ceph_bindings,
    outside_hashing_line,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".cache" / "bench"
GLANCE_VENV = BENCH_DIR / "glance-venv"
GLANCE_DRIVER = Path(__file__).resolve().with_name("glance_rbd_driver.py")
DETAILS = ROOT / ".cache" / "services" / "ceph" / "details.json"
MIB = 1024 * 1024
GIB = 1024 * MIB
CHUNK = 8 * MIB
WINDOW = 8

TARGETS = {
    "add: imgstore / glance_store (MB/s)": (">=", 2.0),
    "add: imgstore / glance_store (CPU s per GiB)": ("<=", 0.6),
    "get: imgstore / glance_store median (MB/s)": (">=", 1.5),
}


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- workers (each runs in a process of its own) --------------------------------


def worker_imgstore(args: argparse.Namespace) -> dict[str, Any]:
    from imgstore import Stores

    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as fh:
        fh.write(
            "[glance_store]\nstores = rbd\ndefault_store = rbd\n"
            f"rbd_store_pool = {args.pool}\nrbd_store_user = {args.user}\n"
            f"rbd_store_ceph_conf = {args.conf}\nrbd_store_chunk_size = {CHUNK // MIB}\n"
            f"rbd_store_write_window = {WINDOW}\n"
        )
    try:
        stores = Stores.from_config_files(fh.name)
    finally:
        os.unlink(fh.name)
    size = os.path.getsize(args.source)
    HashThreadCPU.install()
    with stores:
        with open(args.source, "rb") as src:
            c0, t0 = cpu_self(), time.perf_counter()
            result = stores.add(str(uuid.uuid4()), src, size=size, hash_algo="sha512")
            add = time.perf_counter() - t0, cpu_self() - c0
        read = 0
        c0, t0 = cpu_self(), time.perf_counter()
        with stores.get(result.location) as reader:
            for chunk in reader:
                read += len(chunk)
        get = time.perf_counter() - t0, cpu_self() - c0
        stores.delete(result.location)
    assert read == size == result.size
    return {
        "add": add, "get": get, "multihash": result.multihash,
        "add_hash_cpu": HashThreadCPU.seconds,
    }  # fmt: skip


def worker_aio(args: argparse.Namespace) -> dict[str, Any]:
    """Bare librbd: synchronous reads of the source, WINDOW aio writes in flight, no hashing."""
    import rados
    import rbd

    cluster = rados.Rados(conffile=args.conf, rados_id=args.user)
    cluster.connect()
    ioctx = cluster.open_ioctx(args.pool)
    name = "aio-" + uuid.uuid4().hex[:8]
    size = os.path.getsize(args.source)
    cond = threading.Condition()
    inflight = [0]
    failed: list[int] = []

    def done(comp: Any) -> None:
        with cond:
            inflight[0] -= 1
            if comp.get_return_value() < 0:
                failed.append(comp.get_return_value())
            cond.notify()

    c0, t0 = cpu_self(), time.perf_counter()
    rbd.RBD().create(ioctx, name, size, order=23, old_format=False)
    with rbd.Image(ioctx, name) as image, open(args.source, "rb", buffering=0) as src:
        offset = 0
        while True:
            with cond:
                while inflight[0] >= WINDOW:
                    cond.wait()
            data = src.read(CHUNK)
            if not data:
                break
            with cond:
                inflight[0] += 1
            image.aio_write(data, offset, done)
            offset += len(data)
        with cond:
            while inflight[0]:
                cond.wait()
        image.flush()
        image.create_snap("snap")
    add = time.perf_counter() - t0, cpu_self() - c0
    assert not failed, failed
    with rbd.Image(ioctx, name) as image:
        image.remove_snap("snap")
    rbd.RBD().remove(ioctx, name)
    ioctx.close()
    cluster.shutdown()
    return {"add": add}


# -- driver -----------------------------------------------------------------------


def run_json(cmd: list[str]) -> dict[str, Any]:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"{cmd[:3]} failed ({out.returncode})")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def ceph_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    bindir = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != bindir)
    return env


def rbd_cli(details: dict[str, Any], pool: str, source: Path) -> dict[str, Any]:
    """``rbd import`` then ``rbd export`` to a pipe drained into /dev/null."""
    base = ["rbd", "-c", details["ceph_conf"], "--id", details["user"]]
    name = "cli-" + uuid.uuid4().hex[:8]
    env = ceph_env()
    c0, t0 = cpu_children(), time.perf_counter()
    subprocess.run(
        [
            *base,
            "import",
            "--object-size",
            f"{CHUNK // MIB}M",
            "--no-progress",
            str(source),
            f"{pool}/{name}",
        ],
        check=True,
        env=env,
    )
    add = time.perf_counter() - t0, cpu_children() - c0
    with open(os.devnull, "wb") as devnull:
        c0, t0 = cpu_children(), time.perf_counter()
        subprocess.run(
            [*base, "export", "--no-progress", f"{pool}/{name}", "-"],
            stdout=devnull,
            check=True,
            env=env,
        )
        get = time.perf_counter() - t0, cpu_children() - c0
    subprocess.run([*base, "rm", "--no-progress", f"{pool}/{name}"], check=True, env=env)
    return {"add": add, "get": get}


def ensure_glance_venv() -> Path:
    python = GLANCE_VENV / "bin" / "python"
    if not python.exists():
        log(f"creating {GLANCE_VENV.relative_to(ROOT)} with glance_store (once)")
        subprocess.run([sys.executable, "-m", "venv", str(GLANCE_VENV)], check=True)
    check = subprocess.run([str(python), "-c", "import glance_store"], check=False)
    if check.returncode != 0:
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "glance_store"],
            check=True,
        )  # fmt: skip
    link_ceph_bindings(python)
    return python


def make_source(size: int) -> Path:
    shm = Path("/dev/shm")
    path = (shm if shm.is_dir() else BENCH_DIR) / f"imgstore-bench-rbd-{os.getpid()}"
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(16 * MIB, left)
            fh.write(os.urandom(n))
            left -= n
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", choices=["imgstore", "aio"], help=argparse.SUPPRESS)
    parser.add_argument("--conf", help=argparse.SUPPRESS)
    parser.add_argument("--user", help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        fn = worker_imgstore if args.worker == "imgstore" else worker_aio
        json.dump(fn(args), sys.stdout)
        return 0

    if not DETAILS.exists():
        raise SystemExit("the Ceph cluster is not up: python -m tests.functional.services up ceph")
    details = json.loads(DETAILS.read_text())
    import rados
    import rbd

    glance_python = ensure_glance_venv()
    size = args.size_mib * MIB
    cluster = rados.Rados(conffile=details["ceph_conf"], rados_id=details["user"])
    cluster.connect()
    pool = "bench-" + uuid.uuid4().hex[:6]
    cluster.create_pool(pool)
    with cluster.open_ioctx(pool) as ioctx:
        rbd.RBD().pool_init(ioctx, False)
    source = make_source(size)
    common = ["--conf", details["ceph_conf"], "--user", details["user"], "--pool", pool]
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}

    outside_hashing: list[float] = []  # imgstore's add CPU outside its hash threads

    def record(name: str, out: dict[str, Any]) -> None:
        for op in ("add", "get"):
            if op in out:
                results.setdefault(name, {}).setdefault(op, []).append(tuple(out[op]))  # type: ignore[arg-type]
        if "add_hash_cpu" in out:
            outside_hashing.append(out["add"][1] - out["add_hash_cpu"])

    try:
        for i in range(args.repeat):
            log(f"round {i + 1}/{args.repeat}")
            me = [sys.executable, __file__, *common, "--source", str(source)]
            record("imgstore", run_json([*me, "--worker", "imgstore"]))
            g = run_json(
                [str(glance_python), str(GLANCE_DRIVER), *common, "--source", str(source),
                 "--chunk-mib", str(CHUNK // MIB)]
            )  # fmt: skip
            record("glance_store", {"add": (g["add_seconds"], g["add_cpu"]),
                                    "get": (g["get_seconds"], g["get_cpu"])})  # fmt: skip
            record("rbd import/export", rbd_cli(details, pool, source))
            record("librbd aio (no hashing)", run_json([*me, "--worker", "aio"]))
    finally:
        source.unlink(missing_ok=True)
        cluster.delete_pool(pool)
        cluster.shutdown()

    gib = size / GIB
    print(f"\nRBD, {args.size_mib} MiB image, {CHUNK // MIB} MiB objects, median of {args.repeat}")
    print(f"{'contender':28} {'op':4} {'MB/s':>8} {'min..max MB/s':>16} {'CPU s/GiB':>10}")
    summary: dict[tuple[str, str], tuple[float, float]] = {}
    for name, ops in results.items():
        for op, runs in ops.items():
            rates = [size / 1e6 / s for s, _ in runs]
            cpu = statistics.median(c for _, c in runs) / gib
            rate = statistics.median(rates)
            summary[name, op] = (rate, cpu)
            span = f"{min(rates):.0f}..{max(rates):.0f}"
            print(f"{name:28} {op:4} {rate:8.0f} {span:>16} {cpu:10.2f}")
    ratios = {
        "add: imgstore / glance_store (MB/s)": summary["imgstore", "add"][0]
        / summary["glance_store", "add"][0],
        "add: imgstore / glance_store (CPU s per GiB)": summary["imgstore", "add"][1]
        / summary["glance_store", "add"][1],
        "get: imgstore / glance_store median (MB/s)": summary["imgstore", "get"][0]
        / summary["glance_store", "get"][0],
        "add: imgstore / rbd import (MB/s)": summary["imgstore", "add"][0]
        / summary["rbd import/export", "add"][0],
        "add: imgstore / librbd aio (MB/s)": summary["imgstore", "add"][0]
        / summary["librbd aio (no hashing)", "add"][0],
        "get: imgstore / rbd export (MB/s)": summary["imgstore", "get"][0]
        / summary["rbd import/export", "get"][0],
    }
    print()
    for label, value in ratios.items():
        target = TARGETS.get(label)
        verdict = ""
        if target is not None:
            op, bound = target
            ok = value >= bound if op == ">=" else value <= bound
            verdict = f"  (target {op} {bound}: {'met' if ok else 'MISSED'})"
        print(f"{label:48} {value:5.2f}{verdict}")
    print(
        floor_lines(
            hash_floor(),
            summary["glance_store", "add"][1],
            summary["librbd aio (no hashing)", "add"][1],
            "bare librbd aio",
        )
    )
    aio = summary["librbd aio (no hashing)", "add"][1]
    own = [c / gib - aio for c in outside_hashing]
    print(outside_hashing_line("imgstore add, less bare librbd aio,", own))
    return 0


if __name__ == "__main__":
    sys.exit(main())
