"""Test-only: resolve "localhost." (Glance's SSRF filter looks it up) without DNS.

Put on PYTHONPATH only for Glance's functional suite: machines without a DNS
resolver cannot resolve the fully-qualified "localhost."; this maps exactly
that name to "localhost" (loopback) and changes nothing else.
"""

import socket

_getaddrinfo = socket.getaddrinfo


def _patched(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if isinstance(host, str) and host.lower() == "localhost.":
        host = "localhost"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _patched
