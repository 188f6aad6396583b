"""The OpenStack Swift driver (``swift://``, ``swift+http(s)://``, ``swift+config://``).

Built on python-swiftclient; the options keep glance_store's names, so an existing
``[glance_store]`` section works unchanged.

* **auth**: v1 (tempauth, radosgw) with ``swift_store_user = account:user``; Keystone
  v3 (and v2, untested) with ``project:user`` and the domain options; or the named
  references of ``swift_store_config_file`` (glance_store's ``swift.conf``). One token
  serves all requests of a backend; on a 401 swiftclient logs in again and repeats the
  request. A streaming PUT cannot be repeated (its body is read once), so it logs in
  just before it starts. With the caller's token (multi-tenant) an expired one is
  :class:`AuthenticationFailed`.
* **multi-tenant** (``swift_store_multi_tenant``): the caller gives a token and a
  storage URL, or its service catalog, per operation::

      with stores.driver("swift").credentials(token=token, catalog=catalog):
          stores.add(image_id, data)

  Each image gets a container of its own (``<container>_<id>``, glance_store's
  layout), shared by :meth:`SwiftDriver.set_acls`. A location naming another storage
  URL is followed only to an object-store endpoint of the caller's catalog (or of the
  storage URL it gave): a crafted location never carries the token to another host
  (:mod:`imgstore.drivers.swift_endpoints`).
* **add**: an image of known size below ``swift_store_large_object_size`` (and not
  above the cluster's ``max_file_size``) is one streaming PUT whose last chunk waits
  for commit; anything larger is a Static Large Object (``dlo``: a Dynamic one) of
  segments uploaded on ``swift_store_thread_pools`` threads, sized to fit the
  cluster's limits (``GET /info``, or Swift's defaults). Segments are named
  ``<object>-<nonce>-<n:05d>`` and deleted on any failure. The object is created with
  ``If-None-Match: *`` and the writer's random token (``X-Object-Meta-Imgstore-Writer``),
  so an existing image is :class:`Duplicate` and an answer that was lost after the
  server stored it does not fail the add.
* **get**: a streaming GET, with ``Range`` for part of an image; the core resumes a
  cut read (``swift_store_retry_get_count``), checking the ETag did not change.
* **delete** removes a manifest first, then its segments (glance_store's DLOs too).
* **locations** never carry credentials (glance_store's old ``user:key@`` form is
  read, its credentials dropped).
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
from typing import Any

from oslo_config import cfg

from imgstore import keystone_catalog, telemetry
from imgstore.backoff import Backoff, retry
from imgstore.config import read_option_file
from imgstore.driver import (
    IMAGE_ID_RE,
    Driver,
    Leftover,
    ReadStream,
    WriteLimits,
    Writer,
    Written,
    clamp_range,
    close_quietly,
    read_resumes_option,
    retries_option,
    timeout_option,
    tls_refused,
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
from imgstore.location import (
    Location,
    check_part,
    naming,
    quote_path,
    redact_uri,
    register,
    require_utf8,
    shown,
    split_once,
    unquote_path,
)
from imgstore.parallel import MiB, PieceBody, Pieces, PiecesWriting
from imgstore.sessions import acting_as
from imgstore.streaming import FedRequest, FedWriting, SizedFedBody

LOG = logging.getLogger(__name__)

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
            check_part("swift", what, value, "?#@")
        if "/" in container or "/" in obj or obj in (".", ".."):
            raise BadLocation("swift location container and object cannot contain '/'")
        require_utf8("swift", "container and object", container, obj)  # to_uri() quotes them
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
        form = "swift://address/container/object"
        scheme, rest = split_once(uri, "swift", form)
        rest = rest.rpartition("@")[2]  # glance_store's old user:key@ form: dropped
        if "?" in rest or "#" in rest:
            raise BadLocation(f"swift locations take no query or fragment: {shown(uri)!r}")
        parts = rest.split("/")
        if len(parts) < 3:
            raise BadLocation(f"malformed swift location {shown(uri)!r}: expected {form}")
        prefix = "/".join(parts[:-2]).rstrip("/")
        with naming(uri):
            return cls(scheme, prefix, unquote_path(parts[-2]), unquote_path(parts[-1]))

    def to_uri(self) -> str:
        return f"{self._scheme}://{self.prefix}/{quote_path(self.container)}/{quote_path(self.obj)}"


def _strip_scheme(url: str) -> tuple[str, str]:
    """``(scheme, rest)`` of an http(s) URL, rest without trailing '/'."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {redact_uri(url)!r}")
    return parts.scheme, (parts.netloc + parts.path).rstrip("/")


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


