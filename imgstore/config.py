"""Configuration with oslo.config, in both forms glance-api.conf uses.

Legacy single-store form::

    [glance_store]
    stores = file,http
    default_store = file
    filesystem_store_datadir = /var/lib/glance/images/

Multi-store form::

    [DEFAULT]
    enabled_backends = fast:file, web:http
    [glance_store]
    default_backend = fast
    [fast]
    filesystem_store_datadir = /srv/fast
    [backend_defaults]
    # applies where a backend's own group is silent

Both become the same thing: a set of named backends, one of them the default
(a single store is a set of one). Nothing here touches the global
``cfg.CONF``: callers pass their own :class:`oslo_config.cfg.ConfigOpts`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from oslo_config import cfg
from stevedore import driver as stevedore_driver
from stevedore import extension as stevedore_extension

from imgstore.driver import Driver, DriverConf
from imgstore.exceptions import BadConfiguration, UnknownBackend
from imgstore.inspection import DEFAULT_MODE, MODES, InspectionPolicy

LOG = logging.getLogger(__name__)

DRIVER_NAMESPACE = "imgstore.drivers"
STORE_GROUP = "glance_store"
DEFAULTS_GROUP = "backend_defaults"

DEFAULT_IMAGE_SIZE_CAP = 1 << 40  # 1 TiB, Glance's default

# Names glance_store accepted for its drivers, mapped to our entry-point names.
DRIVER_ALIASES = {
    "filesystem": "file",
    "https": "http",
    "vsphere": "vmware",
    "glance.store.filesystem.store": "file",
    "glance.store.http.store": "http",
    "glance.store.rbd.store": "rbd",
    "glance.store.swift.store": "swift",
    "glance.store.s3.store": "s3",
    "glance.store.cinder.store": "cinder",
    "glance.store.vmware_datastore.store": "vmware",
}

enabled_backends_opt = cfg.DictOpt(
    "enabled_backends",
    help="Multi-store form: comma-separated name:driver pairs, for example "
    "'fast:file, web:http'. Each backend reads its options from the group of "
    "its name, falling back to [backend_defaults]. When unset, the legacy "
    "[glance_store] stores/default_store form is used.",
)

store_opts = [
    cfg.ListOpt(
        "stores",
        default=["file", "http"],
        help="Legacy form: the drivers to enable, each configured from [glance_store].",
    ),
    cfg.StrOpt(
        "default_store",
        default="file",
        help="Legacy form: the driver that add() uses when no backend is named.",
    ),
    cfg.StrOpt(
        "default_backend",
        help="Multi-store form: the backend (a name from enabled_backends) that "
        "add() uses when no backend is named.",
    ),
    cfg.IntOpt(
        "image_size_cap",
        default=DEFAULT_IMAGE_SIZE_CAP,
        min=0,
        help="Largest image, in bytes, that add() accepts; 0 means no cap. An "
        "upload is stopped as soon as it crosses the cap and nothing is kept.",
    ),
    cfg.BoolOpt(
        "md5_checksum",
        default=True,
        help="Compute the legacy md5 'checksum' of each added image. Turn off on "
        "FIPS systems; the multihash is always computed.",
    ),
]

inspection_opts = [
    cfg.StrOpt(
        "image_inspection",
        default=DEFAULT_MODE,
        choices=MODES,
        help="Disk-format inspection of every added image, in the same pass as the "
        "hashes (oslo.utils' format inspector): 'report' gives each add's disk_format, "
        "virtual_size and safety; 'enforce' also refuses (nothing stored) an image that "
        "fails a safety check (a qcow2 naming a data-file or backing file, a vmdk naming "
        "host files, bytes of several formats at once) or whose format is not in "
        "allowed_disk_formats; 'off' inspects nothing. A backend's own group "
        "(multi-store) overrides [glance_store]'s value.",
    ),
    cfg.ListOpt(
        "allowed_disk_formats",
        default=[],
        help="With image_inspection = enforce: the only disk formats stored (raw, "
        "qcow2, vhd, vhdx, vmdk, vdi, qed, iso, gpt, luks); empty: all of them. A "
        "backend's own group (multi-store) overrides [glance_store]'s value.",
    ),
]


@dataclasses.dataclass
class BackendSpec:
    """One configured backend before its driver is instantiated."""

    name: str
    driver_name: str
    driver_class: type[Driver]
    values: dict[str, Any]

    def instantiate(self) -> Driver:
        """Create the driver for this backend; errors become :class:`BadConfiguration`."""
        try:
            return self.driver_class(DriverConf(self.values), self.name)
        except BadConfiguration:
            raise
        except (ValueError, TypeError, OSError) as exc:
            raise BadConfiguration(
                f"backend {self.name!r} ({self.driver_name}) is misconfigured: {exc}"
            ) from None


@dataclasses.dataclass
class StoreSettings:
    """Everything read from the configuration: backends and core options."""

    backends: dict[str, BackendSpec]
    default_backend: str
    image_size_cap: int
    md5_checksum: bool
    inspection: dict[str, InspectionPolicy] = dataclasses.field(default_factory=dict)
    """Each backend's inspection policy (``image_inspection``, ``allowed_disk_formats``)."""


