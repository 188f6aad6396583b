"""Migration input parsing, the journal's state machine, resume and the report.

The stores are real filesystem stores in a temporary directory; the command
runs as a real process. The only staged fault is the state a SIGKILL leaves
behind (a journal row in ``copying`` with a partial or complete copy on
disk), built here directly because the functional tests kill real runs
against Ceph.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from imgstore import (
    InvalidArgument,
    Stores,
    UnknownBackend,
    migrate,
    parse_images,
    read_images,
    verify_images,
)
from imgstore import journal as jmod
from imgstore.journal import Journal
from imgstore.migration import Status, make_record
from imgstore.progress import CountBar

SECRET = "s3cr3t-Passw0rd"
SHA = "a" * 128
MD5 = "b" * 32


# -- input -------------------------------------------------------------------------


def test_jsonl_and_csv_give_the_same_records() -> None:
    jsonl = "\n".join(
        [
            json.dumps(
                {
                    "image_id": "one",
                    "location": "file:///data/one",
                    "size": 10,
                    "checksum": MD5,
                    "os_hash_algo": "sha512",
                    "os_hash_value": SHA.upper(),
                    "status": "active",
                }
            ),
            "",
            json.dumps({"image_id": "two", "location": "rbd://two", "size": None}),
        ]
    )
    csv_text = textwrap.dedent(
        f"""\
        image_id,location,size,checksum,os_hash_algo,os_hash_value,status
        one,file:///data/one,10,{MD5},SHA512,{SHA},active
        two,rbd://two,,,,,
        """
    )
    a, b = parse_images(jsonl), parse_images(csv_text)
    assert [dataclasses.replace(r, line=0) for r in a] == [
        dataclasses.replace(r, line=0) for r in b
    ]
    assert [r.line for r in b] == [2, 3]
    assert a[0].size == 10 and a[0].os_hash_value == SHA and a[0].os_hash_algo == "sha512"
    assert a[1].size is None and a[1].checksum is None and a[1].os_hash_algo is None
    assert [r.line for r in a] == [1, 3]


def test_read_images_picks_the_format_by_extension(tmp_path: Path) -> None:
    path = tmp_path / "images.csv"
    path.write_text("image_id,location\nx,file:///d/x\n")
    assert [r.image_id for r in read_images(path)] == ["x"]
    assert [
        r.image_id for r in read_images(io.StringIO('{"image_id":"y","location":"s3://h/b/y"}'))
    ] == ["y"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"location": "file:///d/x"}', "line 1: image_id is missing"),
        ('{"image_id": "../x", "location": "file:///d/x"}', "line 1: invalid image id"),
        ('{"image_id": "x"}', "location of image x is missing"),
        ('{"image_id": "x", "location": "no-scheme"}', "not a location URI"),
        ('{"image_id": "x", "location": "file:///x", "size": -1}', "size must be"),
        ('{"image_id": "x", "location": "file:///x", "size": true}', "size must be"),
        ('{"image_id": "x", "location": "file:///x", "checksum": "abc"}', "32 hex digits"),
        (
            '{"image_id": "x", "location": "file:///x", "os_hash_value": "ab"}',
            "without os_hash_algo",
        ),
        (
            '{"image_id": "x", "location": "file:///x", "os_hash_algo": "sha256", '
            '"os_hash_value": "ab"}',
            "sha256 gives 64",
        ),
        ('{"image_id": "x", "location": "file:///x", "os_hash_algo": "nope"}', "unknown hash"),
        ('{"image_id": "x", "location": "file:///x"}\n[1]', "line 2: expected an object"),
        ('{"image_id": "x", "location": "file:///x"}\n{oops', "line 2: not a JSON object"),
        (
            '{"image_id": "x", "location": "file:///a"}\n{"image_id": "x", "location": "file:///b"}',
            "line 2: image x is listed twice (first on line 1)",
        ),
        ("id,where\n1,2\n", "needs the columns image_id and location"),
        ("image_id,location\nx,file:///x,extra\n", "line 2: more cells than header columns"),
    ],
)
def test_bad_input_names_the_line(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=None) as info:
        parse_images(text)
    assert message in str(info.value)


def test_credentials_in_input_locations_never_show() -> None:
    uri = f"s3://AKIAKEY:{SECRET}@host/bucket/img"
    record = make_record({"image_id": "img", "location": uri})
    assert SECRET not in repr(record) and SECRET not in record.shown
    assert (
        record.scrub(f"boom at {uri} with {SECRET}") == "boom at s3://***@host/bucket/img with ***"
    )
    with pytest.raises(InvalidArgument) as info:
        parse_images(
            json.dumps({"image_id": "img", "location": f"s3://k:{SECRET}@h/b/i", "size": "x"})
        )
    assert SECRET not in str(info.value)


# -- journal ----------------------------------------------------------------------


def test_journal_state_machine_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path, "dst") as j:
        entry = j.add("a", "file:///src/a")
        assert (entry.state, entry.attempts) == (jmod.PENDING, 0)
        assert j.add("a", "file:///other").source == "file:///src/a"  # kept, not replaced
        with pytest.raises(InvalidArgument, match="cannot go from pending to verified"):
            j.verified("a", "rbd://x", 1, None, "sha512", SHA)
        j.start_copy("a", "rbd://f/p/a/snap")
        j.start_copy("a", "rbd://f/p/a/snap")  # a resumed copy: one more attempt
        j.verified("a", "rbd://f/p/a/snap", 5, MD5, "sha512", SHA)
        with pytest.raises(InvalidArgument):
            j.start_copy("a", None)
        j.done("a", source_deleted=True)
        for illegal in (lambda: j.failed("a", "X", "y"), lambda: j.retry("a")):
            with pytest.raises(InvalidArgument):
                illegal()
        j.add("b", "file:///src/b")
        j.failed("b", "ChecksumMismatch", "differs")
        j.retry("b")
        assert j.get("b").state == jmod.PENDING  # type: ignore[union-attr]
        with pytest.raises(InvalidArgument, match="no image"):
            j.start_copy("zzz", None)
    # every transition was committed: a new connection (a resumed run) sees it all
    with Journal(path, "dst") as j:
        a = j.get("a")
        assert a is not None
        assert (a.state, a.attempts, a.source_deleted, a.size, a.multihash) == (
            jmod.DONE, 2, True, 5, SHA,
        )  # fmt: skip
        assert [e.image_id for e in j.entries()] == ["a", "b"]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_journal_belongs_to_one_target(tmp_path: Path) -> None:
    Journal(tmp_path / "j", "dst").close()
    with pytest.raises(InvalidArgument, match="migration to backend 'dst', not 'other'"):
        Journal(tmp_path / "j", "other")
    (tmp_path / "junk").write_bytes(b"not a database at all" * 100)
    with pytest.raises(InvalidArgument, match="not a usable migration journal"):
        Journal(tmp_path / "junk", "dst")


# -- migrate on real filesystem stores ------------------------------------------------


@pytest.fixture
def stores(tmp_path: Path) -> Any:
    conf = tmp_path / "two.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            [DEFAULT]
            enabled_backends = src:file, dst:file
            [glance_store]
            default_backend = src
            [src]
            filesystem_store_datadir = {tmp_path / "src"}
            [dst]
            filesystem_store_datadir = {tmp_path / "dst"}
            """
        )
    )
    with Stores.from_config_files(conf) as s:
        s.conf_path = conf
        yield s


