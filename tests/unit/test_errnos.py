"""One errno table for the drivers that meet errnos (imgstore.errnos.for_errno)."""

from __future__ import annotations

import errno

import pytest

from imgstore.errnos import for_errno
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    Duplicate,
    ImgstoreError,
    InUse,
    NotFound,
    StorageFull,
)


@pytest.mark.parametrize(
    ("err", "cls"),
    [
        (errno.ENOENT, NotFound), (errno.EEXIST, Duplicate),
        (errno.EBUSY, InUse), (errno.ENOTEMPTY, InUse),
        (errno.ENOSPC, StorageFull), (errno.EDQUOT, StorageFull),
        (errno.EPERM, AuthenticationFailed), (errno.EACCES, AuthenticationFailed),
        (errno.ETIMEDOUT, BackendUnavailable), (errno.ESHUTDOWN, BackendUnavailable),
        (errno.ECONNRESET, BackendUnavailable), (errno.ENOTCONN, BackendUnavailable),
        (errno.EIO, BackendError), (errno.EINVAL, BackendError), (errno.EROFS, BackendError),
    ],
)  # fmt: skip
def test_each_errno_has_one_kind(err: int, cls: type[ImgstoreError]) -> None:
    assert for_errno(err) is cls


def test_a_negative_errno_as_librbd_completions_return_it() -> None:
    assert for_errno(-errno.ENOSPC) is StorageFull
    assert for_errno(-errno.ETIMEDOUT) is BackendUnavailable


@pytest.mark.parametrize("err", [None, 0, 100000])
def test_no_errno_or_an_unknown_one_is_a_plain_backend_error(err: int | None) -> None:
    assert for_errno(err) is BackendError
