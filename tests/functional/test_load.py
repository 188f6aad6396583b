"""The short load run in CI: 4 clients x 12 s per backend (benchmarks/load.py).

``tox -e load`` (or ``python benchmarks/load.py``) is the long run: 16
clients for 5 minutes per backend. Here each backend runs in its own process
so the descriptors and threads counted are the store's, not pytest's; the
script fails on any error, any growth of descriptors other than pooled
sockets or of threads, anything left open after the Stores closed, RSS over
1 GiB or files left in the data directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.functional.conftest import require_service

pytestmark = [pytest.mark.functional, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "load.py"
SERVICE = {"file": None, "s3": "ceph", "swift": "swift"}


@pytest.mark.parametrize("backend", list(SERVICE))
def test_short_load(backend: str, tmp_path: Path) -> None:
    service = SERVICE[backend]
    if service:
        require_service(service)
    out = tmp_path / "load.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--clients", "4", "--duration", "12",
         "--backends", backend, "--max-kib", "1024", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.exists(), proc.stderr
    (result,) = json.loads(out.read_text())
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert result["error_total"] == 0, result["errors"]
    assert result["ops"].get("add", 0) >= 4 and result["ops"].get("get-deleted", 0) >= 4
    # no descriptor but pooled sockets, and no thread, grows while the clients run ...
    assert result["end"]["fds"]["other"] <= result["start"]["fds"]["other"]
    assert result["end"]["threads"] <= result["start"]["threads"]
    # ... and nothing at all outlives the Stores
    for kind in ("sockets", "other"):
        assert result["closed"]["fds"][kind] <= result["before"]["fds"][kind], kind
    assert result["closed"]["threads"] <= result["before"]["threads"]
