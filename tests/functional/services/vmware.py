"""vcsim, VMware's vCenter simulator (from govmomi), for the ``vmware`` driver's tests.

Debian ships govmomi's Go sources (``golang-github-vmware-govmomi-dev``) but no
``vcsim`` program, so ``up`` builds the small launcher in ``vcsim/main.go`` on
the ``simulator`` package with Debian's Go, offline (GOPATH mode). The binary
is cached in ``.cache/services/vmware/build/`` under a key made of the
launcher's source, the Go version and the govmomi package version: the first
``up`` takes about a minute on 2 cores, the next ones start in well under a
second.

vcsim serves no WSDL, which suds (and so oslo.vmware) needs: ``up`` generates
one (``vcsim/gen_vim_wsdl.py``) from govmomi's Go types and the schema files
oslo.vmware installs, into ``.cache/services/vmware/wsdl/`` (never committed:
the schemas carry VMware's copyright), and the launcher serves it at ``/sdk/``.

TLS: a CA and a 2048-bit server certificate for 127.0.0.1 made with
``openssl`` (vcsim's built-in certificate is RSA-1024, which OpenSSL refuses
to verify), plus an unrelated CA (``wrong_ca_file``) for the refusal tests.
Login is checked: user ``imgstore`` with a random password (passed to vcsim
in its environment, never in ``ps``).

The inventory is vcsim's vCenter model with one datacenter ``DC0`` and two
local datastores, ``LocalDS_0`` and ``LocalDS_1``, each backed by a real
directory under ``.cache/services/vmware/datastores/`` (``datastore_dirs``
in the details, so tests can list every file a datastore holds). vcsim
removes those directories when stopped with SIGTERM.

Port (environment variable, default): ``IMGSTORE_VMWARE_PORT`` (18989).

Details: ``url`` (``https://127.0.0.1:<port>/sdk``), ``host``, ``port``,
``user``, ``password``, ``ca_file``, ``wrong_ca_file``, ``wsdl_dir``,
``wsdl_url``, ``datacenter``, ``datastores``, ``datastore_dirs``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.functional.services._common import (
    HOST,
    Context,
    ServiceError,
    apt_install,
    port_open,
    run,
    wait_for_http,
    wait_for_port,
)

DEFAULT_PORT = 18989
PACKAGES = ("golang-go", "golang-github-vmware-govmomi-dev")
GOPATH = Path("/usr/share/gocode")
GOVMOMI = GOPATH / "src" / "github.com" / "vmware" / "govmomi"
SOURCES = Path(__file__).resolve().parent / "vcsim"
KEY = "vcsim"
USER = "imgstore"
DATACENTER = "DC0"
DATASTORE_COUNT = 2
BUILD_TIMEOUT = 600
CERT_MAX_AGE = 20 * 24 * 3600


def _package_version(package: str) -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return out.stdout.strip()


def build(ctx: Context) -> Path:
    """The vcsim binary, built once per launcher source, Go and govmomi version."""
    apt_install(PACKAGES, log=ctx.path("apt.log"))
    main_go = SOURCES / "main.go"
    key = hashlib.sha256(
        main_go.read_bytes()
        + _package_version("golang-go").encode()
        + _package_version("golang-github-vmware-govmomi-dev").encode()
    ).hexdigest()[:16]
    build_dir = ctx.path("build")
    binary = build_dir / f"vcsim-{key}"
    if binary.exists():
        return binary
    build_dir.mkdir(exist_ok=True)
    src = build_dir / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    shutil.copy(main_go, src / "main.go")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOCACHE": str(build_dir / "gocache"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    tmp = build_dir / f".vcsim-{key}.tmp"
    start = time.monotonic()
    out = subprocess.run(
        ["go", "build", "-o", str(tmp), "./main.go"],
        cwd=src, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise ServiceError(f"vmware: building vcsim failed:\n{(out.stdout + out.stderr)[-3000:]}")
    tmp.replace(binary)
    for old in build_dir.glob("vcsim-*"):
        if old != binary:
            old.unlink(missing_ok=True)
    ctx.path("build.log").write_text(f"built {binary.name} in {time.monotonic() - start:.1f} s\n")
    return binary


def generate_wsdl(ctx: Context) -> Path:
    """The WSDL suds needs, from govmomi's Go types and oslo.vmware's schema files."""
    spec = importlib.util.find_spec("oslo_vmware")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(
            "vmware: oslo.vmware is not installed in this venv; "
            "pip install -e '.[vmware]' (scripts/setup does)"
        )
    schemas = Path(next(iter(spec.submodule_search_locations))) / "wsdl" / "8.0"
    out = ctx.path("wsdl")
    shutil.rmtree(out, ignore_errors=True)
    run(
        [sys.executable, str(SOURCES / "gen_vim_wsdl.py"),
         str(GOVMOMI / "vim25" / "types" / "types.go"), str(schemas), str(out)],
        "generating the vSphere WSDL",
    )  # fmt: skip
    return out


def _openssl(*args: str) -> None:
    run(["openssl", *args], "openssl " + args[0])


def make_certificates(tls: Path) -> dict[str, str]:
    """A CA, a 2048-bit server certificate for 127.0.0.1 it signed, and an unrelated CA."""
    tls.mkdir(parents=True, exist_ok=True)
    files = {
        "ca": tls / "ca.pem",
        "cert": tls / "server.pem",
        "key": tls / "server.key",
        "wrong_ca": tls / "wrong-ca.pem",
    }
    fresh = all(p.exists() for p in files.values()) and (
        time.time() - files["ca"].stat().st_mtime < CERT_MAX_AGE
    )
    if fresh:
        return {k: str(v) for k, v in files.items()}
    keys = {"ca": tls / "ca.key", "wrong_ca": tls / "wrong-ca.key"}
    for name, subject in (("ca", "imgstore vcsim CA"), ("wrong_ca", "imgstore unrelated CA")):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "30",
            "-keyout", str(keys[name]), "-out", str(files[name]), "-subj", f"/CN={subject}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
    csr, ext = tls / "server.csr", tls / "server.ext"
    ext.write_text(
        f"subjectAltName=IP:{HOST},DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-keyout", str(files["key"]), "-out", str(csr), "-subj", f"/CN={HOST}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-sha256", "-days", "30", "-in", str(csr),
        "-CA", str(files["ca"]), "-CAkey", str(keys["ca"]), "-CAcreateserial",
        "-out", str(files["cert"]), "-extfile", str(ext),
    )  # fmt: skip
    for path in (*keys.values(), files["key"]):
        path.chmod(0o600)
    return {k: str(v) for k, v in files.items()}


def _password(ctx: Context) -> str:
    path = ctx.path("password")
    if path.exists():
        return path.read_text().strip()
    # XML- and URL-special characters on purpose: nothing may quote them wrong or show them
    password = "vc-" + secrets.token_urlsafe(18) + "&<%"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return password


def up(ctx: Context) -> dict[str, Any]:
    """Build (once) and start vcsim with TLS, a login, and the generated WSDL."""
    port = ctx.port("PORT", DEFAULT_PORT)
    if port_open(port):
        raise ServiceError(
            f"port {port} on {HOST} is taken by another process; set IMGSTORE_VMWARE_PORT"
        )
    t0 = time.monotonic()
    binary = build(ctx)
    built = time.monotonic() - t0
    wsdl = generate_wsdl(ctx)
    tls = make_certificates(ctx.path("tls"))
    password = _password(ctx)
    datastores = ctx.path("datastores")
    shutil.rmtree(datastores, ignore_errors=True)  # leftovers of a vcsim that was killed
    datastores.mkdir()
    argv = [
        str(binary), "-l", f"{HOST}:{port}", "-wsdl", str(wsdl),
        "-tlscert", tls["cert"], "-tlskey", tls["key"],
        "-dc", "1", "-ds", str(DATASTORE_COUNT), "-username", USER,
    ]  # fmt: skip
    env = {**os.environ, "VCSIM_PASSWORD": password, "TMPDIR": str(datastores)}
    t1 = time.monotonic()
    ctx.start(KEY, argv, env=env)
    wait_for_port(ctx, KEY, port, timeout=30)
    wsdl_url = f"https://{HOST}:{port}/sdk/vimService.wsdl"
    wait_for_http(ctx, KEY, wsdl_url, timeout=30, ok=[200], cafile=tls["ca"])
    names = [f"LocalDS_{i}" for i in range(DATASTORE_COUNT)]
    dirs: dict[str, str] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(dirs) < len(names):
        for name in names:
            found = sorted(datastores.glob(f"govcsim-{DATACENTER}-{name}-*"))
            if found:
                dirs[name] = str(found[0])
        time.sleep(0.05)
    if len(dirs) != len(names):
        raise ServiceError(f"vmware: vcsim made datastore directories {dirs}, expected {names}")
    return {
        "url": f"https://{HOST}:{port}/sdk",
        "host": HOST,
        "port": port,
        "user": USER,
        "password": password,
        "ca_file": tls["ca"],
        "wrong_ca_file": tls["wrong_ca"],
        "wsdl_dir": str(wsdl),
        "wsdl_url": wsdl_url,
        "datacenter": DATACENTER,
        "datastores": names,
        "datastore_dirs": dirs,
        "server": f"vcsim (govmomi {_package_version('golang-github-vmware-govmomi-dev')})",
        "build_seconds": round(built, 3),
        "start_seconds": round(time.monotonic() - t1, 3),
    }


def check(ctx: Context, details: dict[str, Any]) -> bool:
    """Whether the running vcsim is on the wanted port and its datastores still exist."""
    return (
        details.get("port") == ctx.port("PORT", DEFAULT_PORT)
        and port_open(details["port"])
        and all(Path(d).is_dir() for d in details.get("datastore_dirs", {}).values())
    )


def down(ctx: Context) -> None:
    """Stop vcsim (SIGTERM: it removes its datastore directories itself)."""
    ctx.stop(KEY, timeout=15)
    shutil.rmtree(ctx.path("datastores"), ignore_errors=True)
