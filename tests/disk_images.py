"""Disk images made with Debian's qemu-img for the inspection tests: every format, and
the hostile kinds (OSSA-2024-001 and its relatives)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _qemu_img() -> str:
    """qemu-img's path; skips the test without it (fails it in CI)."""
    found = shutil.which("qemu-img")
    if found is None:
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail("qemu-img is missing (apt-get install qemu-utils); CI is set")
        pytest.skip("qemu-img is missing (apt-get install qemu-utils)")
    return found


def make(tmp_path: Path, fmt: str, size: str, *options: str, name: str = "") -> Path:
    """An image made by ``qemu-img create``."""
    path = tmp_path / (name or f"image.{fmt}")
    out = subprocess.run(
        [_qemu_img(), "create", "-q", "-f", fmt, *options, str(path), size],
        check=False, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, f"qemu-img create -f {fmt}: {out.stderr}"
    return path


def luks_image(payload: bytes) -> bytes:
    """A LUKS1 volume's header (no key slot) and ``payload`` at 2 MiB. Made here, not by
    ``qemu-img create -f luks``: qemu calibrates PBKDF2 on the CPU clock first, and on
    these virtual machines that fails now and then ("Unable to get accurate CPU usage")."""
    header = b"LUKS\xba\xbe" + (1).to_bytes(2, "big")
    header += b"aes".ljust(32, b"\0") + b"xts-plain64".ljust(32, b"\0")
    header += b"sha256".ljust(32, b"\0")
    header += (4096).to_bytes(4, "big") + (64).to_bytes(4, "big")  # payload sector, key bytes
    header += os.urandom(20) + os.urandom(32) + (1000).to_bytes(4, "big")  # the mk digest
    header += b"6a1b43b8-4c1e-4c79-9f57-2e0a4c3c0001".ljust(40, b"\0")
    header += ((0x0000DEAD).to_bytes(4, "big") + bytes(44)) * 8  # every key slot disabled
    return header.ljust(4096 * 512, b"\0") + payload


def gpt_image(size: int) -> bytes:
    """A raw disk of ``size`` bytes with a protective MBR (one 0xEE partition from LBA 1,
    as GPT disks have it) and a GPT header at LBA 1."""
    entry = bytes([0x00, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF])
    entry += (1).to_bytes(4, "little") + (size // 512 - 1).to_bytes(4, "little")
    mbr = bytes(446) + entry + bytes(48) + b"\x55\xaa"
    return (mbr + b"EFI PART").ljust(size, b"\0")


def iso_image(size: int) -> bytes:
    """An ISO 9660 image of ``size`` bytes: a primary volume descriptor at 32 KiB."""
    pvd = bytearray(2048)
    pvd[0:7] = b"\x01CD001\x01"
    blocks = size // 2048
    pvd[80:88] = blocks.to_bytes(4, "little") + blocks.to_bytes(4, "big")
    pvd[128:132] = (2048).to_bytes(2, "little") + (2048).to_bytes(2, "big")
    return (bytes(32768) + bytes(pvd)).ljust(size, b"\0")


def qemu_virtual_size(path: Path, fmt: str) -> int:
    out = subprocess.run(
        [_qemu_img(), "info", "--output=json", "-f", fmt, str(path)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return int(json.loads(out.stdout)["virtual-size"])


def _with_descriptor(image: Path, old: bytes, new: bytes) -> bytes:
    """A sparse vmdk whose embedded descriptor has ``old`` replaced by ``new`` (in place:
    the descriptor region keeps its size)."""
    data = bytearray(image.read_bytes())
    at = data.index(b"# Disk DescriptorFile")
    end = data.index(b"\0", at)
    text = bytes(data[at:end]).replace(old, new)
    data[at : at + len(text)] = text
    if len(text) < end - at:
        data[at + len(text) : end] = b"\0" * (end - at - len(text))
    return bytes(data)


def _iso_with_qcow2(tmp_path: Path) -> bytes:
    """A qcow2 that also carries an ISO 9660 primary volume descriptor at 32 KiB."""
    data = bytearray(make(tmp_path, "qcow2", "64M").read_bytes().ljust(64 * 1024, b"\0"))
    data[32768 : 32768 + 2048] = iso_image(64 * 1024)[32768 : 32768 + 2048]
    return bytes(data)


def hostile(tmp_path: Path, kind: str) -> bytes:
    if kind == "qcow2-data-file":
        (tmp_path / "host-file").write_bytes(b"secret")
        return make(tmp_path, "qcow2", "1M", "-o", "data_file=host-file").read_bytes()
    if kind == "qcow2-backing-file":
        make(tmp_path, "raw", "1M", name="base.raw")
        return make(tmp_path, "qcow2", "1M", "-b", "base.raw", "-F", "raw").read_bytes()
    sparse = make(tmp_path, "vmdk", "1M", name="disk.vmdk")
    if kind == "vmdk-host-path":
        return _with_descriptor(sparse, b'SPARSE "disk.vmdk"', b'FLAT "/etc/hostname" 0')
    if kind == "vmdk-two-extents":
        return _with_descriptor(
            sparse, b'RW 2048 SPARSE "disk.vmdk"', b'RW 1024 SPARSE "disk.vmdk"\nRW 1024 FLAT "x" 0'
        )
    if kind == "iso-and-gpt":  # a protective MBR and GPT header over an ISO's first sectors
        return gpt_image(1024) + iso_image(2 * 1024 * 1024)[1024:]
    assert kind == "iso-and-qcow2"
    return _iso_with_qcow2(tmp_path)


HOSTILE = {
    "qcow2-data-file": "data_file",
    "qcow2-backing-file": "backing_file",
    "vmdk-host-path": "descriptor",
    "vmdk-two-extents": "extents",
    "iso-and-qcow2": "multiple_formats",
    "iso-and-gpt": "multiple_formats",
}