def _read_references(backend: str, path: str) -> dict[str, dict[str, str]]:
    parser = configparser.RawConfigParser()
    read_option_file(backend, "swift_store_config_file", path, parser.read_file, configparser.Error)
    return {name: dict(parser.items(name)) for name in parser.sections()}


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


def _segments_refused_the_token(exc: BaseException | None) -> bool:
    """Whether ``exc`` is an SLO manifest PUT refused (400) because the proxy's checks of
    the segments, made with the manifest's token, got 401: the token expired in between."""
    if _status(exc) != 400:
        return False
    content = getattr(exc, "http_response_content", b"") or b""
    text = content.decode(errors="replace") if isinstance(content, bytes) else str(content)
    return "401 Unauthorized" in text


def _status(exc: BaseException | None) -> int | None:
    """The HTTP status Swift answered with, when ``exc`` carries one."""
    status = getattr(exc, "http_status", None)
    if status is None:
        status = getattr(exc, "status_code", None)
    return int(status) if isinstance(status, int) else None


_DETAILS: dict[type[ImgstoreError], str] = {
    NotFound: "not found",
    AuthenticationFailed: "refused ({})",
    StorageFull: "Swift has no room ({})",
    Duplicate: "the object already exists",
}
"""What :meth:`SwiftDriver.classify_error` says of a status, by the class it maps to."""
_TEMPORARY = ("Connection", "Timeout", "ConnectFailure", "Protocol", "IncompleteRead")
"""Words in the names of exceptions that are a failure of the network, not of Swift."""


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


