"""SecantusDB, a MongoDB wire-protocol server from PyPI, for the ``gridfs`` driver's tests.

No registry we may use ships the genuine ``mongod``; SecantusDB
(``secantusdb==0.7.0b3``, pinned: only pre-releases exist) is a Python
reimplementation of the server on WiredTiger that passes the GridFS checks in
``../shared/services/mongo/``. It runs from its own venv
(``.cache/services/venvs/mongo``) as a separate process, so its pymongo
requirement never meets ours, and the driver under test uses only the
standard pymongo GridFS API.

Storage is throw-away: ``.cache/services/mongo/data`` is wiped before every
start and by ``down``. The server has SCRAM-SHA-256 authentication, so the
tests run with a password in ``mongodb_store_uri`` (the driver must redact
it): ``up`` starts the server once without ``--auth`` to create the user
``imgstore`` (role ``root``, random password), stops it, and starts it again
with ``--auth``; it is ready when an authenticated ``ping`` and a read
succeed and an unauthenticated read is refused.

Port (environment variable, default): ``IMGSTORE_MONGO_PORT`` (18017).

Details: ``uri`` (no credentials; the server refuses data commands on it),
``uri_with_password`` (user and password, ``authSource=admin``), ``user``,
``password``, ``port``, ``server``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from tests.functional.services._common import (
    HOST,
    Context,
    ServiceError,
    ensure_venv,
    port_open,
    run,
    wait_for_port,
)

SPEC = "secantusdb==0.7.0b3"
DEFAULT_PORT = 18017
USER = "imgstore"
CACHE_SIZE = "256M"
KEY = "secantusd"
OPLOG_MAX_ENTRIES = 200

# Run with the server venv's own pymongo. The URI comes in the environment (not argv: no
# password in `ps`). Modes: "ping" waits for an authenticated ping and a read, and checks
# that a read without credentials is refused; "create-user" adds the user (no --auth yet).
_CLIENT_SCRIPT = r"""
import json, os, sys, time
import pymongo
from pymongo.errors import OperationFailure, PyMongoError
mode, timeout = sys.argv[1], float(sys.argv[2])
uri, anon = os.environ["MONGO_URI"], os.environ["MONGO_ANON_URI"]
deadline = time.monotonic() + timeout
last = None
while time.monotonic() < deadline:
    try:
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500) as c:
            c.admin.command("ping")
            if mode == "create-user":
                c.admin.command("createUser", os.environ["MONGO_USER"],
                                pwd=os.environ["MONGO_PASSWORD"],
                                roles=[{"role": "root", "db": "admin"}])
            else:
                c["imgstore_ping"]["fs.files"].count_documents({})
        break
    except PyMongoError as exc:
        last = exc
        time.sleep(0.05)
else:
    sys.exit(f"no answer in {timeout} s: {type(last).__name__}")
if mode == "ping":
    try:
        with pymongo.MongoClient(anon, serverSelectionTimeoutMS=2000) as c:
            c["imgstore_ping"]["fs.files"].count_documents({})
    except OperationFailure:
        pass
    else:
        sys.exit("the server answers reads without credentials: --auth is not in force")
print(json.dumps({"ok": True}))
"""


def _password(ctx: Context) -> str:
    path = ctx.path("password")
    if path.exists():
        return path.read_text().strip()
    # URI-special characters on purpose: the driver must quote nothing wrong and redact all
    password = "mg-" + secrets.token_urlsafe(18) + ":/@%"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return password


def _uris(port: int, password: str) -> tuple[str, str]:
    base = f"{HOST}:{port}/?directConnection=true"
    quoted = urllib.parse.quote(password, safe="")
    return f"mongodb://{base}", f"mongodb://{USER}:{quoted}@{base}&authSource=admin"


def _client(venv: Path, mode: str, uri: str, anon: str, password: str, timeout: float) -> None:
    env = {
        **os.environ,
        "MONGO_URI": uri,
        "MONGO_ANON_URI": anon,
        "MONGO_USER": USER,
        "MONGO_PASSWORD": password,
    }
    argv = [str(venv / "bin" / "python"), "-c", _CLIENT_SCRIPT, mode, str(timeout)]
    out = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=timeout + 30, check=False
    )
    if out.returncode != 0:
        tail = (out.stdout + out.stderr).strip().splitlines()[-5:]
        raise ServiceError(f"mongo: {mode} failed: " + " | ".join(tail).replace(password, "***"))


def _start(ctx: Context, venv: Path, port: int, data: Path, auth: bool) -> None:
    argv = [
        str(venv / "bin" / "secantusd-py"),
        "--host", HOST,
        "--port", str(port),
        "--storage-path", str(data),
        "--cache-size", CACHE_SIZE,
        "--log-level", "WARNING",
        # the oplog copies every inserted chunk; nothing here reads it (no change
        # streams), and by default it keeps 100000 entries: gigabytes of image data
        "--oplog-max-entries", str(OPLOG_MAX_ENTRIES),
        "--oplog-retention-seconds", "60",
    ]  # fmt: skip
    if auth:
        argv.append("--auth")
    # a secantusd.toml in the cwd would be read: run in the state directory, which has none
    ctx.start(KEY, argv, cwd=ctx.dir)
    wait_for_port(ctx, KEY, port, timeout=60)


def up(ctx: Context) -> dict[str, Any]:
    """Install the pinned server in its venv, provision a user, start it with --auth."""
    t0 = time.monotonic()
    venv = ensure_venv("mongo", [SPEC])
    installed = time.monotonic() - t0
    port = ctx.port("PORT", DEFAULT_PORT)
    if port_open(port):
        raise ServiceError(
            f"port {port} on {HOST} is taken by another process; set {ctx.env_prefix}_PORT"
        )
    data = ctx.path("data")
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    password = _password(ctx)
    anon, uri = _uris(port, password)

    t1 = time.monotonic()
    _start(ctx, venv, port, data, auth=False)
    _client(venv, "create-user", anon, anon, password, timeout=60)
    ctx.stop(KEY, timeout=30)
    _start(ctx, venv, port, data, auth=True)
    _client(venv, "ping", uri, anon, password, timeout=60)
    started = time.monotonic() - t1
    version = run([str(venv / "bin" / "python"), "-c", _VERSION], "reading the version").strip()
    return {
        "uri": anon,
        "uri_with_password": uri,
        "user": USER,
        "password": password,
        "port": port,
        "server": f"SecantusDB {version} (MongoDB wire protocol, not the genuine mongod)",
        "auth": "SCRAM-SHA-256",
        "install_seconds": round(installed, 3),
        "start_seconds": round(started, 3),
    }


_VERSION = "import importlib.metadata as m; print(m.version('secantusdb'))"


def check(ctx: Context, details: dict[str, Any]) -> bool:
    """Whether the running server is on the wanted port and answers."""
    return details.get("port") == ctx.port("PORT", DEFAULT_PORT) and port_open(details["port"])


def down(ctx: Context) -> None:
    """Stop the server we started and throw its storage away."""
    ctx.stop(KEY, timeout=30)
    shutil.rmtree(ctx.path("data"), ignore_errors=True)
