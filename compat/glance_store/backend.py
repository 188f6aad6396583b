"""glance_store's legacy single-store functions, on imgstore.

``register_opts(conf)`` registers ``[glance_store]`` options (``stores``,
``default_store`` and every installed imgstore driver's options);
``create_stores(conf)`` builds one :class:`imgstore.Stores` from them and
registers a :class:`~glance_store.driver.Store` per configured driver under
each scheme it reads. The other functions find the store by a URI's scheme
and call it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from oslo_config import cfg

import imgstore
from glance_store import exceptions, location
from glance_store.driver import Store
from imgstore import config as imgstore_config

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

_STORE_CFG_GROUP = imgstore_config.STORE_GROUP

_lock = threading.Lock()
_state: dict[str, Any] = {"conf": None, "stores": None}
_work_stores: dict[str, Store] = {}
"""Private filesystem stores for Glance's scratch directories, by directory."""


GLANCE_STORE_DEFAULTS: dict[str, object] = {
    # what GET /v2/info/stores/detail reports; reads yield chunks of this size. imgstore
    # itself defaults to 4 MiB; writes go in 4 MiB chunks either way.
    "filesystem_store_chunk_size": 64 * 1024,
}
"""glance_store's defaults where imgstore's differ and Glance shows them to its users.

imgstore's safer defaults stay on purpose elsewhere (``https_insecure`` False,
``rados_connect_timeout`` 30 s): see the README."""


def _safe_register(conf: cfg.ConfigOpts, opts: Iterable[cfg.Opt], group: str | None) -> None:
    for opt in opts:
        try:
            conf.register_opt(opt, group=group)
        except cfg.DuplicateOptError:
            LOG.debug("option %s already registered in %s", opt.dest, group)
            continue
        if opt.dest in GLANCE_STORE_DEFAULTS:
            conf.set_default(opt.dest, GLANCE_STORE_DEFAULTS[opt.dest], group=group)


def absolute_datadirs(conf: cfg.ConfigOpts, groups: Iterable[str]) -> None:
    """Make a relative ``filesystem_store_datadir(s)`` in ``groups`` absolute, once.

    glance_store takes such a path relative to the working directory, where imgstore
    refuses it: resolve it here (against the working directory, as glance_store) and
    warn, so a later ``chdir`` cannot move the store.
    """
    for group in groups:
        try:
            section = getattr(conf, group)
            single = section.filesystem_store_datadir
            multi = list(section.filesystem_store_datadirs or [])
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError, AttributeError):
            continue
        if single and not os.path.isabs(single):
            resolved = os.path.abspath(single)
            LOG.warning(
                "[%s] filesystem_store_datadir %r is relative: using %s", group, single, resolved
            )
            conf.set_override("filesystem_store_datadir", resolved, group)
        fixed = [_absolute_entry(entry, group) for entry in multi]
        if fixed != multi:
            conf.set_override("filesystem_store_datadirs", fixed, group)


def _absolute_entry(entry: str, group: str) -> str:
    path, sep, priority = entry.strip().rpartition(":")
    if not sep or not priority.strip().lstrip("-").isdigit():
        path, sep, priority = entry.strip(), "", ""
    if os.path.isabs(path):
        return entry
    resolved = os.path.abspath(path)
    LOG.warning("[%s] filesystem_store_datadirs entry %r is relative: using %s", group, path,
                resolved)  # fmt: skip
    return f"{resolved}{sep}{priority}"


