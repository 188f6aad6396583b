"""``imgstore cleanup`` on the embedded filesystem store (no server needed)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from tests.unit.test_cli import env, ok, one_error_line, run  # noqa: F401 - env is a fixture


def _partial(data: Path, age: float) -> Path:
    """A partial file as a killed add leaves it, last written ``age`` seconds ago."""
    data.mkdir(parents=True, exist_ok=True)
    path = data / f".{uuid.uuid4()}.0123456789ab.imgstore-partial"
    path.write_bytes(b"half an image")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_dry_run_lists_then_cleanup_removes_only_old_partials(
    env: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    data = Path(env["IMGSTORE_DATA_DIR"])
    old, fresh = _partial(data, 7200), _partial(data, 5)
    image = tmp_path / "img"
    image.write_bytes(b"a finished image")
    ok(run(env, "add", str(image), "--id", "kept"))

    listed = json.loads(ok(run(env, "--json", "cleanup", "--dry-run")).stdout)
    assert [(o["kind"], o["name"], o["outcome"]) for o in listed] == [
        ("partial file", str(old), "found")
    ]
    assert old.exists() and fresh.exists()

    out = ok(run(env, "cleanup")).stdout.decode()
    assert "removed" in out and str(old) in out and out.endswith("1 leftover(s)\n")
    assert not old.exists() and fresh.exists() and (data / "kept").exists()

    ok(run(env, "cleanup", "--older-than", "0"))
    assert sorted(os.listdir(data)) == ["kept"]
    assert ok(run(env, "cleanup", "--older-than", "0")).stdout == b"0 leftover(s)\n"


def test_bad_arguments_exit_2(env: dict[str, str]) -> None:  # noqa: F811
    one_error_line(run(env, "cleanup", "--older-than", "-5"), 2)
    one_error_line(run(env, "cleanup", "--backend", "nope"), 2)
