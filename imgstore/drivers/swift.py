"""The OpenStack Swift driver (``swift://``, ``swift+http(s)://``, ``swift+config://``).

Built on python-swiftclient. Options keep glance_store's names
(``swift_store_auth_address``, ``swift_store_container``...), so an existing
``[glance_store]`` section works unchanged.

* **auth**: v1 (tempauth, radosgw) with ``swift_store_user = account:user``;
  Keystone v3 (and v2, untested) with ``swift_store_user = project:user``
  plus the domain options. Credentials may come from
  ``swift_store_config_file`` (glance_store's ``swift.conf`` with named
  references, ``default_swift_reference`` chooses one). A token is shared by
  all requests of a backend; a 401 makes swiftclient authenticate again and
  repeat the request, so a token that expires in the middle of a segmented
  upload costs one re-authentication, not the upload. Swift checks a token
  when a request starts, so one that expires while a body flows does no
  harm; but a streaming PUT cannot be repeated (its body is the caller's
  stream, read once), so it logs in again just before it starts, never with
  a shared token that may have expired since the last request (Keystone
  hands out a new token; tempauth the same one while it lives). With the
  caller's token (multi-tenant) no new login is possible: an expired one is
  :class:`AuthenticationFailed`.
* **multi-tenant** (``swift_store_multi_tenant = True``): no configured
  credentials; the caller gives a token and a storage URL, or its Keystone
  service catalog, per operation::

      drv = stores.driver("swift")
      with drv.credentials(token=request_token, catalog=request_catalog):
          stores.add(image_id, data)

  Each image gets a container of its own (``<container>_<id>``, glance_store's
  layout), removed with it; :meth:`SwiftDriver.set_acls` shares it with other
  projects (Swift container ACLs). A location naming another storage URL is
  followed only to an object-store endpoint of the caller's catalog (or the
  endpoint of the storage URL it gave): a crafted location never carries the
  caller's token to another host (:mod:`imgstore.drivers.swift_endpoints`).

  :meth:`SwiftDriver.credentials` is a context manager (a ``contextvars``
  variable, so it follows the calling thread or task); an operation captures
  the credentials when it starts. Locations then name the storage URL
  (``swift+https://host/v1/AUTH_project/container/object``), as
  glance_store's multi-tenant store wrote them; reads and deletes go to that
  storage URL with the caller's token. The same context manager also works
  in single-tenant mode, to act for another account.
* **add**: an image of known size below ``swift_store_large_object_size`` and
  not above the cluster's ``max_file_size`` is one streaming PUT (its last
  chunk is held back until commit, so the object never appears early). Larger
  images, and images of unknown size that outgrow one segment, become a Static
  Large Object: segments of ``swift_store_large_object_chunk_size`` upload on
  ``swift_store_thread_pools`` threads while the next one fills
  (back-pressure: at most threads + 1 segment buffers per add), then the
  manifest is PUT. ``swift_store_large_object_type = dlo`` writes a Dynamic
  Large Object instead (``X-Object-Manifest``, for old readers). Segment
  names are ``<object>-<nonce>-<n:05d>`` in the image's container (the nonce
  keeps two racing writers of one id apart). Any failure deletes every
  segment written. The object is created with ``If-None-Match: *`` (after a
  HEAD), so an existing image is never overwritten: :class:`Duplicate`. That
  object carries the writer's random token (``X-Object-Meta-Imgstore-Writer``):
  when the server stored it but answered an error (a retry then meets it, 412),
  the writer knows it for its own and the add succeeds. The single streaming PUT
  is not retried (its body cannot be sent again); segments and manifests are.
* **the cluster's limits** come from ``GET /info`` (swiftclient's
  ``get_capabilities``), asked once per cluster and kept by the driver:
  ``swift.max_file_size`` (the largest object, so also the largest segment) and
  ``slo.max_manifest_segments``. When ``/info`` is disabled or unreadable,
  Swift's defaults hold (5 GiB + 2 bytes, 1000 segments). A segment is never
  larger than ``max_file_size``; for a known size the segment size grows (to
  ``ceil(size / max_manifest_segments)``, rounded up to a MiB) so that an SLO
  stays within the manifest limit, and an image that cannot fit even in segments
  of ``max_file_size`` is :class:`InvalidArgument` before anything is written;
  for an unknown size the segment size doubles every tenth of the limit (never
  above ``max_file_size``) and an image that outgrows even that is
  :class:`InvalidArgument` with every segment deleted. A DLO has no manifest
  limit (the ``dlo`` filter pages through the container listing): its segments
  keep their size, up to the 99,999 of the five-digit segment numbers.
* **get**: a streaming GET; an offset/length read sends ``Range``
  (READ_RANDOM). When the connection drops mid-body, the core asks again
  for the rest with ``Range`` (up to ``swift_store_retry_get_count`` times,
  with backoff) and checks the ETag (the stream's version) did not change, so
  the caller gets exactly the bytes of the image.
* **large objects of glance_store**: a DLO manifest (``X-Object-Manifest``,
  ``<obj>-00001`` segments) is read like any object; ``delete`` removes the
  manifest and then every segment under its prefix, and an SLO's manifest
  and then the segments it lists.
* **locations** never carry credentials. glance_store's old form
  ``swift://account:user:key@auth/container/object`` is still read (the
  credentials are dropped: the configured ones are used) and redacted.
* errors: 404 -> :class:`NotFound`, 401/403 and refused logins ->
  :class:`AuthenticationFailed`, 5xx and connection failures (after
  swiftclient's retries) -> :class:`BackendUnavailable`; a server certificate
  that fails verification (``swift_store_cacert``) -> :class:`BackendError`
  saying so, naming the server. No key or token reaches a log record, message
  or repr.
"""

from __future__ import annotations

import configparser
import contextlib
import contextvars
import dataclasses
import datetime
import json
import logging
import re
import secrets as secrets_mod
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any, NoReturn

from oslo_config import cfg

from imgstore import keystone_catalog, telemetry
from imgstore.backoff import Backoff, retry
from imgstore.capabilities import Capability
from imgstore.driver import (
    IMAGE_ID_RE,
    Driver,
    Leftover,
    ReadStream,
    WriteLimits,
    Writer,
    Written,
    clamp_range,
    read_resumes_option,
    tls_verify_failure,
)
from imgstore.drivers.swift_endpoints import StorageEndpoints
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    BadConfiguration,
    BadLocation,
    Duplicate,
    ImgstoreError,
    InvalidArgument,
    NotFound,
    StorageFull,
    for_status,
)
from imgstore.location import Location, quote_path, redact_uri, register, unquote_path
from imgstore.parallel import BoundedUploader, BufferPool, piece_size
from imgstore.streaming import FedRequest, SizedFedBody

LOG = logging.getLogger(__name__)

MiB = 1 << 20
READ_CHUNK_SIZE = 1 * MiB
MAX_SEGMENTS = 1000
"""Swift's default ``max_manifest_segments`` for an SLO."""
MAX_FILE_SIZE = 5 * 1024 * MiB + 2
"""Swift's default ``max_file_size``: the largest object, and so the largest segment."""
MAX_DLO_SEGMENTS = 99_999
"""Five-digit segment numbers keep a DLO's listing order right."""
WRITER_HEADER = "X-Object-Meta-Imgstore-Writer"
"""A random token of the writer, on the object that makes the image (PUT or manifest):
when the server stored it but its answer was lost, the writer knows the object is its own."""
GROWTH_EVERY = 100
"""Unknown size: the segment size doubles after every this many segments (a tenth of
``max_manifest_segments`` for an SLO: 100 at Swift's default; always 100 for a DLO)."""
SCHEMES = ("swift", "swift+http", "swift+https", "swift+config")


# -- locations ----------------------------------------------------------------


