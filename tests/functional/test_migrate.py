"""``imgstore migrate`` and ``imgstore verify`` against the real Ceph cluster: RBD and radosgw S3.

50 images of mixed sizes (0 bytes to 64 MiB) go from a filesystem store to
the target, run by the real command in a subprocess that is killed with
SIGKILL once some images are done, then resumed. The proof that each image
was copied exactly once: the journal's attempt counts (one copy per image,
a second one only for the copies the kill interrupted) and the target's raw
listing, which holds exactly one image per migrated id and nothing else (no
half-written image, no multipart upload). One source is corrupted after its
hashes were recorded (reported, not migrated, nothing left at the target);
one id already exists at the target with other bytes (refused, reported,
left intact) while the others go on.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore import Stores
from tests.functional.migration_targets import Target, migration_target, write_config

pytestmark = pytest.mark.functional

MiB = 1 << 20
SCRIPT = shutil.which("imgstore", path=os.path.dirname(sys.executable))
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "imgstore"]
CONCURRENCY = 2
BIG = 20  # index of the 64 MiB image: in flight around the kill


def sizes() -> list[int]:
    """50 sizes, 0 bytes to 64 MiB, about 150 MiB in all."""
    rng = random.Random(50)
    fixed = [0, 1, 4095, 4 * MiB, 4 * MiB + 1, 17 * MiB, 9 * MiB + 7]
    rest = [rng.randrange(1024, 3 * MiB) for _ in range(50 - len(fixed) - 1)]
    out = fixed + rest
    out.insert(BIG, 64 * MiB)
    return out


@pytest.fixture(params=["rbd", "s3"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    with migration_target(request.param, tmp_path_factory) as made:
        yield made


def run_cli(*args: str, **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*COMMAND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def journal_rows(path: Path) -> dict[str, tuple[str, int]]:
    """image_id -> (state, attempts), read while another process may write the journal."""
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {
            r[0]: (r[1], r[2]) for r in db.execute("SELECT image_id, state, attempts FROM images")
        }
    except sqlite3.OperationalError:  # tables not created yet
        return {}
    finally:
        db.close()


def test_migrate_killed_and_resumed_copies_each_image_once(tmp_path: Path, target: Target) -> None:
    src_dir = tmp_path / "src"
    conf = write_config(tmp_path / "migrate.conf", src_dir, target.driver, target.options)
    records: list[dict[str, Any]] = []
    blobs: dict[str, bytes] = {}
    rng = random.Random(7)
    with Stores.from_config_files(conf) as stores:
        for n, size in enumerate(sizes()):
            image_id = f"img-{n:02d}-{uuid.uuid4().hex[:6]}"
            data = rng.randbytes(size)
            result = stores.add(image_id, data, size=size, backend="src")
            blobs[image_id] = data
            records.append(
                {
                    "image_id": image_id,
                    "location": result.location,
                    "size": result.size,
                    "checksum": result.checksum,
                    "os_hash_algo": result.hash_algo,
                    "os_hash_value": result.multihash,
                    "status": "active",  # other columns of the image service are ignored
                }
            )
        corrupt = records[3 + 7]["image_id"]  # a ~MiB image; same size, one byte flipped
        path = src_dir / corrupt
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
        taken = records[30]["image_id"]  # already at the target, with other bytes
        squatter = b"not the image the record describes"
        stores.add(taken, squatter, size=len(squatter), backend="dst")
        before = target.listing(stores)
    input_file = tmp_path / "images.jsonl"
    input_file.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    journal = tmp_path / "migrate.journal"
    args = [
        "--config-file", str(conf), "migrate", str(input_file), "--to", "dst",
        "--concurrency", str(CONCURRENCY), "--journal", str(journal),
    ]  # fmt: skip

    # -- first run: SIGKILL once some images are done ----------------------
    first = run_cli(*args, "--report", str(tmp_path / "first.json"))
    deadline = time.monotonic() + 300
    rows: dict[str, tuple[str, int]] = {}
    while time.monotonic() < deadline:
        rows = journal_rows(journal)
        if sum(1 for s, _ in rows.values() if s == "done") >= 12:
            break
        assert first.poll() is None, first.communicate()[1].decode()[-2000:]
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    rows = journal_rows(journal)
    done_before = {i for i, (s, _) in rows.items() if s == "done"}
    interrupted = {i for i, (s, _) in rows.items() if s in ("copying", "verified")}
    assert 12 <= len(done_before) < 40, "the kill should land midway"
    assert not (tmp_path / "first.json").exists()

    # -- second run: resumes, finishes, reports the two failures -----------
    second = run_cli(*args, "--report", str(tmp_path / "second.json"))
    out, err = second.communicate(timeout=600)
    assert second.returncode == 1, err.decode()[-3000:]
    assert err.decode().count("imgstore: error:") == 1
    report = json.loads((tmp_path / "second.json").read_text())
    outcomes = {i["image_id"]: i for i in report["images"]}
    assert [i["image_id"] for i in report["images"]] == [r["image_id"] for r in records]

    assert outcomes[corrupt]["outcome"] == "failed", outcomes[corrupt]
    assert outcomes[corrupt]["error_type"] == "ChecksumMismatch", outcomes[corrupt]
    assert outcomes[corrupt]["location"] is None
    assert outcomes[taken]["outcome"] == "failed"
    assert outcomes[taken]["error_type"] == "Duplicate"
    good = [r for r in records if r["image_id"] not in (corrupt, taken)]
    for rec in good:
        got = outcomes[rec["image_id"]]
        expected = "already_migrated" if rec["image_id"] in done_before else "migrated"
        assert got["outcome"] == expected, got
        assert got["size"] == rec["size"]
        assert got["os_hash_value"] == rec["os_hash_value"]
        assert got["checksum"] == rec["checksum"]
    assert report["summary"]["outcomes"] == {
        "already_migrated": len(done_before),
        "failed": 2,
        "migrated": 48 - len(done_before),
    }

    # -- each image copied exactly once --------------------------------------
    final = journal_rows(journal)
    for rec in good:
        state, attempts = final[rec["image_id"]]
        assert state == "done"
        if rec["image_id"] in interrupted:
            assert attempts in (1, 2)  # the killed copy, then (unless it had finished) one more
        else:
            assert attempts == 1, (rec["image_id"], attempts)
    assert final[taken] == ("failed", 0)  # refused before any byte was written
    with Stores.from_config_files(conf) as stores:
        listing = target.listing(stores)
        expected = set(before)
        for rec in good:
            expected |= target.expected(rec["image_id"])
        assert listing == expected, err.decode()[-5000:]  # one per migrated id; no leftovers
        with stores.get(records[30]["location"]) as reader:
            assert reader.read_all() == blobs[taken]  # the source is untouched
        dst_taken = stores.location_for(taken, "dst")
        assert dst_taken is not None
        with stores.get(dst_taken) as reader:
            assert reader.read_all() == squatter  # the refusing target was left as it was
        for rec in good[::7]:
            with stores.get(outcomes[rec["image_id"]]["location"]) as reader:
                assert reader.read_all() == blobs[rec["image_id"]]

    # -- imgstore verify on the new locations ----------------------------------
    verify_in = tmp_path / "verify.jsonl"
    verify_in.write_text(
        "".join(
            json.dumps({**rec, "location": outcomes[rec["image_id"]]["location"]}) + "\n"
            for rec in good
        )
    )
    proc = subprocess.run(
        [*COMMAND, "--config-file", str(conf), "verify", str(verify_in), "--json",
         "--concurrency", "2"],
        capture_output=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    verified = json.loads(proc.stdout)
    assert verified["summary"]["outcomes"] == {"ok": 48}

    # -- no secret anywhere ------------------------------------------------------
    texts = [journal.read_bytes(), (tmp_path / "second.json").read_bytes(), out, err]
    for wal in tmp_path.glob("migrate.journal*"):
        texts.append(wal.read_bytes())
    for secret in target.secrets:
        for text in texts:
            assert secret.encode() not in text


def test_verify_reports_mismatches_and_unreadable_images(tmp_path: Path, target: Target) -> None:
    src_dir = tmp_path / "src"
    conf = write_config(tmp_path / "verify.conf", src_dir, target.driver, target.options)
    rows = []
    with Stores.from_config_files(conf) as stores:
        for n in range(4):
            data = os.urandom(n * 300_000 + 1)
            result = stores.add(f"v{n}-{uuid.uuid4().hex[:6]}", data, backend="dst")
            rows.append(
                {
                    "image_id": result.image_id,
                    "location": result.location,
                    "size": result.size,
                    "checksum": result.checksum,
                    "os_hash_algo": result.hash_algo,
                    "os_hash_value": result.multihash,
                }
            )
        stores.delete(rows[1]["location"])  # unreadable: gone
        rows[2]["os_hash_value"] = "0" * len(rows[2]["os_hash_value"])  # mismatch
        rows[3]["size"] += 1  # mismatch by size
    csv_in = tmp_path / "verify.csv"
    header = "image_id,location,size,checksum,os_hash_algo,os_hash_value\n"
    csv_in.write_text(
        header
        + "".join(",".join(str(r[k]) for k in header.strip().split(",")) + "\n" for r in rows)
    )
    proc = subprocess.run(
        [*COMMAND, "--config-file", str(conf), "verify", str(csv_in), "--report",
         str(tmp_path / "r.json"), "-q"],
        capture_output=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    got = {i["image_id"]: (i["outcome"], i["error_type"]) for i in report["images"]}
    assert got == {
        rows[0]["image_id"]: ("ok", None),
        rows[1]["image_id"]: ("unreadable", "NotFound"),
        rows[2]["image_id"]: ("mismatch", "ChecksumMismatch"),
        rows[3]["image_id"]: ("mismatch", "SizeMismatch"),
    }


def test_discard_removes_what_a_killed_write_left(tmp_path: Path, target: Target) -> None:
    """A write that got neither commit nor abort (the process died): discard removes it all."""
    conf = write_config(tmp_path / "d.conf", tmp_path / "src", target.driver, target.options)
    options = {"s3_store_large_object_size": 0, "s3_store_large_object_chunk_size": 5}
    if target.driver == "s3":  # a multipart upload with parts up, never completed
        conf = write_config(
            tmp_path / "d.conf", tmp_path / "src", "s3", {**target.options, **options}
        )
    with Stores.from_config_files(conf) as stores:
        if target.driver == "s3":
            stores.driver("dst")._ensure_bucket()  # type: ignore[attr-defined]
        before = target.listing(stores)
        drv = stores.driver("dst")
        writer = drv.begin_write("half", 12 * MiB)
        chunk = memoryview(os.urandom(6 * MiB))
        writer.write(chunk)
        writer.write(chunk)
        # What a killed process leaves, minus the process: let go of the client-side
        # resources without commit or abort (private members, test only).
        if target.driver == "s3":
            writer._pieces.wait()  # type: ignore[attr-defined]
            writer._pieces.stop()  # type: ignore[attr-defined]
        else:
            writer._image.close()  # type: ignore[attr-defined]
            writer._image = None  # type: ignore[attr-defined]
            writer._done = True  # type: ignore[attr-defined]
        left = target.listing(stores) - before
        assert left, "the unfinished write should leave something behind"
        assert stores.location_for("half", "dst") is not None
        assert stores.discard("half", "dst") is True
        assert target.listing(stores) == before
        assert stores.discard("half", "dst") is False
        # a finished image of that id goes too, and the id can be written again
        stores.add("half", b"whole", backend="dst")
        assert stores.discard("half", "dst") is True
        assert stores.add("half", b"again", backend="dst").size == 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(url: str) -> str | None:
    """The metrics page's text, or None while nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of metric ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@pytest.mark.parametrize("target", ["s3"], indirect=True)
