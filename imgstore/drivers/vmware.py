"""The VMware datastore driver (``vsphere://`` locations), on oslo.vmware.

Stores images as files on vSphere datastores, through a vCenter or an ESX(i)
host, as glance_store's ``vmware_datastore`` store did; its options keep
glance_store's names (``vmware_server_host``, ``vmware_datastores``...), so
an existing ``[glance_store]`` section works, plus ``vmware_server_port``
(oslo.vmware takes the port apart from the host).

* **one API session per backend**, opened on first use (a login costs
  seconds: suds parses the whole vSphere WSDL) and reused by every
  operation and thread. SOAP calls go through oslo.vmware, which logs in
  again when the server says ``NotAuthenticated``; a ``401`` on the
  datastore HTTP interface (``/folder``) makes the driver log in again and
  repeat the request once (not an upload: its body is gone). SOAP calls are
  serialised (one suds client).
* **add**: the datastore is chosen among ``vmware_datastores``
  (``datacenter_path:datastore_name:weight``): highest weight first, and
  within a weight the one with the most free space; a datastore without room
  for an image of known size is passed over (:class:`StorageFull` when none
  has room). An existing file is :class:`Duplicate` (checked with ``HEAD``:
  the ``/folder`` interface overwrites on ``PUT``). The bytes go in one
  streaming HTTP ``PUT`` to a hidden temporary file in the same folder,
  ``/folder/<vmware_store_image_dir>/.<image id>.<token>.imgstore-partial?dcPath=..&dsName=..``
  with the session cookie (``Content-Length`` when the size is known, chunked
  otherwise), from a thread fed chunk by chunk. On commit
  ``FileManager.MoveDatastoreFile_Task`` (``force=False``) moves it to
  ``<vmware_store_image_dir>/<image id>``: a file that is there by then is
  :class:`Duplicate`, and is left as it is. So a half-written image never
  shows under its final name, even when the writing process is killed. Any
  failure removes the temporary file with
  ``FileManager.DeleteDatastoreFile_Task``.
* **get**: a streaming ``GET`` (the HTTP driver's stream); a ranged read sends
  ``Range`` (READ_RANDOM). A server that ignores ``Range`` (answers 200 with
  the whole file) is handled: the stream skips to the offset itself and a
  warning is logged. A download cut short is :class:`BackendUnavailable`; the
  core resumes it (``vmware_read_resumes``) when the file's ``Last-Modified``
  and length are still the same.
  **size** is ``HEAD``'s ``Content-Length``; **delete** is
  ``DeleteDatastoreFile_Task``. Missing files are :class:`NotFound`.
* **leftovers** (``imgstore cleanup``) are the temporary files in
  ``vmware_store_image_dir`` of each datastore of ``vmware_datastores``, found
  with ``HostDatastoreBrowser.SearchDatastore_Task`` (pattern
  ``*.imgstore-partial``, then the exact name form), aged by their modification
  time against the server's clock. **discard** removes an image and the
  temporary files of its unfinished uploads on those datastores.
* **locations** are glance_store's:
  ``vsphere://<host>[:<port>]/folder/<path>?dcPath=<datacenter>&dsName=<datastore>``.
  They never carry credentials. The driver only reads and deletes locations
  of its own server (the session cookie is never sent elsewhere), and
  deletes only files directly inside ``vmware_store_image_dir``.
* **TLS** is verified (``vmware_ca_file`` for a private CA, or the system
  store); ``vmware_insecure`` turns checks off. ``verify=`` is passed on every
  HTTP request and the environment (``REQUESTS_CA_BUNDLE``, proxies) is
  ignored by the driver's own HTTP session.
* **secrets**: the password and the session cookie never reach a location,
  log record, message or repr. suds logs whole SOAP envelopes (the login's
  password among them) at DEBUG, so the driver raises the ``suds`` logger to
  WARNING unless the application set its level itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import requests
import requests.adapters
from oslo_config import cfg

from imgstore.backoff import poll
from imgstore.driver import (
    PARTIAL_SUFFIX,
    Driver,
    Leftover,
    ReadStream,
    Writer,
    Written,
    clamp_range,
    is_partial_name,
    partial_name,
    read_resumes_option,
    retries_option,
)
from imgstore.drivers.http import HttpStream, content_length
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    BadConfiguration,
    BadLocation,
    Duplicate,
    ImgstoreError,
    NotFound,
    StorageFull,
    for_status,
)
from imgstore.location import (
    Location,
    check_part,
    naming,
    quote_path,
    register,
    require_utf8,
    shown,
    unquote_path,
    urlsplit,
)
from imgstore.scrubbing import scrub_loggers
from imgstore.sessions import Renewal, SessionExpired
from imgstore.streaming import FedBody, FedRequest, FedWriting, SizedFedBody
from imgstore.threads import import_here

LOG = logging.getLogger(__name__)

SCHEME = "vsphere"
FOLDER = "/folder/"
DEFAULT_IMAGE_DIR = "/openstack_glance"
COOKIE_NAME = "vmware_soap_session"
READ_CHUNK_SIZE = 1 << 20
SEND_BLOCK_SIZE = 1 << 20
_QUEUE_DEPTH = 4
_CLEANUP_WAIT = 0.5
"""After a failed upload, how long to watch for the server creating the file late."""
T = TypeVar("T")


# -- locations ---------------------------------------------------------------------


@register
class VsphereLocation(Location):
    """``vsphere://<host>[:<port>]/folder/<path>?dcPath=<datacenter>&dsName=<datastore>``.

    ``path`` is the file's path on the datastore (no leading ``/``);
    ``datacenter`` is None for glance_store URIs without ``dcPath`` (ESX).
    """

    schemes = (SCHEME,)

    def __init__(
        self, host: str, port: int | None, path: str, datacenter: str | None, datastore: str
    ) -> None:
        # datastore names and paths may hold plain spaces, never other whitespace
        check_part(SCHEME, "host", host, "/?#@[]")
        if port is not None and not 0 < port < 65536:
            raise BadLocation(f"vsphere location has a bad port {port}")
        check_part(SCHEME, "file path", path, spaces=True)
        if any(s in ("", ".", "..") for s in path.split("/")):
            raise BadLocation("vsphere location has a malformed file path")
        check_part(SCHEME, "dsName", datastore, "[]/", spaces=True)
        if datacenter is not None:
            check_part(SCHEME, "dcPath", datacenter, spaces=True)
            if ".." in datacenter.split("/"):
                raise BadLocation("vsphere location has a malformed dcPath")
        # to_uri() percent-encodes these: the query strictly, the path as file names
        require_utf8(SCHEME, "file path", path)
        require_utf8(SCHEME, "query", datastore, datacenter or "", escaped=False)
        self.host = host.lower()
        self.port = port
        self.path = path
        self.datacenter = datacenter
        self.datastore = datastore

    @property
    def image_id(self) -> str:
        """The file name (the image id for images imgstore or glance_store wrote)."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def directory(self) -> str:
        """The folder holding the file on the datastore ('' at its root)."""
        return self.path.rpartition("/")[0]

    @property
    def datastore_path(self) -> str:
        """The ``[datastore] path`` form the vSphere API takes."""
        return f"[{self.datastore}] {self.path}"

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def query(self) -> str:
        params = {"dsName": self.datastore}
        if self.datacenter is not None:
            params = {"dcPath": self.datacenter, **params}
        return urllib.parse.urlencode(params, quote_via=urllib.parse.quote)

    @classmethod
    def from_uri(cls, uri: str) -> VsphereLocation:
        parts = urlsplit(uri)  # BadLocation in our own words (urllib's quote the password)
        if parts.scheme.lower() != SCHEME:
            raise BadLocation(f"not a vsphere location: {shown(uri)!r}")
        if "@" in parts.netloc:
            raise BadLocation(f"vsphere locations carry no credentials: {shown(uri)!r}")
        if parts.fragment:
            raise BadLocation(f"vsphere locations take no fragment: {shown(uri)!r}")
        if not parts.path.startswith(FOLDER):
            raise BadLocation(f"a vsphere location's path starts with /folder/: {shown(uri)!r}")
        try:
            query = urllib.parse.parse_qs(
                parts.query, keep_blank_values=True, strict_parsing=True, errors="strict"
            )
        except (ValueError, UnicodeError):
            raise BadLocation(f"malformed query in vsphere location {shown(uri)!r}") from None
        unknown = set(query) - {"dcPath", "dsName"}
        if unknown or any(len(v) != 1 for v in query.values()) or "dsName" not in query:
            raise BadLocation(
                f"a vsphere location's query is dsName and, optionally, dcPath: {shown(uri)!r}"
            )
        path, dc = unquote_path(parts.path[len(FOLDER) :]), query.get("dcPath", [None])[0]
        with naming(uri):
            return cls(parts.hostname or "", parts.port, path, dc, query["dsName"][0])

    def to_uri(self) -> str:
        return f"{SCHEME}://{self.netloc}{FOLDER}{quote_path(self.path)}?{self.query}"

    def https_url(self) -> str:
        """The ``https://`` URL of the file on the datastore HTTP interface."""
        return f"https://{self.netloc}{FOLDER}{quote_path(self.path)}?{self.query}"