def add_images(stores: Stores, count: int, prefix: str = "img") -> list[dict[str, Any]]:
    rows = []
    for n in range(count):
        data = os.urandom(n * 70_000)
        r = stores.add(f"{prefix}{n}", data, backend="src")
        rows.append(
            {
                "image_id": r.image_id,
                "location": r.location,
                "size": r.size,
                "checksum": r.checksum,
                "os_hash_algo": r.hash_algo,
                "os_hash_value": r.multihash,
            }
        )
    return rows


def records(rows: list[dict[str, Any]]) -> Any:
    return parse_images("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("journal_kind", ["file", "url"])
def test_migrate_copies_verifies_and_reports(
    stores: Stores, tmp_path: Path, journal_kind: str
) -> None:
    """With the journal in a sqlite file, and in a database named by a SQLAlchemy URL
    (the server databases are in tests/functional/test_journal_servers.py)."""
    if journal_kind == "url":
        pytest.importorskip("sqlalchemy", reason="imgstore[distributed] is not installed")
    journal = tmp_path / "j" if journal_kind == "file" else f"sqlite:///{tmp_path / 'j'}"
    rows = add_images(stores, 6)
    statuses: list[Status] = []
    report = migrate(
        stores,
        records(rows),
        "dst",
        concurrency=3,
        journal=journal,
        progress=statuses.append,
    )
    assert report.ok and report.counts == {"migrated": 6}
    assert report.bytes == sum(r["size"] for r in rows)
    for row, out in zip(rows, report.images, strict=True):
        assert out.image_id == row["image_id"] and out.attempts == 1
        assert out.location == f"file://{tmp_path / 'dst' / row['image_id']}"
        assert out.checked == ["size", "os_hash_value", "checksum", "target"]
        assert (tmp_path / "dst" / row["image_id"]).read_bytes() == (
            tmp_path / "src" / row["image_id"]
        ).read_bytes()
    assert statuses[-1].images_done == 6 and statuses[-1].bytes_done == report.bytes
    data = json.loads(json.dumps(report.as_dict()))
    assert data["summary"] == {
        "images": 6, "outcomes": {"migrated": 6}, "failed": 0, "bytes": report.bytes,
        "seconds": data["summary"]["seconds"], "inspected": 6, "unsafe": 0,
    }  # fmt: skip
    # every copy is inspected by the target's default policy (report): what it is
    assert {i.inspection["disk_format"] for i in report.images if i.inspection} == {"raw"}
    # a second run copies nothing
    again = migrate(stores, records(rows), "dst", journal=journal)
    assert again.counts == {"already_migrated": 6}
    assert all(o.attempts == 1 for o in again.images)


def test_corrupted_source_is_reported_and_leaves_nothing(stores: Stores, tmp_path: Path) -> None:
    rows = add_images(stores, 3)
    path = tmp_path / "src" / "img2"
    raw = bytearray(path.read_bytes())
    raw[7] ^= 1
    path.write_bytes(bytes(raw))
    rows[1]["size"] += 1  # a size that disagrees is caught before any copy
    report = migrate(stores, records(rows), "dst", journal=tmp_path / "j", delete_source=True)
    got = {o.image_id: (o.outcome, o.error_type, o.attempts) for o in report.images}
    assert got == {
        "img0": ("migrated", None, 1),
        "img1": ("failed", "SizeMismatch", 0),
        "img2": ("failed", "ChecksumMismatch", 1),
    }
    assert sorted(os.listdir(tmp_path / "dst")) == ["img0"]
    assert sorted(os.listdir(tmp_path / "src")) == ["img1", "img2"]  # only img0's source went
    assert report.images[0].source_deleted
    # failures stay failed unless retried
    assert migrate(stores, records(rows), "dst", journal=tmp_path / "j").counts == {
        "already_migrated": 1,
        "failed": 2,
    }
    path.write_bytes(bytes(raw[:7]) + bytes([raw[7] ^ 1]) + bytes(raw[8:]))  # repaired
    retried = migrate(stores, records(rows), "dst", journal=tmp_path / "j", retry_failed=True)
    assert {o.image_id: o.outcome for o in retried.images}["img2"] == "migrated"


def test_a_foreign_image_at_the_target_is_refused_or_recognised(
    stores: Stores, tmp_path: Path
) -> None:
    rows = add_images(stores, 3)
    stores.add("img1", b"someone else's bytes", backend="dst")
    stores.add("img2", (tmp_path / "src" / "img2").read_bytes(), backend="dst")
    report = migrate(stores, records(rows), "dst", journal=tmp_path / "j", concurrency=2)
    got = {o.image_id: (o.outcome, o.error_type, o.attempts) for o in report.images}
    assert got == {
        "img0": ("migrated", None, 1),
        "img1": ("failed", "Duplicate", 0),
        "img2": ("present", None, 0),
    }
    assert (tmp_path / "dst" / "img1").read_bytes() == b"someone else's bytes"


def test_resume_removes_a_half_written_copy_and_keeps_a_finished_one(
    stores: Stores, tmp_path: Path
) -> None:
    rows = add_images(stores, 4)
    dst = tmp_path / "dst"
    # What SIGKILL leaves: img1 mid-write (a partial file), img2 committed with wrong
    # bytes (cannot happen unless someone tampered), img3 committed and complete.
    with Journal(tmp_path / "j", "dst") as j:
        for n in (1, 2, 3):
            j.add(f"img{n}", rows[n]["location"])
            j.start_copy(f"img{n}", f"file://{dst / f'img{n}'}")
    dst.mkdir(exist_ok=True)
    (dst / ".img1.0123456789ab.imgstore-partial").write_bytes(b"half")
    (dst / ".img10.0123456789ab.imgstore-partial").write_bytes(b"another id's partial")
    (dst / "img2").write_bytes(b"garbage")
    (dst / "img3").write_bytes((tmp_path / "src" / "img3").read_bytes())
    report = migrate(stores, records(rows), "dst", journal=tmp_path / "j")
    got = {o.image_id: (o.outcome, o.attempts) for o in report.images}
    assert got == {"img0": ("migrated", 1), "img1": ("migrated", 2), "img2": ("migrated", 2),
                   "img3": ("migrated", 1)}  # fmt: skip
    assert sorted(os.listdir(dst)) == [".img10.0123456789ab.imgstore-partial", "img0", "img1",
                                       "img2", "img3"]  # fmt: skip
    for n in range(4):
        assert (dst / f"img{n}").read_bytes() == (tmp_path / "src" / f"img{n}").read_bytes()


def test_dry_run_writes_nothing(stores: Stores, tmp_path: Path) -> None:
    rows = add_images(stores, 3)
    rows.append({"image_id": "gone", "location": f"file://{tmp_path / 'src' / 'gone'}"})
    report = migrate(stores, records(rows), "dst", journal=tmp_path / "j", dry_run=True)
    assert [o.outcome for o in report.images] == ["would_copy"] * 3 + ["failed"]
    assert report.images[3].error_type == "NotFound"
    assert not (tmp_path / "j").exists()
    assert not (tmp_path / "dst").exists() or os.listdir(tmp_path / "dst") == []


def test_bad_arguments(stores: Stores) -> None:
    with pytest.raises(InvalidArgument, match="concurrency"):
        migrate(stores, [], "dst", concurrency=0)
    with pytest.raises(UnknownBackend, match="no backend named 'nope'"):
        migrate(stores, [], "nope")


def test_verify_images(stores: Stores, tmp_path: Path) -> None:
    rows = add_images(stores, 3)
    rows[1]["os_hash_value"] = "0" * 128
    rows[2]["location"] = f"file://{tmp_path / 'src' / 'missing'}"
    report = verify_images(stores, records(rows), concurrency=2)
    assert [(o.outcome, o.error_type) for o in report.images] == [
        ("ok", None),
        ("mismatch", "ChecksumMismatch"),
        ("unreadable", "NotFound"),
    ]


def test_count_bar_shows_images_bytes_rate_and_eta() -> None:
    out = io.StringIO()
    bar = CountBar(out, "migrate", width=200, rate=0)
    bar(Status(5, 20, 1, 50 * 2**20, 200 * 2**20, 10.0))
    line = out.getvalue().split("\r\x1b[K")[-1]
    assert line == "migrate  5/20 images  1 failed  50.0 MiB / 200.0 MiB  5.0 MiB/s  ETA 0:30"
    bar(Status(5, 20, 0, 50, None, 10.0))
    assert out.getvalue().endswith("ETA 0:30")  # by count when sizes are unknown
    bar.finish()
    assert out.getvalue().endswith("in 0:10\n")


# -- the command --------------------------------------------------------------------


def cli(stores: Any, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "imgstore", "--config-file", str(stores.conf_path), *args],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=120,
    )


