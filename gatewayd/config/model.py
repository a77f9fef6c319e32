"""The typed configuration (:class:`Config` and its section dataclasses), the core
sections' schemas, and the validation of a read document into it: core sections,
then each driver (its devices and points) and connector against the schemas its
plugin declares.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .problems import ConfigError, Problem, _Ctx, _fmt_path, _Invalid
from .reading import RawConfig, read_config
from .schema import (REQUIRED, AnyValue, Bool, Duration, Enum, Float, Int, Key, List, Map, Schema, Size, Str)


# --------------------------------------------------------------------------- typed config


@dataclass
class GatewayConfig:
    """``[gateway]``: the gateway's id, where its state lives, log level, point and shutdown defaults."""

    id: str
    state_dir: str
    log_level: str
    stale_time: float
    shutdown_grace: float


@dataclass
class ControlConfig:
    """``[control]``: the control socket, its roles and its limits (``socket_mode`` as an int)."""

    socket: str
    socket_mode: int
    socket_group: str | None
    max_request_bytes: int
    admin: list[str]
    operator: list[str]
    viewer: list[str]
    audit: list[str] = field(default_factory=lambda: ["role:operator"])
    max_connections: int = 64
    max_connections_per_uid: int = 16
    max_watchers: int = 32
    idle_timeout: float = 300.0
    request_timeout: float = 10.0


@dataclass
class HistoryConfig:
    """``[history]``: what the recorder keeps in history.db and how often it writes."""

    enabled: bool
    mode: str
    interval: float
    retention: float
    flush_interval: float
    batch_size: int
    current_save_interval: float
    max_held_bytes: int = 64 * 1024 * 1024


@dataclass
class OutboxConfig:
    """``[outbox]``: the connectors' store-and-forward log (on disk or in RAM) and its bounds."""

    memory: bool
    max_age: float
    max_bytes: int


@dataclass
class BackupConfig:
    """``[backup]``: where and how often the stores are backed up, and how many backups are kept."""

    dir: str | None
    interval: float | None
    retention: int


@dataclass
class PointConfig:
    """A configured point. ``id`` is ``"<device>/<name>"``; ``binding`` holds the
    driver-specific keys (validated by the driver's ``point_schema``)."""

    id: str
    name: str
    device: str
    driver: str
    kind: str = "analog"
    unit: str | None = None
    convert: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    calibration: float = 0.0
    cov_deadband: float = 0.0
    stale_time: float = 300.0
    writable: bool = False
    relinquish_default: Any = None
    history: str = "cov"
    enabled: bool = True
    tags: tuple[str, ...] = ()
    description: str | None = None
    states: tuple[str, ...] = ()
    binding: dict = field(default_factory=dict)
    # write limits (point units) and write tuning (point > device > driver), see gatewayd/writes.py
    min: float | None = None
    max: float | None = None
    write_on_open: bool = True
    write_on_start: bool = True
    write_min_time: float = 0.0
    write_max_time: float = 0.0


@dataclass
class DeviceConfig:
    """``[drivers.<driver>.devices.<id>]``: ``settings`` holds the keys of the driver's ``device_schema``."""

    id: str
    driver: str
    enabled: bool
    settings: dict
    points: dict[str, PointConfig]


@dataclass
class DriverConfig:
    """``[drivers.<id>]``: ``settings`` holds the keys of the driver's ``settings_schema``."""

    id: str
    type: str
    plugin: str | None
    enabled: bool
    settings: dict
    devices: dict[str, DeviceConfig]


@dataclass
class ConnectorConfig:
    """``[connectors.<id>]``: ``settings`` holds the keys of the connector's ``settings_schema``."""

    id: str
    type: str
    plugin: str | None
    enabled: bool
    settings: dict


