"""glance_store's exception classes, raised by this compatibility layer.

Every class Glance catches exists here under glance_store's name and base
class; ``glance_store.X`` is the same class object as
``glance_store.exceptions.X``. An instance carries ``.msg``. The class-level
``message`` is a ``%``-template filled from the constructor's keyword
arguments, as in glance_store (``NotFound(image=image_id)``).

:func:`from_imgstore` maps an :class:`imgstore.exceptions.ImgstoreError` to
the glance_store class a caller expects for the operation that failed.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from imgstore import exceptions as imgstore_exc


class BackendException(Exception):
    """A backend failed (glance_store's base for driver errors)."""


class UnsupportedBackend(BackendException):
    """The backend does not support the operation."""


class RedirectException(Exception):
    """The backend redirected to another URL."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = urllib.parse.urlparse(url)


class GlanceStoreException(Exception):
    """Base of glance_store's exceptions; ``msg`` is the formatted message."""

    message = "An unknown exception occurred"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        if not message:
            message = self.message
        if kwargs:
            try:
                message = message % kwargs
            except (KeyError, TypeError, ValueError):
                pass
        self.msg = message
        super().__init__(message)


class MissingCredentialError(GlanceStoreException):
    """glance_store.exceptions.MissingCredentialError."""

    message = "Missing credential: %(required)s"


class BadAuthStrategy(GlanceStoreException):
    """glance_store.exceptions.BadAuthStrategy."""

    message = 'Wrong auth strategy: expected "%(expected)s", got "%(received)s"'


class AuthorizationRedirect(GlanceStoreException):
    """glance_store.exceptions.AuthorizationRedirect."""

    message = "Redirected to %(uri)s for authorization."


class NotFound(GlanceStoreException):
    """glance_store.exceptions.NotFound."""

    message = "Image %(image)s not found"


class UnknownHashingAlgo(GlanceStoreException):
    """glance_store.exceptions.UnknownHashingAlgo."""

    message = "Unknown hashing algorithm: %(algo)s"


class UnknownScheme(GlanceStoreException):
    """glance_store.exceptions.UnknownScheme."""

    message = "Unknown scheme '%(scheme)s' found in URI"


class BadStoreUri(GlanceStoreException):
    """glance_store.exceptions.BadStoreUri."""

    message = "Malformed store URI: %(uri)s"


class Duplicate(GlanceStoreException):
    """glance_store.exceptions.Duplicate."""

    message = "Image %(image)s already exists"


class StorageFull(GlanceStoreException):
    """glance_store.exceptions.StorageFull."""

    message = "The image storage media has no room for the image."


class StorageWriteDenied(GlanceStoreException):
    """glance_store.exceptions.StorageWriteDenied."""

    message = "Writing to the image storage media was denied."


class AuthBadRequest(GlanceStoreException):
    """glance_store.exceptions.AuthBadRequest."""

    message = "Bad request to the auth service at %(url)s."


class AuthUrlNotFound(GlanceStoreException):
    """glance_store.exceptions.AuthUrlNotFound."""

    message = "No auth service found at %(url)s."


class AuthorizationFailure(GlanceStoreException):
    """glance_store.exceptions.AuthorizationFailure."""

    message = "Authorization failed."


class NotAuthenticated(GlanceStoreException):
    """glance_store.exceptions.NotAuthenticated."""

    message = "You are not authenticated."


class Forbidden(GlanceStoreException):
    """glance_store.exceptions.Forbidden."""

    message = "You are not authorized to complete this action."


class Invalid(GlanceStoreException):
    """glance_store.exceptions.Invalid."""

    message = "Data supplied was not valid."


class BadStoreConfiguration(GlanceStoreException):
    """glance_store.exceptions.BadStoreConfiguration."""

    message = "Store %(store_name)s is misconfigured: %(reason)s"


class DriverLoadFailure(GlanceStoreException):
    """glance_store.exceptions.DriverLoadFailure."""

    message = "Driver %(driver_name)s could not be loaded."


class StoreDeleteNotSupported(GlanceStoreException):
    """glance_store.exceptions.StoreDeleteNotSupported."""

    message = "This store cannot delete images."


class StoreGetNotSupported(GlanceStoreException):
    """glance_store.exceptions.StoreGetNotSupported."""

    message = "This store cannot read images."


class StoreRandomGetNotSupported(StoreGetNotSupported):
    """glance_store.exceptions.StoreRandomGetNotSupported."""

    message = "This store cannot read part of an image. Offset: %(offset)s, length: %(chunk_size)s"


class StoreAddDisabled(GlanceStoreException):
    """glance_store.exceptions.StoreAddDisabled."""

    message = "Adding images to this store is disabled."


class MaxRedirectsExceeded(GlanceStoreException):
    """glance_store.exceptions.MaxRedirectsExceeded."""

    message = "More than %(redirects)s redirects."


class NoServiceEndpoint(GlanceStoreException):
    """glance_store.exceptions.NoServiceEndpoint."""

    message = "Keystone returned no image service endpoint."


class RegionAmbiguity(GlanceStoreException):
    """glance_store.exceptions.RegionAmbiguity."""

    message = "Several image services match region %(region)s; configure a region."


class RemoteServiceUnavailable(GlanceStoreException):
    """glance_store.exceptions.RemoteServiceUnavailable."""

    message = "The server holding the image is unavailable."


class HasSnapshot(GlanceStoreException):
    """glance_store.exceptions.HasSnapshot."""

    message = "The image has snapshots and cannot be deleted."


class InUseByStore(GlanceStoreException):
    """glance_store.exceptions.InUseByStore."""

    message = "The image is in use in the backend outside Glance and cannot be deleted."


class HostNotInitialized(GlanceStoreException):
    """glance_store.exceptions.HostNotInitialized."""

    message = "Store host %(host)s is not initialized."


class TimeoutError(GlanceStoreException):
    """glance_store.exceptions.TimeoutError."""

    message = "Operation timed out after %(timeout)ds; check the storage."


__all__ = [
    "AuthBadRequest",
    "AuthUrlNotFound",
    "AuthorizationFailure",
    "AuthorizationRedirect",
    "BackendException",
    "BadAuthStrategy",
    "BadStoreConfiguration",
    "BadStoreUri",
    "DriverLoadFailure",
    "Duplicate",
    "Forbidden",
    "GlanceStoreException",
    "HasSnapshot",
    "HostNotInitialized",
    "InUseByStore",
    "Invalid",
    "MaxRedirectsExceeded",
    "MissingCredentialError",
    "NoServiceEndpoint",
    "NotAuthenticated",
    "NotFound",
    "RedirectException",
    "RegionAmbiguity",
    "RemoteServiceUnavailable",
    "StorageFull",
    "StorageWriteDenied",
    "StoreAddDisabled",
    "StoreDeleteNotSupported",
    "StoreGetNotSupported",
    "StoreRandomGetNotSupported",
    "TimeoutError",
    "UnknownHashingAlgo",
    "UnknownScheme",
    "UnsupportedBackend",
]

_COMMON: list[tuple[type[imgstore_exc.ImgstoreError], Any]] = [
    (imgstore_exc.NotFound, NotFound),
    (imgstore_exc.Duplicate, Duplicate),
    (imgstore_exc.InUse, InUseByStore),
    (imgstore_exc.StorageFull, StorageFull),
    (imgstore_exc.SizeCapExceeded, StorageFull),
    (imgstore_exc.UnknownScheme, UnknownScheme),
    (imgstore_exc.UnknownBackend, UnknownScheme),
    (imgstore_exc.BadConfiguration, BadStoreConfiguration),
    (imgstore_exc.BadLocation, BadStoreUri),
    (imgstore_exc.InvalidArgument, Invalid),
    (imgstore_exc.SizeMismatch, Invalid),
    (imgstore_exc.AuthenticationFailed, AuthorizationFailure),
    (imgstore_exc.BackendUnavailable, RemoteServiceUnavailable),
]

_BY_OPERATION: dict[str, Any] = {
    "add": StoreAddDisabled,
    "get": StoreGetNotSupported,
    "delete": StoreDeleteNotSupported,
}


def from_imgstore(exc: imgstore_exc.ImgstoreError, operation: str = "") -> GlanceStoreException:
    """The glance_store exception for ``exc`` raised while doing ``operation``.

    ``operation`` ("add", "get", "size", "delete") picks the class for a
    backend that cannot do it (read-only, write-only). The message is
    imgstore's, which never carries a secret.
    """
    if isinstance(exc, imgstore_exc.ReadOnlyStore | imgstore_exc.NotSupported):
        cls = _BY_OPERATION.get(operation, GlanceStoreException)
        return cls(exc.msg)  # type: ignore[no-any-return]
    for imgstore_cls, glance_cls in _COMMON:
        if isinstance(exc, imgstore_cls):
            return glance_cls(exc.msg)  # type: ignore[no-any-return]
    return GlanceStoreException(exc.msg)