def test_cli_migrate_and_verify(stores: Any, tmp_path: Path) -> None:
    rows = add_images(stores, 3)
    rows[2]["checksum"] = "0" * 32
    listing = tmp_path / "in.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = cli(stores, "migrate", str(listing), "--to", "dst", "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 1
    assert proc.stderr.decode().splitlines()[-1] == (
        f"imgstore: error: 1 of 3 images failed; see {tmp_path / 'r.json'}"
    )
    assert proc.stderr.decode().count("imgstore: error:") == 1
    assert "migrated: 2" in proc.stdout.decode() and "\r" not in proc.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["outcomes"] == {"failed": 1, "migrated": 2}
    assert (tmp_path / "in.jsonl.journal").exists()  # the default journal
    # verify the migrated copies through the report's locations (JSON lines, extra keys)
    good = "".join(json.dumps(i) + "\n" for i in report["images"] if i["outcome"] == "migrated")
    proc = cli(stores, "verify", "-", "--json", stdin=good.encode())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["summary"]["outcomes"] == {"ok": 2}
    proc = cli(stores, "verify", str(listing), "-q")
    assert proc.returncode == 4 and proc.stdout == b""
    assert cli(stores, "migrate", "-", "--to", "dst", stdin=b"").returncode == 2
    bad = cli(stores, "migrate", str(tmp_path / "absent.csv"), "--to", "dst")
    assert bad.returncode == 2 and b"cannot read" in bad.stderr
