"""Image locations the glance_store way, parsed by imgstore.

``SCHEME_TO_CLS_MAP`` (legacy) and ``SCHEME_TO_CLS_BACKEND_MAP``
(multi-store) map each scheme of a configured store to
``{'store': <store>, 'location_class': StoreLocation, 'store_entry': <name>}``
(the backend map one level deeper, by backend id), as glance_store's do;
:mod:`glance_store.backend` and :mod:`glance_store.multi_backend` fill them.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

from oslo_config import cfg

from glance_store import exceptions
from imgstore import exceptions as imgstore_exc
from imgstore import location as imgstore_location

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

SCHEME_TO_CLS_MAP: dict[str, dict[str, Any]] = {}
SCHEME_TO_CLS_BACKEND_MAP: dict[str, dict[str, dict[str, Any]]] = {}


def _scheme(uri: Any) -> str:
    if not isinstance(uri, str):
        raise exceptions.BadStoreUri(uri=type(uri).__name__)
    return urllib.parse.urlparse(uri).scheme


def get_location_from_uri(uri: str, conf: cfg.ConfigOpts = CONF) -> Location:
    """The :class:`Location` of ``uri``; UnknownScheme unless a configured store reads it."""
    scheme = _scheme(uri)
    if scheme not in SCHEME_TO_CLS_MAP:
        raise exceptions.UnknownScheme(scheme=scheme)
    info = SCHEME_TO_CLS_MAP[scheme]
    return Location(scheme, info["location_class"], conf, uri=uri)


def get_location_from_uri_and_backend(
    uri: str, backend: str, conf: cfg.ConfigOpts = CONF
) -> Location:
    """The :class:`Location` of ``uri`` in backend ``backend`` (multi-store)."""
    scheme = _scheme(uri)
    if scheme not in SCHEME_TO_CLS_BACKEND_MAP:
        raise exceptions.UnknownScheme(scheme=scheme)
    try:
        info = SCHEME_TO_CLS_BACKEND_MAP[scheme][backend]
    except KeyError:
        raise exceptions.UnknownScheme(scheme=backend) from None
    return Location(scheme, info["location_class"], conf, uri=uri, backend=backend)


def register_scheme_map(scheme_map: dict[str, dict[str, Any]]) -> None:
    """Add or replace legacy scheme entries."""
    SCHEME_TO_CLS_MAP.update(scheme_map)


def register_scheme_backend_map(scheme_map: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Add or replace multi-store scheme entries."""
    for scheme, backends in scheme_map.items():
        SCHEME_TO_CLS_BACKEND_MAP.setdefault(scheme, {}).update(backends)


class Location:
    """Where an image is, as Glance passes it back to a store's get/delete."""

    def __init__(
        self,
        store_name: str,
        store_location_class: type[StoreLocation],
        conf: cfg.ConfigOpts,
        uri: str | None = None,
        image_id: str | None = None,
        store_specs: dict[str, Any] | None = None,
        backend: str | None = None,
    ) -> None:
        self.store_name = store_name
        self.image_id = image_id
        self.store_specs = store_specs or {}
        self.conf = conf
        self.backend_group = backend
        self.store_location = store_location_class(self.store_specs, conf, backend_group=backend)
        if uri:
            self.store_location.parse_uri(uri)

    def get_store_uri(self) -> str:
        """The location URI (may carry credentials: never show it)."""
        return self.store_location.get_uri()

    def get_uri(self) -> None:
        """glance_store returns None here."""
        return None

    def __repr__(self) -> str:
        return f"<glance_store Location {self.store_location!r}>"


class StoreLocation:
    """A location URI parsed by imgstore (:func:`imgstore.location.parse`)."""

    def __init__(
        self, store_specs: dict[str, Any], conf: cfg.ConfigOpts, backend_group: str | None = None
    ) -> None:
        self.conf = conf
        self.specs = store_specs
        self.backend_group = backend_group
        self.location: imgstore_location.Location | None = None
        if self.specs:
            self.process_specs()

    def process_specs(self) -> None:
        """Build the location from ``specs['uri']`` when given."""
        uri = self.specs.get("uri")
        if uri:
            self.parse_uri(uri)

    def parse_uri(self, uri: str) -> None:
        """Parse ``uri``; BadStoreUri/UnknownScheme when imgstore cannot."""
        try:
            self.location = imgstore_location.parse(uri)
        except imgstore_exc.ImgstoreError as exc:
            raise exceptions.from_imgstore(exc) from exc

    def get_uri(self) -> str:
        """The location URI."""
        if self.location is None:
            raise exceptions.BadStoreUri(uri="(no location parsed)")
        return str(self.location)

    @staticmethod
    def validate_schemas(uri: str, valid_schemas: Any) -> None:
        """BadStoreUri unless ``uri`` starts with one of ``valid_schemas``."""
        if not any(uri.startswith(s) for s in valid_schemas):
            raise exceptions.BadStoreUri(
                message="Location URI must start with one of: " + ", ".join(valid_schemas)
            )

    def __repr__(self) -> str:
        shown = self.location.redacted() if self.location is not None else "-"
        return f"<StoreLocation {shown}>"
