"""glance_store's multi-store functions, on imgstore.

``register_store_opts(conf, reserved_stores)`` registers each enabled
backend's driver options in the backend's group (plus ``store_description``
and ``weight``) and the filesystem options in each reserved store's group;
``create_multi_stores`` builds one :class:`imgstore.Stores` for
``enabled_backends`` and one single-backend Stores per reserved store (Glance's
``os_glance_staging_store`` and ``os_glance_tasks_store``). Stores are found by
backend id.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from oslo_config import cfg

import imgstore
from glance_store import exceptions, location
from glance_store.backend import (
    _safe_register,
    absolute_datadirs,
    apply_acls,
    check_location_metadata,
    store_add_to_backend,
    store_add_to_backend_with_multihash,
)
from glance_store.driver import Store
from imgstore import config as imgstore_config

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

_STORE_CFG_GROUP = imgstore_config.STORE_GROUP

_STORE_OPTS = [
    cfg.StrOpt(
        "default_backend",
        help="The backend id (a key of enabled_backends) that stores new images "
        "when no backend is named.",
    ),
]

_MULTI_BACKEND_OPTS = [
    cfg.StrOpt(
        "store_description",
        help="What this backend is, for users (shown by GET /v2/info/stores).",
    ),
    cfg.IntOpt(
        "weight",
        default=0,
        help="Relative weight of this backend when ordering locations.",
    ),
]

_lock = threading.Lock()
_state: dict[str, Any] = {"conf": None, "stores": None, "reserved": {}, "by_id": {}}


def _list_config_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Options for oslo-config-generator's ``glance.multi_store`` namespace."""
    return [(_STORE_CFG_GROUP, list(_STORE_OPTS)), *imgstore_config.list_opts()]


def _register_backend(conf: cfg.ConfigOpts, group: str, driver: str) -> None:
    cls = imgstore_config.load_driver_class(driver)
    _safe_register(conf, _MULTI_BACKEND_OPTS, group)
    _safe_register(conf, cls.options(), group)
    _safe_register(conf, cls.options(), imgstore_config.DEFAULTS_GROUP)


def register_store_opts(
    conf: cfg.ConfigOpts, reserved_stores: dict[str, str] | None = None
) -> None:
    """Register ``[glance_store] default_backend`` and every backend's options."""
    imgstore_config.register_core_opts(conf)
    _safe_register(conf, _STORE_OPTS, _STORE_CFG_GROUP)
    for backend, driver in (conf.enabled_backends or {}).items():
        try:
            _register_backend(conf, backend, driver)
        except imgstore.BadConfiguration as exc:
            LOG.warning("backend %s: %s", backend, exc.msg)
    for name, driver in (reserved_stores or {}).items():
        _register_backend(conf, name, driver)
        try:  # glance_store's default for a reserved filesystem store
            conf.set_default("filesystem_store_datadir", f"/var/lib/glance/{name}", group=name)
        except cfg.NoSuchOptError:
            pass


def create_multi_stores(
    conf: cfg.ConfigOpts = CONF, reserved_stores: dict[str, str] | None = None
) -> int:
    """Build the backends of ``enabled_backends`` and ``reserved_stores``; returns how many."""
    register_store_opts(conf, reserved_stores)
    absolute_datadirs(conf, [*(conf.enabled_backends or {}), *(reserved_stores or {})])
    # as glance_store: a backend that fails to configure is logged and stays loaded,
    # unusable (no write access), so glance-api still starts and serves the others
    try:
        stores = imgstore.Stores(conf, keep_unusable=True)
        reserved = {
            name: imgstore.Stores.single(conf, driver, name, name, keep_unusable=True)
            for name, driver in (reserved_stores or {}).items()
        }
    except imgstore.ImgstoreError as exc:
        raise exceptions.from_imgstore(exc) from exc
    by_id: dict[str, Store] = {}
    scheme_map: dict[str, dict[str, dict[str, Any]]] = {}

    def add(store: Store) -> None:
        by_id[store.backend_group or store.backend] = store
        for scheme in store.get_schemes():
            scheme_map.setdefault(scheme, {})[store.backend] = {
                "store": store,
                "location_class": store.get_store_location_class(),
                "store_entry": store.store_entry,
            }

    for info in stores.describe():
        add(
            Store(lambda: stores, info.name, conf, backend_group=info.name, store_entry=info.driver)
        )
    for name, single in reserved.items():
        add(
            Store(
                lambda s=single: s,  # type: ignore[misc]
                name,
                conf,
                backend_group=name,
                store_entry=single.describe()[0].driver,
            )
        )
    with _lock:
        old = [_state["stores"], *_state["reserved"].values()]
        _state.update(conf=conf, stores=stores, reserved=reserved, by_id=by_id)
        location.SCHEME_TO_CLS_BACKEND_MAP.clear()
        location.register_scheme_backend_map(scheme_map)
    for s in old:
        if s is not None:
            s.close()
    return len(by_id)


