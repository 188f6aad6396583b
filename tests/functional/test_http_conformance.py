"""The HTTP driver against a real nginx (plain and TLS), started by tests.functional.services.

Bring nginx up first: ``.venv/bin/python -m tests.functional.services up nginx``.
Images are "seeded" by copying bytes into nginx's docroot and returning the URL.
Only the truncated-body, retry and stall tests use a small fault-injecting
server (see :class:`FaultServer`), for faults nginx cannot produce on demand.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgstore import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    BadLocation,
    NotFound,
    NotSupported,
    ReadOnlyStore,
    Stores,
)
from imgstore.capabilities import Capability
from imgstore.testing import ReadConformanceTests, StoreUnderTest
from tests.functional.cutting_proxy import CuttingProxy

pytestmark = pytest.mark.functional

ALLOW_LOOPBACK = "127.0.0.0/8"
MiB = 1 << 20


def make_stores(tmp_path: Path, options: dict[str, Any], name: str = "web") -> Stores:
    """Stores with one http backend ``name`` configured with ``options`` (multi-store form)."""
    lines = [
        "[DEFAULT]",
        f"enabled_backends = {name}:http",
        "[glance_store]",
        f"default_backend = {name}",
        f"[{name}]",
        *(f"{k} = {v}" for k, v in options.items()),
    ]
    conf = tmp_path / f"imgstore-{uuid.uuid4().hex[:8]}.conf"
    conf.write_text("\n".join(lines) + "\n")
    return Stores.from_config_files(conf)


@pytest.fixture(scope="module")
def docroot(nginx: dict[str, Any]) -> Iterator[Path]:
    """A private directory inside nginx's docroot, removed afterwards."""
    sub = f"t-{uuid.uuid4().hex[:12]}"
    path = Path(nginx["docroot"]) / sub
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def put(docroot: Path, data: bytes, name: str | None = None) -> str:
    """Write ``data`` into the docroot; return its path below /images/."""
    name = name or uuid.uuid4().hex
    (docroot / name).write_bytes(data)
    return f"{docroot.name}/{name}"


def with_password(url: str) -> tuple[str, str]:
    """``url`` with a fresh ``reader:<password>@`` user-info, and the password."""
    password = "pw-" + uuid.uuid4().hex
    scheme, rest = url.split("://", 1)
    return f"{scheme}://reader:{password}@{rest}", password


def seeder(base: str, docroot: Path, prefix: str = "images") -> Callable[[str, bytes], str]:
    def seed(image_id: str, data: bytes) -> str:
        return f"{base}/{prefix}/{put(docroot, data, image_id)}"

    return seed


# -- the read side of the conformance suite -----------------------------------


class TestHttpConformance(ReadConformanceTests):
    """Plain HTTP, default options (4 MiB chunks), with credentials in the URLs.

    Glance databases hold image URLs with ``user:password@`` in them; nginx
    ignores the Basic auth header they produce, but the password is a real
    secret the suite checks never leaks into logs, messages or reprs.
    """

    @pytest.fixture
    def store_under_test(
        self, nginx: dict[str, Any], docroot: Path, tmp_path: Path
    ) -> Iterator[StoreUnderTest]:
        base, password = with_password(nginx["http_url"])
        with make_stores(tmp_path, {"http_allowed_networks": ALLOW_LOOPBACK}) as stores:
            yield StoreUnderTest(
                stores=stores, backend="web", seed=seeder(base, docroot), secrets=[password]
            )


class TestHttpsConformance(ReadConformanceTests):
    """HTTPS to 127.0.0.1 with the harness's CA, 64 KiB chunks."""

    @pytest.fixture
    def store_under_test(
        self, nginx: dict[str, Any], docroot: Path, tmp_path: Path
    ) -> Iterator[StoreUnderTest]:
        options = {
            "http_allowed_networks": ALLOW_LOOPBACK,
            "https_ca_certificates_file": nginx["ca_file"],
            "http_chunk_size": 65536,
        }
        base, password = with_password(nginx["https_ip_url"])
        with make_stores(tmp_path, options) as stores:
            yield StoreUnderTest(
                stores=stores, backend="web", seed=seeder(base, docroot), secrets=[password]
            )


