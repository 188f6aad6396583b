"""What an errno says went wrong, as an :mod:`imgstore.exceptions` class, for every driver.

librados and librbd raise exceptions that carry the errno of the call that failed, an
asynchronous librbd read or write completes with a negative errno, and a file or block
device raises :class:`OSError`: the same number means the same thing in each of them.
"""

from __future__ import annotations

import errno

from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    BadLocation,
    Duplicate,
    ImgstoreError,
    InUse,
    NotFound,
    StorageFull,
)

_BY_ERRNO: dict[int, type[ImgstoreError]] = {
    errno.ENOENT: NotFound,
    errno.EEXIST: Duplicate,
    errno.EBUSY: InUse,
    errno.ENOTEMPTY: InUse,  # librbd: the image still has snapshots
    errno.ENOSPC: StorageFull,
    errno.EDQUOT: StorageFull,
    errno.EPERM: AuthenticationFailed,
    errno.EACCES: AuthenticationFailed,
    errno.ETIMEDOUT: BackendUnavailable,
    errno.ESHUTDOWN: BackendUnavailable,
    errno.ECONNRESET: BackendUnavailable,
    errno.ECONNREFUSED: BackendUnavailable,
    errno.ENOTCONN: BackendUnavailable,
    errno.EHOSTUNREACH: BackendUnavailable,
    errno.ENETUNREACH: BackendUnavailable,
}


def for_errno(err: int | None) -> type[ImgstoreError]:
    """The class of a failure with errno ``err`` (its sign ignored: librbd's completions
    return it negative): not there, exists already, busy, full or over quota, refused,
    worth retrying later (timeouts, connections lost); any other errno, or none, a plain
    :class:`BackendError`."""
    return _BY_ERRNO.get(abs(err or 0), BackendError)


_FILE_KINDS: dict[int, type[ImgstoreError]] = {
    errno.ENOSPC: StorageFull,
    errno.EDQUOT: StorageFull,
    errno.ELOOP: BadLocation,  # O_NOFOLLOW met a symlink where the image should be
}


def for_file_errno(err: int | None) -> type[ImgstoreError]:
    """The class of a failed operation on a local image file: no room or over quota,
    a symlink refused by ``O_NOFOLLOW``; anything else a plain :class:`BackendError`.
    Narrower than :func:`for_errno`: a file driver tells a missing image apart itself,
    before the error (ENOENT while writing is a data directory gone), and a permission
    refused is the host's setup, not credentials the backend turned down."""
    return _FILE_KINDS.get(abs(err or 0), BackendError)


__all__ = ["for_errno", "for_file_errno"]