# -- configuration -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatastoreSpec:
    """One entry of ``vmware_datastores``."""

    datacenter: str
    datastore: str
    weight: int


def parse_datastores(entries: list[str]) -> list[DatastoreSpec]:
    """``datacenter_path:datastore_name[:weight]`` entries, as glance_store reads them."""
    specs: list[DatastoreSpec] = []
    for entry in entries:
        parts = [p.strip() for p in entry.rsplit(":", 2)]
        if len(parts) < 2:
            raise BadConfiguration(
                f"vmware_datastores entry {entry!r}: use datacenter_path:datastore_name[:weight]"
            )
        weight = 0
        if len(parts) == 3:
            if not parts[2].isdigit():
                # glance_store's form datacenter:datastore with ':' in the datacenter path
                # is not supported; the third part must be the weight
                raise BadConfiguration(
                    f"vmware_datastores entry {entry!r}: the weight {parts[2]!r} is not a "
                    "non-negative integer"
                )
            weight = int(parts[2])
        if not parts[0] or not parts[1]:
            raise BadConfiguration(
                f"vmware_datastores entry {entry!r}: the datacenter path and datastore "
                "name must not be empty"
            )
        spec = DatastoreSpec(parts[0], parts[1], weight)
        if any((s.datacenter, s.datastore) == (spec.datacenter, spec.datastore) for s in specs):
            raise BadConfiguration(
                f"vmware_datastores lists {spec.datacenter}:{spec.datastore} twice"
            )
        specs.append(spec)
    return specs


