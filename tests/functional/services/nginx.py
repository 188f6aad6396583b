"""nginx from Debian: the HTTP origin of the ``http`` driver's tests, and the TLS
terminator in front of radosgw and the Swift proxy.

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
* ``IMGSTORE_NGINX_RGW_HTTPS_PORT`` (18445) - HTTPS (same certificate as 18443) proxied
  to radosgw of the ``ceph`` server (``IMGSTORE_CEPH_RGW_PORT``, 17480): its S3 and Swift APIs
* ``IMGSTORE_NGINX_SWIFT_HTTPS_PORT`` (18446) - HTTPS proxied to the proxy server of the
  ``swift`` server (``IMGSTORE_SWIFT_PROXY_PORT``, 18090): tempauth, Swift API, s3api

The two proxying ports stream both ways (no request or response buffering, no
body size limit, HTTP/1.1 to the server, one connection per request), keep the
client's ``Host`` (S3 signatures cover it; tempauth builds the storage URL from
it) and every other header, and turn an ``http://`` ``X-Storage-Url`` into
``https://`` (tempauth only knows the scheme it was reached by), so a Swift
client stays on https. nginx is started before ``ceph`` and ``swift`` and does
not depend on them: until a server is up its port answers 502.

The first three ports serve these paths:

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

Details: ``http_url``, ``https_url`` (``localhost``), ``https_ip_url``,
``badname_url``, ``rgw_https_url``, ``swift_https_url`` and
``swift_https_auth_url`` (tempauth v1 through nginx), ``ca_file`` (the CA that
signed every certificate here), ``wrong_ca_file`` (another CA, which signed
none: a client given it must refuse every port), ``docroot``, ``ports``,
``upstreams`` (the radosgw and Swift proxy ports behind 18445 and 18446).
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
DEFAULT_RGW_HTTPS_PORT = 18445
DEFAULT_SWIFT_HTTPS_PORT = 18446
# the servers behind the proxying ports: (server, port variable suffix, default), the
# defaults being those of services/ceph.py (radosgw) and services/swift.py (proxy)
UPSTREAMS = {
    "rgw_https": ("ceph", "RGW_PORT", 17480),
    "swift_https": ("swift", "PROXY_PORT", 18090),
}
PROXY_TIMEOUT = 300  # s without a byte either way before nginx gives up on a request
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
        "rgw_https": ctx.port("RGW_HTTPS_PORT", DEFAULT_RGW_HTTPS_PORT),
        "swift_https": ctx.port("SWIFT_HTTPS_PORT", DEFAULT_SWIFT_HTTPS_PORT),
    }
    if len(set(ports.values())) != len(ports):
        raise ServiceError(f"nginx ports must differ: {ports}")
    return ports


def _upstreams() -> dict[str, int]:
    """The ports of radosgw and the Swift proxy, read as ceph.py and swift.py read them."""
    return {
        name: Context(server).port(suffix, default)
        for name, (server, suffix, default) in UPSTREAMS.items()
    }


def _openssl(*args: str) -> None:
    run(["openssl", *args], "openssl " + args[0])


def make_certificates(tls: Path) -> dict[str, str]:
    """A CA and two server certificates (right and wrong host name) in ``tls``, and another CA
    that signed nothing here (``wrong_ca``); reused if fresh."""
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
    wrong_ca = tls / "wrong-ca.pem"
    if not wrong_ca.exists() or time.time() - wrong_ca.stat().st_mtime >= CERT_MAX_AGE:
        # its key is thrown away: it exists only to be the wrong CA for a client
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "30",
            "-keyout", "/dev/null", "-out", str(wrong_ca),
            "-subj", "/CN=imgstore wrong test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
    return {**{k: str(v) for k, v in files.items()}, "wrong_ca": str(wrong_ca)}


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


def _proxy_block(port: int, upstream: int, tls: dict[str, str]) -> str:
    """An HTTPS server on ``port`` that streams every request to ``127.0.0.1:upstream``."""
    return f"""    server {{
        listen {HOST}:{port} ssl;
        server_name _;
        ssl_certificate {tls["cert"]};
        ssl_certificate_key {tls["key"]};
        ssl_protocols TLSv1.2 TLSv1.3;
        client_max_body_size 0;
        location / {{
            # no URI part: the request URI goes upstream exactly as the client sent it
            proxy_pass http://{HOST}:{upstream};
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_max_temp_file_size 0;
            proxy_read_timeout {PROXY_TIMEOUT}s;
            proxy_send_timeout {PROXY_TIMEOUT}s;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_hide_header X-Storage-Url;
            add_header X-Storage-Url $imgstore_https_storage_url always;
        }}
    }}"""


def render_config(
    ctx: Context, ports: dict[str, int], tls: dict[str, str], upstreams: dict[str, int]
) -> str:
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
    # tempauth's X-Storage-Url has the scheme it was reached by (http): the client's is https
    map $upstream_http_x_storage_url $imgstore_https_storage_url {{
        "~^http://(?<rest>.*)$" https://$rest;
        default $upstream_http_x_storage_url;
    }}
{_server_block(ports["http"], ports, None, d / "www")}
{_server_block(ports["https"], ports, tls, d / "www")}
{_server_block(ports["badname"], ports, bad_tls, d / "www")}
{_proxy_block(ports["rgw_https"], upstreams["rgw_https"], tls)}
{_proxy_block(ports["swift_https"], upstreams["swift_https"], tls)}
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
    upstreams = _upstreams()
    conf = ctx.path("nginx.conf")
    conf.write_text(render_config(ctx, ports, tls, upstreams))
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
    proxies = {name: f"https://{TLS_HOST}:{ports[name]}" for name in UPSTREAMS}
    for url in proxies.values():
        # any answer proves the TLS listener (502 while the server behind it is down)
        wait_for_http(ctx, "nginx", f"{url}/", ok=range(200, 600), cafile=tls["ca"])
    return {
        "http_url": http,
        "https_url": https,
        "https_ip_url": f"https://{HOST}:{ports['https']}",
        "badname_url": f"https://{TLS_HOST}:{ports['badname']}",
        "rgw_https_url": proxies["rgw_https"],
        "swift_https_url": proxies["swift_https"],
        "swift_https_auth_url": f"{proxies['swift_https']}/auth/v1.0",
        "ports": ports,
        "upstreams": upstreams,
        "ca_file": tls["ca"],
        "wrong_ca_file": tls["wrong_ca"],
        "docroot": str(ctx.dir / "www" / "images"),
        "max_redirect_chain": MAX_REDIRECT_CHAIN,
        "config_digest": file_digest(conf),
        "installed_packages": installed,
        "install_seconds": round(install_seconds, 3),
    }


def check(ctx: Context, details: dict[str, Any]) -> bool:
    """Whether the running nginx has the wanted ports and answers."""
    try:
        if details.get("ports") != _ports(ctx) or details.get("upstreams") != _upstreams():
            return False
        wait_for_http(ctx, "nginx", f"{details['http_url']}/healthz", timeout=3, ok=[200])
    except (ServiceError, KeyError):
        return False
    return True


def down(ctx: Context) -> None:
    """Stop nginx (SIGTERM to the master we started; it stops its workers)."""
    ctx.stop("nginx")
