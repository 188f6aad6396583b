"""The Cinder driver (``cinder://``): each image is a Cinder volume.

``add`` creates a volume named ``image-<id>`` (size rounded up to whole GiB,
at least 1; unknown size: 1 GiB, then grown by detaching, extending and
re-attaching as data arrives, like glance_store), waits until it is
``available`` within ``cinder_state_transition_timeout``, attaches it through
the attachments API (microversion 3.54) and os-brick, writes the bytes,
detaches, records ``image_size`` in the volume's metadata and marks it
read-only. Any failure detaches and deletes the volume (waiting until Cinder
has removed it), so nothing is left behind: no volume, no attachment.
Volume names need not be unique in Cinder: racing adds of one id each create a
volume, and each checks (before attaching, and again before finishing) that its
volume is the first one created under that name (creation time, then id); the
others get :class:`Duplicate` and delete theirs. An id longer than 249
characters makes ``image-<first 232>-<16 hex of its SHA-256>``, within Cinder's
255-character names.

Reads attach read-only (one attachment per volume shared by the concurrent
readers of this process; an attachment a volume cannot take yet, because it
is attached elsewhere or still detaching, is retried until the transition
timeout) and read at any offset (``READ_RANDOM``). The size comes from the
``image_size`` metadata, not from the GiB-rounded volume size (volumes
without it: the volume size, as in glance_store).

Locations are glance_store's: ``cinder://<volume id>`` and the multi-store
``cinder://<store>/<volume id>``; this driver emits the latter with its
backend name. They hold no credentials.

Authentication: with ``cinder_store_auth_address`` set, Keystone v3 password
auth as ``cinder_store_user_name`` (domain ``cinder_store_user_domain_name``) in
``cinder_store_project_name`` (domain ``cinder_store_project_domain_name``) or,
when both ``cinder_store_application_credential_id`` and ``_secret`` are set
(glance_store's rule), that application credential; the endpoint from the
catalog (``cinder_catalog_info``, ``cinder_os_region_name``) or
``cinder_endpoint_template``. A token is renewed before its end (see
:class:`_RenewBeforeEnd`) and after a 401. Without it, a Cinder running
``auth_strategy = noauth``: the token is ``<user>:<project>`` and the endpoint
``cinder_endpoint_template % {'project_id': <project>}``.

With no service credentials (neither ``cinder_store_auth_address`` nor
``cinder_endpoint_template`` with ``cinder_store_project_name``), each request brings
its caller's own: :meth:`CinderDriver.credentials` (a context manager; glance_store's
cinder store uses the request context's token the same way) takes a Keystone token,
its project id and either the caller's service catalog (Keystone v2 form, as
Glance's request context carries it: ``cinder_catalog_info`` and
``cinder_os_region_name`` pick the endpoint) or ``cinder_endpoint_template``. An
operation keeps the credentials it started with (a read attaches, a write detaches,
after the ``with`` block). Service credentials, where configured, are always used.

Privileges: os-brick runs privileged calls through oslo.privsep, either in a
``privsep-helper`` daemon started with ``cinder_root_helper`` (default:
glance_store's ``sudo glance-rootwrap <rootwrap_config>``; ``env`` when the
process is root) or in this process (``cinder_privsep_mode = in-process``,
needs root). Both are process-wide settings of oslo.privsep.

RBD volumes are read and written through librados (os-brick's
``RBDVolumeIOWrapper``, no kernel mapping; writes in the RBD driver's aio window).
Cinder does not send the cephx key (OSSN-0085) and os-brick then reads
``/etc/ceph/<cluster>.client.<user>.keyring``; ``cinder_rbd_keyring`` names another
keyring file, handed to os-brick in memory (masked in its debug logs). Multi-attach,
iSCSI/FC/NFS connections and online extend are not exercised against a real server here.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import logging
import math
import os
import re
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from typing import Any, NoReturn

from oslo_config import cfg

from imgstore import keystone_catalog
from imgstore.backoff import poll
from imgstore.config import read_option_file
from imgstore.driver import (
    Driver,
    Leftover,
    ReadStream,
    Writer,
    Written,
    clamp_range,
    read_range,
    retries_option,
)
from imgstore.drivers.rbd_aio import READ_DEPTH, AioWindow, aio_read
from imgstore.errnos import for_errno
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    BadConfiguration,
    BadLocation,
    Duplicate,
    ImgstoreError,
    InUse,
    NotFound,
    NotSupported,
    StorageFull,
    for_status,
)
from imgstore.location import Location, after_scheme, register, shown
from imgstore.parallel import Space
from imgstore.sessions import MOST_MARGIN, acting_as, renew_margin

try:
    from cinderclient import api_versions
    from cinderclient import exceptions as cinder_exc
    from cinderclient.v3 import client as cinder_client
    from keystoneauth1 import exceptions as ks_exc
    from keystoneauth1 import identity as ks_identity
    from keystoneauth1 import session as ks_session
    from keystoneauth1 import token_endpoint
except ImportError:  # pragma: no cover - depends on the installed extras
    cinder_client = None

LOG = logging.getLogger(__name__)

GiB = 1 << 30
API_VERSION = "3.54"
"""Attachments API with an attach mode (``rw``/``ro``)."""
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
WRITING_KEY = "imgstore_writing"
"""Volume metadata set while an add writes (its start time); a finished add removes it last."""
_GOING = ("deleting", "error_deleting")
"""Statuses of a volume on its way out: it no longer holds its image id."""
_CALLER_CLIENTS = 16
"""Clients kept for the most recent callers' credentials (no service credentials)."""
VOLUME_NAME_MAX = 255
"""Cinder refuses a longer volume name (400 Bad Request)."""


