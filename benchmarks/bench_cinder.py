"""Cinder benchmark: imgstore's cinder driver against glance_store's, on the test Cinder.

Not a test. Needs ``python -m tests.functional.services up ceph cinder``. Run
from the repository root::

    .venv/bin/python benchmarks/bench_cinder.py [--size-mib 512] [--repeat 3]

In one run, against the same Cinder (RBD volumes on the test Ceph cluster,
I/O through librados), each contender adds the same file of random bytes
(in /dev/shm), reads it back and deletes it, with the size declared
("known") and not ("unknown"):

* imgstore (md5 + sha512 in the core; ``cinder_privsep_mode = in-process``,
  the cephx key handed to os-brick in memory);
* glance_store's cinder driver (``add_to_backend_with_multihash`` with sha512,
  plus its md5), from the package index in its own venv
  (``.cache/bench/glance-cinder-venv``), driven by
  ``benchmarks/glance_cinder_driver.py`` in a private mount namespace where
  the keyring is visible at ``/etc/ceph`` (the host's is not touched).

Every contender runs in a process of its own, ``--repeat`` times, interleaved;
the median counts. Times include the volume create, attach and detach. Client
CPU is user + system seconds of that process. glance_store's delete returns
once Cinder accepted it; imgstore's waits until the volume is gone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import link_ceph_bindings

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".cache" / "bench"
GLANCE_VENV = BENCH_DIR / "glance-cinder-venv"
GLANCE_DRIVER = Path(__file__).resolve().with_name("glance_cinder_driver.py")
DETAILS = ROOT / ".cache" / "services" / "cinder" / "details.json"
GLANCE_REQUIREMENTS = ["glance_store==5.7.0", "python-cinderclient", "os-brick", "oslo.context"]
MIB = 1024 * 1024
GIB = 1024 * MIB


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def clean_env() -> dict[str, str]:
    # CEPH_* variables would override the keyring os-brick is given
    drop = ("CEPH_KEYRING", "CEPH_CONF", "CEPH_ARGS", "PYTHONPATH", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k not in drop}


def worker_imgstore(args: argparse.Namespace) -> dict[str, Any]:
    from imgstore import Stores

    details = json.loads(DETAILS.read_text())
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as fh:
        fh.write(
            "[glance_store]\nstores = cinder\ndefault_store = cinder\n"
            f"cinder_endpoint_template = {details['endpoint_template']}\n"
            f"cinder_store_project_name = {args.project}\n"
            f"cinder_volume_type = {details['volume_type']}\n"
            f"cinder_rbd_keyring = {details['keyring']}\n"
            "cinder_root_helper = env\ncinder_privsep_mode = in-process\n"
            "cinder_host_ip = 127.0.0.1\n"
        )
    try:
        stores = Stores.from_config_files(fh.name)
    finally:
        os.unlink(fh.name)
    size = os.path.getsize(args.source)
    with stores, open(args.source, "rb") as src:
        c0, t0 = cpu_self(), time.perf_counter()
        declared = size if args.size == "known" else None
        result = stores.add(str(uuid.uuid4()), src, size=declared, hash_algo="sha512")
        add = time.perf_counter() - t0, cpu_self() - c0
        c0, t0 = cpu_self(), time.perf_counter()
        with stores.get(result.location) as reader:
            read = sum(len(chunk) for chunk in reader)
        get = time.perf_counter() - t0, cpu_self() - c0
        c0, t0 = cpu_self(), time.perf_counter()
        stores.delete(result.location)
        delete = time.perf_counter() - t0, cpu_self() - c0
    assert read == size == result.size
    return {"add": add, "get": get, "delete": delete, "multihash": result.multihash}


def run_json(cmd: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env=clean_env(), check=False
    )
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"{cmd[:3]} failed ({out.returncode})")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def ensure_glance_venv() -> Path:
    python = GLANCE_VENV / "bin" / "python"
    stamp = GLANCE_VENV / ".bench-stamp"
    if not python.exists() or not stamp.exists():
        log(f"creating {GLANCE_VENV.relative_to(ROOT)} with glance_store's cinder driver (once)")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(GLANCE_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             *GLANCE_REQUIREMENTS],
            check=True,
        )  # fmt: skip
        stamp.write_text("\n".join(GLANCE_REQUIREMENTS))
    link_ceph_bindings(python)
    return python


def make_source(size: int) -> Path:
    shm = Path("/dev/shm")
    path = (shm if shm.is_dir() else BENCH_DIR) / f"imgstore-bench-cinder-{os.getpid()}"
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(16 * MIB, left)
            fh.write(os.urandom(n))
            left -= n
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", choices=["imgstore"], help=argparse.SUPPRESS)
    parser.add_argument("--project", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=["known", "unknown"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        json.dump(worker_imgstore(args), sys.stdout)
        return 0

    if not DETAILS.exists():
        raise SystemExit("Cinder is not up: python -m tests.functional.services up ceph cinder")
    details = json.loads(DETAILS.read_text())
    glance_python = ensure_glance_venv()
    size = args.size_mib * MIB
    project = uuid.uuid4().hex
    source = make_source(size)
    etc_ceph = Path(tempfile.mkdtemp(prefix="bench-etc-ceph-"))
    shutil.copy(details["keyring"], etc_ceph / f"ceph.client.{details['rbd_user']}.keyring")
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}

    def record(name: str, out: dict[str, Any]) -> None:
        for op in ("add", "get", "delete"):
            results.setdefault(name, {}).setdefault(op, []).append(tuple(out[op]))  # type: ignore[arg-type]

    try:
        for i in range(args.repeat):
            for mode in ("known", "unknown"):
                log(f"round {i + 1}/{args.repeat}, {mode} size")
                me = [sys.executable, __file__, "--project", project, "--source", str(source)]
                record(
                    f"imgstore ({mode})", run_json([*me, "--worker", "imgstore", "--size", mode])
                )
                glance = [
                    str(glance_python), str(GLANCE_DRIVER),
                    "--endpoint-template", details["endpoint_template"],
                    "--project", project,
                    "--source", str(source), "--size", mode,
                ]  # fmt: skip
                record(
                    f"glance_store ({mode})",
                    run_json([
                        "unshare", "-m", "--propagation", "private", "sh", "-c",
                        'mount --bind "$0" /etc/ceph && exec "$@"', str(etc_ceph), *glance,
                    ]),
                )  # fmt: skip
    finally:
        source.unlink(missing_ok=True)
        shutil.rmtree(etc_ceph, ignore_errors=True)

    print(f"\nCinder (RBD), {args.size_mib} MiB image, median of {args.repeat}")
    print(f"{'contender':24} {'op':6} {'s':>7} {'MB/s':>8} {'min..max s':>14} {'CPU s':>7}")
    summary: dict[tuple[str, str], float] = {}
    for name, ops in results.items():
        for op, runs in ops.items():
            secs = [s for s, _ in runs]
            med = statistics.median(secs)
            summary[name, op] = med
            rate = f"{size / 1e6 / med:8.0f}" if op != "delete" else f"{'':8}"
            span = f"{min(secs):.2f}..{max(secs):.2f}"
            cpu = statistics.median(c for _, c in runs)
            print(f"{name:24} {op:6} {med:7.2f} {rate} {span:>14} {cpu:7.2f}")
    print()
    for mode in ("known", "unknown"):
        for op in ("add", "get"):
            ratio = summary[f"glance_store ({mode})", op] / summary[f"imgstore ({mode})", op]
            print(f"{op} ({mode} size): imgstore is {ratio:.2f}x glance_store's speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
