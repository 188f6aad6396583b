"""S3 benchmark: imgstore against glance_store's s3 driver and boto3's own transfer.

Not a test. Needs radosgw (or Swift's s3api) from the test harness::

    .venv/bin/python -m tests.functional.services up ceph
    .venv/bin/python benchmarks/bench_s3.py [--size-mib 1024] [--server ceph|swift] \
        [--repeat 3] [--unsigned]

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
import uuid
from pathlib import Path
from typing import Any

import _common as common

GLANCE_VENV = common.BENCH_DIR / "glance-s3-venv"
GLANCE_REQUIREMENTS = ["glance_store==5.7.0", "boto3"]
TARGETS = {
    "add MB/s: imgstore / glance_store": (">=", 1.3),
    "add CPU s/GiB: imgstore / glance_store": ("<=", 0.6),
    "get MB/s: imgstore / glance_store": (">=", 1.0),
    "imgstore peak RSS MiB": ("<=", 250.0),
}
OWN_CPU_TARGET = ("<=", 1.1)
"""imgstore's own add CPU per GiB, above every hash (issue 18)."""


# -- contenders (each runs in a child process) ------------------------------------


def child_imgstore(args: argparse.Namespace, server: dict[str, Any]) -> dict[str, Any]:
    from imgstore import Stores

    conf = common.BENCH_DIR / f"s3-bench-{os.getpid()}.conf"
    conf.write_text(
        "[glance_store]\nstores = s3\ndefault_store = s3\n"
        f"s3_store_host = {server['endpoint']}\n"
        f"s3_store_access_key = {server['access']}\n"
        f"s3_store_secret_key = {server['secret']}\n"
        f"s3_store_bucket = {args.bucket}\n"
        "s3_store_create_bucket_on_put = true\n"
        "s3_store_bucket_url_format = path\n"
        + ("s3_store_payload_signing = false\n" if args.unsigned else "")
    )
    try:
        with Stores.from_config_files(conf) as stores:
            common.HashThreadCPU.install()
            with open(args.source, "rb") as fh:
                start = common.usage()
                result = stores.add(str(uuid.uuid4()), fh, size=args.size)
                add = common.since(start)
            add_hash_cpu = common.HashThreadCPU.seconds
            start = common.usage()
            read = common.sink(stores.get(result.location))
            get = common.since(start)
            stores.delete(result.location)
    finally:
        conf.unlink(missing_ok=True)
    return {
        "add": add, "get": get, "read": read, "checksum": result.checksum,
        "add_hash_cpu": add_hash_cpu,
    }  # fmt: skip


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
    transfer = TransferConfig(multipart_chunksize=10 * common.MIB, max_concurrency=10)
    key = str(uuid.uuid4())
    with contextlib.suppress(Exception):  # the bucket may exist already
        client.create_bucket(Bucket=args.bucket)
    with open(args.source, "rb") as fh:
        start = common.usage()
        client.upload_fileobj(fh, args.bucket, key, Config=transfer)
        add = common.since(start)
    with open(os.devnull, "wb") as out:
        start = common.usage()
        client.download_fileobj(args.bucket, key, out, Config=transfer)
        get = common.since(start)
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
        start = common.usage()
        location, _size, checksum, _mh, _meta = glance_store.add_to_backend_with_multihash(
            conf, str(uuid.uuid4()), fh, args.size, "sha512"
        )
        add = common.since(start)
    start = common.usage()
    chunks, _got = glance_store.get_from_backend(location)
    read = common.sink(chunks)
    get = common.since(start)
    glance_store.delete_from_backend(location)
    return {"add": add, "get": get, "read": read, "checksum": checksum}


CHILDREN = {"imgstore": child_imgstore, "boto3": child_boto3, "glance_store": child_glance}


# -- the parent ---------------------------------------------------------------------