class TestHttpsRedirectedConformance(ReadConformanceTests):
    """HTTPS by host name (localhost), every read through a chain of 3 redirects."""

    @pytest.fixture
    def store_under_test(
        self, nginx: dict[str, Any], docroot: Path, tmp_path: Path
    ) -> Iterator[StoreUnderTest]:
        options = {
            "http_allowed_networks": "localhost",
            "https_ca_certificates_file": nginx["ca_file"],
            "http_chunk_size": 65536,
        }
        base, password = with_password(nginx["https_url"])
        with make_stores(tmp_path, options) as stores:
            yield StoreUnderTest(
                stores=stores,
                backend="web",
                seed=seeder(base, docroot, prefix="redirect/3"),
                secrets=[password],
            )


def proxy_options(proxy: dict[str, Any], password: str | None = None) -> dict[str, Any]:
    password = proxy["password"] if password is None else password
    url = proxy["proxy_url"].replace("http://", f"http://{proxy['user']}:{password}@")
    return {"http_proxy_information": f"http:{url}, https:{url}"}


class TestHttpViaProxyConformance(ReadConformanceTests):
    """Plain HTTP through tinyproxy with Basic auth; the proxy password is the secret."""

    @pytest.fixture
    def store_under_test(
        self, nginx: dict[str, Any], tinyproxy: dict[str, Any], docroot: Path, tmp_path: Path
    ) -> Iterator[StoreUnderTest]:
        options = {"http_allowed_networks": ALLOW_LOOPBACK, **proxy_options(tinyproxy)}
        with make_stores(tmp_path, options) as stores:
            yield StoreUnderTest(
                stores=stores,
                backend="web",
                secrets=[tinyproxy["password"]],
                seed=seeder(nginx["http_url"], docroot),
            )


