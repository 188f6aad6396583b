"""Reading a caller's Keystone service catalog (v2 form, as keystonemiddleware passes
it to Glance, and v3 entries)."""

from __future__ import annotations

import pytest

from imgstore.exceptions import BadConfiguration
from imgstore.keystone_catalog import endpoint_url, endpoint_urls, required_endpoint

V2 = [
    {"type": "identity", "name": "keystone", "endpoints": [{"publicURL": "http://k:5000"}]},
    {
        "type": "object-store",
        "name": "swift",
        "endpoints": [
            {
                "region": "east",
                "publicURL": "https://east.example/v1/AUTH_p",
                "internalURL": "http://10.0.0.1:8080/v1/AUTH_p",
            },
            {"region": "west", "publicURL": "https://west.example/v1/AUTH_p"},
        ],
    },
]
V3 = [
    {
        "type": "volumev3",
        "name": "cinderv3",
        "endpoints": [
            {"interface": "public", "region_id": "r1", "url": "http://c:8776/v3/p"},
            {"interface": "internal", "region_id": "r1", "url": "http://10.0.0.2:8776/v3/p"},
        ],
    }
]


def test_the_first_endpoint_of_the_interface_and_region() -> None:
    assert endpoint_url(V2, "object-store") == "https://east.example/v1/AUTH_p"
    assert endpoint_url(V2, "object-store", region="west") == "https://west.example/v1/AUTH_p"
    assert endpoint_url(V2, "object-store", "internalURL") == "http://10.0.0.1:8080/v1/AUTH_p"
    assert endpoint_url(V2, "object-store", "internal") == "http://10.0.0.1:8080/v1/AUTH_p"
    assert endpoint_url(V2, "object-store", "adminURL") is None
    assert endpoint_url(V2, "object-store", region="north") is None
    assert endpoint_url(V2, "volumev3") is None
    assert endpoint_url(None, "object-store") is None


def test_v3_entries_and_service_names() -> None:
    assert endpoint_url(V3, "volumev3", "publicURL", "r1") == "http://c:8776/v3/p"
    assert endpoint_url(V3, "volumev3", "internalURL") == "http://10.0.0.2:8776/v3/p"
    assert endpoint_url(V3, "volumev3", service_name="cinderv3") == "http://c:8776/v3/p"
    assert endpoint_url(V3, "volumev3", service_name="other") is None


def test_every_url_of_a_service_type() -> None:
    assert endpoint_urls(V2, "object-store") == [
        "https://east.example/v1/AUTH_p",
        "http://10.0.0.1:8080/v1/AUTH_p",
        "https://west.example/v1/AUTH_p",
    ]
    assert endpoint_urls(V3, "volumev3") == ["http://c:8776/v3/p", "http://10.0.0.2:8776/v3/p"]
    assert endpoint_urls([{"type": "object-store"}, "junk"], "object-store") == []


def test_a_required_endpoint_is_found_or_refused_with_the_callers_words() -> None:
    found = required_endpoint(V2, "object-store", "internalURL", "east", missing="unused")
    assert found == "http://10.0.0.1:8080/v1/AUTH_p"
    assert required_endpoint(V3, "volumev3", service_name="cinderv3", missing="-") == (
        "http://c:8776/v3/p"
    )
    with pytest.raises(BadConfiguration, match=r"^no volumev3 here$"):
        required_endpoint(V2, "volumev3", missing="no volumev3 here")
    with pytest.raises(BadConfiguration):
        required_endpoint(V2, "object-store", region="north", missing="none in north")
