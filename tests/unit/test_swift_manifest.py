"""Recognising an SLO manifest PUT that failed only because the token expired while the
proxy checked the segments (seen in a clean run: the PUT was let in, the proxy's HEADs
of the segments, made with the same token a few ms later, got 401, and Swift answered
400). The driver then writes the manifest once more with a new token."""

from __future__ import annotations

import pytest
from swiftclient.exceptions import ClientException

from imgstore.drivers.swift import _segments_refused_the_token

SEGMENTS_401 = (
    b"Errors:\n/imgstore-2b9a/27c7-da72-00001, 401 Unauthorized\n"
    b"/imgstore-2b9a/27c7-da72-00002, 401 Unauthorized"
)


@pytest.mark.parametrize(
    ("status", "content", "expected"),
    [
        (400, SEGMENTS_401, True),
        (400, SEGMENTS_401.decode(), True),
        (400, b"Errors:\n/c/o-00001, 404 Not Found", False),  # a segment is gone: no retry
        (400, b"Errors:\n/c/o-00001, Etag Mismatch", False),
        (401, b"401 Unauthorized", False),  # swiftclient logs in again by itself
        (503, SEGMENTS_401, False),
    ],
)
def test_segments_refused_the_token(status: int, content: bytes | str, expected: bool) -> None:
    exc = ClientException("Object PUT failed", http_status=status, http_response_content=content)
    assert _segments_refused_the_token(exc) is expected


def test_other_errors_are_not_taken_for_it() -> None:
    assert _segments_refused_the_token(OSError("connection reset")) is False