def volume_name(image_id: str) -> str:
    """The name of the volume holding ``image_id``: ``image-<id>`` as glance_store names
    it, while that fits Cinder's 255 characters; for a longer id (the core allows 255)
    the id is cut and the first 16 hex digits of its SHA-256 keep it apart from every
    other id sharing the head: ``image-<first 232 characters>-<hash>``."""
    name = f"image-{image_id}"
    if len(name) <= VOLUME_NAME_MAX:
        return name
    digest = hashlib.sha256(image_id.encode()).hexdigest()[:16]
    return f"{name[: VOLUME_NAME_MAX - len(digest) - 1]}-{digest}"


_BUSY_RE = re.compile(r"status must be|already attached|attach.*in progress", re.IGNORECASE)


@register
class CinderLocation(Location):
    """``cinder://<volume id>`` or ``cinder://<store>/<volume id>`` (multi-store)."""

    schemes = ("cinder",)

    def __init__(self, volume_id: str, store: str | None = None) -> None:
        if not isinstance(volume_id, str) or not _UUID_RE.match(volume_id):
            raise BadLocation(f"a cinder location needs a volume id (a UUID), not {volume_id!r}")
        if store is not None and (not store or "/" in store):
            raise BadLocation(f"bad store name {store!r} in a cinder location")
        self.volume_id = str(uuid.UUID(volume_id))
        self.store = store

    @classmethod
    def from_uri(cls, uri: str) -> CinderLocation:
        rest = after_scheme(uri, "cinder")
        if any(c in rest for c in "?#@"):
            raise BadLocation(f"a cinder location has no query, fragment or user: {shown(uri)!r}")
        pieces = rest.split("/")
        if len(pieces) > 2:
            raise BadLocation(
                "a cinder location is cinder://<volume id> or cinder://<store>/<volume id>: "
                f"{shown(uri)!r}"
            )
        return cls(pieces[-1], *pieces[:-1])

    def to_uri(self) -> str:
        if self.store is None:
            return f"cinder://{self.volume_id}"
        return f"cinder://{self.store}/{self.volume_id}"


class _Secret(str):
    """A string whose repr and str hide it (os-brick logs its arguments' repr)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


@dataclasses.dataclass(frozen=True)
class _Caller:
    """A request's own credentials: its token and the Cinder endpoint of its project."""

    token: _Secret
    endpoint: str


_CALLER: contextvars.ContextVar[_Caller | None] = contextvars.ContextVar(
    "imgstore_cinder_caller", default=None
)


class _RbdIO:
    """An RBD volume, through librados: the image of os-brick's ``RBDVolumeIOWrapper``.

    Read and written as the RBD driver reads and writes its images
    (:mod:`imgstore.drivers.rbd_aio`): reads a few asynchronous reads ahead (librbd is
    thread-safe, so concurrent readers share one attachment), writes in an aio window,
    at most ``WINDOW`` in flight.
    """

    WINDOW = 8

    def __init__(self, wrapper: Any) -> None:
        self._image = wrapper.rbd_image
        self._aio = AioWindow(self._image, self.WINDOW)

    @property
    def stored(self) -> int | None:
        """Bytes the cluster has acknowledged of those :meth:`pwrite` took."""
        return self._aio.stored

    def chunks(self, offset: int, count: int, size: int) -> Generator[bytes, None, None]:
        """``count`` bytes from ``offset``, in reads of ``size`` bytes."""
        return aio_read(self._image, offset, count, size, READ_DEPTH)

    def space(self, size: int) -> Space | None:
        """A buffer of the aio window, for the core to read the next chunk into."""
        return self._aio.space(size)

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        self._aio.write(memoryview(data), offset)

    def flush(self) -> None:
        """Make what was written durable (a failed write raises its :class:`OSError`)."""
        self._aio.finish()
        self._image.flush()

    def close(self) -> None:
        self._aio.drain()


class _PathIO:
    """A block device or file path (iSCSI, FC, NVMe, a file on an NFS share)."""

    stored = None
    """Every byte :meth:`pwrite` took is with the device once it returns."""

    def __init__(self, path: str, writable: bool) -> None:
        self._fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)

    def space(self, size: int) -> None:
        """None: the device is written synchronously from the core's buffer."""

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def chunks(self, offset: int, count: int, size: int) -> Generator[bytes, None, None]:
        """``count`` bytes from ``offset``, ``size`` at a time, fewer at the device's end."""
        return read_range(self.pread, offset, count, size)

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _device_io(device: dict[str, Any], connection_info: dict[str, Any]) -> _RbdIO | _PathIO:
    """How to do I/O on what os-brick's ``connect_volume`` returned."""
    path = device.get("path")
    if isinstance(path, str):
        data = connection_info.get("data", connection_info)
        fmt = data.get("format", "raw") if isinstance(data, dict) else "raw"
        if fmt not in ("raw", None):
            raise NotSupported(f"volumes in {fmt!r} format cannot be read or written byte-wise")
        writable = connection_info.get("access_mode", "rw") == "rw"
        return _PathIO(path, writable)
    if path is not None and hasattr(path, "rbd_image"):
        return _RbdIO(path)
    raise NotSupported(f"os-brick returned a device this driver cannot use ({type(path).__name__})")


@dataclasses.dataclass
class _Attachment:
    """One attachment of one volume: Cinder's record plus os-brick's connection."""

    attachment_id: str
    connection_info: dict[str, Any]
    connector: Any
    device: dict[str, Any]
    io: _RbdIO | _PathIO = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.io = _device_io(self.device, self.connection_info)