@register
class SwiftLocation(Location):
    """``swift+http(s)://<auth address or storage URL>/<container>/<object>``.

    ``swift+config://<reference>/<container>/<object>`` names a reference of
    ``swift_store_config_file``; ``swift://`` is https (as in glance_store).
    """

    schemes = SCHEMES

    def __init__(self, scheme: str, prefix: str, container: str, obj: str) -> None:
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            raise BadLocation(f"not a swift scheme: {scheme!r}")
        for what, value in (("address", prefix), ("container", container), ("object", obj)):
            if not value or any(c.isspace() or ord(c) < 32 or c in "?#@" for c in value):
                raise BadLocation(f"swift location has a missing or malformed {what}")
        if "/" in container or "/" in obj or obj in (".", ".."):
            raise BadLocation("swift location container and object cannot contain '/'")
        try:  # to_uri() percent-encodes these; a lone surrogate has no bytes to encode
            container.encode("utf-8", "surrogateescape")
            obj.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise BadLocation("swift location container and object must be UTF-8 text") from None
        if prefix.endswith("/"):  # from_uri strips it: the URI would not read back equal
            raise BadLocation("swift location address cannot end with '/'")
        if scheme == "swift+config" and "/" in prefix:
            raise BadLocation("a swift+config location names a reference, not a path")
        self._scheme = scheme
        self.prefix = prefix
        self.container = container
        self.obj = obj

    @property
    def image_id(self) -> str:
        """The object name (the image id for images imgstore or glance_store wrote)."""
        return self.obj

    @property
    def reference(self) -> str | None:
        """The ``swift_store_config_file`` reference of a ``swift+config`` location."""
        return self.prefix if self._scheme == "swift+config" else None

    @property
    def url(self) -> str | None:
        """The http(s) URL of the prefix (auth address or storage URL); None for swift+config."""
        if self._scheme == "swift+config":
            return None
        proto = "http" if self._scheme == "swift+http" else "https"
        return f"{proto}://{self.prefix}"

    @classmethod
    def from_uri(cls, uri: str) -> SwiftLocation:
        shown = redact_uri(uri)[:200]
        scheme, sep, rest = uri.partition("://")
        if not sep or "://" in rest:
            raise BadLocation(f"malformed swift location {shown!r}")
        _creds, at, tail = rest.rpartition("@")
        if at:  # glance_store's old user:key@ form: the credentials are dropped
            rest = tail
        if "?" in rest or "#" in rest:
            raise BadLocation(f"swift locations take no query or fragment: {shown!r}")
        parts = rest.split("/")
        if len(parts) < 3:
            raise BadLocation(
                f"malformed swift location {shown!r}: expected swift://address/container/object"
            )
        obj, container = unquote_path(parts[-1]), unquote_path(parts[-2])
        prefix = "/".join(parts[:-2]).rstrip("/")
        try:
            return cls(scheme, prefix, container, obj)
        except BadLocation as exc:
            raise BadLocation(f"{exc}: {shown!r}") from None

    def to_uri(self) -> str:
        return f"{self._scheme}://{self.prefix}/{quote_path(self.container)}/{quote_path(self.obj)}"


def _strip_scheme(url: str) -> tuple[str, str]:
    """``(scheme, rest)`` of an http(s) URL, rest without trailing '/'."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {redact_uri(url)!r}")
    return parts.scheme, (parts.netloc + parts.path).rstrip("/")


# -- credentials ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Account:
    """How to reach one Swift account: credentials to log in, or a token and storage URL."""

    auth_url: str | None = None
    user: str | None = None
    key: str | None = dataclasses.field(default=None, repr=False)
    auth_version: str = "1"
    os_options: tuple[tuple[str, str], ...] = ()
    storage_url: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False)
    reference: str | None = None
    trusted: tuple[str, ...] = dataclasses.field(default=(), compare=False)
    """With a caller's token: the storage URLs it may be sent to (swift_endpoints)."""

    def __repr__(self) -> str:
        where = self.storage_url or self.auth_url
        return f"<Account {self.user or 'token'} at {where}>"


_CONTEXT: contextvars.ContextVar[Account | None] = contextvars.ContextVar(
    "imgstore_swift_credentials", default=None
)


def _read_references(path: str) -> dict[str, dict[str, str]]:
    parser = configparser.RawConfigParser()
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as exc:
        raise BadConfiguration(f"cannot read swift_store_config_file {path}: {exc}") from None
    return {name: dict(parser.items(name)) for name in parser.sections()}


# -- the cluster's limits -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SwiftLimits:
    """What a Swift cluster takes, from its ``GET /info``, or Swift's defaults."""

    max_file_size: int = MAX_FILE_SIZE
    """The largest object (``swift.max_file_size``): a single PUT or one segment."""
    max_manifest_segments: int = MAX_SEGMENTS
    """The most segments an SLO manifest may name (``slo.max_manifest_segments``)."""
    source: str = "Swift's defaults"
    """Where the values come from (shown in messages)."""

    @classmethod
    def from_info(cls, info: Any) -> SwiftLimits:
        """The limits an ``/info`` document gives; Swift's defaults for what it lacks."""

        def positive(section: str, key: str, default: int) -> int:
            try:
                value = int(info[section][key])
            except (KeyError, TypeError, ValueError):
                return default
            return value if value > 0 else default

        return cls(
            max_file_size=positive("swift", "max_file_size", MAX_FILE_SIZE),
            max_manifest_segments=positive("slo", "max_manifest_segments", MAX_SEGMENTS),
            source="the cluster's GET /info",
        )

    def segment_limit(self, slo: bool) -> int:
        """The most segments of one large object: the manifest limit of an SLO; a DLO
        has none (its filter pages through the listing), only our five digits."""
        return self.max_manifest_segments if slo else MAX_DLO_SEGMENTS


def _cluster_key(account: Account) -> str:
    """The cluster an account is on (its storage URL without the account, or its login)."""
    if account.storage_url:
        parts = urllib.parse.urlsplit(account.storage_url)
        path = re.split(r"/v1(?:\.0)?(?:/|$)", parts.path, maxsplit=1)[0]
        return f"{parts.scheme}://{parts.netloc.lower()}{path}"
    return f"login {account.auth_url} {account.os_options}"


# -- errors --------------------------------------------------------------------------