@dataclass
class Config:
    """The whole validated configuration."""

    path: str
    files: list[str]
    gateway: GatewayConfig
    control: ControlConfig
    history: HistoryConfig
    outbox: OutboxConfig
    backup: BackupConfig
    drivers: dict[str, DriverConfig]
    connectors: dict[str, ConnectorConfig]
    plugins: list[str]
    warnings: list[Problem] = field(default_factory=list, compare=False)

    def iter_points(self) -> Iterator[PointConfig]:
        """Every configured point, driver by driver and device by device."""
        for drv in self.drivers.values():
            for dev in drv.devices.values():
                yield from dev.points.values()

    def summary(self) -> str:
        """The one line ``check-config`` prints for a good file."""
        devices = sum(len(d.devices) for d in self.drivers.values())
        points = sum(1 for _ in self.iter_points())
        return (f"{self.files[0]}: ok — {len(self.drivers)} driver(s), {devices} device(s), "
                f"{points} point(s), {len(self.connectors)} connector(s)")

    def state_path(self, name: str) -> str:
        """The path of ``name`` (e.g. ``"state.db"``) in the gateway's state directory."""
        return os.path.join(self.gateway.state_dir, name)


# --------------------------------------------------------------------------- core schemas


def _octal(value: str) -> str | None:
    return None if re.fullmatch(r"0?[0-7]{3,4}", value) else f"{value!r} is not an octal mode like \"0660\""


def _convert_check(value: str) -> str | None:
    from ..units import parse_convert  # local: units imports nothing from config

    try:
        parse_convert(value)
    except ValueError as e:
        return str(e)
    return None


