"""Disk-format inspection in add, on images made here with Debian's qemu-img.

Each format the inspector knows, small and with a multi-GiB virtual size, is stored
on the embedded filesystem store and reported with qemu-img's own virtual size; the
hostile ones (a qcow2 naming a data-file or a backing file, a vmdk whose descriptor
names a host path or several extents, an ISO that also carries a qcow2 or GPT header, bytes
of another format than declared) are reported in ``report`` mode and refused in
``enforce`` mode with nothing left in the store.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imgstore import Stores
from imgstore.exceptions import (
    BadConfiguration,
    DiskFormatMismatch,
    InvalidArgument,
    UnsafeImage,
)
from imgstore.inspection import InspectionPolicy
from tests.disk_images import (
    HOSTILE,
    gpt_image,
    hostile,
    iso_image,
    luks_image,
    make,
    qemu_virtual_size,
)

MiB = 1 << 20
GiB = 1 << 30


def stores(tmp_path: Path, **options: Any) -> Stores:
    data = tmp_path / "store"
    data.mkdir(exist_ok=True)
    conf = tmp_path / "imgstore.conf"
    lines = ["[glance_store]", "stores = file", f"filesystem_store_datadir = {data}"]
    lines += [f"{k} = {v}" for k, v in options.items()]
    conf.write_text("\n".join(lines) + "\n")
    return Stores.from_config_files(conf)


def stored(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "store").iterdir())


def multi_stores(tmp_path: Path, core: str, **backends: str) -> tuple[Stores, dict[str, Path]]:
    """Filesystem backends named by ``backends`` (each: more lines of its group), the
    first the default, ``core`` more lines of [glance_store]; and each one's directory."""
    dirs = {name: tmp_path / f"backend-{name}" for name in backends}
    lines = ["[DEFAULT]", "enabled_backends = " + ", ".join(f"{n}:file" for n in backends),
             "[glance_store]", f"default_backend = {next(iter(backends))}", core]  # fmt: skip
    for name, extra in backends.items():
        dirs[name].mkdir()
        lines += [f"[{name}]", f"filesystem_store_datadir = {dirs[name]}", extra]
    conf = tmp_path / "multi.conf"
    conf.write_text("\n".join(lines) + "\n")
    return Stores.from_config_files(conf), dirs


# -- the formats ---------------------------------------------------------------------

FORMATS = [
    ("raw", "raw", ()),
    ("qcow2", "qcow2", ()),
    ("vmdk", "vmdk", ()),
    ("vmdk", "vmdk", ("-o", "subformat=streamOptimized")),
    ("vhd", "vpc", ()),
    ("vhdx", "vhdx", ()),
    ("vdi", "vdi", ()),
]


CASES = [
    (name, fmt, options, virtual)
    for name, fmt, options in FORMATS
    for virtual in ("3M", "9G")
    if not (fmt == "raw" and virtual == "9G")  # a raw image is its virtual size
]


@pytest.mark.parametrize(("name", "fmt", "options", "virtual"), CASES)
def test_each_format_is_reported_with_its_virtual_size(
    tmp_path: Path, name: str, fmt: str, options: tuple[str, ...], virtual: str
) -> None:
    image = make(tmp_path, fmt, virtual, *options)
    with stores(tmp_path) as s:
        result = s.add("img-1", image.read_bytes(), expected_disk_format=name)
    assert result.disk_format == name
    assert result.virtual_size == qemu_virtual_size(image, fmt)
    assert result.safety is not None and result.safety.passed, result.safety
    assert result.as_dict()["safety"] == {"result": "passed", "failed_checks": {}}


def test_qed_is_reported_and_unsafe(tmp_path: Path) -> None:
    """oslo.utils bans QED outright (its 'banned' check): qemu's support for it is gone."""
    image = make(tmp_path, "qed", "3M")
    with stores(tmp_path) as s:
        result = s.add("img-1", image.read_bytes())
    assert result.disk_format == "qed"
    assert result.safety is not None and list(result.safety.failed_checks) == ["banned"]


