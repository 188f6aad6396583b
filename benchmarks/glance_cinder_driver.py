"""The glance_store side of ``bench_cinder.py``; run by the benchmark venv's python.

Not part of imgstore and never imported by it: it runs in its own venv
(``.cache/bench/glance-cinder-venv``: glance_store, python-cinderclient, os-brick
from the package index, Ceph's bindings linked in) and prints one JSON object:
wall and client CPU seconds of one add (sha512 multihash; glance_store always
adds md5), one get and one delete of the same file through glance_store's
cinder driver, against the test Cinder (noauth: a request context carries the
``<user>:<project>`` token).

glance_store hard-codes the root helper ``sudo glance-rootwrap``; here
os-brick's privileged calls run in process instead (we are root). Its RBD
connector reads the cephx key only from ``/etc/ceph/ceph.client.<user>.keyring``:
``bench_cinder.py`` runs this script in a private mount namespace with a
directory holding that keyring bind-mounted over ``/etc/ceph``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import uuid


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint-template", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--size", choices=["known", "unknown"], default="known")
    args = parser.parse_args()

    import glance_store
    from os_brick import privileged
    from oslo_concurrency import lockutils
    from oslo_config import cfg
    from oslo_context import context

    privileged.default.set_client_mode(False)
    conf = cfg.CONF  # glance_store's legacy functions read the global CONF
    glance_store.register_opts(conf)
    conf(args=[], project="glance-bench", default_config_files=[], default_config_dirs=[])
    lockutils.set_defaults(tempfile.mkdtemp(prefix="glance-bench-locks-"))
    g = "glance_store"
    conf.set_override("stores", ["cinder"], group=g)
    conf.set_override("default_store", "cinder", group=g)
    conf.set_override("cinder_endpoint_template", args.endpoint_template, group=g)
    # no cinder_volume_type: with it, glance_store's configure_add looks the type
    # up without a request context and fails; Cinder's default type lands on the
    # same (only) RBD backend
    conf.set_override("cinder_state_transition_timeout", 60, group=g)
    glance_store.create_stores(conf)
    glance_store.verify_default_store()
    ctx = context.RequestContext(
        user_id="glance", project_id=args.project, auth_token=f"glance:{args.project}"
    )
    ctx.service_catalog = []  # glance's own context has one; unused with the endpoint template

    size = os.path.getsize(args.source)
    declared = size if args.size == "known" else 0
    with open(args.source, "rb") as fh:
        c0, t0 = cpu(), time.perf_counter()
        location, written, _checksum, multihash, _meta = glance_store.add_to_backend_with_multihash(
            conf, str(uuid.uuid4()), fh, declared, "sha512", context=ctx
        )
        add = time.perf_counter() - t0, cpu() - c0
    c0, t0 = cpu(), time.perf_counter()
    chunks, _size = glance_store.get_from_backend(location, context=ctx)
    read = sum(len(chunk) for chunk in chunks)
    get = time.perf_counter() - t0, cpu() - c0
    c0, t0 = cpu(), time.perf_counter()
    glance_store.delete_from_backend(location, context=ctx)
    delete = time.perf_counter() - t0, cpu() - c0
    assert written == read == size, (written, read, size)
    json.dump({"add": add, "get": get, "delete": delete, "multihash": multihash}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
