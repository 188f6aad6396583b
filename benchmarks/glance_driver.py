"""The glance_store side of ``bench_filesystem.py``; run by the glance_store venv's python.

Not part of imgstore and never imported by it: it runs in its own venv (created by
the benchmark under ``.cache/bench/glance-venv``) with glance_store from the package
index, configured like the imgstore side (filesystem store, md5 + sha512), and prints
one JSON object with the timings of one add and of one get of the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datadir", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--settle", type=float, default=0.0, help="pause before the add")
    args = parser.parse_args()

    import glance_store
    from oslo_config import cfg

    try:
        from importlib.metadata import version

        glance_version = version("glance_store")
    except Exception:
        glance_version = "unknown"

    conf = cfg.CONF  # glance_store's legacy (single-store) functions read the global CONF
    glance_store.register_opts(conf)
    conf(args=[], project="glance-bench", default_config_files=[], default_config_dirs=[])
    conf.set_override("stores", ["file"], group="glance_store")
    conf.set_override("default_store", "file", group="glance_store")
    conf.set_override("filesystem_store_datadir", args.datadir, group="glance_store")
    glance_store.create_stores(conf)
    glance_store.verify_default_store()

    size = os.path.getsize(args.source)
    image_id = str(uuid.uuid4())
    time.sleep(args.settle)
    with open(args.source, "rb") as fh:
        start = time.perf_counter()
        location, written, checksum, multihash, _meta = glance_store.add_to_backend_with_multihash(
            conf, image_id, fh, size, "sha512"
        )
        add_seconds = time.perf_counter() - start

    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        start = time.perf_counter()
        chunks, got_size = glance_store.get_from_backend(location)
        read = 0
        for chunk in chunks:
            read += len(chunk)
            os.write(devnull, chunk)
        get_seconds = time.perf_counter() - start
    finally:
        os.close(devnull)
    glance_store.delete_from_backend(location)

    json.dump(
        {
            "version": glance_version,
            "chunk_size": conf.glance_store.filesystem_store_chunk_size,
            "add_seconds": add_seconds,
            "get_seconds": get_seconds,
            "size": written,
            "get_size": got_size,
            "read": read,
            "checksum": checksum,
            "multihash": multihash,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