def server_details(name: str) -> dict[str, Any]:
    details = common.service_details(name)
    endpoint = details["rgw_endpoint"] if name == "ceph" else details["s3_endpoint"]
    return {
        "endpoint": endpoint,
        "access": details["s3_access_key"],
        "secret": details["s3_secret_key"],
    }


def run_contender(name: str, python: str, args: argparse.Namespace, source: Path) -> dict[str, Any]:
    cmd = [
        python, __file__, "--child", name, "--server", args.server,
        "--source", str(source), "--size", str(source.stat().st_size), "--bucket", args.bucket,
        *(["--unsigned"] if args.unsigned else []),
    ]  # fmt: skip
    return common.run_child(name, cmd, imgstore=name == "imgstore")


def collect_garbage(details: dict[str, Any]) -> None:
    """radosgw frees deleted data only in its GC (2 h later): run it between contenders."""
    if "ceph_conf" in details:
        subprocess.run(
            ["radosgw-admin", "-c", details["ceph_conf"], "gc", "process", "--include-all"],
            capture_output=True,
            timeout=300,
            check=False,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    common.add_common_args(parser)
    parser.add_argument("--server", choices=["ceph", "swift"], default="ceph")
    parser.add_argument("--bucket", default=f"bench-{uuid.uuid4().hex[:12]}")
    parser.add_argument(
        "--unsigned",
        action="store_true",
        help="imgstore with s3_store_payload_signing = false (no sha256 of the payload)",
    )
    args = parser.parse_args()

    if args.child:
        result = CHILDREN[args.child](args, server_details(args.server))
        result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    size = args.size_mib * common.MIB
    source = common.make_source("s3", size)
    pythons = {
        "imgstore": sys.executable,
        "boto3": sys.executable,
        "glance_store": str(common.ensure_venv(GLANCE_VENV, GLANCE_REQUIREMENTS)),
    }
    details = common.service_details(args.server)
    runs = common.interleave(
        args.repeat, size, pythons,
        lambda name: run_contender(name, pythons[name], args, source),
        lambda: collect_garbage(details),
    )  # fmt: skip
    floor = common.hash_floor()
    signing = "unsigned payload" if args.unsigned else "payload signed (default over http)"
    print(f"\nS3, {args.size_mib} MiB against {args.server}, imgstore {signing}, "
          f"median of {args.repeat}")  # fmt: skip
    print(runs.table())
    ok = common.report(
        {
            "add MB/s: imgstore / glance_store": runs.speedup("imgstore", "glance_store", "add"),
            "add CPU s/GiB: imgstore / glance_store": runs.cpu_per_gib("imgstore", "add")
            / runs.cpu_per_gib("glance_store", "add"),
            "get MB/s: imgstore / glance_store": runs.speedup("imgstore", "glance_store", "get"),
            "imgstore peak RSS MiB": runs.peak_rss("imgstore"),
            "add MB/s: imgstore / boto3 upload_fileobj": runs.speedup("imgstore", "boto3", "add"),
            "get MB/s: imgstore / boto3 download_fileobj": runs.speedup("imgstore", "boto3", "get"),
        },
        TARGETS,
    )
    print(common.floor_lines(floor, runs.cpu_per_gib("glance_store", "add")))
    print(runs.outside_hashing("imgstore"))
    # botocore hashes every signed byte again (SHA-256, in the SigV4 signature, mandatory
    # over plain http): no client can skip it, so it is not the implementation's own part
    payload_sha = 0.0 if args.unsigned else common.hash_floor(algos=("sha256",))
    if not args.unsigned:
        print(f"payload SHA-256 (botocore, SigV4 over http; this CPU, this run): "
              f"{payload_sha:.2f} CPU s/GiB")  # fmt: skip
    line, met = common.verdict(
        "imgstore add CPU s/GiB outside hashing"
        + ("" if args.unsigned else ", less the payload SHA-256"),
        runs.outside_hashing_less("imgstore", payload_sha),
        OWN_CPU_TARGET,
    )
    print(line)
    return 0 if ok and met else 1


if __name__ == "__main__":
    sys.exit(main())
