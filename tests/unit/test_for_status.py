"""One table of HTTP statuses for every driver (imgstore.exceptions.for_status)."""

from __future__ import annotations

import pytest

from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    Duplicate,
    ImgstoreError,
    NotFound,
    StorageFull,
    for_status,
)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (404, NotFound), (410, NotFound),
        (401, AuthenticationFailed), (403, AuthenticationFailed), (407, AuthenticationFailed),
        (412, Duplicate), (507, StorageFull),
        (408, BackendUnavailable), (429, BackendUnavailable), (499, BackendUnavailable),
        (500, BackendUnavailable), (503, BackendUnavailable), (599, BackendUnavailable),
        (400, BackendError), (409, BackendError), (413, BackendError), (416, BackendError),
    ],
)  # fmt: skip
def test_each_status_has_one_kind(status: int, cls: type[ImgstoreError]) -> None:
    assert for_status(status) is cls