def test_luks_is_reported(tmp_path: Path) -> None:
    data = luks_image(os.urandom(4 * MiB))
    with stores(tmp_path) as s:
        result = s.add("img-1", data)
    assert (result.disk_format, result.virtual_size) == ("luks", 4 * MiB)


def test_iso_and_gpt_are_reported(tmp_path: Path) -> None:
    with stores(tmp_path) as s:
        iso = s.add("img-1", iso_image(2 * MiB), expected_disk_format="iso")
        gpt = s.add("img-2", gpt_image(3 * MiB), expected_disk_format="raw")  # raw, to Glance
    assert (iso.disk_format, iso.virtual_size) == ("iso", 2 * MiB)
    assert (gpt.disk_format, gpt.virtual_size) == ("gpt", 3 * MiB)
    assert iso.safety is not None and iso.safety.passed
    assert gpt.safety is not None and gpt.safety.passed, gpt.safety


def test_a_streamed_image_is_inspected_without_its_size(tmp_path: Path) -> None:
    image = make(tmp_path, "qcow2", "5G")
    data = image.read_bytes()
    with stores(tmp_path) as s:
        chunks = (data[i : i + 4096] for i in range(0, len(data), 4096))
        result = s.add("img-1", chunks)
    assert (result.disk_format, result.virtual_size) == ("qcow2", 5 * GiB)


# -- hostile images ------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_image_is_reported(tmp_path: Path, kind: str) -> None:
    data = hostile(tmp_path, kind)
    with stores(tmp_path, image_inspection="report") as s:
        result = s.add("img-1", data, size=len(data))
    assert result.safety is not None and not result.safety.passed
    assert HOSTILE[kind] in result.safety.failed_checks, result.safety
    assert stored(tmp_path) == ["img-1"]


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_image_is_refused_when_enforced(tmp_path: Path, kind: str) -> None:
    data = hostile(tmp_path, kind)
    with stores(tmp_path, image_inspection="enforce") as s:
        with pytest.raises(UnsafeImage, match=HOSTILE[kind]) as info:
            s.add("img-1", io.BytesIO(data), size=len(data))
    assert "image img-1 on backend 'file'" in str(info.value)
    assert stored(tmp_path) == []


def test_a_declared_format_the_bytes_are_not_is_refused_in_every_mode(tmp_path: Path) -> None:
    qcow2 = make(tmp_path, "qcow2", "1G").read_bytes()
    raw = os.urandom(3 * MiB)
    for mode in ("report", "enforce", "off"):
        with stores(tmp_path, image_inspection=mode) as s:
            with pytest.raises(DiskFormatMismatch, match="declared raw but its bytes are qcow2"):
                s.add("img-1", qcow2, expected_disk_format="raw")
            with pytest.raises(DiskFormatMismatch, match="not the declared disk format qcow2"):
                s.add("img-2", raw, expected_disk_format="qcow2")
            assert s.add("img-3", raw, expected_disk_format="ami").disk_format == "raw"
            assert stored(tmp_path) == ["img-3"]
            (tmp_path / "store" / "img-3").unlink()
    with stores(tmp_path) as s:
        with pytest.raises(InvalidArgument, match="unknown disk format 'ploop'"):
            s.add("img-1", raw, expected_disk_format="ploop")
    assert stored(tmp_path) == []


def test_a_mismatch_stops_the_add_early(tmp_path: Path) -> None:
    """The qcow2 inspector says no after the first chunk: the rest is never read."""
    pulled = []

    def source() -> Any:
        for i in range(64):
            pulled.append(i)
            yield os.urandom(MiB)

    with stores(tmp_path) as s:
        with pytest.raises(DiskFormatMismatch):
            s.add("img-1", source(), expected_disk_format="qcow2")
    assert len(pulled) < 64
    assert stored(tmp_path) == []