class SwiftDriver(Driver):
    """Stores images as objects (or large objects) in Swift containers."""

    name = "swift"
    location_class = SwiftLocation

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
            retries_option("swift_store_retries"),
            timeout_option(
                "swift_store_timeout", 60.0, "to connect, and for the server's next bytes"
            ),
        ]

    def configure(self) -> None:
        conf = self.conf
        self.multi_tenant = bool(conf.swift_store_multi_tenant)
        self.per_request = self.multi_tenant  # every operation with the caller's credentials
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
            references = _read_references(self.backend, conf.swift_store_config_file)
            for name, section in references.items():
                self._accounts[name] = self._account(section, reference=name)
            self.reference = conf.default_swift_reference
            if not self.multi_tenant:
                if self.reference not in self._accounts:
                    raise BadConfiguration(
                        f"backend {self.backend!r}: default_swift_reference "
                        f"{self.reference!r} is not a section of swift_store_config_file"
                    )
                self.account = self._accounts[self.reference]
        elif not self.multi_tenant:
            keys = ("auth_address", "user", "key", "auth_version", "user_domain_name",
                    "project_domain_name")  # fmt: skip
            self.require(*(f"swift_store_{k}" for k in keys[:3]))
            self.account = self._account({k: conf[f"swift_store_{k}"] for k in keys})
        self.needs("python-swiftclient", "swiftclient")

    def _account(self, section: dict[str, str], reference: str | None = None) -> Account:
        """The account of a ``swift_store_config_file`` section (or of the same keys read
        from the options)."""
        where = f"backend {self.backend!r}" + (f" reference {reference!r}" if reference else "")
        auth_url, user, key = (section.get(k) for k in ("auth_address", "user", "key"))
        if not auth_url or not user or not key:
            raise BadConfiguration(f"{where}: auth_address, user and key are all needed")
        version = str(section.get("auth_version", "3")).strip().lstrip("v")
        if version in ("1.0", "1"):
            version = "1"
        elif version[:1] in ("2", "3"):
            version = version[:1]
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
                if section.get(opt):
                    options[opt] = section[opt]
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

    @contextlib.contextmanager
    def credentials(
        self,
        token: str,
        storage_url: str | None = None,
        *,
        project_id: str | None = None,
        catalog: list[dict[str, Any]] | None = None,
    ) -> Iterator[None]:
        """Act with ``token`` on the account at ``storage_url`` (by default the object-store
        endpoint of the caller's ``catalog``, as glance_store finds it) inside the ``with``
        block; other storage URLs only when the catalog names them (or ``storage_url``'s
        endpoint). ``project_id``: for callers that pass every driver the same arguments."""
        del project_id  # the storage URL names the account
        c = self.conf
        if not storage_url:
            storage_url = keystone_catalog.required_endpoint(
                catalog, c.swift_store_service_type, c.swift_store_endpoint_type,
                c.swift_store_region,
                missing=f"backend {self.backend!r}: no storage URL was given and the caller's "
                f"service catalog has no {c.swift_store_service_type!r} endpoint "
                "(swift_store_service_type, swift_store_endpoint_type, swift_store_region)",
            )  # fmt: skip
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
        with acting_as(_CONTEXT, account):
            yield

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
            auth_url = self.account.auth_url if self.account else None
            if loc.url is not None and loc.url.rstrip("/") != (auth_url or "").rstrip("/"):
                if loc.url != ctx.storage_url:
                    StorageEndpoints(ctx.trusted).check(loc.url)
                return dataclasses.replace(ctx, storage_url=loc.url)
            return ctx
        if loc.reference is not None and loc.reference in self._accounts:
            return self._accounts[loc.reference]
        return self._current()

    # -- connections -----------------------------------------------------------

    def connection(self, account: Account, retries: int | None = None, fresh: bool = False) -> Any:
        """A new swiftclient Connection for ``account`` (one per thread; cheap).

        ``fresh``: do not start with the shared token; the connection logs in
        right before its first request (for a request that cannot be repeated).
        """
        from swiftclient import client as sc  # type: ignore[import-untyped]

        if account.token is not None:  # the caller's: no login possible
            preauth: tuple[str | None, str | None] = (account.storage_url, account.token)
        else:
            preauth = (None, None) if fresh else self._tokens.get(account, (None, None))
        return sc.Connection(
            authurl=account.auth_url, user=account.user, key=account.key,
            auth_version=account.auth_version, os_options=dict(account.os_options),
            preauthurl=preauth[0], preauthtoken=preauth[1],
            retries=self.retries if retries is None else retries, starting_backoff=0.5,
            max_backoff=8, timeout=self.timeout, cacert=self.cacert, insecure=self.insecure,
        )  # fmt: skip

    @contextlib.contextmanager
    def session(self, account: Account, doing: str, **how: Any) -> Iterator[Any]:
        """A :meth:`connection` (``how``: its options) whose errors come out mapped; at
        the end its token is kept (:meth:`remember`) and it is closed."""
        conn = self.connection(account, **how)
        try:
            with self.mapped(doing):
                yield conn
        finally:
            self.remember(account, conn)
            conn.close()

    def call(self, account: Account, doing: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``Connection.<method>(*args, **kwargs)`` with errors mapped."""
        with self.session(account, doing) as conn:
            return getattr(conn, method)(*args, **kwargs)

    def remember(self, account: Account, conn: Any) -> None:
        """Keep the token ``conn`` obtained, for the next connections; count the tries
        swiftclient made again for its last request (imgstore.telemetry)."""
        telemetry.retried(int(getattr(conn, "attempts", 0) or 0) - 1)
        if account.token is None and conn.url and conn.token:
            with self._lock:
                self._tokens[account] = (conn.url, conn.token)

    def classify_error(self, exc: BaseException, doing: str) -> ImgstoreError:
        """A swiftclient/keystone/requests exception as an imgstore exception (the core
        scrubs its message)."""
        status = _status(exc)
        name = type(exc).__name__
        text = str(exc)
        if status is not None:
            cls = for_status(status)
            answer = f"{status} {getattr(exc, 'http_reason', '') or ''}".rstrip()
            return cls(f"{doing}: " + _DETAILS.get(cls, "Swift answered {}").format(answer))
        if name in ("Unauthorized", "Forbidden", "AuthorizationFailure"):
            return AuthenticationFailed(f"{doing}: refused ({name})")
        if "Unauthorized" in text:
            return AuthenticationFailed(f"{doing}: the login was refused")
        tls = tls_verify_failure(exc)
        if tls is not None:
            return tls_refused(doing, _tls_server(exc), tls, "swift_store_cacert")
        if isinstance(exc, OSError) or any(k in name for k in _TEMPORARY):
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
        """Where ``obj`` is: the storage URL of a caller's token, else the reference or
        the auth address it was configured with."""
        url = account.storage_url if account.token is not None else None
        if not url and account.reference is not None:
            return SwiftLocation("swift+config", account.reference, container, obj)
        scheme, prefix = _strip_scheme(url or account.auth_url or "")
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
            if _status(exc.__cause__) not in (404, 409):
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
        return self.found(self.head, account, container, obj, doing)

    def settle(self, account: Account, loc: SwiftLocation, token: str, exc: ImgstoreError) -> None:
        """After the PUT that makes the image (writer ``token``) failed with ``exc``:
        return when the object is there and ours (the server stored it, then answered an
        error or its answer was lost and a retry met our own object); raise
        :class:`Duplicate` when another writer's object is there (a proxy in front of
        Swift, such as a TLS terminator, turns Swift's early 412 into a 502); else raise
        ``exc``. Only a server that answered is asked: one that did not is not waited on
        again."""
        writer = None
        if _status(exc.__cause__) is not None and isinstance(exc, (Duplicate, BackendUnavailable)):
            try:
                headers = self.head(account, loc.container, loc.obj, f"checking {loc.redacted()}")
                writer = headers.get(WRITER_HEADER.lower(), "")
            except ImgstoreError:
                pass
        if writer == token:
            LOG.warning(
                "backend %r: %s: stored, but the server answered an error",
                self.backend, loc.redacted(),
            )  # fmt: skip
            return
        if writer is not None or isinstance(exc, Duplicate):
            raise self.duplicate(loc.obj) from exc
        raise exc

    def limits(self, account: Account) -> SwiftLimits:
        """The limits of ``account``'s cluster: ``GET /info`` the first time, then kept.
        When ``/info`` is disabled or unreadable, Swift's defaults hold (kept, unless
        the answer was a 5xx other than 501); a server that cannot be reached or
        verified, or a refused login, raises as the write would have."""
        key = _cluster_key(account)
        with self._lock:
            known = self._limits.get(key)
        if known is not None:
            return known
        doing = f"backend {self.backend!r}: reading the cluster's limits (GET /info) for a write"
        try:
            with self.session(account, doing) as conn:
                limits = SwiftLimits.from_info(conn.get_capabilities())
        except ImgstoreError as error:
            cause = error.__cause__
            status = _status(cause)
            if (status is None and not isinstance(cause, ValueError)) or status == 401:
                raise  # unreachable, TLS, the login refused: not /info's fault
            LOG.info("%s; using Swift's default limits", error)
            why = status or type(cause).__name__
            limits = SwiftLimits(source=f"Swift's defaults (GET /info failed: {why})")
            if status is not None and status >= 500 and status != 501:
                return limits
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
        self._ensure_container(account, container)
        if self._exists(account, container, image_id, f"checking {location.redacted()}"):
            raise self.duplicate(image_id)
        if size is not None and size < self.large_object_size and size <= limits.max_file_size:
            return SwiftPutWriter(self, account, location, size)
        return SwiftSegmentWriter(self, account, location, size, limits)

    def open(self, location: Location, offset: int, length: int | None) -> ReadStream:
        loc = self._checked(location)
        account = self._account_for(loc)
        count = None
        if offset or length is not None:
            headers = self.head(account, loc.container, loc.obj, f"reading {loc.redacted()}")
            offset, count = clamp_range(int(headers["content-length"]), offset, length)
        stream = SwiftStream(self, account, loc, offset, count)
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
        segments: list[tuple[str, str]] = []
        if str(headers.get("x-static-large-object", "")).lower() == "true":
            segments = self._slo_segments(account, loc.container, loc.obj, doing) or []
            self._delete_slo(account, loc, doing)
            # the server deleted the segments too, unless it removed only the manifest
            if segments and not self._exists(account, *segments[0], doing):
                segments = []
        else:
            if headers.get("x-object-manifest"):  # a DLO (glance_store's kind)
                seg_container, _, prefix = unquote_path(headers["x-object-manifest"]).partition("/")
                _, listing = self.call(account, doing, "get_container", seg_container,
                                       prefix=prefix, full_listing=True)  # fmt: skip
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
        """Delete an SLO manifest with its segments. Swift answers 200 even when some of
        the deletes it made failed (a token that expired on the way: the errors are in
        the body, which swiftclient does not read), so a manifest still there is deleted
        once more (the core's retry), and an error raised if it stays."""

        def once() -> None:
            with contextlib.suppress(NotFound):  # a retry after an answer that was lost
                self.call(account, doing, "delete_object", loc.container, loc.obj,
                          query_string="multipart-manifest=delete")  # fmt: skip
            if self._exists(account, loc.container, loc.obj, doing):
                raise _ManifestKept(
                    f"backend {self.backend!r}: {doing}: the server kept the manifest"
                )

        retry(once, 2, Backoff(0.5, 0.5), _ManifestKept)

    def _slo_segments(
        self, account: Account, container: str, obj: str, doing: str
    ) -> list[tuple[str, str]] | None:
        """The segments an SLO manifest names, or None when its answer does not say
        (radosgw answers an empty body: then only the server knows them)."""
        _, body = self.call(account, doing, "get_object", container, obj,
                            query_string="multipart-manifest=get")  # fmt: skip
        try:
            names = [str(e["name"]).lstrip("/").partition("/") for e in json.loads(body or b"[]")]
        except (ValueError, KeyError, TypeError):
            return None
        return [(unquote_path(c), unquote_path(o)) for c, _, o in names] or None

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
        """Segments (``<id>-<writer token>-<number>``) that no manifest names: an add
        that died left them (the manifest comes last). Their age is that of the newest
        segment, so an add still uploading is spared."""
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
        segments = self._slo_segments(account, container, obj, doing)
        if segments is None:
            return True  # cannot tell: never delete what may be live
        return any(f"{c}/{o}".startswith(f"{container}/{prefix}") for c, o in segments)

    def remove_leftover(self, leftover: Leftover) -> None:
        container, obj, prefix, names = leftover.ref
        account = self._current()
        if self._manifest_names(account, container, obj, prefix):
            return  # its add finished after all
        self.delete_segments(account, [(container, n) for n in names], leftover.name)

    def delete_segments(
        self, account: Account, segments: list[tuple[str, str]], shown: str
    ) -> None:
        """Delete ``segments`` (missing ones are fine); log what could not be deleted.
        Once Swift does not answer, the rest are not tried (each would wait a timeout);
        an add's segments are then ``imgstore cleanup``'s (it finds them by name)."""
        left: list[str] = []
        for n, (container, obj) in enumerate(segments):
            try:
                self.call(
                    account, f"deleting a segment of {shown}", "delete_object", container, obj
                )
            except NotFound:
                pass
            except BackendUnavailable as exc:
                left.extend(name for _, name in segments[n:])
                LOG.warning("backend %r: %s; not trying the other segments", self.backend, exc)
                break
            except ImgstoreError as exc:
                left.append(obj)
                LOG.warning("backend %r: %s", self.backend, exc)
        if left:
            LOG.error(
                "backend %r: %d segments of %s could not be deleted: %s",
                self.backend, len(left), shown, ", ".join(left[:10]),
            )  # fmt: skip


class _ManifestKept(BackendError):
    """An SLO delete answered success but the manifest is still there."""


class SwiftStream(ReadStream):
    """One GET (whole or ranged); its version is the object's ETag, so the core can
    resume it with a ranged GET when the connection drops."""

    def __init__(self, driver: SwiftDriver, account: Account, loc: SwiftLocation, start: int,
                 count: int | None) -> None:  # fmt: skip
        self._driver = driver
        self._account = account
        self._loc = loc
        self._pos = start
        self._end: int | None = None if count is None else start + count
        self._doing = f"reading {loc.redacted()}"
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
            req["Range"] = f"bytes={self._pos}-{self._end - 1}"  # open() sets an offset's count
        # retries=0: not swiftclient's resume of a broken body; the core's
        conn = drv.connection(self._account, retries=0)
        try:
            with drv.mapped(self._doing):
                headers, body = conn.get_object(
                    self._loc.container, self._loc.obj, resp_chunk_size=READ_CHUNK_SIZE,
                    headers=req,
                )  # fmt: skip
            if req and not str(headers.get("content-range", "")).startswith(f"bytes {self._pos}-"):
                raise BackendError(f"{self._doing}: the server ignored the Range request")
        except BaseException:
            conn.close()
            raise
        finally:
            drv.remember(self._account, conn)
        self.version = headers.get("etag")
        self._conn, self._body = conn, body
        return dict(headers)

    def __iter__(self) -> Iterator[bytes]:
        end = self._end
        if end is None or self._pos >= end:
            return
        try:
            with self._driver.mapped(self._doing):
                for data in self._body:
                    if not data:
                        break
                    take = min(len(data), end - self._pos)
                    self._pos += take
                    yield data[:take] if take < len(data) else data
                    if self._pos >= end:
                        break
        finally:
            self.close()  # ended short: the core's reader resumes or reports it

    def close(self) -> None:
        conn, self._conn, self._body = self._conn, None, None
        if conn is not None:
            close_quietly(conn, "a swift connection", LOG)

    def __repr__(self) -> str:
        return f"<SwiftStream {self._loc.redacted()} size={self.size}>"


class _ImageWriter(Writer):
    """What both writers share: the object that makes the image, created only where none
    is (``If-None-Match: *``) and marked with the writer's random token."""

    def __init__(self, driver: SwiftDriver, account: Account, location: SwiftLocation) -> None:
        self._driver = driver
        self._account = account
        self._location = location
        self.shown = location.redacted()
        self._token = secrets_mod.token_hex(16)

    def _put(
        self, conn: Any, body: Any, length: int, headers: dict[str, str] | None = None, **kw: Any
    ) -> None:
        """PUT the object that makes the image on ``conn``, with ``headers`` added
        (``kw``: more of swiftclient's ``put_object``, as ``query_string``)."""
        loc = self._location
        conn.put_object(
            loc.container, loc.obj, contents=body, content_length=length,
            headers={"If-None-Match": "*", WRITER_HEADER: self._token, **(headers or {})},
            content_type="application/octet-stream", **kw,
        )  # fmt: skip

    def _settle(self, exc: ImgstoreError) -> None:
        """:meth:`SwiftDriver.settle` for this writer's PUT."""
        self._driver.settle(self._account, self._location, self._token, exc)


class SwiftPutWriter(FedWriting, _ImageWriter):
    """An image of known size as one streaming PUT; the last chunk waits for commit."""

    def __init__(self, driver: SwiftDriver, account: Account, location: SwiftLocation,
                 size: int) -> None:  # fmt: skip
        super().__init__(driver, account, location)
        self._size = size
        self._request = FedRequest(
            self._send, SizedFedBody(size), "imgstore-swift-put", f"writing {self.shown}"
        )
        self._pending: bytes | memoryview | None = None

    def _send(self) -> None:
        # fresh: a new token, as a refused one would only show after the whole body
        doing = f"writing {self.shown}"
        with self._driver.session(self._account, doing, retries=0, fresh=True) as conn:
            self._put(conn, self._request.body, self._size)

    @contextlib.contextmanager
    def _settled(self) -> Iterator[None]:
        """A failure of the PUT, once it has ended, settled by :meth:`SwiftDriver.settle`
        (not retried, as the body was a stream; but the server may have stored it)."""
        try:
            yield
        except (Duplicate, BackendUnavailable) as error:
            self._request.join()
            self._settle(error)

    def write(self, chunk: memoryview) -> None:
        with self._settled():
            self._request.start()
            if self._pending is not None:
                self._request.feed(self._pending)
        self._pending = self.kept(chunk)

    def commit(self, size: int) -> Written:
        with self._settled():
            if self._pending is not None:
                self._request.feed(self._pending)
                self._pending = None
            self._request.finish()
        return Written(self._location)

    def abort(self) -> None:
        self._pending = None
        self._request.abort()  # the last chunk was held back: nothing was stored
        self._driver.drop_image_container(self._account, self._location)


_SEGMENT_NAME = re.compile(rf"(?P<obj>{IMAGE_ID_RE.pattern})-(?P<token>[0-9a-f]{{8}})-\d{{5}}")
"""How a segmented add names its segments: ``<image id>-<writer token>-<number>``."""


def _listing_time(entry: dict[str, Any]) -> datetime.datetime:
    """A container listing's ``last_modified`` (UTC, without a zone) as an aware time."""
    try:
        stamp = datetime.datetime.fromisoformat(str(entry["last_modified"]))
    except (KeyError, ValueError):
        return datetime.datetime.now(tz=datetime.timezone.utc)  # unknown: count it as fresh
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.timezone.utc)


