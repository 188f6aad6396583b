"""The ``imgstore`` command, run as a real process against real filesystem stores.

Every test starts the installed console script (or ``python -m imgstore``) in
a subprocess with ``IMGSTORE_DATA_DIR`` pointing into a temporary directory,
standard output and error as pipes (so neither is a terminal), and checks the
exit code, the single ``imgstore: error: ...`` line and what is left on disk.

Unreadable input as root: root reads any file whatever its mode, so
``chmod 000`` proves nothing here. The tests use a directory given as FILE
(``open`` fails with EISDIR) and ``/proc/self/mem`` (opens, then the first read
fails with EIO); the ``chmod 000`` case runs only when the tests are not root.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pty
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from imgstore import cli

SCRIPT = shutil.which("imgstore", path=os.path.dirname(sys.executable))
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "imgstore"]

RESULT_KEYS = {
    "location", "size", "checksum", "multihash", "hash_algo", "backend", "image_id",
    "disk_format", "virtual_size", "safety",
}  # fmt: skip


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IMGSTORE_")}
    environ["IMGSTORE_DATA_DIR"] = str(tmp_path / "data")
    environ.pop("COLUMNS", None)
    return environ


def run(
    env: dict[str, str],
    *args: str,
    input: bytes | None = None,
    cwd: Path | None = None,
    **kw: object,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*COMMAND, *args],
        input=input,
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


def ok(proc: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b"", proc.stderr.decode()
    return proc


def one_error_line(proc: subprocess.CompletedProcess[bytes], code: int) -> str:
    """Assert exit ``code`` and exactly one ``imgstore: error:`` line on stderr; return it."""
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert err.endswith("\n")
    assert lines[0].startswith("imgstore: error: "), err
    assert "Traceback" not in err
    return lines[0]


def add_json(env: dict[str, str], path: Path, *extra: str) -> dict[str, object]:
    proc = ok(run(env, "--json", "add", str(path), *extra))
    result = json.loads(proc.stdout)
    assert isinstance(result, dict)
    return result


def leftovers(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image.raw"
    path.write_bytes(os.urandom(300_000) + bytes(100_000))
    return path


@pytest.fixture
def two_stores(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A multi-store configuration with two filesystem backends, ``a`` (default) and ``b``."""
    a, b = tmp_path / "store-a", tmp_path / "store-b"
    conf = tmp_path / "two.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            [DEFAULT]
            enabled_backends = a:file, b:file
            [glance_store]
            default_backend = a
            [a]
            filesystem_store_datadir = {a}
            [b]
            filesystem_store_datadir = {b}
            """
        )
    )
    return conf, a, b


# -- the happy paths -------------------------------------------------------------


def test_add_get_size_delete_round_trip(env: dict[str, str], image: Path, tmp_path: Path) -> None:
    data = image.read_bytes()
    result = add_json(env, image)
    assert set(result) == RESULT_KEYS
    assert result["size"] == len(data)
    assert result["checksum"] == hashlib.md5(data).hexdigest()
    assert result["hash_algo"] == "sha512"
    assert result["multihash"] == hashlib.sha512(data).hexdigest()
    assert result["backend"] == "file"
    assert uuid.UUID(str(result["image_id"])).version == 4
    location = str(result["location"])
    stored = tmp_path / "data" / str(result["image_id"])
    assert location == "file://" + str(stored)
    assert stored.read_bytes() == data

    assert ok(run(env, "get", location)).stdout == data
    assert ok(run(env, "size", location)).stdout == f"{len(data)}\n".encode()
    assert json.loads(ok(run(env, "size", location, "--json")).stdout) == {
        "location": location,
        "size": len(data),
    }
    assert ok(run(env, "delete", location)).stdout == f"deleted {location}\n".encode()
    assert not stored.exists()
    one_error_line(run(env, "get", location), 3)


def test_add_human_and_quiet_output(env: dict[str, str], image: Path) -> None:
    out = ok(run(env, "add", str(image), "--id", "human-1")).stdout.decode()
    fields = dict(line.split(":", 1) for line in out.splitlines() if not line.startswith("loc"))
    assert {k.strip() for k in fields} == RESULT_KEYS - {"location"}
    assert fields["image_id"].strip() == "human-1"
    assert fields["size"].strip() == str(image.stat().st_size)
    assert "location:    file://" in out
    quiet = ok(run(env, "-q", "add", str(image), "--id", "quiet-1")).stdout.decode()
    assert quiet.strip().startswith("file://") and quiet.strip().endswith("/quiet-1")
    assert quiet.count("\n") == 1


def test_add_with_id_hash_algo_and_options_after_the_command(
    env: dict[str, str], image: Path
) -> None:
    proc = ok(run(env, "add", str(image), "--id", "my-image", "--hash-algo", "sha256", "--json"))
    result = json.loads(proc.stdout)
    assert result["image_id"] == "my-image"
    assert result["hash_algo"] == "sha256"
    assert result["multihash"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert str(result["location"]).endswith("/my-image")


def test_add_from_stdin(env: dict[str, str], tmp_path: Path) -> None:
    data = os.urandom(70_000)
    proc = ok(run(env, "--json", "add", "-", input=data))
    result = json.loads(proc.stdout)
    assert result["size"] == len(data)
    assert (tmp_path / "data" / result["image_id"]).read_bytes() == data
    proc = ok(run(env, "--json", "add", "-", "--size", str(len(data)), input=data))
    assert json.loads(proc.stdout)["size"] == len(data)


def test_get_range(env: dict[str, str], image: Path) -> None:
    data = image.read_bytes()
    location = str(add_json(env, image)["location"])
    got = ok(run(env, "get", location, "--offset", "1000", "--length", "5000")).stdout
    assert got == data[1000:6000]
    assert ok(run(env, "get", location, "--offset", str(len(data) - 10))).stdout == data[-10:]


def test_get_to_file(env: dict[str, str], image: Path, tmp_path: Path) -> None:
    location = str(add_json(env, image)["location"])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "copy.raw"
    proc = ok(run(env, "get", location, "-o", str(target)))
    assert proc.stdout == b""
    assert target.read_bytes() == image.read_bytes()
    assert leftovers(out_dir) == ["copy.raw"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    # overwriting keeps the existing file's mode
    target.chmod(0o600)
    doc = json.loads(ok(run(env, "--json", "get", location, "-o", str(target))).stdout)
    assert doc == {"location": location, "output": str(target), "size": image.stat().st_size}
    assert target.stat().st_mode & 0o777 == 0o600


def test_get_to_file_failure_leaves_nothing(
    env: dict[str, str], image: Path, tmp_path: Path
) -> None:
    location = str(add_json(env, image)["location"])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # not found: the temporary file is created before the backend answers, then removed
    one_error_line(run(env, "get", location + "-missing", "-o", str(out_dir / "x")), 3)
    assert leftovers(out_dir) == []
    # an existing file is left as it was
    (out_dir / "keep").write_bytes(b"old content")
    one_error_line(run(env, "get", location + "-missing", "-o", str(out_dir / "keep")), 3)
    assert (out_dir / "keep").read_bytes() == b"old content"
    assert leftovers(out_dir) == ["keep"]
    # directory or missing directory as output: usage errors
    one_error_line(run(env, "get", location, "-o", str(out_dir)), 2)
    one_error_line(run(env, "get", location, "-o", str(out_dir / "no" / "such")), 2)
    assert leftovers(out_dir) == ["keep"]


def _limit_file_size() -> None:
    # Python ignores SIGXFSZ, so writing past RLIMIT_FSIZE fails with EFBIG: a real
    # write error in the middle of the output, after some bytes reached the file.
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_get_to_file_write_error_midway_leaves_nothing(
    env: dict[str, str], image: Path, tmp_path: Path
) -> None:
    location = str(add_json(env, image)["location"])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep").write_bytes(b"old content")
    proc = run(env, "get", location, "-o", str(out_dir / "keep"), preexec_fn=_limit_file_size)
    line = one_error_line(proc, 1)
    assert os.strerror(errno.EFBIG) in line
    assert (out_dir / "keep").read_bytes() == b"old content"
    assert leftovers(out_dir) == ["keep"]


def test_stores_lists_backends(env: dict[str, str], two_stores: tuple[Path, Path, Path]) -> None:
    conf, _, _ = two_stores
    rows = json.loads(ok(run(env, "--config-file", str(conf), "stores", "--json")).stdout)
    assert [r["name"] for r in rows] == ["a", "b"]
    for row in rows:
        assert row["driver"] == "file"
        assert row["schemes"] == ["file"]
        assert {"read", "write", "delete", "read_random"} <= set(row["capabilities"])
    assert [r["default"] for r in rows] == [True, False]
    text = ok(run(env, "--config-file", str(conf), "stores")).stdout.decode().splitlines()
    assert text[0].split() == ["NAME", "DRIVER", "SCHEMES", "CAPABILITIES"]
    assert text[1].split()[:3] == ["*", "a", "file"]
    assert text[2].split()[:2] == ["b", "file"]

    default = json.loads(ok(run(env, "stores", "--json")).stdout)
    assert [(r["name"], r["default"]) for r in default] == [("file", True)]


def test_copy_between_backends(
    env: dict[str, str], two_stores: tuple[Path, Path, Path], image: Path
) -> None:
    conf, a, b = two_stores
    data = image.read_bytes()
    src = add_json(env, image, "--config-file", str(conf), "--id", "img-1")
    assert src["backend"] == "a" and (a / "img-1").exists()
    proc = ok(
        run(env, "--config-file", str(conf), "--json", "copy", str(src["location"]), "--to", "b")
    )
    copy = json.loads(proc.stdout)
    assert set(copy) == RESULT_KEYS
    assert copy["backend"] == "b"
    assert copy["location"] == f"file://{b}/img-1"
    assert copy["multihash"] == src["multihash"]
    assert (b / "img-1").read_bytes() == data
    assert (a / "img-1").read_bytes() == data
    got = ok(run(env, "--config-file", str(conf), "get", str(copy["location"]))).stdout
    assert got == data

    proc = run(
        env, "--config-file", str(conf), "-q", "copy", str(src["location"]),
        "--to", "b", "--id", "img-2", "--no-verify",
    )  # fmt: skip
    assert ok(proc).stdout.decode() == f"file://{b}/img-2\n"
    assert (b / "img-2").read_bytes() == data
    # copying again under the same id: Duplicate -> 1, nothing changed
    one_error_line(
        run(env, "--config-file", str(conf), "copy", str(src["location"]), "--to", "b"), 1
    )
    one_error_line(
        run(env, "--config-file", str(conf), "copy", str(src["location"]), "--to", "z"), 2
    )
    assert sorted(os.listdir(b)) == ["img-1", "img-2"]


def test_later_config_files_override_earlier_and_env(
    env: dict[str, str], two_stores: tuple[Path, Path, Path], image: Path, tmp_path: Path
) -> None:
    conf, _, b = two_stores
    override = tmp_path / "override.conf"
    override.write_text("[glance_store]\ndefault_backend = b\n")
    result = add_json(env, image, "--config-file", str(conf), "--config-file", str(override))
    assert result["backend"] == "b"
    assert (b / str(result["image_id"])).exists()
    env = dict(env, IMGSTORE_CONFIG=f"{conf}{os.pathsep}{override}")
    rows = json.loads(ok(run(env, "stores", "--json")).stdout)
    assert [(r["name"], r["default"]) for r in rows] == [("a", False), ("b", True)]


def test_python_dash_m_imgstore(env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "imgstore", "stores", "--json"],
        capture_output=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert json.loads(ok(proc).stdout)[0]["name"] == "file"


# -- errors and exit codes ------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["bogus"],
        ["add"],
        ["get"],
        ["get", "file:///x", "--offset", "-1"],
        ["get", "file:///x", "--length", "ten"],
        ["add", "f", "--size", "-5"],
        ["copy", "file:///x"],
        ["stores", "--no-such-option"],
    ],
)
def test_bad_arguments_exit_2(env: dict[str, str], args: list[str]) -> None:
    line = one_error_line(run(env, *args), 2)
    assert "--help" in line


def test_help_shows_the_exit_code_table(env: dict[str, str]) -> None:
    proc = ok(run(env, "--help"))
    assert cli.EXIT_CODES_HELP in proc.stdout.decode()
    assert cli.EXIT_CODES_HELP in ok(run(env, "get", "--help")).stdout.decode()
    for line in cli.EXIT_CODES_HELP.splitlines()[1:]:
        assert line.strip() in (cli.__doc__ or "")


def test_missing_and_unreadable_input_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    line = one_error_line(run(env, "add", str(tmp_path / "nope")), 2)
    assert "nope" in line and os.strerror(errno.ENOENT) in line
    line = one_error_line(run(env, "add", str(tmp_path)), 2)
    assert os.strerror(errno.EISDIR) in line
    line = one_error_line(run(env, "add", "/proc/self/mem"), 2)
    assert os.strerror(errno.EIO) in line
    assert [n for n in leftovers(tmp_path / "data") if not n.startswith("lost")] == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_input_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "secret.img"
    path.write_bytes(b"x")
    path.chmod(0)
    line = one_error_line(run(env, "add", str(path)), 2)
    assert os.strerror(errno.EACCES) in line


def test_usage_and_configuration_errors_exit_2(
    env: dict[str, str], image: Path, tmp_path: Path
) -> None:
    bad_driver = tmp_path / "bad.conf"
    bad_driver.write_text("[DEFAULT]\nenabled_backends = a:nosuchdriver\n")
    cases = [
        ["--config-file", str(tmp_path / "missing.conf"), "stores"],
        ["--config-file", str(bad_driver), "stores"],
        ["add", str(image), "--backend", "nope"],
        ["add", str(image), "--id", "../escape"],
        ["add", str(image), "--hash-algo", "nosuchhash"],
        ["get", "zz://somewhere/x"],
        ["get", "not-a-uri"],
        ["size", "file:///etc/passwd"],
        ["delete", "file:///etc/passwd"],
    ]
    for args in cases:
        one_error_line(run(env, *args), 2)
    assert Path("/etc/passwd").exists()
    assert leftovers(tmp_path / "data") == []


def test_not_found_exit_3(env: dict[str, str], tmp_path: Path) -> None:
    location = f"file://{tmp_path / 'data' / 'no-such-image'}"
    for command in ("get", "size", "delete"):
        line = one_error_line(run(env, command, location), 3)
        assert "no-such-image" in line


def test_integrity_errors_exit_4(env: dict[str, str], image: Path, tmp_path: Path) -> None:
    size = image.stat().st_size
    one_error_line(run(env, "add", str(image), "--size", str(size - 1)), 4)
    one_error_line(run(env, "add", str(image), "--size", str(size + 1)), 4)
    one_error_line(run(env, "add", "-", "--size", "10", input=b"short"), 4)
    capped = tmp_path / "capped.conf"
    capped.write_text(
        f"[glance_store]\nstores = file\nimage_size_cap = 1000\n"
        f"filesystem_store_datadir = {tmp_path / 'data'}\n"
    )
    line = one_error_line(run(env, "--config-file", str(capped), "add", "-", input=bytes(5000)), 4)
    assert "image_size_cap" in line
    assert [n for n in leftovers(tmp_path / "data")] == []


def test_duplicate_exit_1(env: dict[str, str], image: Path, tmp_path: Path) -> None:
    add_json(env, image, "--id", "dup")
    line = one_error_line(run(env, "add", str(image), "--id", "dup"), 1)
    assert "already exists" in line
    assert leftovers(tmp_path / "data") == ["dup"]


# The filesystem driver cannot be made unreachable or to refuse credentials, so
# these cases inject the fault: a fake size() raising the library's exception,
# then the real CLI entry point maps it to its exit code.
INJECT = textwrap.dedent(
    """\
    import sys
    from imgstore import exceptions
    from imgstore.drivers.filesystem import FilesystemDriver

    def injected_fault(self, location):
        raise getattr(exceptions, sys.argv[1])("injected: the backend says no")

    FilesystemDriver.size = injected_fault
    from imgstore.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize(
    ("exception", "code"),
    [
        ("BackendUnavailable", 5),
        ("AuthenticationFailed", 5),
        ("ChecksumMismatch", 4),
        ("StorageFull", 1),
        ("BackendError", 1),
        ("NotFound", 3),
    ],
)
def test_exit_codes_of_backend_faults(
    env: dict[str, str], tmp_path: Path, exception: str, code: int
) -> None:
    location = f"file://{tmp_path / 'data' / 'img'}"
    proc = subprocess.run(
        [sys.executable, "-c", INJECT, exception, "size", location],
        capture_output=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    line = one_error_line(proc, code)
    assert line == "imgstore: error: injected: the backend says no"


def test_debug_adds_traceback_and_debug_logs(env: dict[str, str], tmp_path: Path) -> None:
    location = f"file://{tmp_path / 'data' / 'nothing'}"
    proc = run(env, "--debug", "get", location)
    err = proc.stderr.decode()
    assert proc.returncode == 3
    assert "Traceback" in err and "NotFound" in err
    assert ": debug: " in err
    assert err.splitlines()[-1].startswith("imgstore: error: no image at")


def test_closed_stdout_exits_1_with_one_line(env: dict[str, str], tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    big.write_bytes(os.urandom(6 * 1024 * 1024))
    location = str(add_json(env, big)["location"])
    proc = subprocess.Popen(
        [*COMMAND, "get", location],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(1)) == 1
    proc.stdout.close()  # like `| head -c1`
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert err == b"imgstore: error: output closed\n"


def test_interrupt_exits_130_and_leaves_nothing(env: dict[str, str], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        [*COMMAND, "add", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        # a shell's background job (`pytest &`) ignores SIGINT, and children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(os.urandom(100_000))
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not any(n.endswith(".imgstore-partial") for n in leftovers(data_dir)):
        assert time.monotonic() < deadline, "the add never started writing"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # stdin stays open: the add is waiting for more bytes
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 130
    assert err == b"imgstore: error: interrupted\n"
    proc.stdin.close()
    assert leftovers(data_dir) == []


# -- progress ---------------------------------------------------------------------


def test_no_progress_output_when_stderr_is_not_a_tty(
    env: dict[str, str], two_stores: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    conf, _, _ = two_stores
    big = tmp_path / "big.raw"
    big.write_bytes(os.urandom(9 * 1024 * 1024))
    base = ["--config-file", str(conf)]
    location = json.loads(ok(run(env, *base, "--json", "add", str(big))).stdout)["location"]
    assert ok(run(env, *base, "get", location)).stdout == big.read_bytes()
    ok(run(env, *base, "get", location, "-o", str(tmp_path / "out")))
    ok(run(env, *base, "copy", location, "--to", "b"))


def run_with_tty_stderr(
    env: dict[str, str], *args: str, stdout_tty: bool = False, stdin: object = None
) -> tuple[int, bytes, bytes]:
    """Run with standard error (and optionally output) on a pseudo-terminal.

    Standard output, when not the terminal, goes to a temporary file so that a
    large image cannot fill a pipe while the terminal is being read.
    """
    master, slave = pty.openpty()
    with tempfile.TemporaryFile() as out_file:
        try:
            proc = subprocess.Popen(
                [*COMMAND, *args],
                stdin=stdin if stdin is not None else subprocess.DEVNULL,  # type: ignore[arg-type]
                stdout=slave if stdout_tty else out_file,
                stderr=slave,
                env=env,
            )
        finally:
            os.close(slave)
        tty_out = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave end is closed
                    break
                if not data:
                    break
                tty_out += data
            elif proc.poll() is not None:
                break
        os.close(master)
        code = proc.wait(timeout=60)
        out_file.seek(0)
        return code, out_file.read(), tty_out


def test_progress_bar_on_a_terminal(
    env: dict[str, str], two_stores: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    conf, _, _ = two_stores
    big = tmp_path / "big.raw"
    big.write_bytes(os.urandom(9 * 1024 * 1024))
    base = ["--config-file", str(conf)]

    code, out, tty = run_with_tty_stderr(env, *base, "-q", "add", str(big), "--id", "big")
    assert code == 0 and tty == b""  # --quiet: no bar
    location = out.decode().strip()

    code, _, tty = run_with_tty_stderr(env, *base, "add", str(big), "--id", "big2")
    assert code == 0
    text = tty.decode()
    assert "\r" in text and "9.0 MiB / 9.0 MiB" in text and "100%" in text and "/s" in text
    assert text.endswith("\r\n")  # the final state stays, on its own line

    code, out, tty = run_with_tty_stderr(env, *base, "get", location)
    assert code == 0 and out == big.read_bytes()
    assert "get" in tty.decode() and "100%" in tty.decode()

    code, _, tty = run_with_tty_stderr(env, *base, "copy", location, "--to", "b")
    assert code == 0
    assert "copy" in tty.decode() and "100%" in tty.decode()

    # unknown total (standard input without --size): bytes and speed, no percentage
    with big.open("rb") as stdin:
        code, _, tty = run_with_tty_stderr(env, *base, "add", "-", stdin=stdin)
    assert code == 0
    assert "9.0 MiB" in tty.decode() and "/s" in tty.decode() and "%" not in tty.decode()


def test_get_refuses_to_write_image_bytes_to_a_terminal(env: dict[str, str], image: Path) -> None:
    location = str(add_json(env, image)["location"])
    code, _, tty = run_with_tty_stderr(env, "get", location, stdout_tty=True)
    assert code == 2
    assert tty.decode().strip().startswith("imgstore: error: refusing to write image data")


def test_exit_code_mapping_covers_the_hierarchy() -> None:
    from imgstore import exceptions as e

    assert cli.exit_code(e.UnknownBackend("x")) == 2
    assert cli.exit_code(e.UnknownScheme("x")) == 2
    assert cli.exit_code(e.SizeCapExceeded("x")) == 4
    assert cli.exit_code(e.ReadOnlyStore("x")) == 1
    assert cli.exit_code(e.NotSupported("x")) == 1
    assert cli.exit_code(RuntimeError("x")) == 1
    assert cli.exit_code(cli.UsageError("x")) == 2


# -- passwords of --broker / --journal from the environment -----------------------------


def test_broker_and_journal_passwords_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("IMGSTORE_BROKER_PASSWORD", "s3cr:t/@")
    monkeypatch.setenv("IMGSTORE_JOURNAL_PASSWORD", "pw")
    journal = "mysql+pymysql://imgstore@127.0.0.1/db?charset=utf8"
    args = cli.parse_args(
        ["worker", "--broker", "amqp://imgstore@127.0.0.1:5672/vhost", "--journal", journal]
    )
    cli._passwords_from_environment(args)
    assert args.broker == "amqp://imgstore:s3cr%3At%2F%40@127.0.0.1:5672/vhost"
    assert args.journal == "mysql+pymysql://imgstore:pw@127.0.0.1/db?charset=utf8"
    assert not caplog.records


def test_a_password_on_the_command_line_is_kept_with_a_warning_and_files_are_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("IMGSTORE_BROKER_PASSWORD", "from-env")
    monkeypatch.setenv("IMGSTORE_JOURNAL_PASSWORD", "from-env")
    args = cli.parse_args(["migrate", "in.csv", "--to", "x", "--journal", "run.journal",
                           "--broker", "amqp://u:given@127.0.0.1/v"])  # fmt: skip
    cli._passwords_from_environment(args)
    assert args.broker == "amqp://u:given@127.0.0.1/v" and args.journal == "run.journal"
    assert "IMGSTORE_BROKER_PASSWORD" in caplog.text and "given" not in caplog.text


def test_a_password_variable_with_a_url_naming_no_user_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMGSTORE_JOURNAL_PASSWORD", "pw")
    assert cli.main(["status", "--journal", "postgresql+psycopg://127.0.0.1/db"]) == cli.EXIT_USAGE
    assert "names no user" in capsys.readouterr().err
