"""Distributed migrate benchmark: 3 ``imgstore worker`` processes x 2 threads (Celery on
RabbitMQ, the journal in PostgreSQL) against one ``imgstore migrate --concurrency 6``,
the same images, filesystem -> RBD.

Not a test. Needs the test servers (``python -m tests.functional.services up ceph
rabbitmq postgresql``). Run from the repository root::

    .venv/bin/python benchmarks/bench_distributed.py [--images 40] [--size-mib 16] [--repeat 3]

The images are added once to a filesystem store under ``.cache/bench``; each round
migrates them into a fresh RBD pool once by the single process (sqlite journal) and
once by the workers (started before the clock starts, as they would be waiting on
their hosts; a fresh journal database each round), in alternating order. Reported: the
median wall time and MB/s of each, the ratio distributed/single (target: at least 0.9,
the engine's overhead at most 10%), and the journal's rows and writes per image.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import MIB, ROOT
from bench_migrate import DETAILS, log, prepare_source, warm

sys.path.insert(0, str(ROOT))
COMMAND = [sys.executable, "-m", "imgstore"]
SERVICES = ROOT / ".cache" / "services"
TARGET = 0.9


def details(name: str) -> dict[str, Any]:
    path = SERVICES / name / "details.json"
    if not path.exists():
        raise SystemExit(f"{name} is not up: python -m tests.functional.services up {name}")
    return dict(json.loads(path.read_text()))


def config(tmp: Path, datadir: Path, pool: str, ceph: dict[str, Any]) -> Path:
    conf = tmp / "migrate.conf"
    conf.write_text(
        "[DEFAULT]\nenabled_backends = src:file, dst:rbd\n"
        "[glance_store]\ndefault_backend = src\n"
        f"[src]\nfilesystem_store_datadir = {datadir}\n"
        f"[dst]\nrbd_store_pool = {pool}\nrbd_store_user = {ceph['user']}\n"
        f"rbd_store_ceph_conf = {ceph['ceph_conf']}\n"
    )
    return conf


def with_pool(ceph: dict[str, Any], run: Any) -> float:
    import rados
    import rbd

    pool = f"bench-dist-{uuid.uuid4().hex[:6]}"
    cluster = rados.Rados(conffile=ceph["ceph_conf"], rados_id=ceph["user"])
    cluster.connect()
    cluster.create_pool(pool)
    try:
        with cluster.open_ioctx(pool) as ioctx:
            rbd.RBD().pool_init(ioctx, False)
        return float(run(pool))
    finally:
        cluster.delete_pool(pool)
        cluster.shutdown()


def single(ceph: dict[str, Any], datadir: Path, listing: Path) -> float:
    def run(pool: str) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            conf = config(Path(tmp), datadir, pool, ceph)
            warm(datadir)
            t0 = time.perf_counter()
            proc = subprocess.run(
                [*COMMAND, "--config-file", str(conf), "migrate", str(listing), "--to", "dst",
                 "--concurrency", "6", "--journal", str(Path(tmp) / "j"), "-q"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"migrate failed:\n{proc.stderr[-3000:]}")
            return wall

    return with_pool(ceph, run)


def fresh_database(pg: dict[str, Any]) -> tuple[str, Any]:
    import sqlalchemy

    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(
        pg["admin_url_with_password"], isolation_level="AUTOCOMMIT",
        poolclass=sqlalchemy.pool.NullPool,
    )  # fmt: skip
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} OWNER {pg['user']}")
    url = sqlalchemy.engine.make_url(pg["url_with_password"]).set(database=name)

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")

    return url.render_as_string(hide_password=False), drop


def journal_writes(url: str) -> dict[str, float]:
    """Rows of the journal and the writes PostgreSQL counted on them, per image."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        images = conn.exec_driver_sql("SELECT count(*) FROM images").scalar() or 1
        row = conn.exec_driver_sql(
            "SELECT n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'images'"
        ).one()
    return {"rows": 1.0, "inserts": row[0] / images, "updates": row[1] / images}


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    for w in workers:
        w.wait(timeout=60)


def distributed(
    ceph: dict[str, Any], broker: str, pg: dict[str, Any], datadir: Path, listing: Path
) -> tuple[float, dict[str, float]]:
    stats: dict[str, float] = {}

    def run(pool: str) -> float:
        journal, drop = fresh_database(pg)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            with tempfile.TemporaryDirectory() as tmp:
                conf = config(Path(tmp), datadir, pool, ceph)
                for n in range(3):
                    own = Path(tmp) / f"w{n}.conf"
                    own.write_bytes(conf.read_bytes())
                    workers.append(subprocess.Popen(
                        [*COMMAND, "--config-file", str(own), "worker", "--broker", broker,
                         "--journal", journal, "--concurrency", "2"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    ))  # fmt: skip
                time.sleep(5)  # the workers are up and waiting, as on their hosts
                warm(datadir)
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [*COMMAND, "--config-file", str(conf), "migrate", str(listing), "--to",
                     "dst", "--broker", broker, "--journal", journal, "-q"],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise SystemExit(f"distributed migrate failed:\n{proc.stderr[-3000:]}")
                stop(workers)  # their sessions end, so PostgreSQL has counted their writes
                time.sleep(1)
                stats.update(journal_writes(journal))
                return wall
        finally:
            stop(workers)
            drop()

    return with_pool(ceph, run), stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size-mib", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not DETAILS.exists():
        raise SystemExit("ceph is not up: python -m tests.functional.services up ceph")
    ceph = json.loads(DETAILS.read_text())
    broker = str(details("rabbitmq")["url_with_password"])
    pg = details("postgresql")
    size = args.size_mib * MIB
    total = args.images * size
    log(f"preparing {args.images} x {args.size_mib} MiB in a filesystem store")
    datadir, listing = prepare_source(args.images, size)
    walls: dict[str, list[float]] = {"single": [], "distributed": []}
    stats: dict[str, float] = {}
    for round_ in range(args.repeat):
        order = ["single", "distributed"] if round_ % 2 == 0 else ["distributed", "single"]
        for name in order:
            if name == "single":
                walls[name].append(single(ceph, datadir, listing))
            else:
                wall, stats = distributed(ceph, broker, pg, datadir, listing)
                walls[name].append(wall)
            log(f"round {round_ + 1}: {name} {walls[name][-1]:.2f} s")
    medians = {k: statistics.median(v) for k, v in walls.items()}
    for name, wall in medians.items():
        print(f"{name:12s} {wall:7.2f} s  {total / wall / 1e6:8.1f} MB/s")
    ratio = medians["single"] / medians["distributed"]
    print(f"distributed/single throughput: {ratio:.3f} (target >= {TARGET})")
    print(
        f"journal per image: {stats.get('rows', 0):.0f} row, "
        f"{stats.get('inserts', 0):.1f} inserts, {stats.get('updates', 0):.1f} updates"
    )


if __name__ == "__main__":
    main()
