"""SSRF guard: which addresses a user-supplied URL may reach, for every driver that
connects where a location says (the HTTP driver; Swift's multi-tenant storage URLs,
through :mod:`imgstore.drivers.swift_endpoints`).

Image services hand user-supplied URLs to the HTTP driver, so by default it
refuses any target that is not a globally routable unicast address: loopback,
private (RFC 1918, unique-local), link-local (incl. cloud metadata at
169.254.169.254), multicast, unspecified, broadcast, shared (CGNAT),
documentation/benchmark and reserved ranges, in IPv4 and IPv6. IPv6 forms
that embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
``::a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``, Teredo) are judged
by the embedded address. Host names written as numbers the way ``inet_aton``
reads them (``2130706433``, ``0x7f.1``, ``017700000001``, ``127.1``) are
parsed as the address they mean.

The guard resolves a host name once and returns the checked addresses; the
HTTP driver connects to exactly those (see :mod:`imgstore.drivers.http`), so
a DNS answer that changes between check and connect (DNS rebinding) cannot
redirect the connection. Every redirect hop goes through the same check.

Operators (and our tests) reach internal servers with an allow-list of CIDR
networks and host names (``http_allowed_networks``).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Iterable

from imgstore.exceptions import BackendUnavailable, BadConfiguration, BadLocation

LOG = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges refused on top of what ipaddress flags (its tables differ between
# Python versions, so the important ones are listed explicitly).
_BLOCKED: list[tuple[str, str]] = [
    ("0.0.0.0/8", "'this network' (unspecified)"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("2001:10::/28", "ORCHID"),
    ("2001:20::/28", "ORCHIDv2"),
    ("fc00::/7", "unique-local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
]
_BLOCKED_NETS = [(ipaddress.ip_network(net), why) for net, why in _BLOCKED]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPAT = ipaddress.ip_network("::/96")

_FLAGGED = ("loopback", "private", "link_local", "multicast", "unspecified", "reserved")
"""What else ``ipaddress`` flags as not to be reached (``is_<flag>``)."""

_INET_PART = re.compile(r"^(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` denotes when it is an IP literal in any spelling, else None.

    Accepts bracketed or bare IPv6 (with a zone id) and every IPv4 form the
    classic ``inet_aton`` accepts: 1 to 4 parts, each decimal, octal
    (leading 0) or hex (0x), the last part filling the remaining bytes.
    """
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        try:
            return ipaddress.IPv6Address(h)
        except ValueError:
            return None
    parts = h.split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_PART.match(p) for p in parts):
        return None
    try:  # the forms are checked above (inet_aton takes trailing text); it checks the ranges
        return ipaddress.IPv4Address(socket.inet_aton(h))
    except OSError:
        return None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64, Teredo)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client address; the server part is checked by its own prefix
    if ip in _NAT64 or (ip in _V4_COMPAT and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _unscoped(ip: IPAddress) -> IPAddress:
    """``ip`` without its IPv6 zone id (``fe80::1%eth0`` is ``fe80::1``)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    return ip


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be reached by default, or None when it is a global unicast address."""
    ip = _unscoped(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            why = forbidden_reason(inner)
            return f"{why} (embedded in {ip})" if why else None
    for net, why in _BLOCKED_NETS:
        if ip.version == net.version and ip in net:
            return why
    for flag in _FLAGGED:
        if getattr(ip, f"is_{flag}"):
            return flag.replace("_", "-")
    if not ip.is_global:
        return "not globally routable"
    return None


class NetworkGuard:
    """Decides which hosts the HTTP driver may connect to, and resolves them once.

    ``allowed`` holds CIDR networks (``127.0.0.0/8``, ``::1``) and host names
    (``images.internal``) that are reachable even though they would be refused.
    """

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed_networks: list[IPNetwork] = []
        self.allowed_names: set[str] = set()
        for entry in allowed:
            entry = entry.strip()
            if not entry:
                continue
            try:
                self.allowed_networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.rstrip(".").lower()
            if not re.match(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$", name) or "/" in entry:
                raise BadConfiguration(
                    f"http_allowed_networks: {entry!r} is neither a network (CIDR) nor a host name"
                )
            self.allowed_names.add(name)

    def _allowed_ip(self, ip: IPAddress) -> bool:
        """Whether ``ip``, or the IPv4 address it embeds, is in an allowed network."""
        ip = _unscoped(ip)
        inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
        candidates = [ip] if inner is None else [ip, inner]
        return any(
            a.version == net.version and a in net
            for a in candidates
            for net in self.allowed_networks
        )

    def check_ip(self, ip: IPAddress, host: str) -> None:
        """:class:`BadLocation` when ``ip`` (an address of ``host``) may not be reached."""
        if self._allowed_ip(ip):
            return
        why = forbidden_reason(ip)
        if why:
            raise BadLocation(
                f"refusing to connect to {host!r}: it is {ip}, a {why} address; "
                "add it to http_allowed_networks if this store should reach it"
            )

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` to connect to, every one of them checked.

        An IP literal (any spelling) is used as is, without DNS. A name is
        resolved once; if any of its addresses is refused, the host is refused.
        """
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host.rstrip(".")
        literal = parse_ip_literal(bare)
        if literal is not None:
            self.check_ip(literal, host)
            return [str(literal)]
        name_allowed = bare.lower() in self.allowed_names
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise BackendUnavailable(f"cannot resolve host {host!r}: {exc}") from None
        addresses: list[str] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            text = str(sockaddr[0])
            ip = ipaddress.ip_address(text)
            if not name_allowed:
                self.check_ip(ip, host)
            if text not in addresses:
                addresses.append(text)
        if not addresses:
            raise BackendUnavailable(f"host {host!r} has no address")
        LOG.debug("resolved %s to %s", host, ", ".join(addresses))
        return addresses