def _segments_refused_the_token(exc: BaseException) -> bool:
    """Whether ``exc`` is an SLO manifest PUT refused (400) because the proxy's checks of
    the segments, made with the manifest's token, got 401: the token expired in between."""
    if _status(exc) != 400:
        return False
    content = getattr(exc, "http_response_content", b"") or b""
    text = content.decode(errors="replace") if isinstance(content, bytes) else str(content)
    return "401 Unauthorized" in text


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "http_status", None)
    if status is None:
        status = getattr(exc, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _is_http_error(exc: BaseException, *codes: int) -> bool:
    return _status(exc) in codes


_POOL_HOST_RE = re.compile(r"host='([^'\s]+)', port=(\d+)")


def _tls_server(exc: BaseException) -> str:
    """``https://host:port`` of the request that failed (never a path or credentials)."""
    url = getattr(getattr(exc, "request", None), "url", None)
    if isinstance(url, str):
        parts = urllib.parse.urlsplit(url)
        if parts.hostname:
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            port = f":{parts.port}" if parts.port else ""
            return f"{parts.scheme}://{host}{port}"
    match = _POOL_HOST_RE.search(str(exc))
    return f"https://{match.group(1)}:{match.group(2)}" if match else "the Swift server"


# -- the driver -------------------------------------------------------------------


class SwiftDriver(Driver):
    """Stores images as objects (or large objects) in Swift containers."""

    name = "swift"
    location_class = SwiftLocation
    capabilities = Capability.RW | Capability.READ_RANDOM

    @classmethod
    def options(cls) -> list[cfg.Opt]:
        return [
            cfg.StrOpt(
                "swift_store_auth_address",
                help="The auth URL: tempauth/radosgw http://host:port/auth/v1.0 (auth "
                "version 1) or Keystone http://host:5000/v3.",
            ),
            cfg.StrOpt(
                "swift_store_user",
                secret=False,
                help="'account:user' (auth 1) or 'project:user' (Keystone).",
            ),
            cfg.StrOpt("swift_store_key", secret=True, help="The user's key or password."),
            cfg.StrOpt(
                "swift_store_auth_version",
                default="3",
                choices=["1", "2", "3"],
                help="1: tempauth/radosgw; 3: Keystone v3 (2: Keystone v2, untested).",
            ),
            cfg.StrOpt(
                "swift_store_user_domain_name",
                default="Default",
                help="Keystone v3: the user's domain (when not in swift_store_config_file).",
            ),
            cfg.StrOpt(
                "swift_store_project_domain_name",
                default="Default",
                help="Keystone v3: the project's domain (when not in swift_store_config_file).",
            ),
            cfg.StrOpt(
                "swift_store_config_file",
                help="glance_store's swift.conf: [reference] sections with user, key, "
                "auth_address, auth_version and the domain options. When set, "
                "credentials come from the section named by default_swift_reference "
                "and locations are swift+config://<reference>/...",
            ),
            cfg.StrOpt(
                "default_swift_reference",
                default="ref1",
                help="The swift_store_config_file section to use for new images.",
            ),
            cfg.StrOpt("swift_store_container", default="glance", help="Container for images."),
            cfg.BoolOpt(
                "swift_store_create_container_on_put",
                default=False,
                help="Create the container on the first add when it does not exist.",
            ),
            cfg.IntOpt(
                "swift_store_multiple_containers_seed",
                default=0,
                min=0,
                max=32,
                help="When > 0, an image goes to '<container>_<first N characters of its "
                "id>' (needs swift_store_create_container_on_put).",
            ),
            cfg.IntOpt(
                "swift_store_large_object_size",
                default=5 * 1024,
                min=0,
                help="Images of known size below this many MiB are one object; larger "
                "ones, and images of unknown size larger than one segment, are large "
                "objects.",
            ),
            cfg.IntOpt(
                "swift_store_large_object_chunk_size",
                default=200,
                min=1,
                help="Segment size in MiB: grows by itself when an SLO would need more "
                "segments than the cluster's max_manifest_segments (1000 by default; "
                "read from GET /info); never above the cluster's max_file_size.",
            ),
            cfg.StrOpt(
                "swift_store_large_object_type",
                default="slo",
                choices=["slo", "dlo"],
                help="slo: Static Large Objects; dlo: Dynamic Large Objects, for readers "
                "that know only X-Object-Manifest.",
            ),
            cfg.IntOpt(
                "swift_store_thread_pools",
                default=4,
                min=1,
                help="Segments uploaded at once per add; memory per add is at most "
                "(this + 1) x the segment size.",
            ),
            cfg.BoolOpt(
                "swift_store_multi_tenant",
                default=False,
                help="Use the caller's token and storage URL (SwiftDriver.credentials) "
                "instead of configured credentials.",
            ),
            cfg.ListOpt(
                "swift_store_admin_tenants",
                default=[],
                help="Multi-tenant: projects given write access to every image's container "
                "(with the image's own write tenants) when its ACLs are set.",
            ),
            cfg.StrOpt("swift_store_cacert", help="CA bundle to verify https endpoints."),
            cfg.BoolOpt(
                "swift_store_auth_insecure",
                default=False,
                help="Do not verify the TLS certificates of the auth and Swift endpoints.",
            ),
            cfg.StrOpt("swift_store_region", help="Keystone: the region of the Swift endpoint."),
            cfg.StrOpt(
                "swift_store_endpoint_type",
                default="publicURL",
                choices=["publicURL", "adminURL", "internalURL"],
                help="Keystone: which endpoint of the catalog to use.",
            ),
            cfg.StrOpt(
                "swift_store_service_type",
                default="object-store",
                help="Keystone: the catalog's service type for Swift.",
            ),
            read_resumes_option("swift_store_retry_get_count", default=0),
            cfg.IntOpt(
                "swift_store_retries",
                default=3,
                min=0,
                help="Retries of failed requests (connection errors, 5xx), with backoff.",
            ),
            cfg.FloatOpt(
                "swift_store_timeout", default=60.0, min=0.1, help="Socket timeout, seconds."
            ),
        ]

    def configure(self) -> None:
        conf = self.conf
        self.multi_tenant = bool(conf.swift_store_multi_tenant)
        self.container: str = conf.swift_store_container
        if not self.container or "/" in self.container:
            raise BadConfiguration(f"backend {self.backend!r}: bad swift_store_container")
        self.seed = conf.swift_store_multiple_containers_seed
        self.create_container = bool(conf.swift_store_create_container_on_put)
        if self.seed and not self.create_container:
            raise BadConfiguration(
                f"backend {self.backend!r}: swift_store_multiple_containers_seed needs "
                "swift_store_create_container_on_put = True"
            )
        self.large_object_size = conf.swift_store_large_object_size * MiB
        self.segment_size = conf.swift_store_large_object_chunk_size * MiB
        self.slo = conf.swift_store_large_object_type == "slo"
        self.threads = conf.swift_store_thread_pools
        self.read_resumes = conf.swift_store_retry_get_count
        self.retries = conf.swift_store_retries
        self.timeout = conf.swift_store_timeout
        self.cacert = conf.swift_store_cacert or None
        self.insecure = bool(conf.swift_store_auth_insecure)
        self._secrets: list[str] = []
        self._accounts: dict[str, Account] = {}
        self._tokens: dict[Account, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._limits: dict[str, SwiftLimits] = {}
        self._containers_ready: set[tuple[str, str]] = set()
        self.reference: str | None = None
        self.account: Account | None = None
        if conf.swift_store_config_file:
            for name, section in _read_references(conf.swift_store_config_file).items():
                self._accounts[name] = self._account(
                    section.get("auth_address"),
                    section.get("user"),
                    section.get("key"),
                    section.get("auth_version", "3"),
                    section,
                    reference=name,
                )
            self.reference = conf.default_swift_reference
            if not self.multi_tenant:
                if self.reference not in self._accounts:
                    raise BadConfiguration(
                        f"backend {self.backend!r}: default_swift_reference "
                        f"{self.reference!r} is not a section of swift_store_config_file"
                    )
                self.account = self._accounts[self.reference]
        elif not self.multi_tenant:
            missing = [
                n
                for n in ("swift_store_auth_address", "swift_store_user", "swift_store_key")
                if not conf.get(n)
            ]
            if missing:
                raise BadConfiguration(f"backend {self.backend!r}: set {', '.join(missing)}")
            self.account = self._account(
                conf.swift_store_auth_address,
                conf.swift_store_user,
                conf.swift_store_key,
                conf.swift_store_auth_version,
                {
                    "user_domain_name": conf.swift_store_user_domain_name,
                    "project_domain_name": conf.swift_store_project_domain_name,
                },
            )
        try:
            import swiftclient  # type: ignore[import-untyped]  # noqa: F401
        except ImportError:
            raise BadConfiguration(
                "the swift driver needs python-swiftclient: pip install 'imgstore[swift]'"
            ) from None

    def _account(
        self,
        auth_url: str | None,
        user: str | None,
        key: str | None,
        version: str,
        extra: dict[str, str],
        reference: str | None = None,
    ) -> Account:
        where = f"backend {self.backend!r}" + (f" reference {reference!r}" if reference else "")
        if not auth_url or not user or not key:
            raise BadConfiguration(f"{where}: auth_address, user and key are all needed")
        version = str(version).strip().lstrip("v")
        if version in ("1.0", "1"):
            version = "1"
        elif version.startswith("2"):
            version = "2"
        elif version.startswith("3"):
            version = "3"
        else:
            raise BadConfiguration(f"{where}: unknown auth version {version!r}")
        try:
            _strip_scheme(auth_url)
        except ValueError:
            raise BadConfiguration(f"{where}: the auth address must be an http(s) URL") from None
        self._secrets.append(key)
        options: dict[str, str] = {}
        if version != "1":
            project, sep, name = user.partition(":")
            if not sep or not project or not name:
                raise BadConfiguration(f"{where}: the user must be 'project:user' for Keystone")
            user = name
            options["project_name"] = project
            options["tenant_name"] = project
            for opt in ("user_domain_name", "project_domain_name", "user_domain_id",
                        "project_domain_id"):  # fmt: skip
                if extra.get(opt):
                    options[opt] = extra[opt]
            conf = self.conf
            if conf.swift_store_region:
                options["region_name"] = conf.swift_store_region
            options["endpoint_type"] = conf.swift_store_endpoint_type
            options["service_type"] = conf.swift_store_service_type
        return Account(
            auth_url=auth_url.strip(),
            user=user,
            key=key,
            auth_version=version,
            os_options=tuple(sorted(options.items())),
            reference=reference,
        )

    def secrets(self) -> list[str]:
        with self._lock:
            tokens = [t for _, t in self._tokens.values()]
        ctx = _CONTEXT.get()
        return [*self._secrets, *tokens, *([ctx.token] if ctx and ctx.token else [])]

    def __repr__(self) -> str:
        return f"<SwiftDriver backend={self.backend!r} container={self.container!r}>"

    # -- multi-tenant --------------------------------------------------------

    @property
    def per_request(self) -> bool:
        """Multi-tenant: every operation acts with the caller's :meth:`credentials`."""
        return self.multi_tenant

    @contextlib.contextmanager
    def credentials(
        self,
        token: str,
        storage_url: str | None = None,
        *,
        project_id: str | None = None,
        catalog: list[dict[str, Any]] | None = None,
    ) -> Iterator[None]:
        """Act with ``token`` on the account at ``storage_url`` inside the ``with`` block.

        Without ``storage_url`` it is the caller's service ``catalog``'s object-store
        endpoint (``swift_store_service_type``, ``swift_store_endpoint_type``,
        ``swift_store_region``), as glance_store's multi-tenant store finds it. A
        location naming another storage URL is read only when that URL is one of the
        catalog's object-store endpoints (or on the same endpoint as ``storage_url``):
        the token goes nowhere else. ``project_id`` is accepted for callers that pass
        every driver the same arguments."""
        del project_id  # the storage URL names the account
        c = self.conf
        if not storage_url:
            storage_url = keystone_catalog.endpoint_url(
                catalog, c.swift_store_service_type, c.swift_store_endpoint_type,
                c.swift_store_region,
            )  # fmt: skip
            if storage_url is None:
                raise BadConfiguration(
                    f"backend {self.backend!r}: no storage URL was given and the caller's "
                    f"service catalog has no {c.swift_store_service_type!r} endpoint "
                    "(swift_store_service_type, swift_store_endpoint_type, swift_store_region)"
                )
        if not token:
            raise AuthenticationFailed(
                f"backend {self.backend!r} acts with the caller's credentials: a token is needed"
            )
        try:
            _strip_scheme(storage_url)
        except ValueError:
            raise InvalidArgument("the storage URL must be an http(s) URL") from None
        trusted = StorageEndpoints(
            [storage_url, *keystone_catalog.endpoint_urls(catalog, c.swift_store_service_type)]
        )
        account = Account(storage_url=storage_url.rstrip("/"), token=token, trusted=trusted.urls)
        reset = _CONTEXT.set(account)
        try:
            yield
        finally:
            _CONTEXT.reset(reset)

    def _current(self) -> Account:
        ctx = _CONTEXT.get()
        if ctx is not None:
            return ctx
        if self.account is None:
            raise AuthenticationFailed(
                f"backend {self.backend!r} is multi-tenant: call it inside "
                "SwiftDriver.credentials(token, storage_url)"
            )
        return self.account

    def _account_for(self, loc: SwiftLocation) -> Account:
        ctx = _CONTEXT.get()
        if ctx is not None:
            if loc.url is not None and loc.url.rstrip("/") != self._auth_prefix_url(loc):
                if loc.url != ctx.storage_url:
                    StorageEndpoints(ctx.trusted).check(loc.url)
                return dataclasses.replace(ctx, storage_url=loc.url)
            return ctx
        if loc.reference is not None and loc.reference in self._accounts:
            return self._accounts[loc.reference]
        return self._current()

    def _auth_prefix_url(self, loc: SwiftLocation) -> str:
        """The auth address a single-tenant location names (not a storage URL)."""
        acct = self.account
        return acct.auth_url.rstrip("/") if acct and acct.auth_url else ""

    # -- connections -----------------------------------------------------------

    def connection(self, account: Account, retries: int | None = None, fresh: bool = False) -> Any:
        """A new swiftclient Connection for ``account`` (one per thread; cheap).

        ``fresh``: do not start with the shared token; the connection logs in
        right before its first request (for a request that cannot be repeated).
        """
        from swiftclient import client as sc

        cached = self._tokens.get(account)
        kwargs: dict[str, Any] = {
            "retries": self.retries if retries is None else retries,
            "starting_backoff": 0.5,
            "max_backoff": 8,
            "timeout": self.timeout,
            "cacert": self.cacert,
            "insecure": self.insecure,
        }
        if account.token is not None:
            kwargs.update(preauthurl=account.storage_url, preauthtoken=account.token)
        else:
            kwargs.update(
                authurl=account.auth_url,
                user=account.user,
                key=account.key,
                auth_version=account.auth_version,
                os_options=dict(account.os_options),
            )
            if cached is not None and not fresh:
                kwargs.update(preauthurl=cached[0], preauthtoken=cached[1])
        return sc.Connection(**kwargs)

    def call(self, account: Account, doing: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``Connection.<method>(*args, **kwargs)`` with errors mapped."""
        conn = self.connection(account)
        try:
            return getattr(conn, method)(*args, **kwargs)
        except Exception as exc:
            raise self.map_error(exc, doing) from exc
        finally:
            self.remember(account, conn)
            conn.close()

    def remember(self, account: Account, conn: Any) -> None:
        """Keep the token ``conn`` obtained, for the next connections; count the tries
        swiftclient made again for its last request (imgstore.telemetry)."""
        telemetry.retried(int(getattr(conn, "attempts", 0) or 0) - 1)
        if account.token is None and conn.url and conn.token:
            with self._lock:
                self._tokens[account] = (conn.url, conn.token)

    def map_error(self, exc: BaseException, doing: str) -> ImgstoreError:
        """A swiftclient/keystone/requests exception as an imgstore exception."""
        if isinstance(exc, ImgstoreError):
            return exc
        status = _status(exc)
        reason = getattr(exc, "http_reason", "") or ""
        name = type(exc).__name__
        text = str(exc)  # the core scrubs the message
        if status is not None:
            cls = for_status(status)
            detail = {
                NotFound: "not found",
                AuthenticationFailed: f"refused ({status} {reason})".rstrip(),
                StorageFull: f"Swift has no room ({status} {reason})",
                Duplicate: "the object already exists",
            }.get(cls, f"Swift answered {status} {reason}".rstrip())
            return cls(f"{doing}: {detail}")
        if name in ("Unauthorized", "Forbidden", "AuthorizationFailure"):
            return AuthenticationFailed(f"{doing}: refused ({name})")
        if "Unauthorized" in text:
            return AuthenticationFailed(f"{doing}: the login was refused")
        tls = tls_verify_failure(exc)
        if tls is not None:
            return BackendError(
                f"{doing}: TLS certificate verification failed for {_tls_server(exc)} "
                f"({tls}); set swift_store_cacert to the CA that signed its certificate"
            )
        if isinstance(exc, OSError) or any(
            k in name
            for k in ("Connection", "Timeout", "ConnectFailure", "Protocol", "IncompleteRead")
        ):
            return BackendUnavailable(f"{doing}: {name}: {text}")
        return BackendError(f"{doing}: {name}: {text}")

    # -- locations -----------------------------------------------------------------

    def owns(self, location: Location) -> bool:
        if not isinstance(location, SwiftLocation):
            return False
        if self.multi_tenant or (_CONTEXT.get() is not None and location.reference is None):
            return True  # with the caller's credentials, any account may be named
        if location.reference is not None:
            return location.reference in self._accounts
        acct = self.account
        if acct is None or acct.auth_url is None:
            return False
        _scheme, prefix = _strip_scheme(acct.auth_url)
        return location.prefix.lower() == prefix.lower()

    def _checked(self, location: Location) -> SwiftLocation:
        if not isinstance(location, SwiftLocation):
            raise BadLocation(f"{location.redacted()} is not a swift location")
        return location

    def container_for(self, image_id: str) -> str:
        """The container an image goes to: multi-tenant, one of its own
        (``<container>_<id>``, glance_store's layout, so :meth:`set_acls` shares one
        image); otherwise the configured one (with the multiple-containers seed)."""
        if self.multi_tenant:
            return f"{self.container}_{image_id}"
        if self.seed:
            return f"{self.container}_{image_id[: self.seed]}"
        return self.container

    def _location(self, account: Account, container: str, obj: str) -> SwiftLocation:
        if account.token is not None and account.storage_url:
            scheme, prefix = _strip_scheme(account.storage_url)
            return SwiftLocation(f"swift+{scheme}", prefix, container, obj)
        if account.reference is not None:
            return SwiftLocation("swift+config", account.reference, container, obj)
        assert account.auth_url is not None
        scheme, prefix = _strip_scheme(account.auth_url)
        return SwiftLocation(f"swift+{scheme}", prefix, container, obj)

    # -- operations ----------------------------------------------------------------

    def _ensure_container(self, account: Account, container: str) -> None:
        key = (repr(account), container)
        if key in self._containers_ready:
            return
        if self.multi_tenant:  # a container per image: made by its add, removed with it
            self.call(account, f"creating container {container!r}", "put_container", container)
            return
        doing = f"checking container {container!r}"
        try:
            self.call(account, doing, "head_container", container)
        except NotFound:
            if not self.create_container:
                raise NotFound(
                    f"backend {self.backend!r}: container {container!r} does not exist; "
                    "create it or set swift_store_create_container_on_put"
                ) from None
            self.call(account, f"creating container {container!r}", "put_container", container)
            LOG.info("backend %r: created container %r", self.backend, container)
        self._containers_ready.add(key)

    def drop_image_container(self, account: Account, loc: SwiftLocation) -> None:
        """Remove the image's own container (multi-tenant) once it is empty; a container
        that still holds something (a racing add of the same id) stays."""
        if not self.multi_tenant or loc.container != self.container_for(loc.obj):
            return
        try:
            self.call(account, f"removing container {loc.container!r}", "delete_container",
                      loc.container)  # fmt: skip
        except ImgstoreError as exc:  # 409: not empty; 404: gone already
            if not (exc.__cause__ and _is_http_error(exc.__cause__, 404, 409)):
                LOG.warning("backend %r: %s", self.backend, exc)

    def set_acls(
        self,
        location: Location,
        public: bool = False,
        read_tenants: list[str] | None = None,
        write_tenants: list[str] | None = None,
    ) -> None:
        """Who may read and write a multi-tenant image: every project (``public``), the
        ``read_tenants``, and the ``write_tenants`` plus ``swift_store_admin_tenants``
        (Swift container ACLs on the image's own container, as glance_store sets them)."""
        loc = self._checked(location)
        if not self.multi_tenant:
            raise NotImplementedError("ACLs are kept only by a multi-tenant swift backend")
        account = self._account_for(loc)
        read = "*:*" if public else ",".join(f"{t}:*" for t in read_tenants or ())
        writers = [*(write_tenants or ()), *self.conf.swift_store_admin_tenants]
        headers = {
            "X-Container-Read": read,
            "X-Container-Write": ",".join(f"{t}:*" for t in writers),
        }
        self.call(account, f"setting the ACLs of {loc.redacted()}", "post_container",
                  loc.container, headers)  # fmt: skip

    def head(self, account: Account, container: str, obj: str, doing: str) -> dict[str, str]:
        """The object's headers; :class:`NotFound` when it is not there."""
        return dict(self.call(account, doing, "head_object", container, obj))

    def _exists(self, account: Account, container: str, obj: str, doing: str) -> bool:
        try:
            self.head(account, container, obj, doing)
        except NotFound:
            return False
        return True

    def written_by(self, account: Account, container: str, obj: str, token: str) -> bool:
        """Whether ``obj`` is there and was written by the writer with ``token`` (the server
        stored it, then its answer was an error or was lost, or our retry met our own object
        in its If-None-Match)."""
        try:
            headers = self.head(account, container, obj, f"checking {container}/{obj}")
        except ImgstoreError:
            return False
        return headers.get(WRITER_HEADER.lower()) == token

    def written_by_another(self, account: Account, container: str, obj: str, token: str) -> bool:
        """Whether ``obj`` is there now and was written by another writer than the one
        with ``token``: a PUT of ours that failed when the server had answered lost a race
        (a proxy in front of Swift, such as a TLS terminator, turns Swift's early 412
        into a 502 when Swift closes the connection before the body is in)."""
        try:
            headers = self.head(account, container, obj, f"checking {container}/{obj}")
        except ImgstoreError:
            return False
        return headers.get(WRITER_HEADER.lower()) != token

    def limits(self, account: Account) -> SwiftLimits:
        """The limits of ``account``'s cluster: ``GET /info`` the first time, then kept.

        When ``/info`` is disabled or unreadable (403 or another HTTP error, a body
        that is not JSON), Swift's defaults hold, and are kept unless the answer was a
        5xx other than 501 (asked again next time). A server that cannot be reached or
        verified, or a refused login, raises as the write would have.
        """
        key = _cluster_key(account)
        with self._lock:
            known = self._limits.get(key)
        if known is not None:
            return known
        doing = "reading the cluster's limits (GET /info) for a write"
        conn = self.connection(account)
        try:
            limits = SwiftLimits.from_info(conn.get_capabilities())
        except Exception as exc:
            status = _status(exc)
            error = self.map_error(exc, f"backend {self.backend!r}: {doing}")
            if (status is None and not isinstance(exc, ValueError)) or status == 401:
                raise error from exc  # unreachable, TLS, the login refused: not /info's fault
            LOG.info("%s; using Swift's default limits", error)
            why = status or type(exc).__name__
            limits = SwiftLimits(source=f"Swift's defaults (GET /info failed: {why})")
            if status is not None and status >= 500 and status != 501:
                return limits
        finally:
            self.remember(account, conn)
            conn.close()
        LOG.debug("backend %r: %s", self.backend, limits)
        with self._lock:
            self._limits[key] = limits
        return limits

    def write_limits(self) -> WriteLimits:
        limits = self.limits(self._current())
        most = "max_manifest_segments" if self.slo else "a DLO's five-digit segment numbers"
        return WriteLimits(
            largest_piece=limits.max_file_size,
            most_pieces=limits.segment_limit(self.slo),
            first_piece=self.segment_size,
            growth_every=None if self.slo else GROWTH_EVERY,
            pieces="segments",
            why=f"{most} and max_file_size, from {limits.source}; an image of unknown size "
            "starts with segments of swift_store_large_object_chunk_size",
        )

    def begin_write(self, image_id: str, size: int | None) -> Writer:
        account = self._current()
        container = self.container_for(image_id)
        location = self._location(account, container, image_id)
        limits = self.limits(account)
        largest = limits.max_file_size
        self._ensure_container(account, container)
        if self._exists(account, container, image_id, f"checking {location.redacted()}"):
            raise Duplicate(f"image {image_id} already exists in backend {self.backend!r}")
        if size is not None and size < self.large_object_size and size <= largest:
            return SwiftPutWriter(self, account, location, size)
        return SwiftSegmentWriter(self, account, location, size, limits)

    def open(self, location: Location, offset: int, length: int | None) -> ReadStream:
        loc = self._checked(location)
        account = self._account_for(loc)
        doing = f"reading {loc.redacted()}"
        if offset == 0 and length is None:
            stream = SwiftStream(self, account, loc, 0, None, doing)
        else:
            total = int(self.head(account, loc.container, loc.obj, doing)["content-length"])
            start, count = clamp_range(total, offset, length)
            stream = SwiftStream(self, account, loc, start, count, doing)
        stream.start()
        return stream

    def size(self, location: Location) -> int:
        loc = self._checked(location)
        headers = self.head(self._account_for(loc), loc.container, loc.obj,
                            f"sizing {loc.redacted()}")  # fmt: skip
        return int(headers["content-length"])

    def delete(self, location: Location) -> None:
        loc = self._checked(location)
        account = self._account_for(loc)
        doing = f"deleting {loc.redacted()}"
        headers = self.head(account, loc.container, loc.obj, doing)
        if str(headers.get("x-static-large-object", "")).lower() == "true":
            self._delete_slo(account, loc, doing)
            return
        segments: list[tuple[str, str]] = []
        if headers.get("x-object-manifest"):  # a DLO (glance_store's kind)
            seg_container, _, prefix = unquote_path(headers["x-object-manifest"]).partition("/")
            _, listing = self.call(
                account, doing, "get_container", seg_container, prefix=prefix, full_listing=True
            )
            segments = [
                (seg_container, o["name"])
                for o in listing
                if not (seg_container == loc.container and o["name"] == loc.obj)
            ]
        # the manifest first: a reader then sees NotFound, never a broken image. It was
        # there (HEAD): a 404 now is swiftclient's retry after an answer that was lost
        with contextlib.suppress(NotFound):
            self.call(account, doing, "delete_object", loc.container, loc.obj)
        self.delete_segments(account, segments, loc.redacted())
        self.drop_image_container(account, loc)

    def _delete_slo(self, account: Account, loc: SwiftLocation, doing: str) -> None:
        """Delete an SLO and its segments (``multipart-manifest=delete``)."""
        segments: list[tuple[str, str]] = []
        try:  # radosgw answers an empty body here: then only the server knows the segments
            _, body = self.call(
                account, doing, "get_object", loc.container, loc.obj,
                query_string="multipart-manifest=get",
            )  # fmt: skip
            for entry in json.loads(body or b"[]"):
                seg_container, _, seg_obj = str(entry["name"]).lstrip("/").partition("/")
                segments.append((unquote_path(seg_container), unquote_path(seg_obj)))
        except (ValueError, KeyError, TypeError):
            segments = []
        self.call(
            account, doing, "delete_object", loc.container, loc.obj,
            query_string="multipart-manifest=delete",
        )  # fmt: skip
        # a server that removed only the manifest: delete the segments one by one
        if segments and self._exists(account, *segments[0], doing):
            self.delete_segments(account, segments, loc.redacted())
        self.drop_image_container(account, loc)

    def _own_containers(self, account: Account) -> list[str]:
        """The configured container and, with the multiple-containers seed, its siblings."""
        if not self.seed:
            return [self.container]
        doing = f"listing the containers {self.container}_*"
        _, listing = self.call(
            account, doing, "get_account", prefix=f"{self.container}_", full_listing=True
        )
        return [str(c["name"]) for c in listing]

    def leftovers(self, older_than: float) -> Iterator[Leftover]:
        """Segments (``<id>-<writer token>-<number>``) that no manifest names.

        A segmented add names its segments after the image and a token of its
        own, and writes the manifest last; segments whose manifest is missing
        (or names other segments) were left by an add that died. Their age is
        that of the newest segment, so an add still uploading is spared.
        """
        account = self._current()
        now = datetime.datetime.now(tz=datetime.timezone.utc)
        for container in self._own_containers(account):
            doing = f"listing container {container!r}"
            try:
                _, listing = self.call(
                    account, doing, "get_container", container, full_listing=True
                )
            except NotFound:
                continue
            groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for entry in listing:
                match = _SEGMENT_NAME.fullmatch(str(entry.get("name", "")))
                if match:
                    groups.setdefault((match["obj"], match["token"]), []).append(entry)
            for (obj, token), entries in groups.items():
                prefix = f"{obj}-{token}-"
                if self._manifest_names(account, container, obj, prefix):
                    continue
                newest = max(_listing_time(e) for e in entries)
                age = (now - newest).total_seconds()
                if age >= older_than:
                    yield Leftover(
                        self.backend, "orphan segments", f"{container}/{prefix}*", age,
                        sum(int(e.get("bytes", 0)) for e in entries),
                        (container, obj, prefix, [str(e["name"]) for e in entries]),
                    )  # fmt: skip

    def _manifest_names(self, account: Account, container: str, obj: str, prefix: str) -> bool:
        """Whether the object ``obj`` is a manifest of the segments starting with ``prefix``."""
        doing = f"checking the manifest {container}/{obj}"
        try:
            headers = self.head(account, container, obj, doing)
        except NotFound:
            return False
        dlo = headers.get("x-object-manifest")
        if dlo:
            return unquote_path(dlo) == f"{container}/{prefix}"
        if str(headers.get("x-static-large-object", "")).lower() != "true":
            return False
        _, body = self.call(
            account, doing, "get_object", container, obj, query_string="multipart-manifest=get"
        )
        try:
            names = [unquote_path(str(e["name"])) for e in json.loads(body or b"[]")]
        except (ValueError, KeyError, TypeError):
            return True  # cannot tell (radosgw hides the list): never delete what may be live
        return not names or any(n.lstrip("/").startswith(f"{container}/{prefix}") for n in names)

    def remove_leftover(self, leftover: Leftover) -> None:
        container, obj, prefix, names = leftover.ref
        account = self._current()
        if self._manifest_names(account, container, obj, prefix):
            return  # its add finished after all
        self.delete_segments(account, [(container, n) for n in names], leftover.name)

    def delete_segments(
        self, account: Account, segments: list[tuple[str, str]], shown: str
    ) -> None:
        """Delete ``segments`` (missing ones are fine); log what could not be deleted."""
        left = []
        for container, obj in segments:
            try:
                self.call(
                    account, f"deleting a segment of {shown}", "delete_object", container, obj
                )
            except NotFound:
                pass
            except ImgstoreError as exc:
                left.append(obj)
                LOG.warning("backend %r: %s", self.backend, exc)
        if left:
            LOG.error(
                "backend %r: %d segments of %s could not be deleted: %s",
                self.backend, len(left), shown, ", ".join(left[:10]),
            )  # fmt: skip


# -- reading -------------------------------------------------------------------------


class SwiftStream(ReadStream):
    """One GET (whole or ranged); its version is the object's ETag, so the core can
    resume it with a ranged GET when the connection drops."""

    def __init__(
        self,
        driver: SwiftDriver,
        account: Account,
        loc: SwiftLocation,
        start: int,
        count: int | None,
        doing: str,
    ) -> None:
        self._driver = driver
        self._account = account
        self._loc = loc
        self._pos = start
        self._end: int | None = None if count is None else start + count
        self._doing = doing
        self._conn: Any = None
        self._body: Any = None
        self.size = count or 0

    def start(self) -> None:
        """Send the GET (raises NotFound etc. before any byte is read)."""
        if self._end is not None and self._end == self._pos:
            return
        tries = self._driver.retries + 1
        headers = retry(self._request, tries, Backoff(0.5, 16.0), BackendUnavailable)
        if self._end is None:
            self.size = int(headers["content-length"])
            self._end = self.size

    def _request(self) -> dict[str, str]:
        drv = self._driver
        req: dict[str, str] = {}
        if self._end is not None:
            req["Range"] = f"bytes={self._pos}-{self._end - 1}"
        elif self._pos:
            req["Range"] = f"bytes={self._pos}-"
        # retries=0: swiftclient would otherwise resume a broken body by itself
        # (whole reads only, sharing its request retries); the core does it
        conn = drv.connection(self._account, retries=0)
        try:
            headers, body = conn.get_object(
                self._loc.container, self._loc.obj, resp_chunk_size=READ_CHUNK_SIZE, headers=req
            )
        except Exception as exc:
            conn.close()
            raise drv.map_error(exc, self._doing) from exc
        finally:
            drv.remember(self._account, conn)
        if req and not str(headers.get("content-range", "")).startswith(f"bytes {self._pos}-"):
            conn.close()
            raise BackendError(f"{self._doing}: the server ignored the Range request")
        self.version = headers.get("etag")
        self._conn, self._body = conn, body
        return dict(headers)

    def __iter__(self) -> Iterator[bytes]:
        end = self._end
        if end is None or self._pos >= end:
            return
        try:
            for data in self._body:
                if not data:
                    break
                take = min(len(data), end - self._pos)
                self._pos += take
                yield data[:take] if take < len(data) else data
                if self._pos >= end:
                    break
        except GeneratorExit:
            raise
        except Exception as exc:
            raise self._driver.map_error(exc, self._doing) from exc
        finally:
            self._close_body()
        if self._pos < end:
            raise BackendUnavailable(f"{self._doing}: the connection ended after {self._pos} bytes")

    def _close_body(self) -> None:
        conn, self._conn, self._body = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                LOG.debug("closing a swift connection failed")

    def close(self) -> None:
        self._close_body()

    def __repr__(self) -> str:
        return f"<SwiftStream {self._loc.redacted()} size={self.size}>"


# -- writing -------------------------------------------------------------------------


class SwiftPutWriter(Writer):
    """An image of known size as one streaming PUT; the last chunk waits for commit."""

    def __init__(self, driver: SwiftDriver, account: Account, location: SwiftLocation,
                 size: int) -> None:  # fmt: skip
        self._driver = driver
        self._account = account
        self._location = location
        self._size = size
        self._shown = location.redacted()
        self._request = FedRequest(
            self._send, SizedFedBody(size), "imgstore-swift-put", f"writing {self._shown}"
        )
        self._pending: bytes | None = None
        self._fed = 0
        self._token = secrets_mod.token_hex(16)
        self._answered = False
        """Whether the server answered the PUT (with an error), rather than not at all."""

    def __repr__(self) -> str:
        return f"<SwiftPutWriter {self._shown}>"

    @property
    def accepted(self) -> int:
        """Bytes handed to the PUT's body (the last chunk waits for commit)."""
        return self._fed

    def _send(self) -> None:
        drv, loc = self._driver, self._location
        # a new token: a refused one would only show after the whole body was sent
        conn = drv.connection(self._account, retries=0, fresh=True)
        try:
            conn.put_object(
                loc.container, loc.obj, contents=self._request.body, content_length=self._size,
                headers={"If-None-Match": "*", WRITER_HEADER: self._token},
                content_type="application/octet-stream",
            )  # fmt: skip
        except BaseException as exc:
            self._answered = _status(exc) is not None
            error = drv.map_error(exc, f"writing {self._shown}")
            if isinstance(error, Duplicate):
                error = Duplicate(f"image {loc.obj} already exists in backend {drv.backend!r}")
            raise error from exc
        finally:
            drv.remember(self._account, conn)
            conn.close()

    def write(self, chunk: memoryview) -> None:
        try:
            self._request.start()
            if self._pending is not None:
                self._request.feed(self._pending)
                self._fed += len(self._pending)
        except BackendUnavailable as exc:
            self._raise_for(exc)
        self._pending = bytes(chunk)  # the core reuses its buffer: copy

    def _raise_for(self, exc: BackendUnavailable) -> NoReturn:
        """A PUT that failed part-way: :class:`Duplicate` when another writer's object is
        there now (it was not when the add began: a proxy in front of Swift, such as a
        TLS terminator, turns Swift's early 412 into a 502 when Swift closes the
        connection before the body is sent), else ``exc``. Only when the server answered:
        a server that did not answer is not asked again, so the error comes in time."""
        self._request.join()
        loc = self._location
        # no answer (a dead or stalled server): no HEAD to wait on
        if self._answered and self._driver.written_by_another(
            self._account, loc.container, loc.obj, self._token
        ):
            raise Duplicate(
                f"image {loc.obj} already exists in backend {self._driver.backend!r} "
                "(another writer stored it first)"
            ) from exc
        raise exc

    def commit(self, size: int) -> Written:
        try:
            if self._pending is not None:
                self._request.feed(self._pending)
                self._pending = None
            self._request.finish()
        except BackendUnavailable as exc:
            # not retried (the body was a stream), but the server may have stored all of
            # it and then answered an error: then the image is there, whole, and ours
            self._request.join()
            loc = self._location
            if not (
                self._answered
                and self._driver.written_by(self._account, loc.container, loc.obj, self._token)
            ):
                self._raise_for(exc)
            LOG.warning(
                "backend %r: %s: the server stored the image but answered an error",
                self._driver.backend, self._shown,
            )  # fmt: skip
        return Written(self._location)

    def abort(self) -> None:
        self._pending = None
        self._request.abort()
        if self._request.sent:  # cannot happen (the last chunk was held back), but never leave it
            try:
                self._driver.call(self._account, "aborting", "delete_object",
                                  self._location.container, self._location.obj)  # fmt: skip
            except ImgstoreError as exc:
                LOG.warning("backend %r: %s", self._driver.backend, exc)
        self._driver.drop_image_container(self._account, self._location)


class _SegmentBody:
    """A segment's buffer as a seekable file (swiftclient can rewind it for a retry)."""

    def __init__(self, data: bytearray | memoryview) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view)

    def read(self, size: int = -1) -> memoryview:
        end = (
            len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        )
        data = self._view[self._pos : end]
        self._pos = max(self._pos, end)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = max(0, {0: 0, 1: self._pos, 2: len(self._view)}[whence] + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __repr__(self) -> str:
        return f"<segment body of {len(self._view)} bytes>"


_SEGMENT_NAME = re.compile(rf"(?P<obj>{IMAGE_ID_RE.pattern})-(?P<token>[0-9a-f]{{8}})-\d{{5}}")
"""How a segmented add names its segments: ``<image id>-<writer token>-<number>``."""


def _listing_time(entry: dict[str, Any]) -> datetime.datetime:
    """A container listing's ``last_modified`` (UTC, without a zone) as an aware time."""
    try:
        stamp = datetime.datetime.fromisoformat(str(entry["last_modified"]))
    except (KeyError, ValueError):
        return datetime.datetime.now(tz=datetime.timezone.utc)  # unknown: count it as fresh
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.timezone.utc)


def segment_size(
    number: int,
    base: int,
    total: int | None,
    limit: int = MAX_SEGMENTS,
    largest: int = MAX_FILE_SIZE,
    every: int | None = None,
) -> int:
    """The size of segment ``number`` (1-based) of a large object of at most ``limit``
    segments of at most ``largest`` bytes (the cluster's ``max_manifest_segments`` and
    ``max_file_size``): ``base``, grown to fit (see ``imgstore.parallel.piece_size``: an unknown
    size doubles every ``every`` segments, a tenth of ``limit`` by default)."""
    if number < 1:
        raise ValueError("segment numbers start at 1")
    return piece_size(number, base, total, limit, largest, every)


class SwiftSegmentWriter(Writer):
    """A large object: segments on a bounded pool, then an SLO (or DLO) manifest."""

    def __init__(self, driver: SwiftDriver, account: Account, location: SwiftLocation,
                 size: int | None, limits: SwiftLimits | None = None) -> None:  # fmt: skip
        self._driver = driver
        self._account = account
        self._location = location
        self._size = size
        self._shown = location.redacted()
        self._prefix = f"{location.obj}-{secrets_mod.token_hex(4)}-"
        self._token = secrets_mod.token_hex(16)
        self._limits = limits or SwiftLimits()
        self._limit = self._limits.segment_limit(driver.slo)
        self._every = None if driver.slo else GROWTH_EVERY
        self._buffers = BufferPool()
        self._uploader: BoundedUploader | None = None
        self._buf: bytearray | None = None
        self._filled = 0
        self._sent = 0
        self._names: list[str] = []
        self._entries: dict[int, dict[str, Any]] = {}
        self._entries_lock = threading.Lock()
        self._confirmed = 0
        self._peak = 0

    def __repr__(self) -> str:
        return f"<SwiftSegmentWriter {self._shown}>"

    @property
    def accepted(self) -> int:
        """Bytes of the segments the server has stored (one segment: none before commit)."""
        with self._entries_lock:
            return self._confirmed

    @property
    def buffers_allocated(self) -> int:
        """How many segment buffers this writer allocated (tests check the bound)."""
        return self._buffers.allocated

    @property
    def peak_uploads(self) -> int:
        """The most segments that were uploading at once."""
        return self._uploader.peak if self._uploader is not None else self._peak

    def write(self, chunk: memoryview) -> None:
        if self._uploader is not None:
            self._uploader.raise_failure()
        view = chunk
        while view:
            if self._buf is None:
                self._buf = self._buffers.take(self._next_size())
                self._filled = 0
            take = min(len(self._buf) - self._filled, len(view))
            self._buf[self._filled : self._filled + take] = view[:take]  # a copy
            self._filled += take
            view = view[take:]
            if self._filled == len(self._buf):
                self._send()

    def _next_size(self) -> int:
        number = self._sent + 1
        base, largest = self._driver.segment_size, self._limits.max_file_size
        assert number <= self._limit, "the core stops an image that outgrows write_limits"
        return segment_size(number, base, self._size, self._limit, largest, self._every)

    def _send(self, last: bool = False) -> None:
        buf, count = self._buf, self._filled
        assert buf is not None
        self._buf, self._filled = None, 0
        if self._uploader is None:
            self._uploader = BoundedUploader(self._driver.threads, "imgstore-swift-segment")
        self._sent += 1
        number = self._sent
        name = f"{self._prefix}{number:05d}"
        self._names.append(name)  # before the PUT: a cleanup deletes it whatever happens
        pool = self._buffers
        self._uploader.submit(
            self._upload,
            number,
            name,
            memoryview(buf)[:count],
            on_error=lambda exc: self._driver.map_error(
                exc, f"uploading segment {number} of {self._shown}"
            ),
            finally_=lambda: pool.give(buf),
        )

    def _upload(self, number: int, name: str, data: memoryview) -> None:
        drv = self._driver
        conn = drv.connection(self._account)
        try:
            etag = conn.put_object(
                self._location.container, name, contents=_SegmentBody(data),
                content_length=len(data), content_type="application/octet-stream",
            )  # fmt: skip
        finally:
            drv.remember(self._account, conn)
            conn.close()
        with self._entries_lock:
            self._entries[number] = {
                "path": f"/{self._location.container}/{name}",
                "etag": str(etag).strip('"'),
                "size_bytes": len(data),
            }
            self._confirmed += len(data)

    def commit(self, size: int) -> Written:
        drv, loc = self._driver, self._location
        if self._uploader is None:  # everything fits in one segment: one plain PUT
            body = memoryview(self._buf if self._buf is not None else bytearray())
            body = body[: self._filled]
            self._buf = None
            self._put_manifest("writing", _SegmentBody(body), len(body), {})
            return Written(loc)
        if self._buf is not None and self._filled:
            self._send(last=True)
        self._uploader.wait()
        self._uploader.raise_failure()
        # radosgw ignores If-None-Match on some PUTs: look first
        if drv._exists(self._account, loc.container, loc.obj, f"checking {self._shown}"):
            raise Duplicate(f"image {loc.obj} already exists in backend {drv.backend!r}")
        if drv.slo:
            manifest = json.dumps([self._entries[n] for n in sorted(self._entries)]).encode()
            self._put_manifest(
                "writing the manifest of", _SegmentBody(bytearray(manifest)), len(manifest), {},
                query_string="multipart-manifest=put",
            )  # fmt: skip
        else:
            target = f"{urllib.parse.quote(loc.container)}/{urllib.parse.quote(self._prefix)}"
            self._put_manifest("writing the manifest of", b"", 0, {"X-Object-Manifest": target})
        self._finish_pool()
        return Written(loc, {"segments": self._sent})

    def _put_manifest(
        self, what: str, body: Any, length: int, headers: dict[str, str], **kwargs: Any
    ) -> None:
        drv, loc = self._driver, self._location

        def put(conn: Any) -> None:
            conn.put_object(
                loc.container, loc.obj, contents=body, content_length=length,
                headers={"If-None-Match": "*", WRITER_HEADER: self._token, **headers},
                content_type="application/octet-stream", **kwargs,
            )  # fmt: skip

        conn = drv.connection(self._account)
        try:
            try:
                put(conn)
            except Exception as exc:
                if not (_segments_refused_the_token(exc) and self._account.token is None):
                    raise
                # the token expired while the proxy checked the segments (SLO checks each
                # with the manifest's token, after the PUT itself was let in): the manifest
                # was not stored; once more with a new token
                LOG.info(
                    "backend %r: %s %s: the token expired while Swift checked the "
                    "segments; once more with a new token", drv.backend, what, self._shown,
                )  # fmt: skip
                drv.remember(self._account, conn)
                conn.close()
                conn = drv.connection(self._account, fresh=True)
                telemetry.retried()
                if hasattr(body, "seek"):
                    body.seek(0)
                put(conn)
        except Exception as exc:
            error = drv.map_error(exc, f"{what} {self._shown}")
            answered = _status(exc) is not None  # not a stalled or unreachable server
            if (
                answered
                and isinstance(error, (Duplicate, BackendUnavailable))
                and drv.written_by(self._account, loc.container, loc.obj, self._token)
            ):
                # an earlier try was stored but its answer lost: the retry met our own
                # object (412), or every answer was an error
                LOG.warning(
                    "backend %r: %s %s: stored, but the server answered an error",
                    drv.backend, what, self._shown,
                )  # fmt: skip
                return
            if isinstance(error, Duplicate) or (
                answered
                and isinstance(error, BackendUnavailable)
                and drv.written_by_another(self._account, loc.container, loc.obj, self._token)
            ):
                raise Duplicate(
                    f"image {loc.obj} already exists in backend {drv.backend!r}"
                ) from None
            raise error from exc
        finally:
            drv.remember(self._account, conn)
            conn.close()

    def _finish_pool(self) -> None:
        uploader, self._uploader = self._uploader, None
        if uploader is not None:
            uploader.stop()
            self._peak = uploader.peak
        self._buffers.clear()

    def abort(self) -> None:
        self._buf = None
        try:
            self._finish_pool()  # no segment may land after the cleanup
        finally:
            names, self._names = self._names, []
            self._driver.delete_segments(
                self._account, [(self._location.container, n) for n in names], self._shown
            )
            self._driver.drop_image_container(self._account, self._location)
