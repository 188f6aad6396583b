"""The HTTP driver's SSRF guard and location parsing (no network: literals and /etc/hosts only)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from imgstore import BackendUnavailable, BadConfiguration, BadLocation
from imgstore.drivers.http import HttpLocation, _strip_userinfo
from imgstore.location import parse
from imgstore.network_guard import NetworkGuard, forbidden_reason, parse_ip_literal

# host as written in a URL -> the address it means, or None when it is not an IP literal
SPELLINGS = [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0X7F000001", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0177.0.0.01", "127.0.0.1"),
    ("0x7f.0x0.0x0.0x1", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("0x", None),
    ("10.1", "10.0.0.1"),
    ("3232235777", "192.168.1.1"),
    ("0xa9fea9fe", "169.254.169.254"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("[::1]", "::1"),
    ("::ffff:127.0.0.1", "::ffff:7f00:1"),
    ("[0:0:0:0:0:ffff:7f00:1]", "::ffff:7f00:1"),
    ("8.8.8.8", "8.8.8.8"),
    ("1.2.3.4.5", None),
    ("256.1.1.1", None),
    ("1.2.3.256", None),
    ("4294967296", None),
    ("08.1.1.1", None),
    ("0x1g.1", None),
    ("example.com", None),
    ("127.0.0.1x", None),
    ("", None),
]


@pytest.mark.parametrize(("host", "expected"), SPELLINGS)
def test_ip_literal_spellings(host: str, expected: str | None) -> None:
    got = parse_ip_literal(host)
    assert (str(got) if got is not None else None) == expected


def test_spellings_agree_with_inet_aton() -> None:
    """Our parser reads IPv4 spellings exactly as the C library does."""
    for host, expected in SPELLINGS:
        if not host or ":" in host or host.startswith("["):
            continue
        try:
            libc = socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            libc = None
        assert libc == expected, host


# address -> refused (True) or allowed (False) by default
ADDRESSES = [
    ("127.0.0.1", True, "loopback"),
    ("127.255.255.254", True, "loopback"),
    ("0.0.0.0", True, "unspecified"),
    ("10.0.0.1", True, "private"),
    ("172.16.0.1", True, "private"),
    ("172.31.255.255", True, "private"),
    ("192.168.0.1", True, "private"),
    ("100.64.0.1", True, "CGNAT"),
    ("169.254.169.254", True, "link-local"),
    ("224.0.0.1", True, "multicast"),
    ("239.255.255.250", True, "multicast"),
    ("255.255.255.255", True, "broadcast"),
    ("240.0.0.1", True, "reserved"),
    ("192.0.2.1", True, "documentation"),
    ("198.18.0.1", True, "benchmarking"),
    ("192.0.0.8", True, "IETF"),
    ("::", True, "unspecified"),
    ("::1", True, "loopback"),
    ("fe80::1", True, "link-local"),
    ("fe80::1%eth0", True, "link-local"),
    ("fc00::1", True, "unique-local"),
    ("fd12:3456:789a::1", True, "unique-local"),
    ("ff02::1", True, "multicast"),
    ("fec0::1", True, "site-local"),
    ("2001:db8::1", True, "documentation"),
    ("::ffff:127.0.0.1", True, "loopback"),
    ("::ffff:10.0.0.1", True, "private"),
    ("::ffff:169.254.169.254", True, "link-local"),
    ("::127.0.0.1", True, "loopback"),
    ("2002:7f00:1::", True, "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a00:1::1", True, "private"),  # 6to4 of 10.0.0.1
    ("64:ff9b::7f00:1", True, "loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", True, "link-local"),  # NAT64 of the metadata address
    ("64:ff9b:1::1", True, "NAT64"),
    ("8.8.8.8", False, ""),
    ("1.1.1.1", False, ""),
    ("172.32.0.1", False, ""),
    ("93.184.216.34", False, ""),
    ("2606:4700:4700::1111", False, ""),
    ("::ffff:8.8.8.8", False, ""),
    ("64:ff9b::808:808", False, ""),  # NAT64 of 8.8.8.8
    ("2002:808:808::1", False, ""),  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize(("address", "refused", "why"), ADDRESSES)
def test_forbidden_addresses(address: str, refused: bool, why: str) -> None:
    reason = forbidden_reason(ipaddress.ip_address(address))
    if refused:
        assert reason is not None
        assert why.lower() in reason.lower()
    else:
        assert reason is None


@pytest.mark.parametrize(("host", "expected"), [s for s in SPELLINGS if s[1]])
def test_guard_refuses_every_spelling_of_internal_addresses(
    host: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Literals never reach DNS; internal ones are refused, public ones pass unchanged."""

    def no_dns(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an IP literal must not be resolved")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    guard = NetworkGuard()
    if forbidden_reason(ipaddress.ip_address(expected)) is None:
        assert guard.resolve(host, 80) == [expected]
    else:
        with pytest.raises(BadLocation, match="refusing to connect"):
            guard.resolve(host, 80)


def test_names_are_resolved_and_every_address_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"mixed.test": ["93.184.216.34", "10.0.0.7"], "public.test": ["93.184.216.34"]}

    def fake(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    guard = NetworkGuard()
    assert guard.resolve("public.test", 443) == ["93.184.216.34"]
    with pytest.raises(BadLocation, match=r"10\.0\.0\.7"):
        guard.resolve("mixed.test", 443)  # one bad address is enough
    with pytest.raises(BackendUnavailable, match="cannot resolve"):
        guard.resolve("nowhere.test", 443)


def test_localhost_name_is_refused() -> None:
    with pytest.raises(BadLocation, match="loopback"):
        NetworkGuard().resolve("localhost", 80)


def test_allow_list_networks_and_names() -> None:
    guard = NetworkGuard(["127.0.0.0/8", "192.168.10.0/24"])
    assert guard.resolve("127.0.0.1", 80) == ["127.0.0.1"]
    assert guard.resolve("2130706433", 80) == ["127.0.0.1"]
    assert guard.resolve("::ffff:127.0.0.1", 80) == ["::ffff:7f00:1"]
    assert guard.resolve("192.168.10.9", 80) == ["192.168.10.9"]
    for host in ("192.168.11.1", "10.0.0.1", "::1", "169.254.169.254"):
        with pytest.raises(BadLocation):
            guard.resolve(host, 80)
    by_name = NetworkGuard(["LocalHost."])
    assert "127.0.0.1" in by_name.resolve("localhost", 80)
    with pytest.raises(BadLocation):
        by_name.resolve("127.0.0.1", 80)  # the name is allowed, not its address


@pytest.mark.parametrize("entry", ["not a host", "10.0.0.0/33", "a/b", "-bad-.example"])
def test_bad_allow_list_entries(entry: str) -> None:
    with pytest.raises(BadConfiguration):
        NetworkGuard([entry])


# -- locations ------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/image.qcow2",
        "https://example.com:8443/a/b?x=1",
        "http://user:secret@example.com/img",
        "HTTP://example.com/img",
        "http://[2001:db8::1]:8080/img",
    ],
)
def test_location_round_trip(uri: str) -> None:
    loc = parse(uri)
    assert isinstance(loc, HttpLocation)
    assert str(loc) == uri
    assert parse(str(loc)) == loc


@pytest.mark.parametrize(
    "uri",
    [
        "http:///no-host",
        "http://exa mple.com/img",
        "http://example.com:99999/img",
        "http://example.com/a\nb",
    ],
)
def test_bad_locations(uri: str) -> None:
    with pytest.raises(BadLocation):
        parse(uri)


def test_credentials_are_redacted_and_split_off() -> None:
    loc = parse("https://reader:p%40ss:w@example.com/img")
    assert "p%40ss" not in loc.redacted() and "p%40ss" not in repr(loc)
    assert loc.redacted() == "https://***@example.com/img"
    clean, auth = _strip_userinfo(loc.to_uri())
    assert clean == "https://example.com/img"
    assert auth == ("reader", "p@ss:w")
    with pytest.raises(BadLocation) as info:
        parse("http://u:topsecret@exa mple.com/")
    assert "topsecret" not in str(info.value)
