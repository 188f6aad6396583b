"""imgstore: store virtual-machine images in many kinds of storage behind one interface."""

from imgstore.api import AddResult, BackendInfo, Stores
from imgstore.capabilities import Capability
from imgstore.exceptions import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    BadConfiguration,
    BadLocation,
    ChecksumMismatch,
    Duplicate,
    ImgstoreError,
    IntegrityError,
    InUse,
    InvalidArgument,
    NotFound,
    NotSupported,
    ReadOnlyStore,
    SizeCapExceeded,
    SizeMismatch,
    StorageFull,
    UnknownBackend,
    UnknownScheme,
)
from imgstore.migration import (
    ImageRecord,
    MigrationReport,
    migrate,
    parse_images,
    read_images,
    verify_images,
)
from imgstore.pipeline import ImageReader

__version__ = "0.1.0"

__all__ = [
    "AddResult",
    "AuthenticationFailed",
    "BackendError",
    "BackendInfo",
    "BackendUnavailable",
    "BadConfiguration",
    "BadLocation",
    "Capability",
    "ChecksumMismatch",
    "Duplicate",
    "ImageReader",
    "ImageRecord",
    "ImgstoreError",
    "InUse",
    "IntegrityError",
    "InvalidArgument",
    "MigrationReport",
    "NotFound",
    "NotSupported",
    "ReadOnlyStore",
    "SizeCapExceeded",
    "SizeMismatch",
    "StorageFull",
    "Stores",
    "UnknownBackend",
    "UnknownScheme",
    "migrate",
    "parse_images",
    "read_images",
    "verify_images",
]
