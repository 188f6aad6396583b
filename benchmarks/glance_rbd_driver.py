"""The glance_store side of ``bench_rbd.py``; run by the glance_store venv's python.

Not part of imgstore and never imported by it: it runs in the benchmark's own venv
(``.cache/bench/glance-venv``, glance_store from the package index, Ceph's bindings
linked in) and prints one JSON object: wall and client CPU seconds of one add
(sha512 multihash; glance_store always adds md5) and one get of the same file
through glance_store's rbd driver, configured like the imgstore side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import uuid


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conf", required=True, help="ceph.conf")
    parser.add_argument("--user", required=True)
    parser.add_argument("--pool", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--chunk-mib", type=int, default=8)
    args = parser.parse_args()

    import glance_store
    from oslo_config import cfg

    conf = cfg.CONF  # glance_store's legacy functions read the global CONF
    glance_store.register_opts(conf)
    conf(args=[], project="glance-bench", default_config_files=[], default_config_dirs=[])
    conf.set_override("stores", ["rbd"], group="glance_store")
    conf.set_override("default_store", "rbd", group="glance_store")
    conf.set_override("rbd_store_pool", args.pool, group="glance_store")
    conf.set_override("rbd_store_user", args.user, group="glance_store")
    conf.set_override("rbd_store_ceph_conf", args.conf, group="glance_store")
    conf.set_override("rbd_store_chunk_size", args.chunk_mib, group="glance_store")
    glance_store.create_stores(conf)
    glance_store.verify_default_store()

    size = os.path.getsize(args.source)
    image_id = str(uuid.uuid4())
    with open(args.source, "rb") as fh:
        c0, t0 = cpu(), time.perf_counter()
        location, written, _checksum, multihash, _meta = glance_store.add_to_backend_with_multihash(
            conf, image_id, fh, size, "sha512"
        )
        add_seconds, add_cpu = time.perf_counter() - t0, cpu() - c0

    c0, t0 = cpu(), time.perf_counter()
    chunks, _got_size = glance_store.get_from_backend(location)
    read = 0
    for chunk in chunks:
        read += len(chunk)
    get_seconds, get_cpu = time.perf_counter() - t0, cpu() - c0
    glance_store.delete_from_backend(location)
    json.dump(
        {
            "add_seconds": add_seconds,
            "add_cpu": add_cpu,
            "get_seconds": get_seconds,
            "get_cpu": get_cpu,
            "size": written,
            "read": read,
            "multihash": multihash,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
