"""A caller's Keystone service catalog: where a per-request driver finds its service.

Image services hand a driver the service catalog of the request's token (Glance's
``context.service_catalog``, Keystone v2 form as keystonemiddleware passes it on;
v3 entries, with ``url`` and ``interface``, are read too). The drivers that act with
the caller's credentials (Cinder, multi-tenant Swift) take their endpoint from it,
and Swift checks every storage URL a location names against all of its endpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from imgstore.exceptions import BadConfiguration

_V2_INTERFACES = ("publicURL", "internalURL", "adminURL")
_V3_INTERFACES = {"public": "publicURL", "internal": "internalURL", "admin": "adminURL"}


def _entries(
    catalog: Iterable[Any] | None, service_type: str, service_name: str | None = None
) -> list[Mapping[str, Any]]:
    """The endpoint entries of every service of ``service_type`` (and ``service_name``,
    when given) in ``catalog``."""
    found: list[Mapping[str, Any]] = []
    for service in catalog or ():
        if not isinstance(service, Mapping) or service.get("type") != service_type:
            continue
        if service_name is None or service.get("name") == service_name:
            found.extend(e for e in service.get("endpoints") or () if isinstance(e, Mapping))
    return found


def _region(entry: Mapping[str, Any]) -> str | None:
    region = entry.get("region") or entry.get("region_id")
    return str(region) if region else None


def endpoint_url(
    catalog: Iterable[Any] | None,
    service_type: str,
    interface: str = "publicURL",
    region: str | None = None,
    service_name: str | None = None,
) -> str | None:
    """The URL of the first ``service_type`` endpoint of ``interface`` (``publicURL``,
    ``internalURL``, ``adminURL``, or Keystone v3's ``public``...) in ``region`` (any
    when None), or None."""
    interface = _V3_INTERFACES.get(interface, interface)
    for entry in _entries(catalog, service_type, service_name):
        if region and _region(entry) != region:
            continue
        url = entry.get(interface)
        if url is None and _V3_INTERFACES.get(str(entry.get("interface"))) == interface:
            url = entry.get("url")
        if url:
            return str(url)
    return None


def required_endpoint(
    catalog: Iterable[Any] | None,
    service_type: str,
    interface: str = "publicURL",
    region: str | None = None,
    service_name: str | None = None,
    *,
    missing: str,
) -> str:
    """:func:`endpoint_url`, where a catalog without it is :class:`BadConfiguration`
    (``missing``: its message)."""
    url = endpoint_url(catalog, service_type, interface, region, service_name)
    if url is None:
        raise BadConfiguration(missing)
    return url


def endpoint_urls(catalog: Iterable[Any] | None, service_type: str) -> list[str]:
    """Every URL the catalog gives for ``service_type``, of any interface and region."""
    urls: list[str] = []
    for entry in _entries(catalog, service_type):
        for key in (*_V2_INTERFACES, "url"):
            url = entry.get(key)
            if url and str(url) not in urls:
                urls.append(str(url))
    return urls
