"""What the HTTP driver takes as an image's version, the check of a resumed read (the
resume itself runs against nginx in tests/functional/test_http_conformance.py)."""

from __future__ import annotations

import requests

from imgstore.drivers.http import _validator


def response(**headers: str) -> requests.Response:
    made = requests.Response()
    made.headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    return made


DATE = "Sat, 05 Dec 2026 12:00:00 GMT"


def test_a_strong_etag_is_the_version() -> None:
    assert _validator(response(ETag='"6931a1f0-c00000"', Last_Modified=DATE)) == '"6931a1f0-c00000"'


def test_a_weak_etag_promises_no_byte_equality_so_the_date_and_length_are_used() -> None:
    whole = response(ETag='W/"x"', Last_Modified=DATE, Content_Length="1000")
    rest = response(
        ETag='W/"x"', Last_Modified=DATE, Content_Length="400", Content_Range="bytes 600-999/1000"
    )
    assert _validator(whole) == _validator(rest) == f"{DATE}; 1000"
    other = response(Last_Modified=DATE, Content_Length="1001")
    assert _validator(other) != _validator(whole)


def test_no_validator_no_version() -> None:
    assert _validator(response(ETag='W/"x"', Content_Length="1000")) is None
    assert _validator(None) is None