def test_allowed_disk_formats(tmp_path: Path) -> None:
    qcow2 = make(tmp_path, "qcow2", "1G").read_bytes()
    with stores(tmp_path, image_inspection="enforce", allowed_disk_formats="raw, ami") as s:
        with pytest.raises(UnsafeImage, match="qcow2 is not in allowed_disk_formats"):
            s.add("img-1", qcow2)
        assert s.add("img-2", b"x" * 4096).disk_format == "raw"
    assert stored(tmp_path) == ["img-2"]
    with stores(tmp_path, image_inspection="report", allowed_disk_formats="raw") as s:
        assert s.add("img-3", qcow2).disk_format == "qcow2"  # reported, not refused


def test_off_inspects_nothing(tmp_path: Path) -> None:
    qcow2 = make(tmp_path, "qcow2", "1G").read_bytes()
    with stores(tmp_path, image_inspection="off") as s:
        result = s.add("img-1", qcow2)
    assert (result.disk_format, result.virtual_size, result.safety) == (None, None, None)
    assert result.as_dict()["safety"] is None


def test_bad_options_are_bad_configuration(tmp_path: Path) -> None:
    with pytest.raises(BadConfiguration, match="image_inspection"):
        stores(tmp_path, image_inspection="sometimes")
    with pytest.raises(BadConfiguration, match="allowed_disk_formats: unknown disk format"):
        stores(tmp_path, allowed_disk_formats="qcow2, floppy")
    with pytest.raises(BadConfiguration):
        InspectionPolicy("enforce", ("floppy",))


def test_a_backend_group_overrides_glance_store(tmp_path: Path) -> None:
    qcow2 = make(tmp_path, "qcow2", "1G").read_bytes()
    s, dirs = multi_stores(
        tmp_path, "image_inspection = enforce\nallowed_disk_formats = raw",
        lax="image_inspection = report", strict="",
    )  # fmt: skip
    with s:
        assert s.add("img-1", qcow2, backend="lax").disk_format == "qcow2"
        with pytest.raises(UnsafeImage):
            s.add("img-1", qcow2, backend="strict")
    assert [p.name for p in dirs["lax"].iterdir()] == ["img-1"]
    assert list(dirs["strict"].iterdir()) == []


def test_copy_reports_what_the_copy_is(tmp_path: Path) -> None:
    qcow2 = make(tmp_path, "qcow2", "2G").read_bytes()
    s, _ = multi_stores(tmp_path, "", a="", b="")
    with s:
        first = s.add("img-1", qcow2)
        copied = s.copy(first.location, "b")
    assert (copied.disk_format, copied.virtual_size) == ("qcow2", 2 * GiB)