class SwiftSegmentWriter(PiecesWriting, _ImageWriter):
    """A large object: segments on a bounded pool, then an SLO (or DLO) manifest."""

    def __init__(self, driver: SwiftDriver, account: Account, location: SwiftLocation,
                 size: int | None, limits: SwiftLimits | None = None) -> None:  # fmt: skip
        super().__init__(driver, account, location)
        self._prefix = f"{location.obj}-{secrets_mod.token_hex(4)}-"
        limits = limits or SwiftLimits()
        self._pieces = Pieces(
            self._upload, workers=driver.threads, name="imgstore-swift-segment",
            base=driver.segment_size, total=size, limit=limits.segment_limit(driver.slo),
            largest=limits.max_file_size, every=None if driver.slo else GROWTH_EVERY,
        )  # fmt: skip

    def _upload(self, number: int, body: PieceBody) -> dict[str, Any]:
        name = f"{self._prefix}{number:05d}"
        doing = f"uploading segment {number} of {self.shown}"
        with self._driver.session(self._account, doing) as conn:
            etag = conn.put_object(
                self._location.container, name, contents=body,
                content_length=len(body), content_type="application/octet-stream",
            )  # fmt: skip
        path = f"/{self._location.container}/{name}"
        return {"path": path, "etag": str(etag).strip('"'), "size_bytes": len(body)}

    def commit(self, size: int) -> Written:
        drv, loc = self._driver, self._location
        if self._pieces.sent == 0:  # everything fits in one segment: one plain PUT
            self._put_once("writing", self._pieces.held())
            return Written(loc)
        entries = self._pieces.finish()
        # radosgw ignores If-None-Match on some PUTs: look first
        if drv._exists(self._account, loc.container, loc.obj, f"checking {self.shown}"):
            raise drv.duplicate(loc.obj)
        if drv.slo:
            self._put_once("writing the manifest of", PieceBody(json.dumps(entries).encode()),
                           query_string="multipart-manifest=put")  # fmt: skip
        else:
            target = f"{urllib.parse.quote(loc.container)}/{urllib.parse.quote(self._prefix)}"
            self._put_once("writing the manifest of", PieceBody(b""),
                           headers={"X-Object-Manifest": target})  # fmt: skip
        self._pieces.stop()
        return Written(loc, {"segments": self._pieces.sent})

    def _put_once(self, what: str, body: PieceBody, **kwargs: Any) -> None:
        """PUT the object that makes the image (a manifest, or the only segment), retried
        as swiftclient retries; settled (:meth:`SwiftDriver.settle`) when it fails."""
        doing = f"{what} {self.shown}"
        try:
            try:
                with self._driver.session(self._account, doing) as conn:
                    self._put(conn, body, len(body), **kwargs)
            except ImgstoreError as error:
                refused = _segments_refused_the_token(error.__cause__)
                if not refused or self._account.token is not None:
                    raise
                # SLO checks each segment with the manifest's token after letting the PUT
                # in: it expired in between, and the manifest was not stored
                LOG.info(
                    "backend %r: %s: the token expired while Swift checked the segments; "
                    "once more with a new token", self._driver.backend, doing,
                )  # fmt: skip
                telemetry.retried()
                body.seek(0)
                with self._driver.session(self._account, doing, fresh=True) as conn:
                    self._put(conn, body, len(body), **kwargs)
        except ImgstoreError as error:
            self._settle(error)

    def abort(self) -> None:
        try:
            self._pieces.stop()  # no segment may land after the cleanup
        finally:
            loc, count, self._pieces.sent = self._location, self._pieces.sent, 0
            names = [(loc.container, f"{self._prefix}{n:05d}") for n in range(1, count + 1)]
            self._driver.delete_segments(self._account, names, self.shown)
            self._driver.drop_image_container(self._account, loc)