def test_migrate_serves_its_metrics_while_it_runs(tmp_path: Path, target: Target) -> None:
    """``migrate --metrics-port``: /metrics, scraped over HTTP while a real migrate runs,
    counts the adds to the target and their bytes; nothing listens once it has ended."""
    conf = write_config(tmp_path / "m.conf", tmp_path / "src", target.driver, target.options)
    records = []
    with Stores.from_config_files(conf) as stores:
        for n in range(24):
            result = stores.add(f"m{n}-{uuid.uuid4().hex[:6]}", os.urandom(3 * MiB), backend="src")
            records.append(
                {"image_id": result.image_id, "location": result.location, "size": result.size,
                 "os_hash_algo": result.hash_algo, "os_hash_value": result.multihash}
            )  # fmt: skip
    listing = tmp_path / "m.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in records))
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = run_cli(
        "--config-file", str(conf), "migrate", str(listing), "--to", "dst", "-q",
        "--journal", str(tmp_path / "m.journal"), "--metrics-port", str(port),
    )  # fmt: skip
    seen: list[str] = []
    try:
        while proc.poll() is None:
            text = scrape(url)
            if text is not None:
                seen.append(text)
            time.sleep(0.1)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert seen, "nothing answered at /metrics while the migrate ran"

    def adds(text: str, **more: str) -> float:
        return sample(text, "imgstore_operation_duration_seconds_count",
                      imgstore_backend="dst", imgstore_operation="add", **more)  # fmt: skip

    mid = [t for t in seen if adds(t) > 0]
    assert mid, "no scrape during the run counted an add to the target"
    last = mid[-1]
    done = adds(last, imgstore_outcome="ok")
    assert 1 <= done <= len(records)
    moved = sample(last, "imgstore_transferred_bytes_total",
                   imgstore_backend="dst", imgstore_operation="add")  # fmt: skip
    assert moved >= done * 3 * MiB
    assert "imgstore_operations_in_flight{" in last
    assert scrape(url) is None, "the metrics server outlived the run"
