"""``imgstore migrate --broker`` and ``imgstore worker``: Celery on the harness's RabbitMQ,
the journal in its MariaDB or PostgreSQL, the images going from a filesystem store to
the real Ceph cluster (RBD, radosgw S3).

Three worker processes, each with a configuration file of its own (as three hosts would
have), migrate 200 images; the report equals a single-host run's of the same images,
the target holds each image once, and every worker did some of it. A worker killed with
SIGKILL in the middle of a large image: another takes the image up once its lease
lapses, and the target holds it once with nothing left over. A bad broker or journal
URL, wrong credentials or no broker: one line, exit 2 or 5, nothing enqueued.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore import Stores
from imgstore.journal import COPYING, DONE, Journal
from tests.functional.conftest import require_service
from tests.functional.journal_databases import fresh_database, sqlalchemy
from tests.functional.migration_targets import Target, migration_target, write_config
from tests.functional.test_migrate import COMMAND

pytestmark = pytest.mark.functional

COMPARED = ("image_id", "outcome", "source", "location", "size", "checksum", "os_hash_algo",
            "os_hash_value", "source_deleted", "error_type", "checked", "inspection")  # fmt: skip
"""The fields of a report's image that a distributed run must give as a single-host run
does (not ``seconds``, nor ``attempts``, which counts the single-host run's copy too)."""


@pytest.fixture(scope="module")
def broker() -> str:
    return str(require_service("rabbitmq")["url_with_password"])


@pytest.fixture(params=["rbd", "s3"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    with migration_target(request.param, tmp_path_factory) as made:
        yield made


@pytest.fixture
def journal_url(target: Target) -> Iterator[str]:
    """MariaDB for the RBD target, PostgreSQL for S3: both databases, both targets."""
    with fresh_database("mariadb" if target.driver == "rbd" else "postgresql") as url:
        yield url


def add_images(conf: Path, sizes: list[int], seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = []
    with Stores.from_config_files(conf) as stores:
        for n, size in enumerate(sizes):
            image_id = f"d{n:03d}-{uuid.uuid4().hex[:8]}"
            r = stores.add(image_id, rng.randbytes(size), size=size, backend="src")
            records.append(
                {"image_id": image_id, "location": r.location, "size": r.size,
                 "checksum": r.checksum, "os_hash_algo": r.hash_algo,
                 "os_hash_value": r.multihash}
            )  # fmt: skip
    return records


def without_password(url: str) -> tuple[str, str | None]:
    """``url`` without its password, and the password (percent-decoded; None: it had none)."""
    if "://" not in url:
        return url, None  # a journal file
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url, None
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}@{host}"
    return parts._replace(netloc=netloc).geturl(), urllib.parse.unquote(parts.password)


def passwords_in_environment(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """``args`` with the passwords of their --broker and --journal URLs moved into the
    environment imgstore reads them from (``IMGSTORE_*_PASSWORD``), as the README says
    to run it: a command line is readable by every local user."""
    env = dict(os.environ)
    for n, arg in enumerate(args[:-1]):
        if arg in ("--broker", "--journal"):
            args[n + 1], password = without_password(args[n + 1])
            if password is not None:
                env[f"IMGSTORE_{arg[2:].upper()}_PASSWORD"] = password
    return args, env


class Workers:
    """``imgstore worker`` processes, each with its own copy of the configuration."""

    def __init__(self, tmp: Path, conf: Path, broker: str, journal: str) -> None:
        self.tmp, self.conf, self.broker, self.journal = tmp, conf, broker, journal
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        own = self.tmp / f"worker{n}.conf"
        own.write_bytes(self.conf.read_bytes())
        log = (self.tmp / f"worker{n}.log").open("wb")
        args, env = passwords_in_environment(
            [*COMMAND, "--config-file", str(own), "worker", "--broker", self.broker,
             "--journal", self.journal, "--concurrency", "2", *extra]
        )  # fmt: skip
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        secrets = [without_password(url)[1] for url in (self.broker, self.journal)]
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert all(s and s.encode() not in cmdline for s in secrets), "a password in ps"
        return proc

    def stop(self, timeout: float = 60) -> list[int]:
        """SIGTERM every worker (a warm shutdown); the PIDs of those still running
        ``timeout`` seconds later, which are killed."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        killed = []
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed.append(proc.pid)
                proc.kill()
                proc.wait()
        return killed

    def logs(self) -> str:
        return "\n".join(
            (self.tmp / f"worker{n}.log").read_text(errors="replace")[-3000:]
            for n in range(len(self.procs))
        )


@pytest.fixture
def workers(tmp_path: Path, broker: str, journal_url: str) -> Iterator[Any]:
    made: list[Workers] = []

    def make(conf: Path) -> Workers:
        made.append(Workers(tmp_path, conf, broker, journal_url))
        return made[-1]

    yield make
    for w in made:
        w.stop()


def imgstore(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    argv, env = passwords_in_environment([*COMMAND, *args])
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


def compared(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["image_id"]: {k: i[k] for k in COMPARED} for i in report["images"]}


def test_three_workers_migrate_each_image_once_as_one_host_would(
    tmp_path: Path, target: Target, broker: str, journal_url: str, workers: Any
) -> None:
    conf = write_config(tmp_path / "c.conf", tmp_path / "src", target.driver, target.options)
    rng = random.Random(200)
    sizes = [0, 1, 4 << 20, (1 << 20) + 7] + [rng.randrange(0, 96 << 10) for _ in range(196)]
    records = add_images(conf, sizes, seed=1)
    listing = tmp_path / "images.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in records))

    # the single-host run, for its report; then the copies go again
    single = imgstore("--config-file", str(conf), "migrate", str(listing), "--to", "dst",
                      "--concurrency", "6", "--journal", str(tmp_path / "single.journal"),
                      "--report", str(tmp_path / "single.json"), "-q")  # fmt: skip
    assert single.returncode == 0, single.stderr
    with Stores.from_config_files(conf) as stores:
        for image in json.loads((tmp_path / "single.json").read_text())["images"]:
            stores.delete(image["location"])
        before = target.listing(stores)

    pool = workers(conf)
    for _ in range(3):
        pool.start()
    started = time.monotonic()
    run = imgstore("--config-file", str(conf), "migrate", str(listing), "--to", "dst",
                   "--broker", broker, "--journal", journal_url,
                   "--report", str(tmp_path / "distributed.json"), "-q")  # fmt: skip
    seconds = time.monotonic() - started
    assert run.returncode == 0, run.stderr + pool.logs()
    distributed = json.loads((tmp_path / "distributed.json").read_text())
    assert compared(distributed) == compared(json.loads((tmp_path / "single.json").read_text()))
    assert distributed["summary"]["outcomes"] == {"migrated": len(records)}

    with Stores.from_config_files(conf) as stores:
        after = target.listing(stores)
    expected = set().union(*(target.expected(r["image_id"]) for r in records))
    assert after - before == expected, "each image once at the target, nothing else"
    with Journal(journal_url, "dst") as journal:
        entries = journal.entries()
    assert {e.state for e in entries} == {DONE} and {e.attempts for e in entries} == {1}
    assert all(e.lease_owner is None for e in entries)

    status = imgstore("migrate", "status", "--journal", journal_url, "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["states"] == {"done": len(records)} and shown["in_flight"] == 0
    assert len(shown["workers"]) == 3, shown["workers"]  # every worker did some
    assert sum(w["done"] for w in shown["workers"].values()) == len(records)
    for secret in [*target.secrets, str(sqlalchemy.engine.make_url(journal_url).password)]:
        assert secret not in status.stdout + run.stderr + run.stdout + pool.logs()
    print(f"{len(records)} images in {seconds:.1f} s by 3 workers x 2")


class SlowServer:
    """An HTTP server on 127.0.0.1 that sends files of a directory at about 4 MiB/s, so
    a worker can be killed while it is surely in the middle of copying one."""

    def __init__(self, root: Path) -> None:
        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, directory=str(root), **kw)

            def copyfile(self, source: Any, outputfile: Any) -> None:
                while chunk := source.read(256 << 10):
                    outputfile.write(chunk)
                    time.sleep(1 / 16)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("target", ["rbd"], indirect=True)  # the journal in MariaDB
def test_a_worker_killed_mid_image_is_taken_over_once(
    tmp_path: Path, target: Target, broker: str, journal_url: str, workers: Any
) -> None:
    conf = write_config(tmp_path / "c.conf", tmp_path / "src", target.driver, target.options)
    with conf.open("a") as fh:  # and a web server to read the large image from, slowly
        fh.write("[web]\nhttp_allowed_networks = 127.0.0.0/8\n")
    conf.write_text(conf.read_text().replace("src:file,", "src:file, web:http,"))
    records = add_images(conf, [12 << 20, 1000, 2000], seed=2)
    big = records[0]["image_id"]
    slow = SlowServer(tmp_path / "src")
    records[0]["location"] = f"{slow.url}/{big}"
    listing = tmp_path / "images.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in records))
    with Stores.from_config_files(conf) as stores:
        before = target.listing(stores)

    pool = workers(conf)
    doomed = pool.start("--lease-seconds", "4")
    sent = imgstore("--config-file", str(conf), "migrate", str(listing), "--to", "dst",
                    "--broker", broker, "--journal", journal_url, "--no-wait")  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    with Journal(journal_url, "dst") as journal:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            entry = journal.get(big)
            if entry is not None and entry.state == COPYING:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the large image never started copying:\n" + pool.logs())
        time.sleep(0.3)  # some of its bytes are written
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
        killed_at = time.time()
        pool.start("--lease-seconds", "4")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            entries = {e.image_id: e for e in journal.entries()}
            if len(entries) == 3 and all(e.outcome for e in entries.values()):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"not finished: {entries}\n" + pool.logs())
    taken = entries[big]
    assert taken.state == DONE and taken.attempts == 2, taken
    assert (taken.finished or 0) > killed_at
    assert json.loads(taken.outcome or "{}")["outcome"] == "migrated"

    with Stores.from_config_files(conf) as stores:
        after = target.listing(stores)
        for r in records:  # the bytes are the source's
            location = json.loads(entries[r["image_id"]].outcome or "{}")["location"]
            with stores.get(location, hash_algo="sha512") as reader:
                assert sum(len(c) for c in reader) == r["size"]
                assert reader.multihash == r["os_hash_value"]
    expected = set().union(*(target.expected(r["image_id"]) for r in records))
    assert after - before == expected
    slow.close()
    cleanup = imgstore("--config-file", str(conf), "cleanup", "--backend", "dst",
                       "--older-than", "0", "--dry-run", "--json")  # fmt: skip
    assert cleanup.returncode == 0, cleanup.stderr
    assert json.loads(cleanup.stdout) == [], cleanup.stdout  # nothing left over


def test_bad_broker_or_journal_is_one_clear_line_and_nothing_enqueued(
    tmp_path: Path, broker: str
) -> None:
    conf = write_config(tmp_path / "c.conf", tmp_path / "src", "file",
                        {"filesystem_store_datadir": tmp_path / "dst"})  # fmt: skip
    records = add_images(conf, [10, 20], seed=3)
    listing = tmp_path / "images.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in records))
    details = require_service("rabbitmq")
    where = f"127.0.0.1:{details['port']}/{details['vhost']}"
    wrong_broker = f"amqp://{details['user']}:nope@{where}"
    nowhere_broker = broker.rsplit("@", 1)[0] + "@127.0.0.1:1/" + details["vhost"]
    with fresh_database("postgresql") as journal:
        db_password = str(sqlalchemy.engine.make_url(journal).password)
        wrong_db = (
            sqlalchemy.engine.make_url(journal)
            .set(password="nope")
            .render_as_string(hide_password=False)
        )
        cases = {
            "wrong broker password": (wrong_broker, journal, 5),
            "no broker": (nowhere_broker, journal, 5),
            "not a broker URL": ("nonsense://x", journal, 2),
            "wrong database password": (broker, wrong_db, 5),
            "not a journal URL": (broker, "mysql+pymysql://u:p@127.0.0.1:port/x", 2),
            "a sqlite file": (broker, str(tmp_path / "j.sqlite"), 2),
        }
        for name, (b, j, code) in cases.items():
            run = imgstore("--config-file", str(conf), "migrate", str(listing), "--to", "dst",
                           "--broker", b, "--journal", j, timeout=120)  # fmt: skip
            lines = run.stderr.strip().splitlines()
            assert run.returncode == code, (name, run.stderr)
            assert len(lines) == 1 and lines[0].startswith("imgstore: error: "), (name, lines)
            for secret in (db_password, details["password"]):
                assert secret not in run.stderr, name
        engine = sqlalchemy.create_engine(journal)
        with engine.connect() as conn:  # nothing recorded, so nothing was enqueued either
            tables = sqlalchemy.inspect(conn).get_table_names()
            rows = conn.exec_driver_sql("SELECT count(*) FROM images").scalar() if tables else 0
        engine.dispose()
        assert rows == 0


def done_count(journal_url: str) -> int:
    engine = sqlalchemy.create_engine(journal_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.exec_driver_sql("SELECT count(*) FROM images WHERE state = 'done'").scalar()
            )
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError):
        return -1  # the database is restarting, or the journal is not made yet
    finally:
        engine.dispose()


def test_broker_and_database_restarted_mid_run_lose_nothing(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, broker: str
) -> None:
    """RabbitMQ restarted once a quarter of the images are done, PostgreSQL (the journal)
    once half are: the run completes, every image once at the target. (This module is one
    xdist group with the other users of these servers: see tests/conftest.py.)"""
    from tests.functional.services import postgresql, rabbitmq

    with (
        migration_target("rbd", tmp_path_factory) as target,
        fresh_database("postgresql") as journal_url,
    ):
        conf = write_config(tmp_path / "c.conf", tmp_path / "src", target.driver, target.options)
        rng = random.Random(60)
        records = add_images(conf, [rng.randrange(256 << 10, 2 << 20) for _ in range(60)], 4)
        listing = tmp_path / "images.jsonl"
        listing.write_text("".join(json.dumps(r) + "\n" for r in records))
        with Stores.from_config_files(conf) as stores:
            before = target.listing(stores)
        pool = Workers(tmp_path, conf, broker, journal_url)
        try:
            for _ in range(3):  # an image whose task the restart cut waits out its lease
                pool.start("--lease-seconds", "6")
            run = subprocess.Popen(
                [*COMMAND, "--config-file", str(conf), "migrate", str(listing), "--to", "dst",
                 "--broker", broker, "--journal", journal_url,
                 "--report", str(tmp_path / "report.json"), "-q"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            restarted = []
            for server, at in ((rabbitmq, 15), (postgresql, 30)):
                deadline = time.monotonic() + 180
                while done_count(journal_url) < at and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert done_count(journal_url) < len(records), "restarted too late to matter"
                server.restart()
                restarted.append(server.__name__)
            _out, err = run.communicate(timeout=600)
            assert run.returncode == 0, err + pool.logs()
        finally:
            # Celery's prefetch reduction after a reconnect once left a worker blocked
            # for good in basic.qos: its reserved tasks stalled and SIGTERM did nothing
            killed = pool.stop(timeout=30)
        assert killed == [], f"workers that did not stop after the restarts: {pool.logs()}"
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["summary"]["outcomes"] == {"migrated": len(records)}, err
        with Journal(journal_url, "dst") as journal:
            entries = journal.entries()
        assert {e.state for e in entries} == {DONE}
        with Stores.from_config_files(conf) as stores:
            after = target.listing(stores)
            for r in records:
                location = next(i["location"] for i in report["images"]
                                if i["image_id"] == r["image_id"])  # fmt: skip
                with stores.get(location, hash_algo="sha512") as reader:
                    assert sum(len(c) for c in reader) == r["size"]
                    assert reader.multihash == r["os_hash_value"]
        expected = set().union(*(target.expected(r["image_id"]) for r in records))
        assert after - before == expected, "each image once, nothing left over"
        assert len(restarted) == 2


def get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def test_flower_and_the_workers_metrics_show_the_run(tmp_path: Path, broker: str) -> None:
    """Flower, pointed at the same broker, lists the worker and its tasks (with the
    redacted source only); the worker's /metrics counts its adds."""
    from tests.functional.test_migrate import free_port, sample, scrape

    with fresh_database("postgresql") as journal_url:
        conf = write_config(tmp_path / "c.conf", tmp_path / "src", "file",
                            {"filesystem_store_datadir": tmp_path / "dst"})  # fmt: skip
        records = add_images(conf, [1000 * n for n in range(6)], seed=5)
        listing = tmp_path / "images.jsonl"
        listing.write_text("".join(json.dumps(r) + "\n" for r in records))
        flower_port, metrics_port = free_port(), free_port()
        flower_log = (tmp_path / "flower.log").open("wb")
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-b", broker, "flower",
             "--address=127.0.0.1", f"--port={flower_port}"],
            stdout=flower_log, stderr=subprocess.STDOUT,
            env={**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"},
        )  # fmt: skip
        pool = Workers(tmp_path, conf, broker, journal_url)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    get_json(f"http://127.0.0.1:{flower_port}/api/tasks")
                    break
                except OSError:
                    time.sleep(0.2)
            worker = pool.start("--metrics-port", str(metrics_port))
            run = imgstore("--config-file", str(conf), "migrate", str(listing), "--to", "dst",
                           "--broker", broker, "--journal", journal_url, "-q")  # fmt: skip
            assert run.returncode == 0, run.stderr + pool.logs()
            metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
            assert metrics is not None, "the worker serves no metrics"
            adds = sample(metrics, "imgstore_operation_duration_seconds_count",
                          imgstore_backend="dst", imgstore_operation="add",
                          imgstore_outcome="ok")  # fmt: skip
            assert adds == len(records)
            tasks: dict[str, Any] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                tasks = get_json(f"http://127.0.0.1:{flower_port}/api/tasks")
                if sum(1 for t in tasks.values() if t.get("state") == "SUCCESS") >= len(records):
                    break
                time.sleep(0.3)
            mine = [t for t in tasks.values() if t.get("name") == "imgstore.migrate_image"]
            assert len(mine) == len(records), tasks
            assert {t["state"] for t in mine} == {"SUCCESS"}
            # each task shows its image and redacted source (kwargsrepr), never the message
            named = sorted(r["image_id"] for t in mine for r in records
                           if r["image_id"] in str(t["kwargs"]))  # fmt: skip
            assert named == sorted(r["image_id"] for r in records), mine
            assert all("'source': 'file://" in str(t["kwargs"]) for t in mine), mine
            workers_seen = get_json(f"http://127.0.0.1:{flower_port}/api/workers?refresh=1")
            assert any(f"-{worker.pid}-" in name for name in workers_seen), workers_seen
            shown = json.dumps(tasks) + json.dumps(workers_seen)
        finally:
            pool.stop()
            flower.terminate()
            flower.wait(timeout=30)
        password = str(require_service("rabbitmq")["password"])
        db_password = str(sqlalchemy.engine.make_url(journal_url).password)
        for secret in (password, db_password):
            assert secret not in shown
            assert secret not in (tmp_path / "flower.log").read_text(errors="replace")


def test_verify_fans_out_the_same_way(tmp_path: Path, broker: str) -> None:
    """``verify --broker``: 2 workers re-read every image; the report equals a single-host
    verify's (one image changed after its hashes were recorded: mismatch, exit 4)."""
    with fresh_database("mariadb") as journal_url:
        conf = write_config(tmp_path / "c.conf", tmp_path / "src", "file",
                            {"filesystem_store_datadir": tmp_path / "dst"})  # fmt: skip
        records = add_images(conf, [5000 * n for n in range(12)], seed=6)
        changed = tmp_path / "src" / records[5]["image_id"]
        changed.write_bytes(changed.read_bytes()[::-1])
        listing = tmp_path / "images.jsonl"
        listing.write_text("".join(json.dumps(r) + "\n" for r in records))
        single = imgstore("--config-file", str(conf), "verify", str(listing),
                          "--report", str(tmp_path / "single.json"), "-q")  # fmt: skip
        assert single.returncode == 4, single.stderr
        pool = Workers(tmp_path, conf, broker, journal_url)
        try:
            for _ in range(2):
                pool.start()
            run = imgstore("--config-file", str(conf), "verify", str(listing), "--broker",
                           broker, "--journal", journal_url,
                           "--report", str(tmp_path / "distributed.json"), "-q")  # fmt: skip
        finally:
            pool.stop()
        assert run.returncode == 4, run.stderr + pool.logs()
        distributed = json.loads((tmp_path / "distributed.json").read_text())
        assert distributed["summary"]["outcomes"] == {"ok": 11, "mismatch": 1}
        assert compared(distributed) == compared(json.loads((tmp_path / "single.json").read_text()))
