"""nginx from Debian as the HTTP origin for the ``http`` driver's tests.

Runs ``nginx -c <our conf> -p <prefix>`` in the foreground (``daemon off``)
with every path (pid, logs, temp dirs) inside ``.cache/services/nginx/``;
``/etc/nginx`` is never read. It serves ``www/images/`` (the docroot the tests
seed) on 127.0.0.1 over plain HTTP and over HTTPS with a certificate signed by
a CA the harness generates with ``openssl`` (2048-bit RSA).

Ports (environment variables, defaults):

* ``IMGSTORE_NGINX_HTTP_PORT`` (18080) - plain HTTP
* ``IMGSTORE_NGINX_HTTPS_PORT`` (18443) - HTTPS, certificate for ``localhost`` and ``127.0.0.1``
* ``IMGSTORE_NGINX_BADNAME_PORT`` (18444) - HTTPS with a certificate from the same CA
  for another host name (``wrong-name.invalid``), to test hostname verification

Paths served on every port:

* ``/images/<name>`` - the files, with Range support
* ``/norange/<name>`` - the same files, Range ignored (``max_ranges 0``)
* ``/nohead/<name>`` - the same files, HEAD refused with 405 (size must use GET)
* ``/redirect/<n>/<name>`` - a chain of ``n`` (1-10) 302 redirects ending at ``/images/<name>``
* ``/redirect301/<name>``, ``/redirect307/<name>``, ``/redirect308/<name>`` - one redirect
* ``/loop/<name>`` - redirects to itself for ever
* ``/to-http/<name>`` - redirects to ``/images/<name>`` on the plain-HTTP port
* ``/to-https/<name>`` - redirects to ``/images/<name>`` on the HTTPS port (host ``localhost``)
* ``/status/<code>`` - answers with that status (401, 403, 404, 410, 500, 502, 503)
* ``/healthz`` - 200
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from tests.functional.services._common import (
    HOST,
    Context,
    ServiceError,
    apt_install,
    file_digest,
    port_open,
    run,
    wait_for_http,
)

PACKAGES = ["nginx-light"]
DEFAULT_HTTP_PORT = 18080
DEFAULT_HTTPS_PORT = 18443
DEFAULT_BADNAME_PORT = 18444
TLS_HOST = "localhost"
BAD_TLS_HOST = "wrong-name.invalid"
MAX_REDIRECT_CHAIN = 10
CERT_MAX_AGE = 20 * 86400  # certificates are valid 30 days; renew well before


def _nginx_binary() -> str:
    for candidate in ("/usr/sbin/nginx", shutil.which("nginx")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServiceError("nginx is not installed (apt-get install -y nginx-light)")


def _ports(ctx: Context) -> dict[str, int]:
    ports = {
        "http": ctx.port("HTTP_PORT", DEFAULT_HTTP_PORT),
        "https": ctx.port("HTTPS_PORT", DEFAULT_HTTPS_PORT),
        "badname": ctx.port("BADNAME_PORT", DEFAULT_BADNAME_PORT),
    }
    if len(set(ports.values())) != len(ports):
        raise ServiceError(f"nginx ports must differ: {ports}")
    return ports


def _openssl(*args: str) -> None:
    run(["openssl", *args], "openssl " + args[0])


def make_certificates(tls: Path) -> dict[str, str]:
    """A CA and two server certificates (right and wrong host name) in ``tls``; reused if fresh."""
    tls.mkdir(parents=True, exist_ok=True)
    files = {
        "ca": tls / "ca.pem",
        "cert": tls / "server.pem",
        "key": tls / "server.key",
        "bad_cert": tls / "badname.pem",
        "bad_key": tls / "badname.key",
    }
    fresh = all(p.exists() for p in files.values()) and (
        time.time() - files["ca"].stat().st_mtime < CERT_MAX_AGE
    )
    if not fresh:
        ca_key = tls / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "30",
            "-keyout", str(ca_key), "-out", str(files["ca"]),
            "-subj", "/CN=imgstore test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        for name, cert, key, sans in (
            ("server", files["cert"], files["key"], f"DNS:{TLS_HOST},IP:{HOST}"),
            ("badname", files["bad_cert"], files["bad_key"], f"DNS:{BAD_TLS_HOST}"),
        ):
            csr = tls / f"{name}.csr"
            ext = tls / f"{name}.ext"
            ext.write_text(
                f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
            )
            _openssl(
                "req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
                "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={sans.split(',')[0][4:]}",
            )  # fmt: skip
            _openssl(
                "x509", "-req", "-sha256", "-days", "30", "-in", str(csr),
                "-CA", str(files["ca"]), "-CAkey", str(ca_key), "-CAcreateserial",
                "-out", str(cert), "-extfile", str(ext),
            )  # fmt: skip
        for key in (ca_key, files["key"], files["bad_key"]):
            key.chmod(0o600)
    return {k: str(v) for k, v in files.items()}


def _server_block(port: int, ports: dict[str, int], tls: dict[str, str] | None, www: Path) -> str:
    listen = f"listen {HOST}:{port}{' ssl' if tls else ''};"
    lines = [
        "    server {",
        f"        {listen}",
        "        server_name _;",
    ]
    if tls:
        lines += [
            f"        ssl_certificate {tls['cert']};",
            f"        ssl_certificate_key {tls['key']};",
            "        ssl_protocols TLSv1.2 TLSv1.3;",
        ]
    lines += [
        "        location = /healthz { return 200 'ok\\n'; }",
        "        location /images/ { }",
        f"        location /norange/ {{ alias {www}/images/; max_ranges 0; }}",
        "        location /nohead/ {",
        f"            alias {www}/images/;",
        "            if ($request_method = HEAD) { return 405; }",
        "        }",
        "        location ~ ^/redirect/1/(.*)$ { return 302 /images/$1; }",
    ]
    for n in range(2, MAX_REDIRECT_CHAIN + 1):
        lines.append(
            f"        location ~ ^/redirect/{n}/(.*)$ {{ return 302 /redirect/{n - 1}/$1; }}"
        )
    lines += [
        f"        location ~ ^/redirect{code}/(.*)$ {{ return {code} /images/$1; }}"
        for code in (301, 307, 308)
    ]
    lines += [
        "        location ~ ^/loop/(.*)$ { return 302 /loop/$1; }",
        "        location ~ ^/to-http/(.*)$ "
        f"{{ return 302 http://{HOST}:{ports['http']}/images/$1; }}",
        "        location ~ ^/to-https/(.*)$ "
        f"{{ return 302 https://{TLS_HOST}:{ports['https']}/images/$1; }}",
    ]
    lines += [
        f"        location = /status/{code} {{ return {code}; }}"
        for code in (401, 403, 404, 410, 500, 502, 503)
    ]
    lines.append("    }")
    return "\n".join(lines)


def render_config(ctx: Context, ports: dict[str, int], tls: dict[str, str]) -> str:
    """The complete nginx.conf text."""
    d = ctx.dir
    temp = {k: d / "temp" / k for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for p in temp.values():
        p.mkdir(parents=True, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    bad_tls = {"cert": tls["bad_cert"], "key": tls["bad_key"]}
    return f"""# generated by tests/functional/services/nginx.py; do not edit