class TestHttpsViaProxyConformance(ReadConformanceTests):
    """HTTPS tunnelled (CONNECT) through tinyproxy, by host name, 64 KiB chunks."""

    @pytest.fixture
    def store_under_test(
        self, nginx: dict[str, Any], tinyproxy: dict[str, Any], docroot: Path, tmp_path: Path
    ) -> Iterator[StoreUnderTest]:
        options = {
            "http_allowed_networks": "localhost",
            "https_ca_certificates_file": nginx["ca_file"],
            "http_chunk_size": 65536,
            **proxy_options(tinyproxy),
        }
        with make_stores(tmp_path, options) as stores:
            yield StoreUnderTest(
                stores=stores,
                backend="web",
                secrets=[tinyproxy["password"]],
                seed=seeder(nginx["https_url"], docroot),
            )


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_proxy_wrong_password(
    nginx: dict[str, Any],
    tinyproxy: dict[str, Any],
    image: str,
    tmp_path: Path,
    scheme: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-proxy-pw-123"
    options = {
        "http_allowed_networks": "127.0.0.0/8, localhost",
        "https_ca_certificates_file": nginx["ca_file"],
        "http_retries": 0,
        **proxy_options(tinyproxy, wrong),
    }
    with make_stores(tmp_path, options) as s:
        url = f"{nginx[scheme + '_url']}/images/{image}"
        with pytest.raises(AuthenticationFailed, match=r"proxy.*refused") as info:
            s.get(url)
        assert wrong not in str(info.value) and wrong not in repr(info.value)
        assert wrong not in repr(s.describe())
    assert wrong not in caplog.text


def test_proxy_does_not_bypass_the_guard(
    nginx: dict[str, Any], tinyproxy: dict[str, Any], image: str, tmp_path: Path
) -> None:
    """The proxy may reach 127.0.0.1, but the target is still checked first."""
    with make_stores(tmp_path, proxy_options(tinyproxy)) as s:
        with pytest.raises(BadLocation, match="loopback"):
            s.get(f"{nginx['http_url']}/images/{image}")


# -- driver behaviour against nginx -----------------------------------------------


@pytest.fixture
def stores(nginx: dict[str, Any], tmp_path: Path) -> Iterator[Stores]:
    options = {
        "http_allowed_networks": f"{ALLOW_LOOPBACK}, localhost",
        "https_ca_certificates_file": nginx["ca_file"],
        "http_retries": 1,
        "http_retry_backoff": 0.01,
    }
    with make_stores(tmp_path, options) as s:
        yield s


DATA = bytes(range(256)) * 400 + b"tail"


@pytest.fixture(scope="module")
def image(docroot: Path) -> str:
    return put(docroot, DATA)


def test_capabilities_and_read_only(stores: Stores, nginx: dict[str, Any], image: str) -> None:
    assert stores.capabilities("web") == Capability.READ | Capability.READ_RANDOM
    with pytest.raises(ReadOnlyStore):
        stores.add("some-image", b"data", size=4)
    with pytest.raises(ReadOnlyStore):
        stores.delete(f"{nginx['http_url']}/images/{image}")


@pytest.mark.parametrize("hops", [1, 5])
def test_redirect_chain_within_limit(
    stores: Stores, nginx: dict[str, Any], image: str, hops: int
) -> None:
    for base in (nginx["http_url"], nginx["https_url"]):
        url = f"{base}/redirect/{hops}/{image}"
        assert stores.size(url) == len(DATA)
        assert stores.get(url).read_all() == DATA
        assert stores.get(url, offset=7, length=9).read_all() == DATA[7:16]


@pytest.mark.parametrize("code", [301, 307, 308])
def test_redirect_codes(stores: Stores, nginx: dict[str, Any], image: str, code: int) -> None:
    url = f"{nginx['http_url']}/redirect{code}/{image}"
    assert stores.get(url).read_all() == DATA
    assert stores.size(url) == len(DATA)


def test_redirect_limit(stores: Stores, nginx: dict[str, Any], image: str) -> None:
    with pytest.raises(BackendError, match="more than 5 redirects"):
        stores.get(f"{nginx['http_url']}/redirect/6/{image}")
    with pytest.raises(BackendError, match="more than 5 redirects"):
        stores.size(f"{nginx['https_url']}/redirect/6/{image}")
    with pytest.raises(BackendError, match="redirects"):
        stores.get(f"{nginx['http_url']}/loop/{image}")


def test_redirect_limit_is_configurable(nginx: dict[str, Any], image: str, tmp_path: Path) -> None:
    options = {"http_allowed_networks": ALLOW_LOOPBACK, "http_max_redirects": 8}
    with make_stores(tmp_path, options) as s:
        assert s.get(f"{nginx['http_url']}/redirect/8/{image}").read_all() == DATA
        with pytest.raises(BackendError, match="more than 8 redirects"):
            s.get(f"{nginx['http_url']}/redirect/9/{image}")
    options = {"http_allowed_networks": ALLOW_LOOPBACK, "http_max_redirects": 0}
    with make_stores(tmp_path, options) as s:
        assert s.size(f"{nginx['http_url']}/images/{image}") == len(DATA)
        with pytest.raises(BackendError, match="more than 0 redirects"):
            s.size(f"{nginx['http_url']}/redirect/1/{image}")


def test_https_to_http_redirect_refused(stores: Stores, nginx: dict[str, Any], image: str) -> None:
    url = f"{nginx['https_url']}/to-http/{image}"
    with pytest.raises(BadLocation, match="from https to http"):
        stores.get(url)
    with pytest.raises(BadLocation, match="from https to http"):
        stores.size(url)


def test_http_to_https_redirect_followed(stores: Stores, nginx: dict[str, Any], image: str) -> None:
    assert stores.get(f"{nginx['http_url']}/to-https/{image}").read_all() == DATA


def test_redirect_target_is_checked_by_the_guard(
    nginx: dict[str, Any], image: str, tmp_path: Path
) -> None:
    """Only the host name 'localhost' is allowed: its redirect to 127.0.0.1 is refused."""
    options = {"http_allowed_networks": "localhost", "https_ca_certificates_file": nginx["ca_file"]}
    with make_stores(tmp_path, options) as s:
        assert s.get(f"{nginx['https_url']}/images/{image}").read_all() == DATA
        with pytest.raises(BadLocation, match="loopback"):
            s.get(f"http://localhost:{nginx['ports']['http']}/to-http/{image}")
        with pytest.raises(BadLocation, match="loopback"):
            s.get(f"{nginx['http_url']}/images/{image}")


def test_ssrf_guard_refuses_loopback_by_default(
    nginx: dict[str, Any], image: str, tmp_path: Path
) -> None:
    with make_stores(tmp_path, {}) as s:
        for url in (
            f"{nginx['http_url']}/images/{image}",
            f"http://2130706433:{nginx['ports']['http']}/images/{image}",
            f"http://0x7f.1:{nginx['ports']['http']}/images/{image}",
            f"https://localhost:{nginx['ports']['https']}/images/{image}",
        ):
            with pytest.raises(BadLocation, match="loopback"):
                s.get(url)
            with pytest.raises(BadLocation, match="loopback"):
                s.size(url)


def test_ranged_reads(stores: Stores, nginx: dict[str, Any], image: str) -> None:
    url = f"{nginx['http_url']}/images/{image}"
    n = len(DATA)
    for offset, length in [(0, 1), (1, 255), (255, 2), (n - 1, None), (n - 4, 100), (n, None)]:
        end = None if length is None else offset + length
        reader = stores.get(url, offset=offset, length=length)
        assert reader.size == len(DATA[offset:end])
        assert reader.read_all() == DATA[offset:end]


def test_range_ignored_is_a_clear_error(stores: Stores, nginx: dict[str, Any], image: str) -> None:
    url = f"{nginx['http_url']}/norange/{image}"
    assert stores.get(url).read_all() == DATA  # whole reads work there
    with pytest.raises(NotSupported, match="ignored the Range header"):
        stores.get(url, offset=10, length=5)


def test_size_falls_back_to_get_when_head_is_refused(
    stores: Stores, nginx: dict[str, Any], image: str
) -> None:
    assert stores.size(f"{nginx['http_url']}/nohead/{image}") == len(DATA)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (404, NotFound),
        (410, NotFound),
        (401, AuthenticationFailed),
        (403, AuthenticationFailed),
        (500, BackendUnavailable),
        (502, BackendUnavailable),
        (503, BackendUnavailable),
    ],
)
def test_status_mapping(
    stores: Stores, nginx: dict[str, Any], code: int, error: type[Exception]
) -> None:
    url = f"{nginx['http_url']}/status/{code}"
    with pytest.raises(error):
        stores.get(url)
    with pytest.raises(error):
        stores.size(url)


