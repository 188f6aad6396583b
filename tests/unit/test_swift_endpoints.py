"""Which storage URLs a multi-tenant Swift caller's token may be sent to."""

from __future__ import annotations

import pytest

from imgstore.drivers.swift_endpoints import StorageEndpoints
from imgstore.exceptions import BadLocation

TRUSTED = StorageEndpoints(
    ["http://127.0.0.1:8080/v1/AUTH_mine", "https://Swift.Example/swift/v1/AUTH_mine/"]
)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/v1/AUTH_mine",
        "http://127.0.0.1:8080/v1/AUTH_someone_else",  # an image shared with the caller
        "http://0x7f.0.0.1:8080/v1/AUTH_other",  # the same address, spelled otherwise
        "http://[::ffff:127.0.0.1]:8080/v1/AUTH_other",
        "https://swift.example./swift/v1/AUTH_other",
        "https://swift.example:443/swift/v1/AUTH_other",
    ],
)
def test_an_account_on_a_trusted_endpoint_is_reached(url: str) -> None:
    TRUSTED.check(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2:8080/v1/AUTH_mine",  # another host
        "http://127.0.0.1:8081/v1/AUTH_mine",  # another port
        "https://127.0.0.1:8080/v1/AUTH_mine",  # another scheme
        "http://127.0.0.1:8080/admin/AUTH_mine",  # not the endpoint's path
        "http://127.0.0.1:8080/v1/x/AUTH_mine",
        "http://127.0.0.1:8080/v1/../admin/AUTH_x",
        "http://127.0.0.1:8080/v1%2f..%2fadmin/AUTH_x",
        "http://user@127.0.0.1:8080/v1/AUTH_x",
        "http://169.254.169.254/v1/AUTH_x",
        "https://swift.example.evil.test/swift/v1/AUTH_x",
        "ftp://127.0.0.1:8080/v1/AUTH_x",
        "http://127.0.0.1:99999/v1/AUTH_x",
        "not a url",
    ],
)
def test_any_other_url_is_refused(url: str) -> None:
    with pytest.raises(BadLocation, match="not an object-store endpoint"):
        TRUSTED.check(url)


def test_no_trusted_endpoint_refuses_all() -> None:
    with pytest.raises(BadLocation):
        StorageEndpoints([]).check("http://127.0.0.1:8080/v1/AUTH_mine")