def _list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The ``[glance_store]`` options (for oslo-config-generator's ``glance.store``)."""
    return [(g, opts) for g, opts in imgstore_config.list_opts() if g == _STORE_CFG_GROUP]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register ``[glance_store]`` options: stores, default_store, every driver's options."""
    imgstore_config.register_core_opts(conf)
    for group, opts in _list_opts():
        _safe_register(conf, opts, group)


def _load_store(conf: cfg.ConfigOpts | None, store_entry: str, invoke_load: bool = True) -> Any:
    """A store of driver ``store_entry`` configured from ``[glance_store]`` alone.

    Glance uses this for its single-store staging area, on a private
    ConfigOpts. With ``invoke_load=False`` the Store class is returned.
    """
    if not invoke_load:
        return Store
    if conf is None:
        conf = CONF
    try:
        imgstore_config.load_driver_class(store_entry)
    except imgstore.BadConfiguration as exc:
        LOG.warning("cannot load store %s: %s", store_entry, exc.msg)
        return None
    name = imgstore_config.canonical_driver_name(store_entry)
    private = conf

    def build() -> imgstore.Stores:
        absolute_datadirs(private, [_STORE_CFG_GROUP])
        return imgstore.Stores.single(private, store_entry, _STORE_CFG_GROUP, name)

    return Store(
        build,
        name,
        conf,
        store_entry=store_entry,
    )


def _scheme_map(stores: imgstore.Stores, conf: cfg.ConfigOpts) -> dict[str, dict[str, Any]]:
    scheme_map: dict[str, dict[str, Any]] = {}
    for info in stores.describe():
        store = Store(lambda: stores, info.name, conf, store_entry=info.driver)
        for scheme in info.schemes:
            scheme_map[scheme] = {
                "store": store,
                "location_class": store.get_store_location_class(),
                "store_entry": info.driver,
            }
    return scheme_map


def create_stores(conf: cfg.ConfigOpts = CONF) -> int:
    """Build the stores listed in ``[glance_store] stores``; returns how many."""
    register_opts(conf)
    absolute_datadirs(conf, [_STORE_CFG_GROUP])
    try:  # a store that fails to configure stays loaded, unusable (as glance_store)
        stores = imgstore.Stores(conf, keep_unusable=True)
    except imgstore.ImgstoreError as exc:
        raise exceptions.from_imgstore(exc) from exc
    scheme_map = _scheme_map(stores, conf)
    with _lock:
        old = _state["stores"]
        _state.update(conf=conf, stores=stores)
        location.SCHEME_TO_CLS_MAP.clear()
        location.register_scheme_map(scheme_map)
    if old is not None:
        old.close()
    LOG.debug("stores %s registered for schemes %s", stores.backends, sorted(scheme_map))
    return len(stores.backends)


def _conf() -> cfg.ConfigOpts:
    return _state["conf"] or CONF


def verify_default_store() -> None:
    """RuntimeError unless ``[glance_store] default_store`` names a configured store."""
    scheme = _conf().glance_store.default_store
    try:
        get_store_from_scheme(scheme)
    except exceptions.UnknownScheme:
        raise RuntimeError(f"Store for scheme {scheme} not found") from None


def get_known_schemes() -> Any:
    """The schemes of the configured stores."""
    return location.SCHEME_TO_CLS_MAP.keys()


def get_store_from_scheme(scheme: str) -> Store:
    """The store reading ``scheme``; UnknownScheme when none does."""
    try:
        return location.SCHEME_TO_CLS_MAP[scheme]["store"]  # type: ignore[no-any-return]
    except KeyError:
        # the legacy default_store may be a driver alias ("filesystem")
        canonical = imgstore_config.canonical_driver_name(scheme)
        if canonical != scheme and canonical in location.SCHEME_TO_CLS_MAP:
            return location.SCHEME_TO_CLS_MAP[canonical]["store"]  # type: ignore[no-any-return]
        raise exceptions.UnknownScheme(scheme=scheme) from None


def get_store_from_uri(uri: str) -> Store:
    """The store reading ``uri``'s scheme."""
    return get_store_from_scheme(uri[0 : uri.find("/") - 1])


def get_store_from_location(uri: str) -> str:
    """The scheme (store name) of a location URI."""
    return location.get_location_from_uri(uri, conf=_conf()).store_name


def _glance_work_dirs(conf: cfg.ConfigOpts) -> list[str]:
    """Glance's own scratch directories: ``[task] work_dir`` and ``node_staging_uri``
    (a ``file://`` URI), where its legacy imports write and later delete files."""
    found = []
    for group, option in (("task", "work_dir"), (None, "node_staging_uri")):
        try:
            value: Any = getattr(getattr(conf, group) if group else conf, option)
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError, AttributeError):
            continue
        if isinstance(value, str) and value.startswith("file://"):
            value = value[len("file://") :]
        if isinstance(value, str) and value and os.path.isabs(value):
            found.append(os.path.normpath(value))
    return found


def _scratch_store(root: str) -> Store:
    private = cfg.ConfigOpts()
    register_opts(private)
    private.set_override("filesystem_store_datadir", root, _STORE_CFG_GROUP)

    def build() -> imgstore.Stores:
        return imgstore.Stores.single(private, "file", _STORE_CFG_GROUP)

    return Store(build, "file", private, store_entry="file")


def _work_dir_store(uri: str) -> Store | None:
    """A private filesystem store rooted at the Glance scratch directory that holds
    the ``file://`` ``uri``, or None. Only these directories and the configured data
    directories are ever read or deleted in: the confinement stays."""
    if not uri.startswith("file://"):
        return None
    path = os.path.normpath(uri[len("file://") :])
    conf = _conf()
    for root in _glance_work_dirs(conf):
        if os.path.dirname(path) != root and not path.startswith(root + os.sep):
            continue
        with _lock:
            store = _work_stores.get(root)
            if store is None:
                store = _work_stores[root] = _scratch_store(root)
        return store
    return None


def _store_and_location(uri: str) -> tuple[Store, location.Location]:
    loc = location.get_location_from_uri(uri, conf=_conf())
    store = get_store_from_uri(uri)
    if store.store_entry in ("file", "filesystem"):
        try:
            store.stores.backend_for(uri)
        except imgstore.ImgstoreError:  # not in the data directories: Glance's own?
            store = _work_dir_store(uri) or store
    return store, loc


def get_from_backend(
    uri: str, offset: int = 0, chunk_size: int | None = None, context: Any = None
) -> tuple[Any, int]:
    """``(chunk iterator, size)`` of the image at ``uri``."""
    store, loc = _store_and_location(uri)
    return store.get(loc, offset=offset, chunk_size=chunk_size, context=context)


