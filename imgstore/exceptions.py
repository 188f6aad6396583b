"""The one exception hierarchy of imgstore.

Every driver maps its backend's errors into these classes. Messages say what
to do next and never carry a secret: locations in them are redacted.
"""

from __future__ import annotations


class ImgstoreError(Exception):
    """Root of every error imgstore raises on purpose."""

    def __init__(self, msg: str = "") -> None:
        super().__init__(msg)
        self.msg = msg

    def __str__(self) -> str:
        return self.msg


class InvalidArgument(ImgstoreError):
    """A caller passed a value that can never work (bad image id, bad range...)."""


class BadConfiguration(ImgstoreError):
    """The configuration is missing something or contradicts itself."""


class UnknownBackend(BadConfiguration):
    """No backend of that name is configured."""


class BadLocation(ImgstoreError):
    """A location URI is malformed or points where this store may not go."""


class UnknownScheme(BadLocation):
    """No installed driver understands the URI's scheme."""


class NotFound(ImgstoreError):
    """The image does not exist at that location."""


class Duplicate(ImgstoreError):
    """An image with that id already exists in the backend."""


class InUse(ImgstoreError):
    """The image is in use (e.g. it has clones) and was left as it was."""


class StorageFull(ImgstoreError):
    """The backend has no room for the image."""


class ReadOnlyStore(ImgstoreError):
    """The backend cannot write or delete."""


class NotSupported(ImgstoreError):
    """The backend does not offer the requested operation."""


class IntegrityError(ImgstoreError):
    """The bytes are not what they were declared to be."""


class SizeMismatch(IntegrityError):
    """The stream was shorter or longer than its declared size."""


class SizeCapExceeded(IntegrityError):
    """The image is larger than the configured ``image_size_cap``."""


class ChecksumMismatch(IntegrityError):
    """A hash of the bytes differs from the one expected."""


class DiskFormatMismatch(IntegrityError):
    """The bytes are another disk format than the one declared (``expected_disk_format``)."""


class UnsafeImage(IntegrityError):
    """The image failed a safety check of the disk-format inspector, or its format is not
    in ``allowed_disk_formats`` (``image_inspection = enforce``)."""


class AuthenticationFailed(ImgstoreError):
    """The backend refused our credentials."""


class BackendUnavailable(ImgstoreError):
    """The backend could not be reached or failed in a way worth retrying later."""


class BackendError(ImgstoreError):
    """The backend failed in a way none of the other classes describes."""


_BY_STATUS: dict[int, type[ImgstoreError]] = {
    401: AuthenticationFailed,
    403: AuthenticationFailed,
    404: NotFound,
    407: AuthenticationFailed,
    408: BackendUnavailable,
    410: NotFound,
    412: Duplicate,
    429: BackendUnavailable,
    498: BackendUnavailable,
    499: BackendUnavailable,
    507: StorageFull,
}


def for_status(status: int) -> type[ImgstoreError]:
    """The class of an HTTP error status from a storage server, the same for every
    driver: 404/410 not found, 401/403/407 refused, 412 exists (a conditional create),
    507 full, 408/429/5xx worth retrying later (498/499: Swift's client timeouts), any
    other status a plain :class:`BackendError`."""
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls
    return BackendUnavailable if status >= 500 else BackendError


__all__ = [
    "AuthenticationFailed",
    "BackendError",
    "BackendUnavailable",
    "BadConfiguration",
    "BadLocation",
    "ChecksumMismatch",
    "DiskFormatMismatch",
    "Duplicate",
    "ImgstoreError",
    "InUse",
    "IntegrityError",
    "InvalidArgument",
    "NotFound",
    "NotSupported",
    "ReadOnlyStore",
    "SizeCapExceeded",
    "SizeMismatch",
    "StorageFull",
    "UnknownBackend",
    "UnknownScheme",
    "UnsafeImage",
    "for_status",
]