def _split_host(value: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host, port or None)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, None
    if port is not None and not port.isdigit():
        raise BadConfiguration(f"vmware_server_host {value!r}: the port is not a number")
    return host, int(port) if port is not None else None


def _prepare_oslo() -> None:
    """Have oslo.service use native threads, not eventlet (oslo.vmware is there).

    oslo.vmware polls tasks and retries through oslo.service's looping calls,
    whose default backend is eventlet: with imgstore's native threads (and no
    monkey-patching) its hub blocks forever. The threading backend is chosen
    only when the application chose none (nor registered a hook) before.

    Then oslo.vmware's API module is imported here, in the thread that builds the
    driver, not in whichever thread logs in first: through oslo.service's looping
    calls it imports eventlet, which left that thread impossible to join
    (:func:`imgstore.threads.import_here`).
    """
    from oslo_service import backend

    if backend.get_backend_type() is None and getattr(backend, "_backend_hook", None) is None:
        backend.register_backend_default_hook(lambda: backend.BackendType.THREADING)
    elif backend.get_backend_type() == backend.BackendType.EVENTLET:
        LOG.warning(
            "oslo.service uses eventlet: the vmware driver needs native threads "
            "(monkey-patch, or select oslo.service's threading backend first)"
        )
    import_here("oslo_vmware.api")


# -- errors -----------------------------------------------------------------------------


def _fault_names(exc: BaseException) -> list[str]:
    return [str(f) for f in (getattr(exc, "fault_list", None) or [])]