GATEWAY_SCHEMA = Schema({
    "id": Key(Str(pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*"), lambda: socket.gethostname().split(".")[0],
              "gateway id used in topics; defaults to the host name"),
    "state_dir": Key(Str(), lambda: os.environ.get("STATE_DIRECTORY", "var").split(":")[0],
                     "where state.db, history.db and outbox.db live"),
    "log_level": Key(Enum("debug", "info", "warning", "error"), "info"),
    "stale_time": Key(Duration(min=0.1), 300.0, "default stale_time of points"),
    "shutdown_grace": Key(Duration(min=0, max=120), 5.0, "bounded drain on SIGTERM"),
})

_SYSTEM_CHECKS: "contextvars.ContextVar[bool]" = contextvars.ContextVar("gatewayd_config_system_checks",
                                                                        default=True)


def _control_check(d: dict, err: Callable[[str, str], None]) -> None:
    """What start needs from [control] and only the OS can tell: the socket group and role entries exist.

    Every list-valued key of [control] is a role list (admin, operator, viewer and
    any role added later); entries are ``*``, ``uid:N``, ``gid:N``, ``user:NAME`` or ``group:NAME``.
    """
    import grp
    import pwd

    if not _SYSTEM_CHECKS.get():
        return
    group = d.get("socket_group")
    if isinstance(group, str) and group:
        try:
            grp.getgrnam(group)
        except KeyError:
            err("socket_group", f"control.socket_group: no such group {group!r} on this system "
                                "(create it, or remove socket_group to keep the daemon's own group)")
    for key, entries in d.items():
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            where = f"control.{key}"
            if not isinstance(entry, str):
                err(key, f"{where}: entry {entry!r} must be a string")
                continue
            if entry.strip() == "*":
                continue
            kind, sep, val = entry.partition(":")
            kind, val = kind.strip(), val.strip()
            grant = key not in ("admin", "operator", "viewer")  # a grant list (audit) may also name roles
            if grant and sep and kind == "role":
                if val not in ("viewer", "operator", "admin"):
                    err(key, f"{where}: {entry!r}: role must be viewer, operator or admin")
                continue
            if not sep or kind not in ("uid", "gid", "user", "group") or not val:
                err(key, f"{where}: {entry!r} must be uid:N, user:NAME, gid:N, group:NAME"
                         + (", role:viewer|operator|admin" if grant else "") + " or *")
            elif kind in ("uid", "gid"):
                if not val.isdigit():
                    err(key, f"{where}: {entry!r}: {kind} needs a non-negative number")
            else:
                try:
                    (pwd.getpwnam if kind == "user" else grp.getgrnam)(val)
                except KeyError:
                    err(key, f"{where}: no such {kind} {val!r} on this system (entry {entry!r})")


CONTROL_SCHEMA = Schema({
    "socket": Key(Str(), lambda: os.path.join(os.environ.get("RUNTIME_DIRECTORY", "var").split(":")[0], "gatewayd.sock")),
    "socket_mode": Key(Str(check=_octal), "0660"),
    "socket_group": Key(Str(), None),
    "max_request_bytes": Key(Size(), 1 << 20),
    "admin": Key(List(Str()), list),
    "operator": Key(List(Str()), list),
    "viewer": Key(List(Str()), lambda: ["*"]),
    # the audit-reading grant and the control-plane limits
    "audit": Key(List(Str()), lambda: ["role:operator"], "who may read the audit log: entries as for the roles, "
                 "plus role:viewer|operator|admin"),
    "max_connections": Key(Int(min=1, max=100_000), 64, "control connections at once (root and the daemon's "
                           "own user are not counted)"),
    "max_connections_per_uid": Key(Int(min=1, max=100_000), 16),
    "max_watchers": Key(Int(min=0, max=100_000), 32, "points.watch streams at once (per uid: a quarter)"),
    "idle_timeout": Key(Duration(min=1), 300.0, "close a connection with no request for this long"),
    "request_timeout": Key(Duration(min=0.1), 10.0, "close a connection that started a request and did not "
                           "finish sending it within this"),
})
CONTROL_SCHEMA.check = _control_check  # checked at check-config and reload, so start never dies on it

HISTORY_SCHEMA = Schema({
    "enabled": Key(Bool(), True),
    "mode": Key(Enum("cov", "interval"), "cov", "cov: every value that passed the COV filter; interval: one sample per point per interval"),
    "interval": Key(Duration(min=1), 60.0),
    "retention": Key(Duration(min=60), 30 * 86400.0),
    "flush_interval": Key(Duration(min=0.05, max=60), 1.0),
    "batch_size": Key(Int(min=1, max=100_000), 1000),
    "current_save_interval": Key(Duration(min=1), 60.0),
    "max_held_bytes": Key(Size(), 64 * 1024 * 1024,
                          "memory the recorder may hold for stores it cannot write (disk full); oldest dropped beyond"),
})

OUTBOX_SCHEMA = Schema({
    "memory": Key(Bool(), False, "keep the outbox in RAM only (no flash writes; lost on restart)"),
    "max_age": Key(Duration(min=1), 7 * 86400.0),
    "max_bytes": Key(Size(), 512 * 1024 * 1024),
})

BACKUP_SCHEMA = Schema({
    "dir": Key(Str(), None),
    "interval": Key(Duration(min=60), None),
    "retention": Key(Int(min=1), 7),
})

POINT_KINDS = ("analog", "binary", "multistate", "string")

POINT_SCHEMA = Schema({
    "name": Key(Str(), None, "display name"),
    "description": Key(Str(nonempty=False), None),
    "kind": Key(Enum(*POINT_KINDS), "analog"),
    "unit": Key(Str(), None),
    "convert": Key(Str(check=_convert_check), None, 'unit conversion, e.g. "°C => °F"'),
    "scale": Key(Float(), 1.0),
    "offset": Key(Float(), 0.0),
    "calibration": Key(Float(), 0.0),
    "cov_deadband": Key(Float(min=0), 0.0),
    "stale_time": Key(Duration(min=0.1), None),
    "writable": Key(Bool(), False),
    "relinquish_default": Key(AnyValue(), None),
    "history": Key(Enum("cov", "interval", "off"), None),
    "enabled": Key(Bool(), True),
    "tags": Key(List(Str()), list),
    "states": Key(List(Str()), list),
    "min": Key(Float(), None, "lowest value a write may command (point units)"),
    "max": Key(Float(), None, "highest value a write may command (point units)"),
})

#: write tuning keys (Haxall's writeOnOpen/writeOnStart/writeMinTime/writeMaxTime) taken by a driver
#: table, a device table and a point table; the most specific one wins (see gatewayd/writes.py).
WRITE_TUNING = {
    "write_on_open": (Bool(), True, "re-send the commanded value when the device connection (re)opens"),
    "write_on_start": (Bool(), True, "re-send the commanded value when the driver starts"),
    "write_min_time": (Duration(min=0), 0.0, "at most one write per interval (0 = off)"),
    "write_max_time": (Duration(min=0), 0.0, "re-send at least once per interval (0 = off)"),
}
_TUNING_KEYS = {k: Key(t, None, doc) for k, (t, _d, doc) in WRITE_TUNING.items()}
POINT_SCHEMA = POINT_SCHEMA.extend(_TUNING_KEYS)

DEVICE_BASE = Schema({
    "enabled": Key(Bool(), True),
    **_TUNING_KEYS,
})

DRIVER_BASE = Schema({
    "type": Key(Str(), REQUIRED, "the driver type, e.g. \"sim\", \"modbus\", \"bacnet\""),
    "plugin": Key(Str(), None, "dotted module path of a plugin outside gatewayd"),
    "enabled": Key(Bool(), True),
    **_TUNING_KEYS,
})

CONNECTOR_BASE = Schema({
    "type": Key(Str(), REQUIRED, "the connector type, e.g. \"mqtt\""),
    "plugin": Key(Str(), None, "dotted module path of a plugin outside gatewayd"),
    "enabled": Key(Bool(), True),
})

TOP_KEYS = ("include", "plugins", "gateway", "control", "history", "outbox", "backup", "drivers", "connectors")


# --------------------------------------------------------------------------- loading


def load_config(path: str, *, registry: "Any | None" = None, load_plugins: bool = True,
                system_checks: bool = True) -> Config:
    """Read, merge includes, load the plugins named, validate. Raises :class:`ConfigError` with every problem.

    ``registry`` is a :class:`gatewayd.plugins.PluginRegistry`; when omitted a
    fresh one is made and the plugins the file names are loaded into it, so
    driver- and connector-specific keys are validated too. Plugins are loaded on
    the calling thread, which must be the registry's own (see :mod:`gatewayd.plugins`);
    the daemon splits the phases instead (:func:`read_config`, ``registry.load_for``,
    :func:`validate_config`).

    ``system_checks=False`` skips what only the target machine can tell (``[control]
    socket_group`` and the users and groups of role entries exist): for a file checked
    on another machine, e.g. a package's default configuration before its group exists.
    """
    from ..plugins import PluginRegistry  # avoid an import cycle at module load

    raw = read_config(path)
    if registry is None:
        registry = PluginRegistry()
    errors = registry.load_for(raw, entry_points=load_plugins)
    token = _SYSTEM_CHECKS.set(system_checks)
    try:
        return validate_config(raw, registry, plugin_errors=errors)
    finally:
        _SYSTEM_CHECKS.reset(token)


def validate_config(raw: RawConfig, registry: Any, *, plugin_errors: dict | None = None) -> Config:
    """Validate a :class:`RawConfig` against the core schemas and the registered plugins' schemas.

    Never loads a plugin (safe on any thread): a type that is not registered is
    reported with ``plugin_errors[(kind, name)]`` (from ``registry.load_for``) or as unknown.
    Raises :class:`ConfigError`; any surprise inside a validator becomes a problem
    at the key's position, never a traceback.
    """
    ctx = raw.ctx
    ctx.problems = list(ctx.problems)  # a RawConfig may be validated twice
    try:
        cfg = _validate(raw, ctx, registry, plugin_errors or {})
    except ConfigError:
        raise
    except Exception as e:  # the last net: a config problem, never a crash of the caller
        import logging

        logging.getLogger("gatewayd.config").error("internal error while validating %s", raw.path, exc_info=True)
        f, line, col = ctx.at(())
        ctx.problems.append(Problem(f, line, col, f"internal error while checking this file "
                                                  f"({type(e).__name__}: {e}); please report it"))
        cfg = None
    if ctx.problems or cfg is None:
        files = raw.files
        raise ConfigError(sorted(_dedupe(ctx.problems),
                                 key=lambda p: (files.index(p.file) if p.file in files else 99, p.line, p.col)))
    cfg.warnings = list(_dedupe(ctx.warnings))
    return cfg


def _validate(raw_cfg: RawConfig, ctx: "_Ctx", registry: Any, plugin_errors: dict) -> Config | None:
    raw = raw_cfg.data
    if ctx.problems and not raw:
        return None  # the main file could not be read

    # ---- top level
    for k in list(raw):
        if k not in TOP_KEYS:
            close = difflib.get_close_matches(k, TOP_KEYS, n=1)
            ctx.error((k,), f"unknown key {k!r} at the top level" + (f" (did you mean {close[0]!r}?)" if close else ""))

    def section(name: str, schema: Schema) -> dict:
        v = raw.get(name, {})
        if not isinstance(v, dict):
            ctx.error((name,), f"[{name}] must be a table")
            v = {}
        return schema.validate(v, (name,), ctx)

    gw = section("gateway", GATEWAY_SCHEMA)
    ctl = section("control", CONTROL_SCHEMA)
    hist = section("history", HISTORY_SCHEMA)
    outb = section("outbox", OUTBOX_SCHEMA)
    bkp = section("backup", BACKUP_SCHEMA)

    plugins = raw.get("plugins", [])
    try:
        plugins = List(Str())(plugins, ("plugins",), ctx)
    except _Invalid as e:
        ctx.error(("plugins",), str(e))
        plugins = []
    for i, mod in enumerate(plugins):
        err = plugin_errors.get(("module", mod))
        if err:
            ctx.error(("plugins", str(i)), err)

    drivers: dict[str, DriverConfig] = {}
    device_owner: dict[str, str] = {}
    raw_drivers = raw.get("drivers", {})
    if not isinstance(raw_drivers, dict):
        ctx.error(("drivers",), "[drivers] must be a table of driver tables")
        raw_drivers = {}
    for did, dtab in raw_drivers.items():
        dpath = ("drivers", did)
        if not Map.ID_RE.match(did):
            ctx.error(dpath, f"driver id {did!r} must start with a letter or digit and contain only letters, digits and _ . : -")
            continue
        if not isinstance(dtab, dict):
            ctx.error(dpath, f"drivers.{did} must be a table")
            continue
        try:
            dcfg = _load_driver(did, dtab, dpath, ctx, registry, plugin_errors, gw, hist, device_owner)
        except Exception as e:
            _surprise(ctx, dpath, f"drivers.{did}", e)
            dcfg = None
        if dcfg:
            drivers[did] = dcfg

    connectors: dict[str, ConnectorConfig] = {}
    raw_conns = raw.get("connectors", {})
    if not isinstance(raw_conns, dict):
        ctx.error(("connectors",), "[connectors] must be a table of connector tables")
        raw_conns = {}
    for cid, ctab in raw_conns.items():
        cpath = ("connectors", cid)
        if not Map.ID_RE.match(cid):
            ctx.error(cpath, f"connector id {cid!r} must start with a letter or digit and contain only letters, digits and _ . : -")
            continue
        if not isinstance(ctab, dict):
            ctx.error(cpath, f"connectors.{cid} must be a table")
            continue
        try:
            ccfg = _load_connector(cid, ctab, cpath, ctx, registry, plugin_errors)
        except Exception as e:
            _surprise(ctx, cpath, f"connectors.{cid}", e)
            ccfg = None
        if ccfg:
            connectors[cid] = ccfg

    if ctx.problems:
        return None
    return Config(
        path=raw_cfg.path,
        files=raw_cfg.files,
        gateway=GatewayConfig(**gw),
        control=ControlConfig(**{**ctl, "socket_mode": int(ctl["socket_mode"], 8)}),
        history=HistoryConfig(**hist),
        outbox=OutboxConfig(**outb),
        backup=BackupConfig(**bkp),
        drivers=drivers,
        connectors=connectors,
        plugins=plugins,
    )


def _surprise(ctx: "_Ctx", path: tuple[str, ...], what: str, e: BaseException) -> None:
    """A validator or plugin hook raised something unexpected: a problem at ``path``, logged with its traceback."""
    import logging

    logging.getLogger("gatewayd.config").debug("unexpected error while checking %s", what, exc_info=True)
    ctx.error(path, f"{what}: cannot check this table ({type(e).__name__}: {e}); this is a bug in the plugin's "
                    "checks, please report it")


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _plugin_type(registry, kind: str, type_name: str, plugin: str | None, plugin_errors: dict):
    """(class, error message); looks the type up only (plugins were loaded by ``registry.load_for``)."""
    if plugin and plugin_errors.get(("module", plugin)):
        return None, plugin_errors[("module", plugin)]
    cls = registry.get(kind, type_name)
    if cls is None and plugin_errors.get(("entry_point", type_name)):
        return None, plugin_errors[("entry_point", type_name)]
    if cls is None:
        known = ", ".join(sorted(registry.available(kind))) or "none"
        return None, (f"unknown {kind} type {type_name!r} (installed plugins: {known}; a plugin outside "
                      f"gatewayd needs plugin = \"module.path\")")
    return cls, None


def _load_driver(did, dtab, dpath, ctx, registry, plugin_errors, gw, hist, device_owner) -> DriverConfig | None:
    tname = dtab.get("type")
    if not isinstance(tname, str):
        ctx.error(dpath, f"missing required key 'type' in [drivers.{did}] (the driver type, e.g. \"sim\", \"modbus\")"
                  if tname is None else f"drivers.{did}.type must be a string")
        return None
    plugin = dtab.get("plugin") if isinstance(dtab.get("plugin"), str) else None
    cls, err = _plugin_type(registry, "driver", tname, plugin, plugin_errors)
    if err:
        ctx.error(dpath + ("type",), err)
        return None
    dschema = DRIVER_BASE.extend(getattr(cls, "settings_schema", None))
    raw_devices = dtab.get("devices", {})
    dsettings = dschema.validate({k: v for k, v in dtab.items() if k != "devices"}, dpath, ctx)
    drv_tuning = {k: dsettings.pop(k, None) for k in WRITE_TUNING}
    if not isinstance(raw_devices, dict):
        ctx.error(dpath + ("devices",), f"drivers.{did}.devices must be a table of device tables")
        raw_devices = {}
    devschema = DEVICE_BASE.extend(getattr(cls, "device_schema", None))
    pschema = POINT_SCHEMA.extend(getattr(cls, "point_schema", None))
    devices: dict[str, DeviceConfig] = {}
    for devid, devtab in raw_devices.items():
        vpath = dpath + ("devices", devid)
        if not Map.ID_RE.match(devid):
            ctx.error(vpath, f"device id {devid!r} must start with a letter or digit and contain only letters, digits and _ . : -")
            continue
        if not isinstance(devtab, dict):
            ctx.error(vpath, f"drivers.{did}.devices.{devid} must be a table")
            continue
        if devid in device_owner:
            ctx.error(vpath, f"device id {devid!r} is already used by driver {device_owner[devid]!r} (device ids are unique per gateway)")
            continue
        device_owner[devid] = did
        if vpath not in ctx.declared and set(devtab) <= {"points"}:
            # [drivers.d.devices.X.points.p] without [drivers.d.devices.X]: a typo in the device id
            # must not create a device silently
            known = [k for k, t in raw_devices.items() if k != devid and isinstance(t, dict)
                     and (dpath + ("devices", k) in ctx.declared or set(t) - {"points"})]
            close = difflib.get_close_matches(devid, known, n=1)
            pts = list(devtab.get("points") or {}) if isinstance(devtab.get("points"), dict) else []
            where = vpath + ("points", pts[0]) if pts else vpath
            names = ", ".join(repr(x) for x in pts[:3]) + (" ..." if len(pts) > 3 else "")
            ctx.error(where, (f"point {names} is" if len(pts) == 1 else f"points {names} are")
                      + f" under device {devid!r}, which is not defined: add a [drivers.{did}.devices.{devid}] "
                        "table with the device's settings"
                      + (f", or fix the device id (did you mean {close[0]!r}?)" if close else ""))
            continue
        raw_points = devtab.get("points", {})
        dev_settings = devschema.validate({k: v for k, v in devtab.items() if k != "points"}, vpath, ctx)
        dev_tuning = {k: dev_settings.pop(k, None) for k in WRITE_TUNING}
        if not isinstance(raw_points, dict):
            ctx.error(vpath + ("points",), f"drivers.{did}.devices.{devid}.points must be a table of point tables")
            raw_points = {}
        # points a driver adds (e.g. from a device profile); explicit points override them
        extra = {}
        expand = getattr(cls, "expand_points", None)
        if expand is not None:
            try:
                extra = expand(did, devid, {**dsettings, **dev_settings}) or {}
            except (ValueError, OSError) as e:
                ctx.error(vpath, f"drivers.{did}.devices.{devid}: {e}")
            except Exception as e:
                _surprise(ctx, vpath, f"drivers.{did}.devices.{devid}", e)
        all_points = {**extra, **raw_points}
        points: dict[str, PointConfig] = {}
        for pname, ptab in all_points.items():
            ppath = vpath + ("points", pname)
            if not Map.ID_RE.match(pname):
                ctx.error(ppath, f"point id {pname!r} must start with a letter or digit and contain only letters, digits and _ . : -")
                continue
            if not isinstance(ptab, dict):
                ctx.error(ppath, f"point {devid}/{pname} must be a table")
                continue
            n_before = len(ctx.problems)
            p = pschema.validate(ptab, ppath, ctx)
            if len(ctx.problems) > n_before:
                continue
            common = {k: p.pop(k) for k in list(p) if k in POINT_SCHEMA.keys}
            if common["relinquish_default"] is not None:
                from ..points import PointError, coerce_value

                try:
                    coerce_value(common["kind"], common["relinquish_default"], tuple(common["states"]))
                except PointError as e:
                    ctx.error(ppath + ("relinquish_default",),
                              f"{_fmt_path(ppath + ('relinquish_default',))}: {e}")
                    continue
            tuning = {k: next((v for v in (common[k], dev_tuning[k], drv_tuning[k]) if v is not None),
                              WRITE_TUNING[k][1]) for k in WRITE_TUNING}
            if common["kind"] != "analog" and (common["min"] is not None or common["max"] is not None):
                ctx.error(ppath + ("min" if common["min"] is not None else "max",),
                          f"point {devid}/{pname}: min/max are write limits of analog points, "
                          f"not of a {common['kind']} point")
                continue
            if common["min"] is not None and common["max"] is not None and common["min"] > common["max"]:
                ctx.error(ppath + ("min",), f"point {devid}/{pname}: min {common['min']:g} is above "
                                            f"max {common['max']:g}")
                continue
            points[pname] = PointConfig(
                id=f"{devid}/{pname}", name=common["name"] or pname, device=devid, driver=did,
                kind=common["kind"], unit=common["unit"], convert=common["convert"],
                scale=common["scale"], offset=common["offset"], calibration=common["calibration"],
                cov_deadband=common["cov_deadband"],
                stale_time=common["stale_time"] if common["stale_time"] is not None else gw.get("stale_time", 300.0),
                writable=common["writable"], relinquish_default=common["relinquish_default"],
                history=common["history"] or hist.get("mode", "cov"), enabled=common["enabled"],
                tags=tuple(common["tags"]), description=common["description"], states=tuple(common["states"]),
                binding=p, min=common["min"], max=common["max"], **tuning,
            )
        devices[devid] = DeviceConfig(id=devid, driver=did, enabled=dev_settings.pop("enabled"),
                                      settings=dev_settings, points=points)
    validate = getattr(cls, "validate_config", None)
    enabled = dsettings.pop("enabled")
    dsettings.pop("type")
    dsettings.pop("plugin")
    dcfg = DriverConfig(id=did, type=tname, plugin=plugin, enabled=enabled, settings=dsettings, devices=devices)
    if validate is not None:
        try:
            for keypath, msg in validate(dcfg) or ():
                ctx.error(dpath + tuple(keypath), msg)
        except Exception as e:
            _surprise(ctx, dpath, f"drivers.{did}", e)
    return dcfg


def _load_connector(cid, ctab, cpath, ctx, registry, plugin_errors) -> ConnectorConfig | None:
    tname = ctab.get("type")
    if not isinstance(tname, str):
        ctx.error(cpath, f"missing required key 'type' in [connectors.{cid}] (the connector type, e.g. \"mqtt\")"
                  if tname is None else f"connectors.{cid}.type must be a string")
        return None
    plugin = ctab.get("plugin") if isinstance(ctab.get("plugin"), str) else None
    cls, err = _plugin_type(registry, "connector", tname, plugin, plugin_errors)
    if err:
        ctx.error(cpath + ("type",), err)
        return None
    schema = CONNECTOR_BASE.extend(getattr(cls, "settings_schema", None))
    settings = schema.validate(ctab, cpath, ctx)
    enabled = settings.pop("enabled")
    settings.pop("type")
    settings.pop("plugin")
    ccfg = ConnectorConfig(id=cid, type=tname, plugin=plugin, enabled=enabled, settings=settings)
    validate = getattr(cls, "validate_config", None)
    if validate is not None:
        try:
            for keypath, msg in validate(ccfg) or ():
                ctx.error(cpath + tuple(keypath), msg)
        except Exception as e:
            _surprise(ctx, cpath, f"connectors.{cid}", e)
    return ccfg


def config_fingerprint(obj: Any) -> Any:
    """A comparable form of a driver/connector config, for reload diffs."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
