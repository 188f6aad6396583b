"""S3 benchmark: imgstore against glance_store's s3 driver and boto3's own transfer.

Not a test. Needs radosgw (or Swift's s3api) from the test harness::

    .venv/bin/python -m tests.functional.services up ceph
    .venv/bin/python benchmarks/bench_s3.py [--size-mib 1024] [--server ceph|swift]

One add and one get of the same file of random bytes (page-cached), for each of:

* imgstore ``Stores.add`` (md5 + sha512, default options: 10 MiB parts, 10
  threads, checksums "when_required") and ``Stores.get`` to /dev/null;
* glance_store 5.7.0's s3 driver (``add_to_backend_with_multihash``, sha512 +
  md5), from the package index in its own venv (``.cache/bench/glance-s3-venv``,
  made on the first run), same part size and threads;
* boto3's ``upload_fileobj``/``download_fileobj`` (s3transfer: threads, no
  hashing of the image at all), the transport's own limit.

Each contender runs in its own process, which reports its wall time, its own
CPU seconds (user + system, from getrusage) and its peak RSS. The server burns
CPU on the same cores, so MB/s depends on the client's CPU use too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".cache" / "bench"
GLANCE_VENV = BENCH_DIR / "glance-s3-venv"
GLANCE_REQUIREMENTS = ["glance_store==5.7.0", "boto3"]
MIB = 1024 * 1024
TARGETS = {
    "add MB/s: imgstore / glance_store": (1.3, "min"),
    "add CPU s/GiB: imgstore / glance_store": (0.6, "max"),
    "get MB/s: imgstore / glance_store": (1.0, "min"),
}
RSS_TARGET_MIB = 250


def _usage() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), ru.ru_utime + ru.ru_stime


def _since(start: tuple[float, float]) -> tuple[float, float]:
    now = _usage()
    return now[0] - start[0], now[1] - start[1]


def _sink(chunks: Any) -> int:
    fd = os.open(os.devnull, os.O_WRONLY)
    total = 0
    try:
        for chunk in chunks:
            total += len(chunk)
            os.write(fd, chunk)
    finally:
        os.close(fd)
    return total


# -- contenders (each runs in a child process) ------------------------------------


def child_imgstore(args: argparse.Namespace, server: dict[str, Any]) -> dict[str, Any]:
    from imgstore import Stores

    conf = BENCH_DIR / f"s3-bench-{os.getpid()}.conf"
    conf.write_text(
        "[glance_store]\nstores = s3\ndefault_store = s3\n"
        f"s3_store_host = {server['endpoint']}\n"
        f"s3_store_access_key = {server['access']}\n"
        f"s3_store_secret_key = {server['secret']}\n"
        f"s3_store_bucket = {args.bucket}\n"
        "s3_store_create_bucket_on_put = true\n"
        "s3_store_bucket_url_format = path\n"
    )
    try:
        with Stores.from_config_files(conf) as stores:
            with open(args.source, "rb") as fh:
                start = _usage()
                result = stores.add(str(uuid.uuid4()), fh, size=args.size)
                add = _since(start)
            start = _usage()
            read = _sink(stores.get(result.location))
            get = _since(start)
            stores.delete(result.location)
    finally:
        conf.unlink(missing_ok=True)
    return {"add": add, "get": get, "read": read, "checksum": result.checksum}


def child_boto3(args: argparse.Namespace, server: dict[str, Any]) -> dict[str, Any]:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=server["endpoint"],
        aws_access_key_id=server["access"],
        aws_secret_access_key=server["secret"],
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=20,
        ),
    )
    transfer = TransferConfig(multipart_chunksize=10 * MIB, max_concurrency=10)
    key = str(uuid.uuid4())
    with contextlib.suppress(Exception):  # the bucket may exist already
        client.create_bucket(Bucket=args.bucket)
    with open(args.source, "rb") as fh:
        start = _usage()
        client.upload_fileobj(fh, args.bucket, key, Config=transfer)
        add = _since(start)
    with open(os.devnull, "wb") as out:
        start = _usage()
        client.download_fileobj(args.bucket, key, out, Config=transfer)
        get = _since(start)
    client.delete_object(Bucket=args.bucket, Key=key)
    return {"add": add, "get": get, "read": args.size}


def child_glance(args: argparse.Namespace, server: dict[str, Any]) -> dict[str, Any]:
    import glance_store
    from oslo_config import cfg

    conf = cfg.CONF
    glance_store.register_opts(conf)
    conf(args=[], project="glance-bench", default_config_files=[], default_config_dirs=[])
    for key, value in {
        "stores": ["s3"],
        "default_store": "s3",
        "s3_store_host": server["endpoint"],
        "s3_store_access_key": server["access"],
        "s3_store_secret_key": server["secret"],
        "s3_store_bucket": args.bucket,
        "s3_store_create_bucket_on_put": True,
        "s3_store_bucket_url_format": "path",
    }.items():
        conf.set_override(key, value, group="glance_store")
    glance_store.create_stores(conf)
    glance_store.verify_default_store()
    with open(args.source, "rb") as fh:
        start = _usage()
        location, _size, checksum, _mh, _meta = glance_store.add_to_backend_with_multihash(
            conf, str(uuid.uuid4()), fh, args.size, "sha512"
        )
        add = _since(start)
    start = _usage()
    chunks, _got = glance_store.get_from_backend(location)
    read = _sink(chunks)
    get = _since(start)
    glance_store.delete_from_backend(location)
    return {"add": add, "get": get, "read": read, "checksum": checksum}


CHILDREN = {"imgstore": child_imgstore, "boto3": child_boto3, "glance_store": child_glance}


# -- the parent ---------------------------------------------------------------------


def server_details(name: str) -> dict[str, Any]:
    details = json.loads((ROOT / ".cache" / "services" / name / "details.json").read_text())
    endpoint = details["rgw_endpoint"] if name == "ceph" else details["s3_endpoint"]
    return {
        "endpoint": endpoint,
        "access": details["s3_access_key"],
        "secret": details["s3_secret_key"],
    }


def ensure_glance_venv() -> Path:
    python = GLANCE_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(GLANCE_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *GLANCE_REQUIREMENTS], check=True
        )
    return python


def make_source(size: int) -> Path:
    path = BENCH_DIR / f"s3-src-{size}.bin"
    if not path.exists() or path.stat().st_size != size:
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            left = size
            while left:
                n = min(left, 16 * MIB)
                fh.write(os.urandom(n))
                left -= n
    with open(path, "rb") as fh:  # into the page cache
        while fh.read(16 * MIB):
            pass
    return path


def run_child(name: str, python: str, args: argparse.Namespace, source: Path) -> dict[str, Any]:
    cmd = [
        python, __file__, "--child", name, "--server", args.server,
        "--source", str(source), "--size", str(source.stat().st_size), "--bucket", args.bucket,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT) if name == "imgstore" else ""}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--server", choices=["ceph", "swift"], default="ceph")
    parser.add_argument("--bucket", default=f"bench-{uuid.uuid4().hex[:12]}")
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--source")
    parser.add_argument("--size", type=int)
    args = parser.parse_args()

    if args.child:
        result = CHILDREN[args.child](args, server_details(args.server))
        result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    size = args.size_mib * MIB
    source = make_source(size)
    pythons = {
        "imgstore": sys.executable,
        "boto3": sys.executable,
        "glance_store": str(ensure_glance_venv()),
    }
    details = json.loads((ROOT / ".cache" / "services" / args.server / "details.json").read_text())
    results = {}
    for name, py in pythons.items():
        results[name] = run_child(name, py, args, source)
        if "ceph_conf" in details:  # radosgw frees deleted data only in its GC (2 h later)
            subprocess.run(
                ["radosgw-admin", "-c", details["ceph_conf"], "gc", "process", "--include-all"],
                capture_output=True,
                timeout=300,
                check=False,
            )
    gib = size / (1 << 30)
    print(f"S3 benchmark: {args.size_mib} MiB against {args.server}")
    print(f"{'':14} {'add MB/s':>9} {'add CPU s/GiB':>14} {'get MB/s':>9} "
          f"{'get CPU s/GiB':>14} {'peak RSS MiB':>13}")  # fmt: skip
    rows = {}
    for name, r in results.items():
        add_s, add_cpu = r["add"]
        get_s, get_cpu = r["get"]
        rows[name] = (size / add_s / 1e6, add_cpu / gib, size / get_s / 1e6, get_cpu / gib)
        print(f"{name:14} {rows[name][0]:9.0f} {rows[name][1]:14.2f} {rows[name][2]:9.0f} "
              f"{rows[name][3]:14.2f} {r['rss_mib']:13.0f}")  # fmt: skip
    i, g = rows["imgstore"], rows["glance_store"]
    ratios = {
        "add MB/s: imgstore / glance_store": i[0] / g[0],
        "add CPU s/GiB: imgstore / glance_store": i[1] / g[1],
        "get MB/s: imgstore / glance_store": i[2] / g[2],
    }
    ok = True
    for label, value in ratios.items():
        target, kind = TARGETS[label]
        met = value >= target if kind == "min" else value <= target
        ok &= met
        sign = ">=" if kind == "min" else "<="
        print(f"{label:42} {value:5.2f}  (target {sign} {target}) {'ok' if met else 'MISSED'}")
    rss = results["imgstore"]["rss_mib"]
    print(f"{'imgstore peak RSS MiB':42} {rss:5.0f}  (target < {RSS_TARGET_MIB}) "
          f"{'ok' if rss < RSS_TARGET_MIB else 'MISSED'}")  # fmt: skip
    print(f"{'imgstore add MB/s / boto3 upload_fileobj':42} {i[0] / rows['boto3'][0]:5.2f}")
    print(f"{'imgstore get MB/s / boto3 download_fileobj':42} {i[2] / rows['boto3'][2]:5.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