# -- the command line ------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "imgstore.conf"
    return subprocess.run(
        [sys.executable, "-m", "imgstore", "--config-file", str(conf), *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_the_command_line_reports_and_refuses(tmp_path: Path) -> None:
    image = make(tmp_path, "qcow2", "3G")
    stores(tmp_path).close()  # writes the configuration
    out = _cli(tmp_path, "add", str(image), "--id", "img-1", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["disk_format"], result["virtual_size"]) == ("qcow2", 3 * GiB)
    assert result["safety"] == {"result": "passed", "failed_checks": {}}
    refused = _cli(tmp_path, "add", str(image), "--id", "img-2", "--disk-format", "raw")
    assert refused.returncode == 4
    assert refused.stderr.strip().count("\n") == 0
    assert "declared raw but its bytes are qcow2" in refused.stderr
    assert stored(tmp_path) == ["img-1"]


def test_inspect_a_file_and_a_location(tmp_path: Path) -> None:
    safe = make(tmp_path, "vmdk", "7G")
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(hostile(tmp_path, "qcow2-backing-file"))
    with stores(tmp_path) as s:
        stored_bad = s.add("img-bad", bad.read_bytes())
    out = _cli(tmp_path, "--json", "inspect", str(safe))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "image": str(safe), "size": safe.stat().st_size,
        "read": min(1 << 20, safe.stat().st_size),
        "disk_format": "vmdk", "virtual_size": 7 << 30,
        "safety": {"result": "passed", "failed_checks": {}},
    }  # fmt: skip
    for target in (str(bad), stored_bad.location):
        out = _cli(tmp_path, "inspect", target)
        assert out.returncode == 4, out.stderr
        assert "disk_format:  qcow2" in out.stdout
        assert "safety:       failed: backing_file (Image has a backing file)" in out.stdout
        assert "failed the disk-format safety checks" in out.stderr


@pytest.mark.parametrize("kind", ["raw", "luks", "vmdk-footer"])
def test_inspect_reads_only_what_it_needs(tmp_path: Path, kind: str) -> None:
    """A 64 MiB raw image or LUKS volume: the first MiB tells (virtual size from the
    image's size); a streamOptimized vmdk keeps its grain directory in a footer: read
    to its end."""
    if kind == "raw":
        data, fmt, virtual = os.urandom(64 * MiB), "raw", 64 * MiB
    elif kind == "luks":
        data, fmt, virtual = luks_image(os.urandom(62 * MiB)), "luks", 62 * MiB
    else:
        image = make(tmp_path, "vmdk", "64M", "-o", "subformat=streamOptimized")
        data, fmt, virtual = image.read_bytes(), "vmdk", 64 * MiB
    with stores(tmp_path) as s:
        added = s.add("img-1", data)
    out = _cli(tmp_path, "--json", "inspect", added.location)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["disk_format"], result["virtual_size"]) == (fmt, virtual)
    assert (result["disk_format"], result["virtual_size"]) == (
        added.disk_format,
        added.virtual_size,
    )
    if kind == "vmdk-footer":
        assert result["read"] == len(data)
    else:
        assert result["read"] < 16 * MiB, result["read"]


def test_verify_inspect_on_the_command_line(tmp_path: Path) -> None:
    good = make(tmp_path, "qcow2", "1G").read_bytes()
    bad = hostile(tmp_path, "vmdk-host-path")
    with stores(tmp_path) as s:
        rows = [s.add(i, d) for i, d in (("img-good", good), ("img-bad", bad))]
    listing = tmp_path / "images.jsonl"
    listing.write_text(
        "".join(
            json.dumps({"image_id": r.image_id, "location": r.location, "size": r.size}) + "\n"
            for r in rows
        )
    )
    out = _cli(tmp_path, "verify", str(listing), "--inspect")
    assert out.returncode == 0, out.stderr
    assert "inspected: 2, unsafe: 1" in out.stdout
    assert "img-bad: unsafe: descriptor" in out.stdout
    assert "img-good: unsafe" not in out.stdout


def test_migrate_inspect_reports_copies_the_target_would_not_inspect(tmp_path: Path) -> None:
    from imgstore.migration import ImageRecord, migrate

    qcow2 = make(tmp_path, "qcow2", "2G").read_bytes()
    bad = hostile(tmp_path, "qcow2-data-file")
    s, dirs = multi_stores(tmp_path, "", src="", dst="image_inspection = off")
    with s:
        rows = [s.add(i, d) for i, d in (("img-good", qcow2), ("img-bad", bad))]
        records = [ImageRecord(r.image_id, r.location, r.size, r.checksum) for r in rows]
        plain = migrate(s, records[:1], "dst")
        assert plain.inspected == 0  # the target does not inspect
        (dirs["dst"] / "img-good").unlink()
        report = migrate(s, records, "dst", inspect=True)
    assert report.ok and report.inspected == 2
    assert [i.image_id for i in report.unsafe] == ["img-bad"]
    by_id = {i.image_id: i.inspection for i in report.images}
    assert by_id["img-good"] == {
        "disk_format": "qcow2", "virtual_size": 2 << 30,
        "safety": {"result": "passed", "failed_checks": {}},
    }  # fmt: skip