class _Blocksize(requests.adapters.HTTPAdapter):
    """An adapter whose connections send request bodies in large blocks."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = SEND_BLOCK_SIZE
        super().init_poolmanager(*args, **kwargs)


# -- the driver -------------------------------------------------------------------------


class VMwareDriver(Driver):
    """Stores images as files on vSphere datastores."""

    name = "vmware"
    location_class = VsphereLocation

    @classmethod
    def options(cls) -> list[cfg.Opt]:
        return [
            cfg.StrOpt(
                "vmware_server_host",
                help="ESX/ESXi or vCenter Server address (IP or DNS name; 'host:port' also works).",
            ),
            cfg.PortOpt(
                "vmware_server_port",
                default=443,
                help="HTTPS port of the server (oslo.vmware takes it apart from the host).",
            ),
            cfg.StrOpt("vmware_server_username", help="User name on the ESX/vCenter server."),
            cfg.StrOpt(
                "vmware_server_password", secret=True, help="Password of vmware_server_username."
            ),
            retries_option("vmware_api_retry_count", default=10, minimum=1),
            cfg.IntOpt(
                "vmware_task_poll_interval",
                default=5,
                min=1,
                help="Seconds between polls of a server task (such as a file deletion).",
            ),
            read_resumes_option("vmware_read_resumes"),
            cfg.StrOpt(
                "vmware_store_image_dir",
                default=DEFAULT_IMAGE_DIR,
                help="The folder on the datastores where images are stored.",
            ),
            cfg.BoolOpt(
                "vmware_insecure",
                default=False,
                deprecated_name="vmware_api_insecure",
                help="Do not verify the server's TLS certificate (ignored when "
                "vmware_ca_file is set).",
            ),
            cfg.StrOpt(
                "vmware_ca_file",
                help="CA bundle to verify the server's certificate (default: the system's).",
            ),
            cfg.MultiStrOpt(
                "vmware_datastores",
                default=[],
                help="Where images are added, repeatable: "
                "'<datacenter_path>:<datastore_name>[:<weight>]'. The datastore with the "
                "highest weight (default 0) is used, among equal weights the one with the "
                "most free space; one without room for an image of known size is passed "
                "over. Without any, the backend can read and delete but not add.",
            ),
        ]

    def configure(self) -> None:
        conf = self.conf
        self.require("vmware_server_host", "vmware_server_username", "vmware_server_password")
        host, port = _split_host(conf.vmware_server_host)
        if not host:
            raise BadConfiguration(f"backend {self.backend!r}: vmware_server_host is empty")
        self.host = host.lower()
        self.port: int = port if port is not None else int(conf.vmware_server_port)
        self.user: str = conf.vmware_server_username
        self._password: str = conf.vmware_server_password
        self.retry_count = int(conf.vmware_api_retry_count)
        self.poll_interval = float(conf.vmware_task_poll_interval)
        self.read_resumes = int(conf.vmware_read_resumes)
        self.image_dir = conf.vmware_store_image_dir.strip().strip("/")
        if not self.image_dir or any(
            s in ("", ".", "..") for s in self.image_dir.split("/")
        ):  # fmt: skip
            raise BadConfiguration(
                f"backend {self.backend!r}: vmware_store_image_dir {conf.vmware_store_image_dir!r} "
                "must name a folder"
            )
        self.ca_file: str | None = conf.vmware_ca_file or None
        self.insecure = bool(conf.vmware_insecure) and self.ca_file is None
        self.verify: str | bool = self.ca_file if self.ca_file else not self.insecure
        self.datastores = parse_datastores(list(conf.vmware_datastores or []))
        self.needs("oslo.vmware", "oslo_vmware", "oslo_service.backend")
        _prepare_oslo()
        self._api: Any = None
        self._soap_lock = threading.RLock()
        self._renewal = Renewal(self.cookie_header, self._login, f"backend {self.backend!r}")
        self._dc_refs: dict[str, Any] = {}
        self._ds_refs: dict[tuple[str, str], Any] = {}
        self._browser_refs: dict[tuple[str, str], Any] = {}
        self.logins = 0
        """How many times this driver logged in (including renewals)."""
        self.http = requests.Session()
        self.http.trust_env = False  # REQUESTS_CA_BUNDLE would override verify; no proxies
        adapter = _Blocksize(pool_connections=4, pool_maxsize=32, max_retries=0)
        self.http.mount("https://", adapter)
        suds_log = logging.getLogger("suds")
        if suds_log.level == logging.NOTSET:
            suds_log.setLevel(logging.WARNING)  # suds logs SOAP bodies (passwords) at DEBUG
        scrub_loggers("suds", self._password)  # and if an application opens them up anyway

    def can_write(self) -> bool:
        """Adds need ``vmware_datastores``; without it the backend reads and deletes."""
        return bool(self.datastores)

    def __repr__(self) -> str:
        return f"<VMwareDriver {self.backend!r} {self.user}@{self.host}:{self.port}>"

    def secrets(self) -> list[str]:
        found = [self._password]
        cookie = self._current_cookie()
        if cookie:
            found.append(cookie)
        return found

    # -- the API session ----------------------------------------------------------------

    def _session(self) -> Any:
        """The API session, logging in on first use."""
        with self._soap_lock:
            if self._api is None:
                self._login()
            return self._api

    def _login(self) -> None:
        """Log in: the API session on first use; after the datastore interface refused the
        cookie (:class:`imgstore.sessions.Renewal`), a new session of it."""
        from oslo_vmware import api as vmware_api

        with self._soap_lock:
            self._preflight()
            scrub_loggers("suds", self._password)  # suds may have made more loggers now
            with self.mapped(f"logging in to {self.host}:{self.port}"):
                if self._api is None:
                    self._api = vmware_api.VMwareAPISession(
                        self.host, self.user, self._password, self.retry_count,
                        self.poll_interval, port=self.port, cacert=self.ca_file,
                        insecure=self.insecure, pool_size=32,
                    )  # fmt: skip
                else:  # oslo.vmware skips a login while SessionIsActive says yes: force it
                    self._api._session_id = None
                    self._api._create_session()
            self.logins += 1

    def _preflight(self) -> None:
        """Fail fast on TLS or connection errors: oslo.vmware retries a login for ever."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"https://{host}:{self.port}/sdk/vimServiceVersions.xml"
        with self.mapped(f"connecting to {self.host}:{self.port}"):
            self.http.get(url, verify=self.verify, timeout=(30, 60)).close()

    def _current_cookie(self) -> str | None:
        api = self._api
        if api is None:
            return None
        try:
            return str(api.vim.get_http_cookie() or "") or None
        except Exception:
            return None

    def cookie_header(self) -> str:
        """The ``Cookie`` header value for the datastore HTTP interface."""
        self._session()
        cookie = self._current_cookie()
        if cookie is None:
            raise AuthenticationFailed(f"the server at {self.host}:{self.port} set no session")
        return f"{COOKIE_NAME}={cookie}"

    def invoke(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one SOAP call (oslo.vmware re-logs in on NotAuthenticated); map its errors."""
        api = self._session()
        with self._soap_lock, self.mapped(what):
            return fn(api, *args, **kwargs)

    chain_errors = False

    def classify_error(self, exc: BaseException, what: str) -> ImgstoreError:
        """An imgstore exception for an oslo.vmware or requests error (the core scrubs and
        trims its message: trimming here could cut a secret in two)."""
        from oslo_vmware import exceptions as vexc

        detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
        faults = _fault_names(exc)
        if isinstance(exc, vexc.FileNotFoundException) or "FileNotFound" in faults:
            return NotFound(f"{what}: no such file")
        if isinstance(exc, vexc.FileAlreadyExistsException) or "FileAlreadyExists" in faults:
            return Duplicate(f"{what}: the file exists already")
        if "InvalidLogin" in faults or isinstance(exc, vexc.NotAuthenticatedException):
            return AuthenticationFailed(
                f"{what}: the server refused the login of {self.user!r} ({detail})"
            )
        if isinstance(exc, vexc.NoPermissionException) or "NoPermission" in faults:
            return AuthenticationFailed(f"{what}: permission denied ({detail})")
        if isinstance(exc, vexc.NoDiskSpaceException) or "NoDiskSpace" in faults:
            return StorageFull(f"{what}: the datastore is full ({detail})")
        if isinstance(exc, requests.exceptions.SSLError):
            return BackendError(f"{what}: TLS verification failed ({detail})")
        if isinstance(
            exc,
            (
                vexc.VimConnectionException,
                vexc.VimSessionOverLoadException,
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout,
                ConnectionError,
                TimeoutError,
            ),
        ):
            return BackendUnavailable(f"{what}: {detail}")
        return BackendError(f"{what} failed: {detail}")

    # -- inventory ----------------------------------------------------------------------

    def _datacenter(self, path: str) -> Any:
        ref = self._dc_refs.get(path)
        if ref is None:
            ref = self.invoke(
                f"finding datacenter {path!r}",
                lambda api: api.invoke_api(
                    api.vim, "FindByInventoryPath", api.vim.service_content.searchIndex,
                    inventoryPath=path,
                ),
            )  # fmt: skip
            if ref is None:
                raise NotFound(f"no datacenter {path!r} on {self.host}")
            self._dc_refs[path] = ref
        return ref

    def _datastore(self, spec: DatastoreSpec) -> Any:
        key = (spec.datacenter, spec.datastore)
        ref = self._ds_refs.get(key)
        if ref is not None:
            return ref
        from oslo_vmware import vim_util

        try:
            dc = self._datacenter(spec.datacenter)
        except NotFound:
            raise BadConfiguration(
                f"vmware_datastores: no datacenter {spec.datacenter!r} on {self.host}"
            ) from None
        found = self.invoke(
            f"listing the datastores of {spec.datacenter!r}",
            lambda api: api.invoke_api(
                vim_util, "get_object_property", api.vim, dc, "datastore"
            ),
        )  # fmt: skip
        for candidate in getattr(found, "ManagedObjectReference", None) or []:
            name = self.invoke(
                "reading a datastore's name",
                lambda api, ref=candidate: api.invoke_api(
                    vim_util, "get_object_property", api.vim, ref, "summary.name"
                ),
            )  # fmt: skip
            if name == spec.datastore:
                self._ds_refs[key] = candidate
                return candidate
        raise BadConfiguration(
            f"vmware_datastores: no datastore {spec.datastore!r} in datacenter "
            f"{spec.datacenter!r} on {self.host}"
        )

    def _datastore_property(self, spec: DatastoreSpec, name: str, what: str) -> Any:
        """Property ``name`` of datastore ``spec``, as the server reports it now."""
        from oslo_vmware import vim_util

        ref = self._datastore(spec)
        return self.invoke(
            f"{what} of {spec.datastore!r}",
            lambda api: api.invoke_api(vim_util, "get_object_property", api.vim, ref, name),
        )

    def _browser(self, spec: DatastoreSpec) -> Any:
        """The datastore's ``HostDatastoreBrowser``."""
        key = (spec.datacenter, spec.datastore)
        ref = self._browser_refs.get(key)
        if ref is None:
            ref = self._datastore_property(spec, "browser", "finding the file browser")
            self._browser_refs[key] = ref
        return ref

    def free_space(self, spec: DatastoreSpec) -> int:
        """The datastore's free space in bytes, as the server reports it now."""
        return int(self._datastore_property(spec, "summary.freeSpace", "reading the free space"))

    def select_datastore(self, size: int | None) -> DatastoreSpec:
        """Highest weight first; within a weight the most free space; room for ``size``."""
        if not self.datastores:
            raise BadConfiguration(f"backend {self.backend!r}: vmware_datastores is empty")
        return self.with_room(
            self.datastores, lambda s: s.weight, self.free_space, size or 0, "datastore"
        )

    # -- HTTP -----------------------------------------------------------------------------

    def _check(self, location: Location) -> VsphereLocation:
        loc = self.parse(location)
        assert isinstance(loc, VsphereLocation)
        if not self.owns(loc):
            raise BadLocation(
                f"{loc.redacted()} is on another server than backend {self.backend!r} "
                f"({self.host}:{self.port})"
            )
        return loc

    def owns(self, location: Location) -> bool:
        return (
            isinstance(location, VsphereLocation)
            and location.host == self.host
            and (location.port or 443) == self.port
        )

    def datastore_location(self, image_id: str, spec: DatastoreSpec) -> VsphereLocation:
        """Where image ``image_id`` goes on datastore ``spec`` (or a file of that name)."""
        port = None if self.port == 443 else self.port
        return VsphereLocation(
            self.host, port, f"{self.image_dir}/{image_id}", spec.datacenter, spec.datastore
        )

    def request(
        self, method: str, loc: VsphereLocation, what: str, headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:  # fmt: skip
        """One request to the datastore HTTP interface. A 401 (the session ended) renews the
        session and sends the request once more, but for a body, which the first try took."""

        def send(cookie: str) -> requests.Response:
            with self.mapped(what):
                resp = self.http.request(
                    method, loc.https_url(), headers={**(headers or {}), "Cookie": cookie},
                    verify=self.verify, allow_redirects=False, timeout=(30, 300), **kwargs,
                )  # fmt: skip
            if resp.status_code == 401:
                resp.close()
                raise SessionExpired
            return resp

        return self._renewal.call(send, what, again="data" not in kwargs)

    def expect(self, resp: requests.Response, what: str, *ok: int) -> requests.Response:
        """``resp`` when its status is one of ``ok``; else, closed, the error for it."""
        status = resp.status_code
        if status in ok:
            return resp
        resp.close()
        cls = for_status(status)
        detail = {NotFound: "no such file", StorageFull: "the datastore is full"}.get(
            cls, f"the server answered {status}"
        )
        raise cls(f"{what}: {detail}")

    def exists(self, loc: VsphereLocation, what: str) -> bool:
        """Whether a file is at ``loc`` (HEAD)."""
        resp = self.expect(self.request("HEAD", loc, what), what, 200, 404)
        resp.close()
        return resp.status_code == 200

    # -- the driver contract ------------------------------------------------------------

    def begin_write(self, image_id: str, size: int | None) -> Writer:
        spec = self.select_datastore(size)
        loc = self.datastore_location(image_id, spec)
        if self.exists(loc, f"checking {loc.redacted()}"):
            raise self.duplicate(image_id)
        temp = self.datastore_location(partial_name(image_id), spec)
        return VMwarePutWriter(self, loc, temp, size)

    def open(self, location: Location, offset: int, length: int | None) -> ReadStream:
        loc = self._check(location)
        what = f"reading {loc.redacted()}"
        if offset == 0 and length is None:
            resp = self.expect(self.request("GET", loc, what, stream=True), what, 200)
            return HttpStream(resp, _length(resp, what), READ_CHUNK_SIZE, what)
        start, count = clamp_range(self.size(loc), offset, length)
        if count == 0:
            return HttpStream(None, 0, READ_CHUNK_SIZE, what)
        headers = {"Range": f"bytes={start}-{start + count - 1}"}
        resp = self.expect(self.request("GET", loc, what, headers, stream=True), what, 200, 206)
        if resp.status_code == 206:
            return HttpStream(resp, count, READ_CHUNK_SIZE, what)
        LOG.warning(
            "backend %r: the server ignored Range for %s; skipping %d bytes",
            self.backend, loc.redacted(), start,
        )  # fmt: skip
        return HttpStream(resp, count, READ_CHUNK_SIZE, what, skip=start)

    def size(self, location: Location) -> int:
        loc = self._check(location)
        what = f"reading the size of {loc.redacted()}"
        resp = self.expect(self.request("HEAD", loc, what), what, 200)
        resp.close()
        return _length(resp, what)

    def delete(self, location: Location) -> None:
        loc = self._check(location)
        if loc.directory != self.image_dir:
            raise BadLocation(
                f"{loc.redacted()} is not directly inside vmware_store_image_dir "
                f"{self.image_dir!r}: not deleted"
            )
        self.delete_file(loc, f"deleting {loc.redacted()}")

    def _datacenter_of(self, loc: VsphereLocation, what: str) -> Any:
        """The datacenter reference of ``loc`` (None when it names none: ESX)."""
        if loc.datacenter is None:
            return None
        try:
            return self._datacenter(loc.datacenter)
        except NotFound:
            raise NotFound(f"{what}: no datacenter {loc.datacenter!r}") from None

    def wait_for_task(self, api: Any, task: Any) -> Any:
        """The info of ``task`` once it succeeded, or its fault, translated, once it failed.

        Polls after 20 ms, then twice as long each time up to
        ``vmware_task_poll_interval``: oslo.vmware's own wait polls at once and
        then only every interval (5 s by default), which would add seconds to
        every add (its move) on a vCenter that takes a moment for a task, and
        it logs a traceback for every task that fails, Duplicate included.
        """
        from oslo_vmware import exceptions as vexc
        from oslo_vmware import vim_util

        def ended() -> Any:
            info = api.invoke_api(
                vim_util, "get_object_property", api.vim, task, "info", skip_op_id=True
            )
            if info.state == "error":
                raise vexc.translate_fault(info.error)
            return info if info.state == "success" else None

        return poll(ended, first=0.02, cap=self.poll_interval, factor=2.0)

    def _file_task(self, what: str, method: str, **args: Any) -> None:
        """Run ``FileManager.<method>(**args)`` and wait for the task to end."""

        def run(api: Any) -> None:
            manager = api.vim.service_content.fileManager
            self.wait_for_task(api, api.invoke_api(api.vim, method, manager, **args))

        self.invoke(what, run)

    def delete_file(self, loc: VsphereLocation, what: str) -> None:
        """``DeleteDatastoreFile_Task`` on ``loc``; :class:`NotFound` when it is not there."""
        dc = self._datacenter_of(loc, what)
        self._file_task(what, "DeleteDatastoreFile_Task", name=loc.datastore_path, datacenter=dc)

    def move_file(self, source: VsphereLocation, target: VsphereLocation, what: str) -> None:
        """``MoveDatastoreFile_Task`` of ``source`` to ``target``, never overwriting:
        :class:`Duplicate` when ``target`` exists, :class:`NotFound` when ``source`` does not."""
        self._file_task(
            what, "MoveDatastoreFile_Task",
            sourceName=source.datastore_path, sourceDatacenter=self._datacenter_of(source, what),
            destinationName=target.datastore_path,
            destinationDatacenter=self._datacenter_of(target, what), force=False,
        )  # fmt: skip

    # -- what interrupted writes leave ------------------------------------------------

    def partial_files(self, spec: DatastoreSpec) -> list[PartialFile]:
        """The temporary upload files in the image folder of datastore ``spec``
        (``HostDatastoreBrowser.SearchDatastore_Task``)."""
        browser = self._browser(spec)
        folder = f"[{spec.datastore}] {self.image_dir}"

        def run(api: Any) -> Any:
            factory = api.vim.client.factory
            search = factory.create("ns0:HostDatastoreBrowserSearchSpec")
            search.matchPattern = [f"*{PARTIAL_SUFFIX}"]
            details = factory.create("ns0:FileQueryFlags")
            details.fileSize = True
            details.modification = True
            details.fileType = False
            details.fileOwner = False
            search.details = details
            task = api.invoke_api(
                api.vim, "SearchDatastore_Task", browser, datastorePath=folder,
                searchSpec=search,
            )  # fmt: skip
            return self.wait_for_task(api, task)

        try:
            info = self.invoke(f"listing the partial uploads in {folder}", run)
        except NotFound:
            return []  # no image folder: nothing was ever written there
        now = getattr(info, "completeTime", None)  # the server's clock, as the file times
        found = []
        for item in getattr(getattr(info, "result", None), "file", None) or []:
            name = str(getattr(item, "path", ""))
            if type(item).__name__ == "FolderFileInfo" or not is_partial_name(name):
                continue
            try:
                loc = self.datastore_location(name, spec)
            except BadLocation:
                continue
            size = getattr(item, "fileSize", None)
            found.append(
                PartialFile(
                    loc,
                    _age(getattr(item, "modification", None), now),
                    int(size) if size is not None else None,
                )
            )
        return found

    def leftovers(self, older_than: float) -> Iterator[Leftover]:
        """Temporary upload files (``.<id>.<token>.imgstore-partial``) in the image folder
        of each datastore of ``vmware_datastores``, untouched for ``older_than`` s; one
        whose age the server does not tell is listed only when ``older_than`` is 0."""
        for spec in self.datastores:
            for part in self.partial_files(spec):
                if part.age is None and older_than > 0:
                    continue
                if part.age is None or part.age >= older_than:
                    yield Leftover(
                        self.backend, "partial file", part.location.redacted(), part.age,
                        part.size, part.location,
                    )  # fmt: skip

    def remove_leftover(self, leftover: Leftover) -> None:
        loc = leftover.ref
        if not (
            isinstance(loc, VsphereLocation)
            and self.owns(loc)
            and loc.directory == self.image_dir
            and is_partial_name(loc.image_id)
        ):
            raise BadLocation(
                f"{leftover.name} is not a partial upload of backend {self.backend!r}: not removed"
            )
        self.found(self.delete_file, loc, f"removing the partial upload {loc.redacted()}")

    def discard(self, image_id: str) -> bool:
        """Delete image ``image_id`` and the temporary files of unfinished uploads of it,
        on every datastore of ``vmware_datastores``."""
        removed = False
        for spec in self.datastores:
            final = self.datastore_location(image_id, spec)
            doomed = [p.location for p in self.partial_files(spec)
                      if is_partial_name(p.location.image_id, image_id)]  # fmt: skip
            if self.exists(final, f"checking {final.redacted()}"):
                doomed.append(final)
            for loc in doomed:
                removed |= self.found(self.delete_file, loc, f"discarding {loc.redacted()}")
        return removed

    def close(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            try:
                api.logout()
            except Exception:
                LOG.debug("backend %r: logging out failed", self.backend)
        self.http.close()


@dataclasses.dataclass(frozen=True)
class PartialFile:
    """A temporary upload file on a datastore."""

    location: VsphereLocation
    age: float | None
    """Seconds since it was last written, by the server's clock (None: not told)."""
    size: int | None


def _length(resp: requests.Response, what: str) -> int:
    """The ``Content-Length`` of ``resp``, which the datastore interface always sends."""
    length = content_length(resp)
    if length is None:
        resp.close()
        raise BackendError(f"{what}: the server sent no Content-Length")
    return length


def _age(modified: Any, now: Any) -> float | None:
    """Seconds from ``modified`` to ``now`` (the server's time; else this machine's)."""
    if not isinstance(modified, datetime.datetime):
        return None
    try:
        if isinstance(now, datetime.datetime):
            return max(0.0, (now - modified).total_seconds())
        return max(0.0, time.time() - modified.timestamp())
    except (TypeError, ValueError, OverflowError):  # naive against aware
        return None


# -- writing --------------------------------------------------------------------------------


class VMwarePutWriter(FedWriting, Writer):
    """One streaming PUT of a temporary file, fed from another thread; commit moves the
    file to the image's name."""

    def __init__(
        self, driver: VMwareDriver, location: VsphereLocation, temp: VsphereLocation,
        size: int | None,
    ) -> None:  # fmt: skip
        self._driver = driver
        self._location = location
        self._temp = temp
        self.shown = location.redacted()
        self._temp_shown = temp.redacted()
        body = SizedFedBody(size, _QUEUE_DEPTH) if size is not None else FedBody(_QUEUE_DEPTH)
        self._request = FedRequest(self._send, body, "imgstore-vmware-put", f"writing {self.shown}")

    def _send(self) -> None:
        drv, doing = self._driver, f"writing {self._temp_shown}"
        headers = {"Content-Type": "application/octet-stream"}
        resp = drv.request("PUT", self._temp, doing, headers, data=self._request.body)
        resp.close()
        if resp.status_code == 409:
            raise drv.duplicate(self._location.image_id)
        drv.expect(resp, doing, 200, 201)

    def commit(self, size: int) -> Written:
        self._request.finish()
        self._move_into_place()
        return Written(self._location)

    def _move_into_place(self) -> None:
        """Move the uploaded file to the image's name, which must not exist."""
        drv, image_id = self._driver, self._location.image_id
        what = f"moving {self._temp_shown} to {self.shown}"
        started = time.monotonic()
        try:
            drv.move_file(self._temp, self._location, what)
        except Duplicate:
            raise drv.duplicate(image_id) from None
        except NotFound as exc:  # the uploaded file was removed meanwhile
            raise BackendError(f"{exc}: the upload of image {image_id} was lost") from None
        LOG.debug(
            "backend %r: moved %s into place in %.3f s",
            drv.backend, self.shown, time.monotonic() - started,
        )  # fmt: skip

    def abort(self) -> None:
        if not self._request.started:
            return  # nothing was sent
        stored = self._request.sent  # the PUT has ended: no late file to wait for
        self._request.abort()
        self._remove_partial(linger=0.0 if stored else _CLEANUP_WAIT)

    def _remove_partial(self, linger: float) -> None:
        """Delete the temporary file; watch ``linger`` s for a file the server creates late."""
        drv, loc = self._driver, self._temp
        quiet_since = time.monotonic()
        what = f"removing the partial upload {self._temp_shown}"

        def quiet_for_linger() -> bool | None:
            nonlocal quiet_since
            if drv.exists(loc, what):
                with contextlib.suppress(NotFound):
                    drv.delete_file(loc, what)
                quiet_since = time.monotonic()
                return None
            return True if time.monotonic() - quiet_since >= linger else None

        try:
            poll(quiet_for_linger, first=0.05, cap=0.05)
        except ImgstoreError as exc:
            LOG.warning("backend %r: %s", drv.backend, exc)
