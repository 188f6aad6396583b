"""The ``imgstore`` CLI on bad input: documented exit code, exactly one line on stderr.

Complements test_cli.py with what a hostile or careless caller does: standard
output or input closed before the command starts (``>&-``, ``<&-``), a reader
that goes away at once (``| head -c0``), output onto a full device or a device
node, configuration files that are FIFOs, directories or fail to read, and
arguments that are not UTF-8. The tests run as root, so "unreadable" comes
from files that open but fail to read (``/proc/self/mem``), directories and
FIFOs, not from ``chmod 000``.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_cli import COMMAND, add_json, one_error_line, run

CLOSED = "output closed"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of test_cli.py: a filesystem store in ``tmp_path/data``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IMGSTORE_")}
    environ["IMGSTORE_DATA_DIR"] = str(tmp_path / "data")
    return environ


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image.raw"
    path.write_bytes(os.urandom(300_000) + bytes(100_000))
    return path


def run_with_closed(env: dict[str, str], fd: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with file descriptor ``fd`` (0 or 1) closed, as ``<&-`` / ``>&-`` do."""
    return subprocess.run(
        [*COMMAND, *args],
        stdin=subprocess.DEVNULL if fd != 0 else None,
        stdout=subprocess.PIPE if fd != 1 else None,
        stderr=subprocess.PIPE,
        env=env,
        timeout=120,
        check=False,
        preexec_fn=lambda: os.close(fd),
    )


def stored(data_dir: Path) -> list[str]:
    return sorted(os.listdir(data_dir)) if data_dir.exists() else []


@pytest.mark.parametrize(
    "args",
    [["stores"], ["--json", "stores"], ["add", "IMAGE"], ["size", "LOC"], ["get", "LOC"],
     ["delete", "LOC"], ["--json", "delete", "LOC"], ["get", "LOC", "-o", "-"]],
)  # fmt: skip
def test_closed_stdout_before_start(
    env: dict[str, str], image: Path, tmp_path: Path, args: list[str]
) -> None:
    location = str(add_json(env, image, "--id", "kept")["location"])
    args = [str(image) if a == "IMAGE" else location if a == "LOC" else a for a in args]
    line = one_error_line(run_with_closed(env, 1, *args), 1)
    assert line == f"imgstore: error: {CLOSED}"
    # nothing was done: no image added, none deleted
    assert stored(tmp_path / "data") == ["kept"]


def test_closed_stdout_is_fine_when_nothing_is_printed(
    env: dict[str, str], image: Path, tmp_path: Path
) -> None:
    location = str(add_json(env, image)["location"])
    out = tmp_path / "copy.raw"
    proc = run_with_closed(env, 1, "get", location, "-o", str(out))
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert out.read_bytes() == image.read_bytes()
    proc = run_with_closed(env, 1, "-q", "delete", location)
    assert (proc.returncode, proc.stderr) == (0, b"")


def test_closed_stdin_add_exits_2(env: dict[str, str], tmp_path: Path) -> None:
    line = one_error_line(run_with_closed(env, 0, "add", "-"), 2)
    assert "standard input" in line and "closed" in line
    assert stored(tmp_path / "data") == []


@pytest.mark.parametrize("command", ["get", "size", "stores", "--json stores"])
def test_reader_gone_before_first_write(env: dict[str, str], image: Path, command: str) -> None:
    """``imgstore ... | head -c0``: the pipe's reader is closed before we write."""
    location = str(add_json(env, image)["location"])
    read_end, write_end = os.pipe()
    os.close(read_end)
    args = [*command.split(), *([location] if command in ("get", "size") else [])]
    try:
        proc = subprocess.run(
            [*COMMAND, *args], stdout=write_end, stderr=subprocess.PIPE, env=env,
            timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"imgstore: error: {CLOSED}\n".encode()


def test_output_onto_a_full_device_exits_1(env: dict[str, str], image: Path) -> None:
    location = str(add_json(env, image)["location"])
    before = os.stat("/dev/full")
    line = one_error_line(run(env, "get", location, "-o", "/dev/full"), 1)
    assert os.strerror(28) in line  # ENOSPC
    with open("/dev/full", "wb") as full:
        line = one_error_line(
            subprocess.run([*COMMAND, "get", location], stdout=full, stderr=subprocess.PIPE,
                           env=env, timeout=120, check=False), 1)  # fmt: skip
    assert os.strerror(28) in line
    after = os.stat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev


def test_output_onto_a_device_never_replaces_it(env: dict[str, str], image: Path) -> None:
    """``-o /dev/null`` writes into the device; it must not rename a file over it."""
    location = str(add_json(env, image)["location"])
    before = os.stat("/dev/null")
    proc = run(env, "get", location, "-o", "/dev/null")
    assert (proc.returncode, proc.stderr) == (0, b"")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert not [n for n in os.listdir("/dev") if n.startswith(".null.")]


def test_output_into_a_fifo(env: dict[str, str], image: Path, tmp_path: Path) -> None:
    location = str(add_json(env, image)["location"])
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [*COMMAND, "get", location, "-o", str(fifo)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    with open(fifo, "rb") as reader:
        data = reader.read()
    assert proc.wait(timeout=60) == 0
    assert data == image.read_bytes()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_output_in_a_missing_directory_exits_2(
    env: dict[str, str], image: Path, tmp_path: Path
) -> None:
    location = str(add_json(env, image)["location"])
    one_error_line(run(env, "get", location, "-o", str(tmp_path / "no" / "such" / "x")), 2)


def test_bad_configuration_files_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    fifo = tmp_path / "conf.fifo"
    os.mkfifo(fifo)  # never opened: reading it would block
    garbage = tmp_path / "garbage.conf"
    garbage.write_bytes(b"\xff\xfe[glance_store\x00\n= = =\n")
    substitution = tmp_path / "subst.conf"
    substitution.write_text("[glance_store]\nstores = file\ndefault_store = $nosuch\n")
    itself = tmp_path / "itself.conf"
    itself.write_text("[glance_store]\nstores = file\ndefault_store = $default_store\n")
    for path, expect in [
        (fifo, "not a regular file"),
        (tmp_path, "not a regular file"),
        (Path("/proc/self/mem"), "cannot read configuration"),
        (garbage, ""),
        (substitution, ""),
        (itself, "refers to itself"),
        (tmp_path / "missing.conf", "not found"),
    ]:
        line = one_error_line(run(env, "--config-file", str(path), "stores"), 2)
        assert expect in line, line
    env = {**env, "IMGSTORE_CONFIG": str(fifo)}
    one_error_line(run(env, "stores"), 2)


@pytest.mark.parametrize(
    "args",
    [
        ["get", "file:///x\udcff"],
        ["size", " file:///x"],
        ["add", "/nonexistent/\udcff"],
        ["delete", "http://user:Secret9@127.0.0.1/x"],
        ["get", "s3://key:Secret9@127.0.0.1:1/bucket"],
        ["get", "file:///x", "--offset", "99999999999999999999999"],
        ["get", "file:///x", "--length", "0x10"],
        ["copy", "file:///x", "--to", "nosuch"],
        ["--config-file"],
        ["add", "-", "--size", ""],
    ],
)
def test_bad_arguments_one_line_and_no_secret(env: dict[str, str], args: list[str]) -> None:
    argv = [os.fsencode(a) for a in args]  # not UTF-8 on purpose for \udcff
    proc = subprocess.run(
        [*COMMAND, *argv], capture_output=True, env=env, timeout=120, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    line = one_error_line(proc, proc.returncode)
    assert proc.returncode in (2, 3), line
    assert "Secret9" not in line