def test_missing_image(stores: Stores, nginx: dict[str, Any]) -> None:
    with pytest.raises(NotFound):
        stores.size(f"{nginx['https_url']}/images/no-such-image")


def test_tls_untrusted_ca(nginx: dict[str, Any], image: str, tmp_path: Path) -> None:
    """Without our CA the certificate is not trusted, even though REQUESTS_CA_BUNDLE may be set."""
    with make_stores(tmp_path, {"http_allowed_networks": ALLOW_LOOPBACK}) as s:
        with pytest.raises(BackendError, match=r"TLS failure.*certificate verify failed"):
            s.get(f"{nginx['https_ip_url']}/images/{image}")


def test_tls_wrong_host_name(stores: Stores, nginx: dict[str, Any], image: str) -> None:
    with pytest.raises(BackendError, match=r"TLS failure.*[Hh]ostname mismatch"):
        stores.get(f"{nginx['badname_url']}/images/{image}")


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_insecure_skips_verification(
    nginx: dict[str, Any], image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # even with the environment pointing at our CA, verify=False must hold per request
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", nginx["ca_file"])
    options = {"http_allowed_networks": ALLOW_LOOPBACK, "https_insecure": True}
    with make_stores(tmp_path, options) as s:
        assert s.get(f"{nginx['badname_url']}/images/{image}").read_all() == DATA


def test_environment_ca_bundle_is_ignored(
    nginx: dict[str, Any], image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REQUESTS_CA_BUNDLE naming our CA must not make an unconfigured store trust it."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", nginx["ca_file"])
    with make_stores(tmp_path, {"http_allowed_networks": ALLOW_LOOPBACK}) as s:
        with pytest.raises(BackendError, match="TLS failure"):
            s.get(f"{nginx['https_ip_url']}/images/{image}")


def test_credentials_in_url_never_shown(
    stores: Stores, nginx: dict[str, Any], image: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "pa55-w0rd-xyz"
    base = nginx["http_url"].replace("http://", f"http://reader:{secret}@")
    url = f"{base}/redirect/2/{image}"
    reader = stores.get(url)
    assert reader.read_all() == DATA
    texts = [repr(reader), repr(stores.driver("web").parse(url)), stores.driver("web").parse(url)
             .redacted()]  # fmt: skip
    failing: list[tuple[str, type[Exception]]] = [
        (f"{base}/status/503", BackendUnavailable),
        (f"{base}/images/missing", NotFound),
        (f"{base}/norange/{image}", NotSupported),
    ]
    for bad, expected in failing:  # each fails as it must; then its text is checked
        with pytest.raises(expected) as info:
            stores.get(bad, offset=1, length=2)
        texts += [str(info.value), repr(info.value)]
    texts.append(caplog.text)
    assert any("***@" in t for t in texts)
    for text in texts:
        assert secret not in text


# -- faults nginx cannot produce: a small fault-injecting server -----------------


class FaultServer:
    """A FAKE HTTP server on 127.0.0.1 for faults the real nginx cannot produce on demand.

    ``script`` is a list of raw responses (bytes), one per connection, in order;
    after the list is exhausted the last one repeats. ``None`` means: accept,
    read the request, send nothing and hold the connection (a stalled server).
    """

    def __init__(self, script: list[bytes | None]) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                request = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in request:
                        data = conn.recv(65536)
                        if not data:
                            break
                        request += data
                self.requests.append(request)
                answer = self.script[min(len(self.requests) - 1, len(self.script) - 1)]
                if answer is None:
                    self._stop.wait(3)
                    continue
                with contextlib.suppress(OSError):
                    conn.sendall(answer)

    def url(self, path: str = "/image") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def fault_stores(tmp_path: Path) -> Iterator[Stores]:
    options = {
        "http_allowed_networks": ALLOW_LOOPBACK,
        "http_retries": 2,
        "http_retry_backoff": 0.01,
        "http_read_timeout": 1,
        "http_connect_timeout": 1,
    }
    with make_stores(tmp_path, options) as s:
        yield s


def _response(status: str, body: bytes, length: int | None = None, extra: str = "") -> bytes:
    length = len(body) if length is None else length
    head = f"HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n{extra}\r\n"
    return head.encode() + body


def test_body_cut_short_is_a_clear_error(fault_stores: Stores) -> None:
    """A connection that ends mid-body is worth another try (BackendUnavailable), not an
    integrity failure; without a validator (ETag, Last-Modified) it is not resumed."""
    server = FaultServer([_response("200 OK", b"x" * 5000, length=10000)])
    try:
        reader = fault_stores.get(server.url())
        assert reader.size == 10000
        with pytest.raises(BackendUnavailable, match="5000 of 10000"):
            reader.read_all()
        ranged = _response(
            "206 Partial Content", b"y" * 10, length=100, extra="Content-Range: bytes 5-104/200\r\n"
        )
        server.script = [ranged]
        with pytest.raises(BackendUnavailable, match="10 of 100"):
            fault_stores.get(server.url(), offset=5, length=100).read_all()
        assert len(server.requests) == 2, "nothing to resume by: no second request"
    finally:
        server.close()


@pytest.fixture
def cut_nginx(nginx: dict[str, Any], docroot: Path, tmp_path: Path) -> Iterator[Any]:
    """``make(resumes, cuts, after) -> (stores, url, path, data, proxy)``: an image in
    nginx's docroot, read through a CuttingProxy that cuts the first ``cuts`` responses
    after ``after`` bytes."""
    proxies: list[CuttingProxy] = []
    opened: list[Stores] = []
    port = int(nginx["http_url"].rsplit(":", 1)[1].split("/", 1)[0])

    def make(
        resumes: int, cuts: int, after: int = 2 * MiB
    ) -> tuple[Stores, str, Path, bytes, CuttingProxy]:
        data = os.urandom(12 * MiB)
        name = uuid.uuid4().hex
        put(docroot, data, name)
        proxy = CuttingProxy(port, after=after, cuts=cuts)
        proxies.append(proxy)
        options = {"http_allowed_networks": ALLOW_LOOPBACK, "http_read_resumes": resumes}
        stores = make_stores(tmp_path, options)
        opened.append(stores)
        url = f"http://127.0.0.1:{proxy.port}/images/{docroot.name}/{name}"
        return stores, url, docroot / name, data, proxy

    yield make
    for stores in opened:
        stores.close()
    for proxy in proxies:
        proxy.close()


def test_a_download_cut_twice_is_resumed_from_nginx(cut_nginx: Any) -> None:
    stores, url, _path, data, proxy = cut_nginx(resumes=3, cuts=2)
    with stores.get(url, hash_algo="sha256") as reader:
        assert reader.read_all() == data
    assert proxy.cut == 2
    ranged = stores.get(url, offset=MiB + 5, length=6 * MiB).read_all()
    assert ranged == data[MiB + 5 : 7 * MiB + 5]


def test_a_download_cut_more_often_than_it_may_resume_fails(cut_nginx: Any) -> None:
    stores, url, _path, _data, proxy = cut_nginx(resumes=1, cuts=2)
    with pytest.raises(BackendUnavailable, match=r"(closed the connection after|sent) \d+ of"):
        stores.get(url).read_all()
    assert proxy.cut == 2


def test_a_download_is_not_resumed_into_a_changed_image(cut_nginx: Any) -> None:
    """The file is replaced between the cut and the resume: nginx's ETag (mtime and size)
    changes, and the read fails instead of splicing two images. The cut comes after the
    first 4 MiB chunk, which the test takes before it replaces the file."""
    stores, url, path, data, proxy = cut_nginx(resumes=3, cuts=1, after=6 * MiB)
    with stores.get(url) as reader, pytest.raises(BackendError, match="changed while"):
        for number, _chunk in enumerate(reader):
            if number == 0:  # the first response is still open on the old file
                replacement = path.with_name(path.name + ".new")
                replacement.write_bytes(os.urandom(len(data) + 1))
                os.replace(replacement, path)
    assert proxy.cut == 1


def test_server_errors_are_retried_a_bounded_number_of_times(fault_stores: Stores) -> None:
    server = FaultServer([_response("503 Service Unavailable", b"busy")])
    try:
        with pytest.raises(BackendUnavailable, match="3 attempt"):
            fault_stores.size(server.url())
        assert len(server.requests) == 3  # 1 + http_retries
    finally:
        server.close()


def test_a_retry_can_succeed(fault_stores: Stores) -> None:
    ok = _response("200 OK", b"hello world")
    server = FaultServer([_response("502 Bad Gateway", b""), _response("500 Oops", b""), ok])
    try:
        assert fault_stores.get(server.url()).read_all() == b"hello world"
        assert len(server.requests) == 3
    finally:
        server.close()


def test_stalled_server_times_out(fault_stores: Stores) -> None:
    server = FaultServer([None])
    try:
        with pytest.raises(BackendUnavailable, match="attempt"):
            fault_stores.size(server.url())
    finally:
        server.close()


def test_connection_refused_is_unavailable(fault_stores: Stores) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendUnavailable, match="refused"):
        fault_stores.size(f"http://127.0.0.1:{port}/image")


def test_range_answered_with_another_range_is_an_error(fault_stores: Stores) -> None:
    wrong = _response("206 Partial Content", b"z" * 10, extra="Content-Range: bytes 0-9/100\r\n")
    server = FaultServer([wrong])
    try:
        with pytest.raises(BackendError, match="different range"):
            fault_stores.get(server.url(), offset=50, length=10)
    finally:
        server.close()


def test_redirect_to_forbidden_address_is_refused(fault_stores: Stores) -> None:
    """The allow-list covers 127/8 only: a redirect to the metadata address is refused."""
    server = FaultServer(
        [_response("302 Found", b"", extra="Location: http://169.254.169.254/latest/\r\n")]
    )
    try:
        with pytest.raises(BadLocation, match="link-local"):
            fault_stores.get(server.url())
    finally:
        server.close()


# -- DNS is resolved once; the checked address is the one connected to ----------


def test_no_dns_rebinding_gap(
    nginx: dict[str, Any], image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that first resolves to an allowed address, then to a forbidden one."""
    real = socket.getaddrinfo
    calls: list[str] = []

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".rebind.test"):
            calls.append(host)
            target = "127.0.0.1" if len(calls) == 1 else "10.1.2.3"
            return real(target, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    options = {"http_allowed_networks": ALLOW_LOOPBACK}
    with make_stores(tmp_path, options) as s:
        port = nginx["ports"]["http"]
        url = f"http://images.rebind.test:{port}/images/{image}"
        assert s.get(url).read_all() == DATA  # checked 127.0.0.1 and connected there
        assert calls == ["images.rebind.test"]
        # a new connection resolves again, and is checked again
        s.driver("web").session.close()
        with pytest.raises(BadLocation, match=r"10\.1\.2\.3"):
            s.size(url)


def test_tls_checks_the_name_not_the_pinned_address(
    nginx: dict[str, Any], image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connecting to the pinned IP must still verify the certificate against the URL's name."""
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "other-name.rebind.test":
            return real("127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    options = {
        "http_allowed_networks": ALLOW_LOOPBACK,
        "https_ca_certificates_file": nginx["ca_file"],
    }
    with make_stores(tmp_path, options) as s:
        with pytest.raises(BackendError, match=r"[Hh]ostname mismatch"):
            s.get(f"https://other-name.rebind.test:{nginx['ports']['https']}/images/{image}")


def test_harness_details(nginx: dict[str, Any]) -> None:
    assert os.path.isfile(nginx["ca_file"])
    assert nginx["pids"]
