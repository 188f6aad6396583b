"""The read-only HTTP driver (``http://`` and ``https://`` locations).

Reads images from any web server, as glance_store's http store did:

* ``get`` streams the body; an ``offset``/``length`` read sends one ``Range``
  request. The driver declares READ_RANDOM; a server that ignores ``Range``
  (answers 200 with the whole body) makes a ranged read fail with
  :class:`NotSupported` rather than downloading and discarding everything
  before the offset.
* ``size`` comes from ``HEAD``, falling back to a ``GET``'s Content-Length
  when HEAD is refused or carries no length.
* Redirects are followed by the driver itself: at most
  ``http_max_redirects`` (default 5), never from https to http, and every hop
  passes the SSRF guard (:mod:`imgstore.network_guard`).
* TLS is verified by default (``https_ca_certificates_file`` for a private CA,
  ``https_insecure`` to turn checks off); ``verify=`` is passed on every
  request, and the session ignores the environment (``REQUESTS_CA_BUNDLE``,
  ``HTTP_PROXY``, ``.netrc``): only ``http_proxy_information`` configures proxies.
* Statuses map as for every driver (:func:`imgstore.exceptions.for_status`);
  429/5xx and connection errors are retried ``http_retries`` times with
  backoff (:mod:`imgstore.backoff`) before any byte of the body is returned;
  a body cut short is :class:`BackendUnavailable`, resumed by the core
  (``http_read_resumes``) when the version (strong ETag, else Last-Modified
  and length) is the same. A TLS failure (untrusted certificate, wrong host
  name) -> :class:`BackendError`, not retried.
* ``add``/``delete`` -> :class:`ReadOnlyStore` (raised by the core because
  the driver does not declare WRITE/DELETE).

A URL may carry ``user:password@``: it is sent as HTTP Basic auth to that
origin only (dropped when a redirect leaves it), and never appears in logs,
errors or reprs (``Location.redacted()`` hides it).

Without a proxy the driver connects to the very addresses the guard checked
(a pinned connection that keeps the Host header and TLS host-name check for
the URL's name). Through a proxy, the target's addresses are checked but the
proxy resolves the name itself; restrict what the proxy may reach.
"""

from __future__ import annotations

import logging
import re
import socket
import urllib.parse
from collections.abc import Iterator
from typing import Any

import requests
import requests.adapters
from oslo_config import cfg
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util import connection as urllib3_connection

from imgstore.backoff import Backoff, retry
from imgstore.config import read_option_file
from imgstore.driver import (
    DEFAULT_CHUNK_SIZE,
    Driver,
    ReadStream,
    clamp_range,
    read_resumes_option,
    retries_option,
    timeout_option,
)
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    BadConfiguration,
    BadLocation,
    NotFound,
    NotSupported,
    for_status,
)
from imgstore.location import Location, redact_uri, register, shown, unsafe, urlsplit
from imgstore.network_guard import NetworkGuard

LOG = logging.getLogger(__name__)

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)
_MAX_BACKOFF = 30.0


class _Retryable(Exception):
    """A request's outcome worth another try (its text says which)."""


@register
class HttpLocation(Location):
    """``http://[user:password@]host[:port]/path[?query]`` (and ``https://``)."""

    schemes = ("http", "https")

    def __init__(self, uri: str) -> None:
        if not isinstance(uri, str):
            raise BadLocation("an http location must be a string")
        if unsafe(uri):
            raise BadLocation(f"http location with spaces or control characters: {shown(uri)!r}")
        parts = urlsplit(uri)
        if parts.scheme.lower() not in self.schemes:
            raise BadLocation(f"not an http(s) location: {shown(uri)!r}")
        if not parts.hostname:
            raise BadLocation(f"http location without a host: {shown(uri)!r}")
        self.uri = uri
        self.parts = parts

    @classmethod
    def from_uri(cls, uri: str) -> HttpLocation:
        return cls(uri)

    def to_uri(self) -> str:
        return self.uri

    @property
    def scheme(self) -> str:
        return self.parts.scheme.lower()


