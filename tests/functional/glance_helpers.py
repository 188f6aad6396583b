"""A Glance API of a test's own: the harness's Glance install, another configuration.

The harness's Glance (``services/glance.py``) serves the image tests with ``fs`` and
``ceph``. A test that needs Glance configured otherwise (a broken backend, a Cinder
backend, legacy single-store mode) starts :func:`private_glance`: the same venv, paste
pipeline and compat package, its own glance-api.conf, database, directories and port,
stopped (by its PID) when the test ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.functional.services.glance import HOST, IDENTITY_HEADERS, glance_conf

START_TIMEOUT = 90.0


@dataclasses.dataclass
class PrivateGlance:
    """A running private glance-api."""

    url: str
    base: Path
    conf: Path
    log: Path
    headers: dict[str, str]

    @property
    def db(self) -> Path:
        """Glance's sqlite database."""
        return self.base / "db" / "glance.sqlite"

    def log_text(self) -> str:
        """What glance-api has logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def get(self, path: str, **kw: Any) -> requests.Response:
        """GET ``path`` (``/v2/...``) as the trusted admin user."""
        return requests.get(f"{self.url}{path}", headers=self.headers, timeout=60, **kw)


def legacy_conf(base: Path, backends: dict[str, str], paste: Path, extra: str = "") -> str:
    """glance-api.conf in glance_store's single-store form (no ``enabled_backends``)."""
    multi = glance_conf(base, {"fs": "file"}, paste)
    head, _, _ = multi.partition("[glance_store]")
    head = head.replace("enabled_backends = fs:file\n", "")
    head = head.replace(
        "[DEFAULT]\n",
        f"[DEFAULT]\nnode_staging_uri = file://{base / 'staging'}\n",
    )
    drivers = list(dict.fromkeys(backends.values()))
    return (
        head
        + f"[glance_store]\nstores = {', '.join(drivers)}\ndefault_store = {drivers[0]}\n"
        + f"filesystem_store_datadir = {base / 'images'}\n"
        + f"\n[task]\nwork_dir = {base / 'work'}\n"
        + "\n[oslo_policy]\nenforce_new_defaults = false\nenforce_scope = false\n"
        + f"\n[oslo_concurrency]\nlock_path = {base / 'locks'}\n"
        + extra
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_glance(
    glance: dict[str, Any],
    base: Path,
    backends: dict[str, str],
    extra: str = "",
    default_backend: str = "fs",
    legacy: bool = False,
) -> Iterator[PrivateGlance]:
    """Start glance-api with ``backends`` (id -> driver; ``extra`` holds their sections)
    under ``base``; yield it; stop it. ``legacy``: the single-store form instead
    (``[glance_store] stores``, ``default_store`` the first of ``backends``' drivers,
    ``node_staging_uri`` and ``[task] work_dir`` under ``base``)."""
    bin_dir = Path(glance["python"]).parent
    for sub in ("etc", "db", "logs", "images", "staging", "tasks", "work", "cache", "locks"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    paste = base / "etc" / "glance-api-paste.ini"
    paste.write_text(Path(glance["paste"]).read_text())
    text = (legacy_conf if legacy else glance_conf)(base, backends, paste, extra)
    if default_backend != "fs":
        text = text.replace("default_backend = fs", f"default_backend = {default_backend}")
    conf = base / "etc" / "glance-api.conf"
    conf.write_text(text)
    env = {**os.environ, "OS_GLANCE_CONFIG_DIR": str(base / "etc")}
    env.pop("PYTHONPATH", None)
    sync = subprocess.run(
        [str(bin_dir / "glance-manage"), "--config-file", str(conf), "db_sync"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert sync.returncode == 0, f"glance-manage db_sync: {sync.stderr[-2000:]}"
    port = _free_port()
    log = base / "logs" / "glance-api.log"
    out = open(base / "logs" / "gunicorn.out", "wb")
    proc = subprocess.Popen(
        [str(bin_dir / "gunicorn"), "--bind", f"{HOST}:{port}", "--workers", "1",
         "--worker-class", "gthread", "--threads", "4", "--timeout", "120",
         "--graceful-timeout", "5", "--no-control-socket", "glance.wsgi.api:application"],
        env=env, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"glance-api exited ({proc.returncode}) at start:\n"
                    + (base / "logs" / "gunicorn.out").read_text(errors="replace")[-3000:]
                    + (log.read_text(errors="replace")[-3000:] if log.exists() else "")
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/versions", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"glance-api did not answer in {START_TIMEOUT:.0f} s")
            time.sleep(0.3)
        yield PrivateGlance(url, base, conf, log, dict(IDENTITY_HEADERS))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
