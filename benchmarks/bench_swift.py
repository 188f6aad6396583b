"""Swift benchmark: imgstore against glance_store's swift driver and the ``swift`` command.

Not a test. Needs the Swift all-in-one from the test harness::

    .venv/bin/python -m tests.functional.services up swift
    .venv/bin/python benchmarks/bench_swift.py [--size-mib 1024] [--repeat 3]

One segmented add and one get of the same file of random bytes (page-cached):

* imgstore ``Stores.add`` (md5 + sha512; an SLO of 100 MiB segments, 4 at a
  time) and ``Stores.get`` to /dev/null;
* glance_store 5.7.0's swift driver in its multi-tenant mode (5.7.0 cannot
  log in with tempauth), from the package index in its own venv
  (``.cache/bench/glance-swift-venv``), sha512 + md5, a DLO of 128 MiB
  segments uploaded one after another (5.7.0 fails a known size that is not
  a multiple of its segment size, so it is told the size is unknown);
* ``swift upload --use-slo --segment-size 104857600`` / ``swift download``
  (python-swiftclient's command: threads, an md5 per segment).

Each contender runs in its own process, ``--repeat`` times, interleaved; the
medians count. CPU is user + system seconds of the process and its children.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import _common as common

GLANCE_VENV = common.BENCH_DIR / "glance-swift-venv"
GLANCE_REQUIREMENTS = ["glance_store==5.7.0", "python-swiftclient"]
TARGETS = {
    "add MB/s: imgstore / glance_store": (">=", 1.6),
    "add MB/s: imgstore / swift command": (">=", 1.0),
    "get MB/s: imgstore / glance_store": (">=", 1.0),
}


def _usage() -> tuple[float, float]:
    return common.usage(children=True)  # the swift command runs as a child


def _since(start: tuple[float, float]) -> tuple[float, float]:
    return common.since(start, children=True)


def child_imgstore(args: argparse.Namespace, srv: dict[str, Any]) -> dict[str, Any]:
    from imgstore import Stores

    conf = common.BENCH_DIR / f"swift-bench-{os.getpid()}.conf"
    conf.write_text(
        "[glance_store]\nstores = swift\ndefault_store = swift\n"
        f"swift_store_auth_address = {srv['auth_url']}\nswift_store_user = {srv['user']}\n"
        f"swift_store_key = {srv['key']}\nswift_store_auth_version = 1\n"
        f"swift_store_container = {args.container}\nswift_store_create_container_on_put = true\n"
        "swift_store_large_object_size = 100\nswift_store_large_object_chunk_size = 100\n"
        "swift_store_thread_pools = 4\n"
    )
    try:
        with Stores.from_config_files(conf) as stores:
            common.HashThreadCPU.install()
            with open(args.source, "rb") as fh:
                start = _usage()
                result = stores.add(str(uuid.uuid4()), fh, size=args.size)
                add = _since(start)
            add_hash_cpu = common.HashThreadCPU.seconds
            start = _usage()
            read = common.sink(stores.get(result.location))
            get = _since(start)
            stores.delete(result.location)
    finally:
        conf.unlink(missing_ok=True)
    return {"add": add, "get": get, "read": read, "add_hash_cpu": add_hash_cpu}


def child_swiftcmd(args: argparse.Namespace, srv: dict[str, Any]) -> dict[str, Any]:
    swift = str(Path(sys.executable).parent / "swift")
    auth = ["-A", srv["auth_url"], "-U", srv["user"], "-K", srv["key"]]
    obj = str(uuid.uuid4())
    start = _usage()
    subprocess.run(
        [swift, *auth, "upload", "--use-slo", "--segment-size", "104857600",
         "--object-name", obj, args.container, args.source],
        check=True, capture_output=True,
    )  # fmt: skip
    add = _since(start)
    start = _usage()
    subprocess.run(
        [swift, *auth, "download", args.container, obj, "-o", os.devnull],
        check=True, capture_output=True,
    )  # fmt: skip
    get = _since(start)
    subprocess.run([swift, *auth, "delete", args.container, obj], check=True, capture_output=True)
    return {"add": add, "get": get, "read": args.size}


def child_glance(args: argparse.Namespace, srv: dict[str, Any]) -> dict[str, Any]:
    import glance_store  # type: ignore[import-not-found]
    from oslo_config import cfg
    from swiftclient import client as sc  # type: ignore[import-untyped]

    storage_url, token = sc.get_auth(srv["auth_url"], srv["user"], srv["key"])
    sc.put_container(storage_url, token, args.container)

    class Context:
        auth_token = token
        project_id = "test"
        user_id = "tester"
        service_catalog: list[Any] = []  # noqa: RUF012 - swift_store_endpoint is used
        roles: list[str] = []  # noqa: RUF012

    conf = cfg.CONF
    glance_store.register_opts(conf)
    conf(args=[], project="glance-bench", default_config_files=[], default_config_dirs=[])
    for key, value in {
        "stores": ["swift"],
        "default_store": "swift",
        "swift_store_multi_tenant": True,
        "swift_store_endpoint": storage_url,
        "swift_store_container": args.container,
        "swift_store_create_container_on_put": True,
        "swift_store_large_object_size": 128,
        "swift_store_large_object_chunk_size": 128,
    }.items():
        conf.set_override(key, value, group="glance_store")
    glance_store.create_stores(conf)
    glance_store.verify_default_store()
    ctx = Context()
    with open(args.source, "rb") as fh:
        start = _usage()
        location, _size, _checksum, _mh, _meta = glance_store.add_to_backend_with_multihash(
            # size 0 ("unknown"): 5.7.0 declares a full segment's length for the
            # last one of a known size and then fails; unknown sizes work
            conf,
            str(uuid.uuid4()),
            fh,
            0,
            "sha512",
            context=ctx,
        )
        add = _since(start)
    start = _usage()
    chunks, _got = glance_store.get_from_backend(location, context=ctx)
    read = common.sink(chunks)
    get = _since(start)
    glance_store.delete_from_backend(location, context=ctx)
    return {"add": add, "get": get, "read": read}


CHILDREN = {
    "imgstore": child_imgstore,
    "swift command": child_swiftcmd,
    "glance_store": child_glance,
}


def server_details() -> dict[str, Any]:
    details = common.service_details("swift")
    return {"auth_url": details["auth_url"], "user": details["user"], "key": details["key"]}


def run_contender(name: str, python: str, args: argparse.Namespace, source: Path) -> dict[str, Any]:
    cmd = [
        python, __file__, "--child", name, "--source", str(source),
        "--size", str(source.stat().st_size), "--container", args.container,
    ]  # fmt: skip
    return common.run_child(name, cmd, imgstore=name == "imgstore")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    common.add_common_args(parser)
    parser.add_argument("--container", default=f"bench-{uuid.uuid4().hex[:12]}")
    args = parser.parse_args()

    if args.child:
        print(json.dumps(CHILDREN[args.child](args, server_details())))
        return 0

    size = args.size_mib * common.MIB
    source = common.make_source("swift", size)
    pythons = {
        "imgstore": sys.executable,
        "swift command": sys.executable,
        "glance_store": str(common.ensure_venv(GLANCE_VENV, GLANCE_REQUIREMENTS)),
    }
    runs = common.interleave(
        args.repeat, size, pythons, lambda name: run_contender(name, pythons[name], args, source)
    )
    floor = common.hash_floor()
    print(f"\nSwift, {args.size_mib} MiB, all-in-one (tempauth), median of {args.repeat}")
    print(runs.table())
    ok = common.report(
        {
            "add MB/s: imgstore / glance_store": runs.speedup("imgstore", "glance_store", "add"),
            "add MB/s: imgstore / swift command": runs.speedup("imgstore", "swift command", "add"),
            "get MB/s: imgstore / glance_store": runs.speedup("imgstore", "glance_store", "get"),
            "get MB/s: imgstore / swift command": runs.speedup("imgstore", "swift command", "get"),
        },
        TARGETS,
    )
    print(common.floor_lines(floor, runs.cpu_per_gib("glance_store", "add")))
    print(runs.outside_hashing("imgstore"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