daemon off;
master_process on;
worker_processes 1;
{user}pid {d / "temp" / "nginx.pid"};
error_log {d / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {d / "access.log"};
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    types {{ text/plain txt; }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 30;
    server_tokens off;
    root {d / "www"};
{_server_block(ports["http"], ports, None, d / "www")}
{_server_block(ports["https"], ports, tls, d / "www")}
{_server_block(ports["badname"], ports, bad_tls, d / "www")}
}}
"""


def up(ctx: Context) -> dict[str, Any]:
    """Install nginx if needed, write the config, start it and wait until all ports answer."""
    started = time.monotonic()
    installed = apt_install(PACKAGES, log=ctx.path("apt.log"))
    install_seconds = time.monotonic() - started
    nginx = _nginx_binary()
    ports = _ports(ctx)
    for name, port in ports.items():
        if port_open(port):
            raise ServiceError(
                f"port {port} ({name}) on {HOST} is taken by another process; "
                f"set IMGSTORE_NGINX_{name.upper()}_PORT to a free port"
            )
    (ctx.dir / "www" / "images").mkdir(parents=True, exist_ok=True)
    tls = make_certificates(ctx.path("tls"))
    conf = ctx.path("nginx.conf")
    conf.write_text(render_config(ctx, ports, tls))
    run(
        [nginx, "-t", "-q", "-c", str(conf), "-p", str(ctx.dir), "-e", str(ctx.path("error.log"))],
        "nginx -t",
    )
    ctx.start(
        "nginx", [nginx, "-c", str(conf), "-p", str(ctx.dir), "-e", str(ctx.path("error.log"))]
    )
    http = f"http://{HOST}:{ports['http']}"
    https = f"https://{TLS_HOST}:{ports['https']}"
    wait_for_http(ctx, "nginx", f"{http}/healthz", ok=[200])
    wait_for_http(ctx, "nginx", f"{https}/healthz", ok=[200], cafile=tls["ca"])
    return {
        "http_url": http,
        "https_url": https,
        "https_ip_url": f"https://{HOST}:{ports['https']}",
        "badname_url": f"https://{TLS_HOST}:{ports['badname']}",
        "ports": ports,
        "ca_file": tls["ca"],
        "docroot": str(ctx.dir / "www" / "images"),
        "max_redirect_chain": MAX_REDIRECT_CHAIN,
        "config_digest": file_digest(conf),
        "installed_packages": installed,
        "install_seconds": round(install_seconds, 3),
    }


def check(ctx: Context, details: dict[str, Any]) -> bool:
    """Whether the running nginx has the wanted ports and answers."""
    try:
        if details.get("ports") != _ports(ctx):
            return False
        wait_for_http(ctx, "nginx", f"{details['http_url']}/healthz", timeout=3, ok=[200])
    except (ServiceError, KeyError):
        return False
    return True


def down(ctx: Context) -> None:
    """Stop nginx (SIGTERM to the master we started; it stops its workers)."""
    ctx.stop("nginx")