def _conf() -> cfg.ConfigOpts:
    return _state["conf"] or CONF


def verify_store() -> None:
    """RuntimeError unless ``[glance_store] default_backend`` names a configured backend."""
    store_id = _conf().glance_store.default_backend
    if not store_id:
        raise RuntimeError("'default_backend' config option is not set.")
    try:
        get_store_from_store_identifier(store_id)
    except exceptions.UnknownScheme:
        raise RuntimeError(f"Store for identifier {store_id} not found") from None


def get_store_from_store_identifier(store_identifier: str) -> Store:
    """The store of backend ``store_identifier``; UnknownScheme when there is none."""
    try:
        return _state["by_id"][store_identifier]  # type: ignore[no-any-return]
    except KeyError:
        raise exceptions.UnknownScheme(
            f"Store for identifier {store_identifier} not found"
        ) from None


def get_store_weight(store_identifier: str) -> int:
    """The configured ``weight`` of backend ``store_identifier``."""
    return get_store_from_store_identifier(store_identifier).weight


def add(
    conf: cfg.ConfigOpts,
    image_id: str,
    data: Any,
    size: int,
    backend: str | None,
    context: Any = None,
    verifier: Any = None,
) -> tuple[str, int, str | None, dict[str, Any]]:
    """Add to ``backend`` (default: ``[glance_store] default_backend``)."""
    store = get_store_from_store_identifier(backend or conf.glance_store.default_backend)
    return store_add_to_backend(image_id, data, size, store, context, verifier)


def add_with_multihash(
    conf: cfg.ConfigOpts,
    image_id: str,
    data: Any,
    size: int,
    backend: str | None,
    hashing_algo: str,
    scheme: str | None = None,
    context: Any = None,
    verifier: Any = None,
) -> tuple[str, int, str | None, str, dict[str, Any]]:
    """:func:`add` that also returns the ``hashing_algo`` multihash."""
    store = get_store_from_store_identifier(backend or conf.glance_store.default_backend)
    return store_add_to_backend_with_multihash(
        image_id, data, size, hashing_algo, store, context, verifier
    )


def _store_for(uri: str, backend: str | None) -> tuple[Store, location.Location]:
    if backend:
        loc = location.get_location_from_uri_and_backend(uri, backend, conf=_conf())
        return get_store_from_store_identifier(backend), loc
    # no backend recorded: let imgstore find the backend holding the location
    LOG.warning("Backend is not set to image, searching all backends based on location URI.")
    for stores in (_state["stores"], *_state["reserved"].values()):
        if stores is None:
            continue
        try:
            name = stores.backend_for(uri)
        except imgstore.ImgstoreError:
            continue
        loc = location.get_location_from_uri_and_backend(uri, name, conf=_conf())
        return get_store_from_store_identifier(name), loc
    raise exceptions.NotFound("Image not found in any configured backend")


def get(
    uri: str,
    backend: str | None,
    offset: int = 0,
    chunk_size: int | None = None,
    context: Any = None,
) -> tuple[Any, int]:
    """``(chunk iterator, size)`` of the image at ``uri`` in ``backend``."""
    store, loc = _store_for(uri, backend)
    return store.get(loc, offset=offset, chunk_size=chunk_size, context=context)


def get_size_from_uri_and_backend(uri: str, backend: str, context: Any = None) -> int:
    """The size of the image at ``uri`` in ``backend``."""
    loc = location.get_location_from_uri_and_backend(uri, backend, conf=_conf())
    return get_store_from_store_identifier(backend).get_size(loc, context=context)


def delete(uri: str, backend: str | None, context: Any = None) -> None:
    """Delete the image at ``uri`` in ``backend``."""
    store, loc = _store_for(uri, backend)
    return store.delete(loc, context=context)


def get_known_schemes_for_multi_store() -> Any:
    """The schemes of the configured backends."""
    return location.SCHEME_TO_CLS_BACKEND_MAP.keys()


def set_acls_for_multi_store(
    location_uri: str,
    backend: str,
    public: bool = False,
    read_tenants: Any = None,
    write_tenants: Any = None,
    context: Any = None,
) -> None:
    """Per-tenant ACLs (a multi-tenant swift backend keeps them; other stores skip)."""
    loc = location.get_location_from_uri_and_backend(location_uri, backend, conf=_conf())
    store = get_store_from_store_identifier(backend)
    apply_acls(store, loc, public, read_tenants, write_tenants, context)


__all__ = [
    "add",
    "add_with_multihash",
    "check_location_metadata",
    "create_multi_stores",
    "delete",
    "get",
    "get_known_schemes_for_multi_store",
    "get_size_from_uri_and_backend",
    "get_store_from_store_identifier",
    "get_store_weight",
    "register_store_opts",
    "set_acls_for_multi_store",
    "store_add_to_backend",
    "store_add_to_backend_with_multihash",
    "verify_store",
]