def canonical_driver_name(name: str) -> str:
    """Our entry-point name for a driver named the glance_store way."""
    key = name.strip().lower()
    return DRIVER_ALIASES.get(key, key)


def load_driver_class(name: str) -> type[Driver]:
    """Find the driver class registered as ``name`` in ``imgstore.drivers``."""
    canonical = canonical_driver_name(name)
    failure: list[str] = []

    def on_failure(_mgr: Any, ep: Any, err: BaseException) -> None:
        failure.append(f"{type(err).__name__}: {err}")

    try:
        manager = stevedore_driver.DriverManager(
            namespace=DRIVER_NAMESPACE,
            name=canonical,
            invoke_on_load=False,
            on_load_failure_callback=on_failure,
        )
    except Exception:
        if failure:
            raise BadConfiguration(
                f"the {canonical!r} driver is installed but cannot load ({failure[0]}); "
                f"install its extra: pip install 'imgstore[{canonical}]'"
            ) from None
        raise BadConfiguration(
            f"no imgstore driver named {name!r}; installed drivers: "
            f"{', '.join(installed_driver_names()) or 'none'}"
        ) from None
    cls = manager.driver
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise BadConfiguration(f"entry point {canonical!r} is not an imgstore Driver class")
    return cls


def installed_driver_names() -> list[str]:
    """The names of all drivers registered in ``imgstore.drivers``, loadable or not."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group=DRIVER_NAMESPACE)})


def _loadable_drivers() -> list[type[Driver]]:
    manager: Any = stevedore_extension.ExtensionManager(
        namespace=DRIVER_NAMESPACE, invoke_on_load=False
    )
    return [ext.plugin for ext in manager if isinstance(ext.plugin, type)]


def _register(conf: cfg.ConfigOpts, opts: Sequence[cfg.Opt], group: str | None) -> None:
    for opt in opts:
        try:
            conf.register_opt(opt, group=group)
        except cfg.DuplicateOptError:
            LOG.debug("option %s already registered in %s with another definition", opt.name, group)


def register_core_opts(conf: cfg.ConfigOpts) -> None:
    """Register the options imgstore reads before it knows which drivers to load."""
    _register(conf, [enabled_backends_opt], None)
    _register(conf, [*store_opts, *inspection_opts], STORE_GROUP)


def _inspection_policy(conf: cfg.ConfigOpts, group: str | None) -> InspectionPolicy:
    """A backend's inspection policy: its group's options (then [backend_defaults]'s)
    where set, else [glance_store]'s."""
    values = _driver_values(conf, inspection_opts, STORE_GROUP, None)
    if group is not None:
        _register(conf, inspection_opts, group)
        _register(conf, inspection_opts, DEFAULTS_GROUP)
        own = _driver_values(conf, inspection_opts, group, DEFAULTS_GROUP)
        for name, value in own.items():
            if not (_is_default(conf, name, group) and _is_default(conf, name, DEFAULTS_GROUP)):
                values[name] = value
    return InspectionPolicy.from_options(values["image_inspection"], values["allowed_disk_formats"])


def _is_default(conf: cfg.ConfigOpts, name: str, group: str) -> bool:
    try:
        where = conf.get_location(name, group)
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return True
    except (cfg.Error, ValueError, RecursionError):
        return False  # set, but invalid: _read() reports it as BadConfiguration
    return where is None or where.location in (cfg.Locations.opt_default, cfg.Locations.set_default)


def _read(conf: cfg.ConfigOpts, name: str, group: str) -> Any:
    try:
        return conf[group][name]
    except (cfg.Error, ValueError) as exc:  # Error: a bad $substitution, among others
        raise BadConfiguration(f"option [{group}] {name}: {exc}") from None
    except RecursionError:
        raise BadConfiguration(
            f"option [{group}] {name}: its $substitution refers to itself"
        ) from None


def _driver_values(
    conf: cfg.ConfigOpts, opts: Sequence[cfg.Opt], group: str, fallback: str | None
) -> dict[str, Any]:
    values = {}
    for opt in opts:
        source = group
        if (
            fallback
            and _is_default(conf, opt.dest, group)
            and not _is_default(conf, opt.dest, fallback)
        ):
            source = fallback
        values[opt.dest] = _read(conf, opt.dest, source)
    return values


def read_settings(conf: cfg.ConfigOpts) -> StoreSettings:
    """Register every needed option on ``conf`` and read the backends from it.

    Raises :class:`BadConfiguration` (or :class:`UnknownBackend`) for anything
    wrong in the configuration, never oslo.config's own errors.
    """
    try:
        return _read_settings(conf)
    except (cfg.Error, ValueError) as exc:
        # oslo.config reads values lazily: a "$name" substitution of an unknown
        # option (NoSuchOptError) or a bad value can surface on any access
        raise BadConfiguration(f"invalid imgstore configuration: {exc}") from None
    except RecursionError:
        # "default_store = $default_store": oslo.config substitutes forever
        raise BadConfiguration(
            "invalid imgstore configuration: a $substitution refers to itself"
        ) from None


def _read_settings(conf: cfg.ConfigOpts) -> StoreSettings:
    register_core_opts(conf)
    try:
        enabled = conf.enabled_backends
        store = conf[STORE_GROUP]
        cap, md5 = store.image_size_cap, store.md5_checksum
    except (cfg.Error, ValueError) as exc:
        raise BadConfiguration(f"invalid imgstore configuration: {exc}") from None

    backends: dict[str, BackendSpec] = {}
    inspection: dict[str, InspectionPolicy] = {}
    if enabled:
        for name, driver_name in enabled.items():
            name = name.strip()
            if not name or not driver_name:
                raise BadConfiguration(
                    "enabled_backends needs name:driver pairs, for example 'fast:file, web:http'"
                )
            if name in (STORE_GROUP, DEFAULTS_GROUP, "DEFAULT"):
                raise BadConfiguration(f"{name!r} cannot be used as a backend name")
            cls = load_driver_class(driver_name)
            opts = cls.options()
            _register(conf, opts, name)
            _register(conf, opts, DEFAULTS_GROUP)
            values = _driver_values(conf, opts, name, DEFAULTS_GROUP)
            backends[name] = BackendSpec(name, canonical_driver_name(driver_name), cls, values)
            inspection[name] = _inspection_policy(conf, name)
        default = store.default_backend
        if default is None:
            if len(backends) > 1:
                raise BadConfiguration(
                    "several backends are enabled; set [glance_store] default_backend "
                    f"to one of: {', '.join(backends)}"
                )
            default = next(iter(backends))
    else:
        for driver_name in dict.fromkeys(
            canonical_driver_name(s) for s in store.stores if s.strip()
        ):
            cls = load_driver_class(driver_name)
            opts = cls.options()
            _register(conf, opts, STORE_GROUP)
            values = _driver_values(conf, opts, STORE_GROUP, None)
            backends[driver_name] = BackendSpec(driver_name, driver_name, cls, values)
            inspection[driver_name] = _inspection_policy(conf, None)
        if not backends:
            raise BadConfiguration("[glance_store] stores lists no driver")
        default = canonical_driver_name(store.default_store)
    if default not in backends:
        raise UnknownBackend(
            f"the default backend {default!r} is not enabled; enabled: {', '.join(backends)}"
        )
    return StoreSettings(backends, default, cap, md5, inspection)


def read_single_settings(
    conf: cfg.ConfigOpts, driver_name: str, group: str = STORE_GROUP, name: str | None = None
) -> StoreSettings:
    """Settings for exactly one backend: driver ``driver_name`` configured from ``[group]``.

    Whatever else ``conf`` configures (``stores``, ``enabled_backends``) is
    ignored. The backend is named ``name`` (default: the driver's name in
    ``[glance_store]``, else the group's name). This is how a service builds a
    private store next to its configured ones, e.g. Glance's staging area.
    """
    register_core_opts(conf)
    try:
        store = conf[STORE_GROUP]
        cap, md5 = store.image_size_cap, store.md5_checksum
    except (cfg.ConfigFileValueError, ValueError) as exc:
        raise BadConfiguration(f"invalid imgstore configuration: {exc}") from None
    canonical = canonical_driver_name(driver_name)
    cls = load_driver_class(canonical)
    opts = cls.options()
    _register(conf, opts, group)
    values = _driver_values(conf, opts, group, None)
    if name is None:
        name = canonical if group == STORE_GROUP else group
    spec = BackendSpec(name, canonical, cls, values)
    policy = _inspection_policy(conf, None if group == STORE_GROUP else group)
    return StoreSettings({name: spec}, name, cap, md5, {name: policy})


def config_from_files(paths: Iterable[str | os.PathLike[str]]) -> cfg.ConfigOpts:
    """A private ConfigOpts loaded from ``paths`` (later files override earlier ones)."""
    files = [os.fspath(p) for p in paths]
    for path in files:
        if not os.path.exists(path):
            raise BadConfiguration(f"configuration file not found: {path}")
        if not os.path.isfile(path):
            raise BadConfiguration(f"configuration file is not a regular file: {path}")
        if not os.access(path, os.R_OK):
            raise BadConfiguration(f"configuration file not readable: {path}")
    conf = cfg.ConfigOpts()
    try:
        conf(args=[], project="imgstore", default_config_files=files, default_config_dirs=[])
    except (cfg.Error, ValueError) as exc:
        raise BadConfiguration(f"cannot read configuration: {exc}") from None
    except OSError as exc:  # a file that opens but cannot be read (EIO, EISDIR...)
        where = f" {exc.filename}" if exc.filename else ""
        raise BadConfiguration(f"cannot read configuration{where}: {exc.strerror or exc}") from None
    return conf


def default_data_dir() -> Path:
    """Where the no-configuration filesystem store keeps images."""
    explicit = os.environ.get("IMGSTORE_DATA_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(xdg) / "imgstore" / "images"


def default_config() -> cfg.ConfigOpts:
    """A private ConfigOpts for the embedded default: one filesystem store."""
    conf = cfg.ConfigOpts()
    conf(args=[], project="imgstore", default_config_files=[], default_config_dirs=[])
    register_core_opts(conf)
    conf.set_override("stores", ["file"], STORE_GROUP)
    conf.set_override("default_store", "file", STORE_GROUP)
    cls = load_driver_class("file")
    _register(conf, cls.options(), STORE_GROUP)
    conf.set_override("filesystem_store_datadir", str(default_data_dir()), STORE_GROUP)
    return conf


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Every option imgstore and its installed drivers read, for oslo-config-generator."""
    driver_opts: dict[str, cfg.Opt] = {}
    for cls in _loadable_drivers():
        for opt in cls.options():
            driver_opts.setdefault(opt.dest, opt)
    ordered = [driver_opts[k] for k in sorted(driver_opts)]
    return [
        ("DEFAULT", [enabled_backends_opt]),
        (STORE_GROUP, [*store_opts, *inspection_opts, *ordered]),
        (DEFAULTS_GROUP, [*inspection_opts, *ordered]),
    ]


T = TypeVar("T")


def read_option_file(
    backend: str,
    option: str,
    path: str,
    read: Callable[[TextIO], T],
    errors: type[Exception] | tuple[type[Exception], ...] = (),
) -> T:
    """``read`` of the file at ``path``, named by ``backend``'s ``option``: a file that
    cannot be opened or read (or whose text ``read`` refuses with one of ``errors``) is
    :class:`BadConfiguration`, ``backend 'b': cannot read <option> <path>: <why>``."""
    try:
        with open(path, encoding="utf-8") as f:
            return read(f)
    except OSError as exc:
        why = exc.strerror or str(exc)
    except errors as exc:
        why = str(exc)
    raise BadConfiguration(f"backend {backend!r}: cannot read {option} {path}: {why}") from None