def get_size_from_backend(uri: str, context: Any = None) -> int:
    """The size of the image at ``uri``."""
    store, loc = _store_and_location(uri)
    return store.get_size(loc, context=context)


def delete_from_backend(uri: str, context: Any = None) -> None:
    """Delete the image at ``uri`` (also a file Glance's legacy import left in its
    ``[task] work_dir`` or ``node_staging_uri``)."""
    store, loc = _store_and_location(uri)
    return store.delete(loc, context=context)


def check_location_metadata(val: Any, key: str = "") -> None:
    """BackendException unless ``val`` is made of dicts, lists and strings only."""
    if isinstance(val, dict):
        for k in val:
            check_location_metadata(val[k], key=k)
    elif isinstance(val, list):
        for i, v in enumerate(val):
            check_location_metadata(v, key=f"{key}[{i}]")
    elif not isinstance(val, str):
        raise exceptions.BackendException(
            f"The image metadata key {key} has an invalid type of {type(val)}. "
            "Only dict, list, and unicode are supported."
        )


def _check_metadata(store: Any, metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise exceptions.BackendException(
            f"The storage driver {store} returned invalid metadata {metadata}; "
            "it must be a dictionary"
        )
    check_location_metadata(metadata)


def store_add_to_backend(
    image_id: str, data: Any, size: int, store: Any, context: Any = None, verifier: Any = None
) -> tuple[str, int, str | None, dict[str, Any]]:
    """``store.add`` returning ``(uri, size, md5, metadata)``, metadata checked."""
    uri, written, checksum, metadata = store.add(
        image_id, data, size, context=context, verifier=verifier
    )
    if metadata is not None:
        _check_metadata(store, metadata)
    return uri, written, checksum, metadata


def store_add_to_backend_with_multihash(
    image_id: str,
    data: Any,
    size: int,
    hashing_algo: str,
    store: Any,
    context: Any = None,
    verifier: Any = None,
) -> tuple[str, int, str | None, str, dict[str, Any]]:
    """``store.add`` returning ``(uri, size, md5, multihash, metadata)``."""
    import hashlib

    if hashing_algo not in hashlib.algorithms_available:
        raise exceptions.UnknownHashingAlgo(algo=hashing_algo)
    uri, written, checksum, multihash, metadata = store.add(
        image_id, data, size, hashing_algo, context=context, verifier=verifier
    )
    if metadata is not None:
        _check_metadata(store, metadata)
    return uri, written, checksum, multihash, metadata


def add_to_backend(
    conf: cfg.ConfigOpts,
    image_id: str,
    data: Any,
    size: int,
    scheme: str | None = None,
    context: Any = None,
    verifier: Any = None,
) -> tuple[str, int, str | None, dict[str, Any]]:
    """Add to the store of ``scheme`` (default: ``[glance_store] default_store``)."""
    if scheme is None:
        scheme = conf["glance_store"]["default_store"]
    store = get_store_from_scheme(scheme)
    return store_add_to_backend(image_id, data, size, store, context, verifier)


def add_to_backend_with_multihash(
    conf: cfg.ConfigOpts,
    image_id: str,
    data: Any,
    size: int,
    hashing_algo: str,
    scheme: str | None = None,
    context: Any = None,
    verifier: Any = None,
) -> tuple[str, int, str | None, str, dict[str, Any]]:
    """:func:`add_to_backend` that also returns the ``hashing_algo`` multihash."""
    if scheme is None:
        scheme = conf["glance_store"]["default_store"]
    store = get_store_from_scheme(scheme)
    return store_add_to_backend_with_multihash(
        image_id, data, size, hashing_algo, store, context, verifier
    )


def set_acls(
    location_uri: str,
    public: bool = False,
    read_tenants: Any = None,
    write_tenants: Any = None,
    context: Any = None,
) -> None:
    """Per-tenant ACLs (a multi-tenant swift backend keeps them; other stores skip)."""
    loc = location.get_location_from_uri(location_uri, conf=_conf())
    store = get_store_from_scheme(loc.store_name)
    apply_acls(store, loc, public, read_tenants, write_tenants, context)


def apply_acls(
    store: Any, loc: Any, public: bool, read_tenants: Any, write_tenants: Any, context: Any
) -> None:
    """``store.set_acls`` as glance_store calls it; a store without ACLs is skipped."""
    try:
        store.set_acls(
            loc,
            public=public,
            read_tenants=read_tenants or [],
            write_tenants=write_tenants or [],
            context=context,
        )
    except NotImplementedError:
        LOG.debug("Skipping store.set_acls... not implemented.")


__all__ = [
    "add_to_backend",
    "add_to_backend_with_multihash",
    "check_location_metadata",
    "create_stores",
    "delete_from_backend",
    "get_from_backend",
    "get_known_schemes",
    "get_size_from_backend",
    "get_store_from_location",
    "get_store_from_scheme",
    "get_store_from_uri",
    "register_opts",
    "set_acls",
    "store_add_to_backend",
    "store_add_to_backend_with_multihash",
    "verify_default_store",
]