def _strip_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without user-info, and the (user, password) it carried."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    return clean, (urllib.parse.unquote(user), urllib.parse.unquote(password))


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


# -- connections pinned to the addresses the guard checked --------------------


def _pinned_new_conn(conn: HTTPConnection, guard: NetworkGuard) -> socket.socket:
    """Connect to one of the guard-checked addresses of ``conn.host``."""
    addresses = guard.resolve(conn.host, conn.port)
    error: Exception | None = None
    for address in addresses:
        try:
            return urllib3_connection.create_connection(
                (address, conn.port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            error = ConnectTimeoutError(
                conn, f"connection to {conn.host} timed out (connect timeout={conn.timeout})"
            )
            error.__cause__ = exc
        except OSError as exc:
            error = NewConnectionError(conn, f"failed to establish a new connection: {exc}")
    assert error is not None
    raise error


def _pinned_pool_classes(guard: NetworkGuard) -> dict[str, type[HTTPConnectionPool]]:
    class PinnedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _pinned_new_conn(self, guard)

    class PinnedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _pinned_new_conn(self, guard)

    class PinnedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = PinnedHTTPConnection

    class PinnedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = PinnedHTTPSConnection

    return {"http": PinnedHTTPConnectionPool, "https": PinnedHTTPSConnectionPool}


class GuardedAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose direct connections go only to guard-checked addresses."""

    def __init__(self, guard: NetworkGuard, **kwargs: Any) -> None:
        self._guard = guard
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pinned_pool_classes(self._guard)

    def __getstate__(self) -> dict[str, Any]:  # pragma: no cover - pickling is not supported
        raise TypeError("GuardedAdapter cannot be pickled")


# -- the driver ------------------------------------------------------------------


def _validator(response: requests.Response | None) -> str | None:
    """What tells this version of the image from another: the strong ETag, else the
    Last-Modified date with the length (a weak ETag promises no byte equality)."""
    if response is None:
        return None
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    modified = response.headers.get("Last-Modified")
    if not modified:
        return None
    _first, _last, total = _content_range(response)
    return f"{modified}; {total if total is not None else response.headers.get('Content-Length')}"


class HttpStream(ReadStream):
    """The body of one GET response, streamed without decoding; a body cut short is
    :class:`BackendUnavailable` (the core resumes it where the version allows).

    ``skip``: bytes of the body before the ``size`` bytes to yield, for a server that
    ignored ``Range`` and sent the whole file (the rest of the body is not read)."""

    def __init__(
        self, response: requests.Response | None, size: int, chunk_size: int, describe: str,
        skip: int = 0,
    ) -> None:  # fmt: skip
        self._response = response
        self.size = size
        self._chunk_size = chunk_size
        self._describe = describe
        self._skip = skip
        self.version = _validator(response)

    def __iter__(self) -> Iterator[bytes]:
        if self._response is None or self.size == 0:
            return
        received = 0  # bytes of the image
        seen = 0  # bytes of the body, when skipping
        try:
            for chunk in self._response.raw.stream(self._chunk_size, decode_content=False):
                if self._skip:
                    start = max(0, self._skip - seen)
                    seen += len(chunk)
                    chunk = chunk[start : start + self.size - received]
                received += len(chunk)
                if chunk:
                    yield chunk
                if self._skip and received == self.size:
                    return
        except ReadTimeoutError:
            raise BackendUnavailable(
                f"{self._describe}: the server stopped sending after {received} of "
                f"{self.size} bytes (read timeout)"
            ) from None
        except (ProtocolError, OSError, requests.RequestException) as exc:
            raise BackendUnavailable(
                f"{self._describe}: the server closed the connection after {received} of "
                f"{self.size} bytes ({type(exc).__name__})"
            ) from None

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None


class HttpDriver(Driver):
    """Reads images from web servers; read-only."""

    name = "http"
    location_class = HttpLocation

    @classmethod
    def options(cls) -> list[cfg.Opt]:
        return [
            cfg.BoolOpt(
                "https_insecure",
                default=False,
                help="Do not verify the server's TLS certificate (only for tests; "
                "anybody on the path can then change the image).",
            ),
            cfg.StrOpt(
                "https_ca_certificates_file",
                help="CA bundle (PEM) used to verify HTTPS servers, instead of the "
                "default bundle of the requests library.",
            ),
            cfg.DictOpt(
                "http_proxy_information",
                default={},
                secret=True,  # a proxy URL may carry user:password@
                help="Proxies by URL scheme, e.g. 'http:http://proxy:3128, "
                "https:http://proxy:3128'. Environment proxy variables are ignored.",
            ),
            cfg.IntOpt(
                "http_max_redirects",
                default=5,
                min=0,
                help="Redirects followed per request at most; https->http is never followed.",
            ),
            timeout_option("http_connect_timeout", 10.0, "to connect"),
            timeout_option("http_read_timeout", 60.0),
            retries_option("http_retries"),
            read_resumes_option("http_read_resumes"),
            cfg.FloatOpt(
                "http_retry_backoff",
                default=0.5,
                min=0,
                help="Longest wait before the first retry; doubled for each next one (max 30). "
                "Each wait is drawn at random below its bound (full jitter).",
            ),
            cfg.ListOpt(
                "http_allowed_networks",
                default=[],
                help="Networks (CIDR) and host names that may be reached although they "
                "are loopback, private, link-local... By default such targets are refused "
                "(SSRF protection) for the URL and every redirect.",
            ),
            cfg.IntOpt(
                "http_chunk_size",
                default=DEFAULT_CHUNK_SIZE,
                min=4096,
                help="Bytes per chunk when streaming a body.",
            ),
        ]

    def configure(self) -> None:
        conf = self.conf
        ca_file = conf.https_ca_certificates_file
        if ca_file:  # readable: opened, not read
            read_option_file(self.backend, "https_ca_certificates_file", ca_file, lambda f: None)
        self.verify: bool | str = False if conf.https_insecure else (ca_file or True)
        if conf.https_insecure:
            LOG.warning("backend %r: TLS certificates are not verified", self.backend)
        self.proxies: dict[str, str] = {}
        for scheme, proxy in (conf.http_proxy_information or {}).items():
            scheme = scheme.strip().lower()
            if scheme not in ("http", "https") or not re.match(r"^[a-z][a-z0-9+.-]*://", proxy):
                raise BadConfiguration(
                    f"backend {self.backend!r}: http_proxy_information needs "
                    f"'http:<proxy URL>' or 'https:<proxy URL>' entries, not {scheme!r}"
                )
            self.proxies[scheme] = proxy.strip()
        self.max_redirects = int(conf.http_max_redirects)
        self.timeout = (float(conf.http_connect_timeout), float(conf.http_read_timeout))
        self.retries = int(conf.http_retries)
        self.read_resumes = int(conf.http_read_resumes)
        self.backoff = float(conf.http_retry_backoff)
        self.chunk_size = int(conf.http_chunk_size)
        self.guard = NetworkGuard(conf.http_allowed_networks or [])
        session = requests.Session()
        session.trust_env = False  # no env proxies, CA bundle or .netrc credentials
        adapter = GuardedAdapter(self.guard, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self.session = session

    def secrets(self) -> list[str]:
        found = []
        for proxy in self.proxies.values():
            _clean, auth = _strip_userinfo(proxy)
            if auth and auth[1]:
                found.append(auth[1])
        return found

    def close(self) -> None:
        self.session.close()

    # -- requests --------------------------------------------------------

    def _request(
        self, method: str, url: str, headers: dict[str, str], auth: tuple[str, str] | None
    ) -> requests.Response:
        """One request, tried again (``http_retries``, with backoff) after a connection or
        proxy failure, 429 or 5xx; an imgstore error for what is not worth another try."""
        shown = redact_uri(url)
        if self.proxies:  # the proxy resolves the name; check what it would reach
            _scheme, host, port = _origin(url)
            self.guard.resolve(host, port)

        def once() -> requests.Response:
            try:
                response = self.session.request(
                    method, url, headers=headers, auth=auth, stream=True, allow_redirects=False,
                    timeout=self.timeout, proxies=self.proxies,
                    verify=self.verify,  # per request: REQUESTS_CA_BUNDLE must not override it
                )  # fmt: skip
            except requests.exceptions.SSLError as exc:
                raise BackendError(
                    f"TLS failure talking to {shown}: {_reason(exc)}; check the server "
                    "certificate, or set https_ca_certificates_file to the CA that signed it"
                ) from None
            except requests.exceptions.ProxyError as exc:
                reason = _reason(exc)
                if re.search(r"\b40[17]\b", reason):
                    raise AuthenticationFailed(
                        f"{method} {shown}: the proxy refused our credentials ({reason}); "
                        "check http_proxy_information"
                    ) from None
                raise _Retryable(f"proxy error: {reason}") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise _Retryable(f"{type(exc).__name__}: {_reason(exc)}") from None
            except requests.RequestException as exc:
                raise BackendError(f"{method} {shown} failed: {_reason(exc)}") from None
            if for_status(response.status_code) is BackendUnavailable:
                response.close()
                raise _Retryable(f"HTTP {response.status_code}")
            return response

        def log_retry(attempt: int, exc: BaseException) -> None:
            LOG.info("%s %s: %s; retry %d", method, shown, exc, attempt)

        try:
            return retry(
                once, self.retries + 1, Backoff(self.backoff, _MAX_BACKOFF), _Retryable,
                on_retry=log_retry,
            )  # fmt: skip
        except _Retryable as exc:
            raise BackendUnavailable(
                f"{method} {shown} failed after {self.retries + 1} attempt(s): {exc}"
            ) from None

    def _send(
        self, method: str, location: HttpLocation, headers: dict[str, str]
    ) -> requests.Response:
        """Send ``method`` to ``location`` following redirects by our rules; the last response."""
        url, auth = _strip_userinfo(location.uri)
        origin = _origin(url)
        headers = {"Accept-Encoding": "identity", **headers}
        hops = 0
        while True:
            LOG.debug("%s %s", method, redact_uri(url))
            response = self._request(method, url, headers, auth if _origin(url) == origin else None)
            target = response.headers.get("Location")
            if response.status_code not in REDIRECT_CODES or not target:
                return response
            response.close()
            if hops >= self.max_redirects:
                raise BackendError(
                    f"{location.redacted()}: more than {self.max_redirects} redirects "
                    "(http_max_redirects)"
                )
            hops += 1
            new_url, new_auth = _strip_userinfo(urllib.parse.urljoin(url, target))
            scheme = urllib.parse.urlsplit(new_url).scheme.lower()
            if scheme not in ("http", "https"):
                raise BadLocation(
                    f"{location.redacted()} redirects to a {scheme!r} URL; only http(s) is followed"
                )
            if urllib.parse.urlsplit(url).scheme.lower() == "https" and scheme == "http":
                raise BadLocation(
                    f"{location.redacted()} redirects from https to http "
                    f"({redact_uri(new_url)}); refused"
                )
            if new_auth is not None:
                auth, origin = new_auth, _origin(new_url)
            url = new_url  # GET and HEAD stay what they are on every redirect code

    def _check_status(self, response: requests.Response, location: HttpLocation) -> None:
        code = response.status_code
        if 200 <= code < 300:
            return
        response.close()
        cls = for_status(code)
        if cls is NotFound:
            raise NotFound(f"no image at {location.redacted()} (HTTP {code})")
        if cls is AuthenticationFailed:
            who = "the proxy" if code == 407 else "the server"
            if self.proxies and code != 407:
                who = "the server (or the proxy)"
            raise AuthenticationFailed(f"{location.redacted()}: {who} refused access (HTTP {code})")
        raise cls(f"{location.redacted()}: unexpected HTTP {code} {response.reason}")

    # -- operations ------------------------------------------------------

    def size(self, location: Location) -> int:
        assert isinstance(location, HttpLocation)
        response = self._send("HEAD", location, {})
        try:
            if response.status_code not in (405, 501):
                self._check_status(response, location)
                length = content_length(response)
                if length is not None:
                    return length
        finally:
            response.close()
        LOG.debug("HEAD gave no size for %s; asking GET", location.redacted())
        response = self._send("GET", location, {})
        try:
            self._check_status(response, location)
            length = content_length(response)
        finally:
            response.close()
        if length is None:
            raise BackendError(f"{location.redacted()}: the server does not announce the size")
        return length

    def open(self, location: Location, offset: int, length: int | None) -> ReadStream:
        assert isinstance(location, HttpLocation)
        describe = location.redacted()
        if length == 0:
            clamp_range(self.size(location), offset, 0)  # InvalidArgument past the end
            return HttpStream(None, 0, self.chunk_size, describe)
        ranged = offset != 0 or length is not None
        headers = {}
        if ranged:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        response = self._send("GET", location, headers)
        try:
            if ranged:
                size = self._ranged_size(response, location, offset, length)
            else:
                self._check_status(response, location)
                announced = content_length(response)
                size = self.size(location) if announced is None else announced
        except BaseException:
            response.close()
            raise
        if size == 0:
            response.close()
            return HttpStream(None, 0, self.chunk_size, describe)
        return HttpStream(response, size, self.chunk_size, describe)

    def _ranged_size(
        self, response: requests.Response, location: HttpLocation, offset: int, length: int | None
    ) -> int:
        code = response.status_code
        if code == 416:
            total = _content_range(response)[2]
            if total is None:
                total = self.size(location)
            clamp_range(total, offset, length)  # raises InvalidArgument past the end
            return 0  # offset == total: an empty read
        if code == 200:
            raise NotSupported(
                f"{location.redacted()}: the server ignored the Range header (answered with "
                "the whole image), so a ranged read is not possible there; read the whole "
                "image instead"
            )
        self._check_status(response, location)
        if code != 206:
            raise BackendError(f"{location.redacted()}: unexpected HTTP {code} to a Range request")
        first, last, _total = _content_range(response)
        if first is None or last is None or first != offset or last < first:
            raise BackendError(
                f"{location.redacted()}: the server answered the Range request for bytes "
                f"{offset}- with a different range ({response.headers.get('Content-Range')!r})"
            )
        count = last - first + 1
        if length is not None and count > length:
            raise BackendError(
                f"{location.redacted()}: the server sent {count} bytes for a {length}-byte range"
            )
        return count


def content_length(response: requests.Response) -> int | None:
    """The body's length as the response announces it (None: not told, or chunked)."""
    value = response.headers.get("Content-Length")
    if value is None or "Transfer-Encoding" in response.headers:
        return None
    try:
        length = int(value.strip())
    except ValueError:
        return None
    return length if length >= 0 else None


def _content_range(response: requests.Response) -> tuple[int | None, int | None, int | None]:
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if match is None:
        return None, None, None
    first, last, total = match.groups()
    return (
        int(first) if first is not None else None,
        int(last) if last is not None else None,
        int(total) if total not in (None, "*") else None,
    )


def _reason(exc: BaseException) -> str:
    """A short, credential-free reason for a requests/urllib3 error."""
    inner: BaseException = exc
    for _ in range(5):
        arg = inner.args[0] if inner.args else None
        reason = getattr(arg, "reason", None) or getattr(inner, "reason", None)
        if isinstance(reason, BaseException) and reason is not inner:
            inner = reason
        elif isinstance(arg, BaseException) and arg is not inner:
            inner = arg
        else:
            break
    text = str(inner)
    if isinstance(inner, NewConnectionError):
        text = text.split(": ", 1)[-1]
    text = re.sub(r"://[^/@\s]*@", "://***@", text)
    return text[:300]
