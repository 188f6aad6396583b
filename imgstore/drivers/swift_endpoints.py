"""Which Swift storage URLs a caller's token may be sent to.

In multi-tenant mode a location names the storage URL of the account that holds
the image (``swift+https://swift.example/v1/AUTH_<project>/<container>/<object>``),
and the driver sends the caller's token there. A crafted location could name any
host; so a storage URL is reached only when it belongs to one of the caller's
trusted endpoints (the storage URL the caller gave and every object-store endpoint
of its service catalog): the same scheme, host and port, and the same path up to
the account (``/v1`` of ``/v1/AUTH_<project>``), so another project's account on
the same cluster is reachable (an image shared with the caller) and nothing else
is. Hosts are compared as the HTTP driver's network guard reads them
(:func:`imgstore.network_guard.parse_ip_literal`): an address written another
way (``0x7f.1``, ``[::ffff:127.0.0.1]``) is the same address, never a way around.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse
from collections.abc import Iterable

from imgstore.exceptions import BadLocation
from imgstore.location import redact_uri
from imgstore.network_guard import embedded_ipv4, parse_ip_literal

_PORTS = {"http": 80, "https": 443}


@dataclasses.dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int
    base: str
    """The path up to the account: everything before its last segment."""


def _origin(url: str) -> _Origin | None:
    """What of ``url`` must match, or None when it is not a plain http(s) URL."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if (
        scheme not in _PORTS
        or not host
        or parts.username is not None
        or parts.query
        or parts.fragment
        or "%" in parts.path
    ):
        return None
    ip = parse_ip_literal(host)
    if ip is not None:
        inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
        host = str(inner or ip)
    else:
        host = host.rstrip(".").lower()
    path = parts.path.rstrip("/")
    segments = path.split("/")
    if any(s in (".", "..") for s in segments):
        return None
    base = "/".join(segments[:-1]) if len(segments) > 1 else ""
    return _Origin(scheme, host, port or _PORTS[scheme], base)


class StorageEndpoints:
    """The storage URLs a caller trusts; :meth:`check` refuses any other."""

    def __init__(self, urls: Iterable[str]) -> None:
        self.urls = tuple(dict.fromkeys(u.rstrip("/") for u in urls if u))
        self._origins = {o for o in map(_origin, self.urls) if o is not None}

    def check(self, url: str) -> None:
        """:class:`BadLocation` unless ``url`` is on one of the trusted endpoints."""
        origin = _origin(url)
        if origin is None or origin not in self._origins:
            raise BadLocation(
                f"refusing the storage URL {redact_uri(url)!r}: it is not an object-store "
                "endpoint of the caller's service catalog (nor the storage URL the caller "
                "gave), so the caller's token is not sent there"
            )