class _RenewBeforeEnd:
    """Mixed into a keystoneauth identity plugin: renew the token
    :func:`imgstore.sessions.renew_margin` before its end (a quarter of its lifetime, at
    most keystoneauth's 120 s), not before every use of a token that lives less than 120 s
    (three logins per Cinder call, each new token validated by Cinder). A token that still
    ends in flight gets a 401, after which keystoneauth's session logs in again and sends
    the request once more (the 401 comes before Cinder acts on it)."""

    MIN_TOKEN_LIFE_SECONDS = MOST_MARGIN

    def get_auth_ref(self, session: Any, **kwargs: Any) -> Any:
        ref = super().get_auth_ref(session, **kwargs)  # type: ignore[misc]
        issued, expires = getattr(ref, "issued", None), getattr(ref, "expires", None)
        if issued is not None and expires is not None:
            self.MIN_TOKEN_LIFE_SECONDS = renew_margin((expires - issued).total_seconds())
        return ref


def _renewing(plugin: type) -> Callable[..., Any]:
    """``plugin`` (a keystoneauth identity plugin class) with :class:`_RenewBeforeEnd`."""
    return type(f"Renewing{plugin.__name__}", (_RenewBeforeEnd, plugin), {"__module__": __name__})


class CinderDriver(Driver):
    """Stores images as Cinder volumes, moved through os-brick."""

    name = "cinder"
    location_class = CinderLocation
    read_ahead = 2  # librbd / pread calls are synchronous

    @classmethod
    def options(cls) -> list[cfg.Opt]:
        return [
            cfg.StrOpt(
                "cinder_catalog_info",
                default="volumev3::publicURL",
                help="<service_type>:<service_name>:<interface> of Cinder in the Keystone "
                "catalog (with cinder_store_auth_address, unless cinder_endpoint_template).",
            ),
            cfg.StrOpt(
                "cinder_endpoint_template",
                help="Cinder's endpoint, with %(project_id)s, e.g. "
                "'http://cinder:8776/v3/%(project_id)s'. Needed without "
                "cinder_store_auth_address (a Cinder with auth_strategy = noauth).",
            ),
            cfg.StrOpt(
                "cinder_os_region_name",
                deprecated_name="os_region_name",
                help="Region of Cinder's endpoint in the catalog.",
            ),
            cfg.StrOpt("cinder_ca_certificates_file", help="CA bundle for https to Cinder."),
            cfg.BoolOpt(
                "cinder_api_insecure",
                default=False,
                help="Do not verify Cinder's TLS certificate.",
            ),
            retries_option("cinder_http_retries"),
            cfg.IntOpt(
                "cinder_state_transition_timeout",
                default=300,
                min=1,
                help="Seconds to wait for a volume to leave a transitional status "
                "(creating, extending, detaching, deleting) or to become attachable.",
            ),
            cfg.StrOpt(
                "cinder_store_auth_address",
                help="Keystone v3 URL; with it, the driver logs in as cinder_store_user_name.",
            ),
            cfg.StrOpt("cinder_store_user_name", help="User to authenticate as."),
            cfg.StrOpt(
                "cinder_store_user_domain_name", default="Default", help="The user's domain."
            ),
            cfg.StrOpt("cinder_store_password", secret=True, help="The user's password."),
            cfg.StrOpt(
                "cinder_store_application_credential_id",
                help="Keystone application credential to log in with instead of the "
                "password (with cinder_store_application_credential_secret; its project "
                "owns the image volumes).",
            ),
            cfg.StrOpt(
                "cinder_store_application_credential_secret",
                secret=True,
                help="The application credential's secret.",
            ),
            cfg.StrOpt(
                "cinder_store_project_name",
                help="Project that owns the image volumes (with noauth: its id, in hex).",
            ),
            cfg.StrOpt(
                "cinder_store_project_domain_name",
                default="Default",
                help="The project's domain.",
            ),
            cfg.StrOpt(
                "rootwrap_config",
                default="/etc/glance/rootwrap.conf",
                help="Rootwrap configuration of the default root helper "
                "'sudo glance-rootwrap <rootwrap_config>'.",
            ),
            cfg.StrOpt(
                "cinder_root_helper",
                help="Command prefix that runs os-brick's privsep-helper and commands as "
                "root, e.g. 'sudo glance-rootwrap /etc/glance/rootwrap.conf' (the default) "
                "or 'env' when this process runs as root.",
            ),
            cfg.StrOpt(
                "cinder_privsep_mode",
                default="daemon",
                choices=[
                    (
                        "daemon",
                        "privileged calls run in a privsep-helper started with cinder_root_helper",
                    ),
                    ("in-process", "privileged calls run in this process (it must be root)"),
                ],
                help="Where os-brick's privileged calls run (a process-wide setting).",
            ),
            cfg.StrOpt(
                "cinder_volume_type",
                help="Volume type of new image volumes; unset: Cinder's default type.",
            ),
            cfg.BoolOpt(
                "cinder_use_multipath",
                default=False,
                help="Attach through multipath where the connection offers it.",
            ),
            cfg.BoolOpt(
                "cinder_enforce_multipath",
                default=False,
                help="Fail an attach when multipathd is not running (with cinder_use_multipath).",
            ),
            cfg.StrOpt(
                "cinder_rbd_keyring",
                help="Keyring file with the cephx key of the user in Cinder's RBD connection "
                "info, handed to os-brick in memory; unset: os-brick reads "
                "/etc/ceph/<cluster>.client.<user>.keyring.",
            ),
            cfg.IntOpt(
                "cinder_rados_connect_timeout",
                default=30,
                min=1,
                help="Seconds os-brick's librados connection waits for the Ceph cluster "
                "(only with cinder_rbd_keyring: set in the ceph.conf os-brick generates).",
            ),
            cfg.StrOpt(
                "cinder_host_ip",
                help="IP address given to Cinder in the connector properties; unset: the "
                "address the host name resolves to.",
            ),
        ]

    # -- setup -----------------------------------------------------------

    def configure(self) -> None:
        if cinder_client is None:
            raise self.not_installed("python-cinderclient and os-brick")
        c = self.conf
        self.timeout = float(c.cinder_state_transition_timeout)
        self.volume_type = c.cinder_volume_type or None
        self._password = c.cinder_store_password or ""
        # glance_store's rule: both set -> the application credential, else the password
        self._app_credential = bool(
            c.cinder_store_application_credential_id
            and c.cinder_store_application_credential_secret
        )
        self._app_secret = c.cinder_store_application_credential_secret or ""
        self._keyring: _Secret | None = None
        self._keys: list[str] = []
        if c.cinder_rbd_keyring:
            keyring = c.cinder_rbd_keyring
            text = read_option_file(self.backend, "cinder_rbd_keyring", keyring, lambda f: f.read())
            self._keys = re.findall(r"^\s*key\s*=\s*(\S+)", text, re.MULTILINE)
            # os-brick writes this text after "[global]" and the monitors into the
            # ceph.conf it generates: the timeout lands in [global]
            timeout = c.cinder_rados_connect_timeout
            self._keyring = _Secret(f"client_mount_timeout = {timeout}\n{text}")
        if c.cinder_store_auth_address:
            missing = [
                n
                for n in ("cinder_store_user_name", "cinder_store_password",
                          "cinder_store_project_name")
                if not c.get(n) and not self._app_credential
            ]  # fmt: skip
            if missing:
                raise BadConfiguration(
                    f"backend {self.backend!r}: cinder_store_auth_address needs "
                    f"{', '.join(missing)}"
                )
        self.per_request = not c.cinder_store_auth_address and not (
            c.cinder_endpoint_template and c.cinder_store_project_name
        )
        if self.per_request:
            LOG.info(
                "backend %r has no service credentials: each request uses its caller's "
                "token (CinderDriver.credentials)",
                self.backend,
            )
        self.root_helper = c.cinder_root_helper or f"sudo glance-rootwrap {c.rootwrap_config}"
        self._client: Any = None
        self._callers: dict[_Caller, Any] = {}
        self._props: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._shared: dict[str, _Shared] = {}
        # they import eventlet: here, not in the thread of the first attach
        self.needs("os-brick", "os_brick.privileged", "os_brick.initiator.connector",
                   "oslo_privsep.priv_context")  # fmt: skip

    def secrets(self) -> list[str]:
        caller = _CALLER.get()
        token = str.__str__(caller.token) if caller is not None else ""
        return [s for s in (self._password, self._app_secret, *self._keys, token) if s]

    @contextlib.contextmanager
    def credentials(
        self,
        token: str,
        project_id: str,
        catalog: list[dict[str, Any]] | None = None,
    ) -> Iterator[None]:
        """Act with a caller's Keystone ``token`` for ``project_id`` inside the block,
        reaching Cinder through ``cinder_endpoint_template`` or the caller's service
        ``catalog`` (Keystone v2 form). Without effect where service credentials are
        configured (they are preferred, as in glance_store)."""
        if not self.per_request:
            yield
            return
        if not token or not project_id:
            raise AuthenticationFailed(
                f"backend {self.backend!r} acts with the caller's credentials: a token "
                "and a project id are needed"
            )
        with acting_as(_CALLER, _Caller(_Secret(token), self._endpoint_for(project_id, catalog))):
            yield

    def _templated(self, project_id: str) -> str:
        """``cinder_endpoint_template`` for ``project_id``."""
        try:
            return str(self.conf.cinder_endpoint_template % {"project_id": project_id})
        except (KeyError, ValueError, TypeError) as exc:
            raise BadConfiguration(
                f"backend {self.backend!r}: bad cinder_endpoint_template: {exc}"
            ) from None

    def _catalog_info(self) -> tuple[str, str | None, str]:
        """Cinder's service type, name (None: any) and interface in a catalog
        (``cinder_catalog_info``)."""
        service_type, name, interface = [*self.conf.cinder_catalog_info.split(":"), "", ""][:3]
        return service_type or "volumev3", name or None, interface or "publicURL"

    def _endpoint_for(self, project_id: str, catalog: list[dict[str, Any]] | None) -> str:
        c = self.conf
        if c.cinder_endpoint_template:
            return self._templated(project_id)
        service_type, name, interface = self._catalog_info()
        return keystone_catalog.required_endpoint(
            catalog, service_type, interface, c.cinder_os_region_name, name,
            missing=f"backend {self.backend!r}: the caller's service catalog has no "
            f"{c.cinder_catalog_info!r} endpoint (cinder_catalog_info, "
            "cinder_os_region_name), and no cinder_endpoint_template is set",
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"<CinderDriver backend={self.backend!r}>"

    def _cinder(self) -> Any:
        """The cinderclient: the service's (one per backend, created on first use) or,
        with no service credentials, one for the caller of :meth:`credentials`."""
        if self.per_request:
            caller = _CALLER.get()
            if caller is None:
                raise AuthenticationFailed(
                    f"backend {self.backend!r} has no service credentials: call it inside "
                    "CinderDriver.credentials(token, project_id, catalog)"
                )
            with self._lock:
                client = self._callers.pop(caller, None)
                if client is None:
                    client = self._client_for(
                        self._session(token_endpoint.Token(caller.endpoint, caller.token))
                    )
                self._callers[caller] = client  # the most recent last
                while len(self._callers) > _CALLER_CLIENTS:
                    del self._callers[next(iter(self._callers))]
            return client
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _session(self, auth: Any) -> Any:
        c = self.conf
        verify: bool | str = True
        if c.cinder_api_insecure:
            verify = False
        elif c.cinder_ca_certificates_file:
            verify = c.cinder_ca_certificates_file
        return ks_session.Session(auth=auth, verify=verify)

    def _client_for(self, session: Any, **kwargs: Any) -> Any:
        c = self.conf
        return cinder_client.Client(
            session=session,
            region_name=c.cinder_os_region_name,
            retries=c.cinder_http_retries,
            api_version=api_versions.APIVersion(API_VERSION),
            **kwargs,
        )

    def _make_client(self) -> Any:
        c = self.conf
        kwargs: dict[str, Any] = {}
        auth: Any
        if c.cinder_store_auth_address:
            if self._app_credential:
                auth = _renewing(ks_identity.V3ApplicationCredential)(
                    auth_url=c.cinder_store_auth_address,
                    application_credential_id=c.cinder_store_application_credential_id,
                    application_credential_secret=c.cinder_store_application_credential_secret,
                )
            else:
                auth = _renewing(ks_identity.V3Password)(
                    auth_url=c.cinder_store_auth_address,
                    username=c.cinder_store_user_name,
                    password=c.cinder_store_password,
                    user_domain_name=c.cinder_store_user_domain_name,
                    project_name=c.cinder_store_project_name,
                    project_domain_name=c.cinder_store_project_domain_name,
                )
            session = self._session(auth)
            if c.cinder_endpoint_template:
                project_id = self.call_mapped(
                    "logging in to Keystone", auth.get_project_id, session
                )
                kwargs["endpoint_override"] = self._templated(project_id)
            else:
                service_type, name, interface = self._catalog_info()
                kwargs.update(service_type=service_type, service_name=name, interface=interface)
            return self._client_for(session, **kwargs)
        project = c.cinder_store_project_name
        token = f"{c.cinder_store_user_name or 'imgstore'}:{project}"
        return self._client_for(
            self._session(token_endpoint.Token(endpoint=self._templated(project), token=token))
        )

    def _connector_properties(self) -> dict[str, Any]:
        """os-brick's description of this host (computed once)."""
        with self._lock:
            if self._props is not None:
                return self._props
            from os_brick import privileged
            from os_brick.initiator import connector
            from oslo_privsep import priv_context

            if self.conf.cinder_privsep_mode == "in-process":
                privileged.default.set_client_mode(False)
            priv_context.init(root_helper=shlex.split(self.root_helper))
            host = socket.gethostname()
            ip = self.conf.cinder_host_ip or _host_ip(host)
            try:
                self._props = dict(
                    connector.get_connector_properties(
                        self.root_helper,
                        ip,
                        self.conf.cinder_use_multipath,
                        self.conf.cinder_enforce_multipath,
                        host=host,
                    )
                )
            except Exception as exc:
                raise BackendError(
                    f"backend {self.backend!r}: os-brick cannot describe this host "
                    f"({type(exc).__name__}: {exc}); check cinder_root_helper / "
                    "cinder_privsep_mode"
                ) from None
            return self._props

    # -- errors ------------------------------------------------------------

    chain_errors = False

    def library_errors(self) -> tuple[type[BaseException], ...]:
        return (cinder_exc.ClientException, ks_exc.ClientException)

    def classify_error(self, exc: BaseException, doing: str) -> ImgstoreError:
        """The imgstore error of a cinderclient/keystoneauth error: of its HTTP status
        (:func:`imgstore.exceptions.for_status`; 413 is Cinder's over-quota), unavailable
        when the server could not be reached (the core scrubs the message)."""
        msg = self.failed(doing, exc)
        if isinstance(exc, cinder_exc.ConnectionError | ks_exc.ConnectionError):
            return BackendUnavailable(msg)
        status = int(getattr(exc, "code", None) or getattr(exc, "http_status", None) or 0)
        return StorageFull(msg) if status == 413 else for_status(status)(msg)

    # -- volumes -------------------------------------------------------------

    def _get(self, volume_id: str) -> Any:
        return self.call_mapped(
            f"looking up volume {volume_id}", self._cinder().volumes.get, volume_id
        )

    def _wait(self, volume_id: str, transitional: tuple[str, ...], expected: str) -> None:
        """Poll until the volume leaves the ``transitional`` statuses; it must then be
        ``expected`` (``gone``: Cinder has no such volume any more, as after a delete that
        did not end in ``error_deleting``)."""
        status = "unknown"

        def settled() -> str | None:
            nonlocal status
            try:
                status = self._get(volume_id).status
            except NotFound:
                if expected != "gone":
                    raise
                status = "gone"
            return None if status in transitional else status

        def too_long() -> NoReturn:
            raise BackendUnavailable(
                f"backend {self.backend!r}: volume {volume_id} is still {status!r} "
                f"after {self.timeout:g} s (cinder_state_transition_timeout)"
            )

        if poll(settled, self.timeout, too_long) != expected:
            raise BackendError(
                f"backend {self.backend!r}: volume {volume_id} is {status!r}, expected {expected!r}"
            )

    def _remove_volume(self, volume_id: str, quiet: bool = True) -> None:
        """Delete a volume we created (cleanup), whatever its status; quiet: log, never raise
        (else the core reports what failed)."""
        cinder = self._cinder()
        try:
            with contextlib.suppress(cinder_exc.NotFound):
                for att in cinder.attachments.list(search_opts={"volume_id": volume_id}):
                    with contextlib.suppress(cinder_exc.NotFound):
                        cinder.attachments.delete(att.id)
            try:
                cinder.volumes.delete(volume_id)
            except cinder_exc.NotFound:
                return
            except cinder_exc.BadRequest:
                # stuck in a transitional status (creating, extending...): admin force-delete
                cinder.volumes.force_delete(volume_id)
            self._wait(volume_id, ("deleting",), "gone")
        except Exception:
            if not quiet:
                raise
            LOG.warning(
                "backend %r: cleanup: cannot delete volume %s; delete it by hand",
                self.backend,
                volume_id,
                exc_info=True,
            )

    # -- attachments -----------------------------------------------------------

    def _attach(self, volume_id: str, mode: str) -> _Attachment:
        """Attach ``volume_id`` to this host in ``mode`` (rw/ro) and connect it with os-brick."""
        from os_brick.initiator import connector as brick

        props = self._connector_properties()
        cinder = self._cinder()
        doing = f"attaching volume {volume_id}"
        busy: Exception | None = None

        def attached() -> Any:
            nonlocal busy
            try:
                return cinder.attachments.create(volume_id, None, mode=mode)
            except (cinder_exc.ClientException, ks_exc.ClientException) as exc:
                # attached elsewhere (not multi-attach) or still detaching: wait for it
                if not (isinstance(exc, cinder_exc.BadRequest) and _BUSY_RE.search(str(exc))):
                    raise self.map_error(exc, doing) from None
                busy = exc
                return None

        def too_long() -> NoReturn:
            assert busy is not None
            raise self.map_error(busy, doing) from None

        att = poll(attached, self.timeout, too_long, cap=1.0)
        att_id = att["id"] if isinstance(att, dict) else att.id
        connector = device = None
        info: dict[str, Any] | None = None
        try:
            info = dict(
                self.call_mapped(doing, cinder.attachments.update, att_id, props).connection_info
            )
            if info.get("driver_volume_type") == "rbd" and self._keyring is not None:
                info["keyring"] = self._keyring
            if info.get("encrypted"):
                raise NotSupported(f"volume {volume_id} is encrypted; images cannot be on it")
            try:
                connector = brick.InitiatorConnector.factory(
                    info["driver_volume_type"],
                    self.root_helper,
                    conn=info,
                    use_multipath=self.conf.cinder_use_multipath,
                    device_scan_attempts=3,
                )
                device = connector.connect_volume(info)
            except Exception as exc:
                raise BackendError(
                    f"backend {self.backend!r}: os-brick cannot connect volume {volume_id} "
                    f"({info.get('driver_volume_type')}): {type(exc).__name__}: "
                    f"{_brick_message(exc)}"
                ) from None
            self.call_mapped(doing, cinder.attachments.complete, att_id)
            return _Attachment(att_id, info, connector, device)
        except BaseException:
            self._disconnect(volume_id, att_id, info, connector, device)
            raise

    def _disconnect(
        self, volume_id: str, att_id: str, info: Any, connector: Any, device: Any
    ) -> None:
        """Disconnect with os-brick, then delete the attachment; log failures, never raise."""
        if connector is not None and device is not None:
            try:
                connector.disconnect_volume(info, device, force=True)
            except Exception:
                LOG.warning(
                    "backend %r: os-brick could not disconnect volume %s",
                    self.backend,
                    volume_id,
                    exc_info=True,
                )
        try:
            self._cinder().attachments.delete(att_id)
        except cinder_exc.NotFound:
            pass
        except Exception:
            LOG.warning(
                "backend %r: cannot delete attachment %s of volume %s",
                self.backend,
                att_id,
                volume_id,
                exc_info=True,
            )

    def _detach(self, volume_id: str, att: _Attachment) -> None:
        with contextlib.suppress(Exception):
            att.io.close()
        self._disconnect(volume_id, att.attachment_id, att.connection_info, att.connector,
                         att.device)  # fmt: skip

    def _acquire_ro(self, volume_id: str) -> tuple[_Shared, _Attachment]:
        """A read-only attachment of ``volume_id`` shared by this process's readers."""
        with self._lock:
            shared = self._shared.setdefault(volume_id, _Shared())
            shared.users += 1
        try:
            with shared.lock:
                if shared.attachment is None:
                    shared.attachment = self._attach(volume_id, "ro")
                return shared, shared.attachment
        except BaseException:
            self._release_ro(volume_id, shared)
            raise

    def _release_ro(self, volume_id: str, shared: _Shared) -> None:
        with self._lock:
            shared.users -= 1
            last = shared.users == 0
            if last and self._shared.get(volume_id) is shared:
                del self._shared[volume_id]
        if last:
            with shared.lock:
                att, shared.attachment = shared.attachment, None
                if att is not None:
                    self._detach(volume_id, att)

    # -- locations -------------------------------------------------------------

    def owns(self, location: Location) -> bool:
        if not isinstance(location, CinderLocation):
            return False
        return location.store is None or location.store == self.backend

    def _volume_of(self, location: Location) -> Any:
        assert isinstance(location, CinderLocation)
        return self._get(location.volume_id)

    @staticmethod
    def _image_size(volume: Any) -> int:
        recorded = (volume.metadata or {}).get("image_size")
        if recorded is not None:
            try:
                return int(recorded)
            except ValueError:
                raise BackendError(
                    f"volume {volume.id} has a bad image_size metadata {recorded[:40]!r}"
                ) from None
        return int(volume.size) * GiB  # glance_store's fallback

    def volume_belongs(self, volume_id: str) -> bool:
        """Whether volume ``volume_id`` is of this backend's ``cinder_volume_type`` (of
        Cinder's default type when that is unset); False when Cinder has no such volume.
        This is how glance_store tells which backend a legacy ``cinder://<volume>``
        location belongs to."""
        try:
            volume = self._get(volume_id)
        except NotFound:
            return False
        wanted = self.volume_type
        if wanted is None:
            default = self.call_mapped(
                "reading the default volume type", self._cinder().volume_types.default
            )
            wanted = default.name
        return bool(volume.volume_type == wanted)

    # -- operations --------------------------------------------------------------

    def _named(self, name: str) -> list[Any]:
        """The volumes of the project named ``name`` that are not being deleted."""
        found = self.call_mapped(
            "listing volumes",
            self._cinder().volumes.list,
            search_opts={"name": name, "all_tenants": 0},
        )
        return [v for v in found if v.name == name and v.status not in _GOING]

    def _check_claim(self, image_id: str, volume_id: str) -> None:
        """Raise Duplicate unless ``volume_id`` is the first volume created for
        ``image_id``: Cinder names need not be unique, so racing adds of one id all
        pass the look-up in :meth:`begin_write` and each creates a volume. Every one of
        them agrees on the first (creation time, then id): only its add goes on."""
        named = self._named(volume_name(image_id))
        first = min(named, key=lambda v: (str(v.created_at or ""), str(v.id)), default=None)
        if first is None or first.id != volume_id:
            raise Duplicate(
                f"image {image_id} already exists in backend {self.backend!r} "
                f"(volume {first.id if first is not None else '?'} was created for it first)"
            )

    def begin_write(self, image_id: str, size: int | None) -> Writer:
        name = volume_name(image_id)
        cinder = self._cinder()
        if self._named(name):
            raise self.duplicate(image_id)
        size_gb = max(1, math.ceil((size or 0) / GiB))
        try:
            volume = self.call_mapped(
                f"creating a volume for image {image_id}", cinder.volumes.create, size_gb,
                name=name, volume_type=self.volume_type,
                metadata={"glance_image_id": image_id, WRITING_KEY: f"{time.time():.3f}"},
            )  # fmt: skip
        except NotFound as exc:  # the only thing create looks up is the type
            raise BadConfiguration(f"{exc} (cinder_volume_type {self.volume_type!r})") from None
        try:
            self._wait(volume.id, ("creating",), "available")
            self._check_claim(image_id, volume.id)  # before the costly attach and write
            att = self._attach(volume.id, "rw")
        except BaseException:
            self._remove_volume(volume.id)
            raise
        LOG.debug("backend %r: writing image %s to volume %s", self.backend, image_id, volume.id)
        return CinderWriter(self, image_id, volume.id, size_gb, att)

    def open(self, location: Location, offset: int, length: int | None) -> ReadStream:
        volume = self._volume_of(location)
        start, count = clamp_range(self._image_size(volume), offset, length)
        return CinderStream(self, volume.id, start, count, self.chunk_size)

    def size(self, location: Location) -> int:
        return self._image_size(self._volume_of(location))

    def delete(self, location: Location) -> None:
        assert isinstance(location, CinderLocation)
        volume_id = location.volume_id
        try:
            self._cinder().volumes.delete(volume_id)
        except (cinder_exc.ClientException, ks_exc.ClientException) as exc:
            attached = "attach" in str(exc) or "in-use" in str(exc)
            if isinstance(exc, cinder_exc.BadRequest) and attached:
                raise InUse(
                    f"backend {self.backend!r}: volume {volume_id} is attached (being read?); "
                    "it was left as it was"
                ) from None
            raise self.map_error(exc, f"deleting volume {volume_id}") from None
        self._wait(volume_id, ("deleting",), "gone")

    def leftovers(self, older_than: float) -> Iterator[Leftover]:
        """Volumes of the project still flagged as being written (metadata ``imgstore_writing``).

        Only this driver sets that flag, and a finished add removes it last, so
        volumes made by others are never listed.
        """
        volumes = self.call_mapped("listing volumes", self._cinder().volumes.list)
        now = time.time()
        for vol in volumes:
            started = (vol.metadata or {}).get(WRITING_KEY)
            if started is None or vol.status in _GOING:
                continue
            listed, age = Leftover.aged(started, now, older_than)
            if listed:
                yield Leftover(
                    self.backend, "unfinished volume", f"volume {vol.id} ({vol.name})", age,
                    int(vol.size) * GiB, vol.id,
                )  # fmt: skip

    def remove_leftover(self, leftover: Leftover) -> None:
        volume_id = str(leftover.ref)
        try:
            volume = self._get(volume_id)
        except NotFound:
            return
        if WRITING_KEY not in (volume.metadata or {}):
            return  # its add finished after all: not a leftover
        self._remove_volume(volume_id, quiet=False)

    def close(self) -> None:
        with self._lock:
            shared, self._shared = list(self._shared.items()), {}
            self._client = None
        for volume_id, entry in shared:
            with entry.lock:
                att, entry.attachment = entry.attachment, None
            if att is not None:
                self._detach(volume_id, att)


@dataclasses.dataclass
class _Shared:
    """A read-only attachment and how many readers use it."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    users: int = 0
    attachment: _Attachment | None = None


def _brick_message(exc: Exception) -> str:
    # os-brick's BrickException often says only "An unknown exception occurred."
    # while the real reason is in its cause
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text


def _host_ip(host: str) -> str:
    for family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            return str(socket.getaddrinfo(host, None, family)[0][4][0])
    return "127.0.0.1"


def _io_error(exc: OSError, backend: str, doing: str) -> ImgstoreError:
    """The imgstore error of a failed read or write on an attached volume (by its errno)."""
    return for_errno(exc.errno)(f"backend {backend!r}: {doing} failed: {exc.strerror or exc}")


class CinderWriter(Writer):
    """Writes one image into its volume, growing the volume when the size is unknown."""

    def __init__(
        self, driver: CinderDriver, image_id: str, volume_id: str, size_gb: int, att: _Attachment
    ) -> None:
        self._driver = driver
        self._image_id = image_id
        self._volume_id = volume_id
        self._size_gb = size_gb
        self._att: _Attachment | None = att
        self._offset = 0
        self._attached_at = 0
        """Where the current attachment's writes began (what came before is flushed)."""
        self._caller = _CALLER.get()  # the credentials the add started with

    @property
    def accepted(self) -> int:
        """Bytes the volume has acknowledged (RBD writes still in flight are not)."""
        att = self._att
        stored = att.io.stored if att is not None else None
        return self._offset if stored is None else self._attached_at + stored

    def _flush_and_detach(self) -> None:
        """Make what was written durable, and detach the volume (also when that fails)."""
        att, self._att = self._att, None
        assert att is not None
        try:
            att.io.flush()
        except OSError as exc:
            raise _io_error(
                exc, self._driver.backend, f"writing volume {self._volume_id}"
            ) from None
        finally:
            self._driver._detach(self._volume_id, att)

    def _grow(self, needed: int) -> None:
        """Detach, extend the volume by at least 1 GiB to hold ``needed`` bytes, re-attach."""
        drv, vid = self._driver, self._volume_id
        self._flush_and_detach()
        drv._wait(vid, ("detaching", "in-use"), "available")
        new_gb = max(self._size_gb + 1, math.ceil(needed / GiB))
        LOG.debug("backend %r: extending volume %s to %d GiB", drv.backend, vid, new_gb)
        drv.call_mapped(f"extending volume {vid}", drv._cinder().volumes.extend, vid, new_gb)
        drv._wait(vid, ("extending",), "available")
        self._size_gb = new_gb
        self._att = drv._attach(vid, "rw")
        self._attached_at = self._offset

    def space(self, size: int) -> Space | None:
        return None if self._att is None else self._att.io.space(size)

    def write(self, chunk: memoryview) -> None:
        n = len(chunk)
        if self._offset + n > self._size_gb * GiB:
            with acting_as(_CALLER, self._caller):
                self._grow(self._offset + n)
        assert self._att is not None
        try:
            self._att.io.pwrite(chunk, self._offset)
        except OSError as exc:
            raise _io_error(
                exc, self._driver.backend, f"writing volume {self._volume_id}"
            ) from None
        self._offset += n

    def commit(self, size: int) -> Written:
        drv, vid = self._driver, self._volume_id
        with acting_as(_CALLER, self._caller):
            self._flush_and_detach()
            cinder = drv._cinder()
            drv._wait(vid, ("detaching", "in-use"), "available")
            # again: a racing add's volume created in the same instant may not have been
            # listed yet at the first check; now it is (the loser's abort removes its volume)
            drv._check_claim(self._image_id, vid)
            drv.call_mapped(
                f"recording the size of volume {vid}",
                cinder.volumes.set_metadata,
                vid,
                {"image_size": str(size)},
            )
            drv.call_mapped(
                f"marking volume {vid} read-only", cinder.volumes.update_readonly_flag, vid, True
            )
            drv.call_mapped(
                f"finishing volume {vid}", cinder.volumes.delete_metadata, vid, [WRITING_KEY]
            )
        return Written(CinderLocation(vid, drv.backend), {"volume_id": vid})

    def abort(self) -> None:
        att, self._att = self._att, None
        with acting_as(_CALLER, self._caller):
            if att is not None:
                self._driver._detach(self._volume_id, att)
            self._driver._remove_volume(self._volume_id)


class CinderStream(ReadStream):
    """Reads ``count`` bytes from ``offset`` of a volume through a shared ro attachment."""

    def __init__(
        self, driver: CinderDriver, volume_id: str, offset: int, count: int, chunk: int
    ) -> None:
        self._driver = driver
        self._volume_id = volume_id
        self._offset = offset
        self.size = count
        self._chunk = chunk
        self._shared: _Shared | None = None
        self._reads: Generator[bytes, None, None] | None = None
        self._caller = _CALLER.get()  # the credentials the read started with

    def __iter__(self) -> Iterator[bytes]:
        if self.size == 0:
            return
        drv = self._driver
        with acting_as(_CALLER, self._caller):
            self._shared, att = drv._acquire_ro(self._volume_id)
        self._reads = att.io.chunks(self._offset, self.size, self._chunk)
        try:
            yield from self._reads  # a volume ending short: the core's reader reports it
        except OSError as exc:
            raise _io_error(exc, drv.backend, f"reading volume {self._volume_id}") from None

    def close(self) -> None:
        reads, self._reads = self._reads, None
        if reads is not None:
            with contextlib.suppress(ValueError):  # still running on the read-ahead thread
                reads.close()  # the reads in flight finish before the volume is detached
        shared, self._shared = self._shared, None
        if shared is not None:
            with acting_as(_CALLER, self._caller):
                self._driver._release_ro(self._volume_id, shared)

    def __repr__(self) -> str:
        return f"<CinderStream volume={self._volume_id} size={self.size}>"
