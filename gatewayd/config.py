"""TOML configuration: tomlkit in, typed and validated objects out.

One file (plus ``include`` globs) describes the whole site::

    include = ["conf.d/*.toml"]

    [gateway]
    id = "plant-7"

    [drivers.sim]
    type = "sim"

    [drivers.sim.devices.ahu-1]
    model = "ahu"

    [drivers.sim.devices.ahu-1.points.supply_temp]
    signal = "supply_temp"
    unit = "°C"
    convert = "°C => °F"

Every problem is collected (not just the first) as a :class:`Problem` carrying
``file:line:col``. Unknown keys are errors, with a "did you mean" hint. Secrets
are never written in the file: ``password = { env = "MQTT_PASSWORD" }`` or
``{ file = "/etc/gatewayd/secret" }``.

Plugins describe their own keys with the small schema language below
(:class:`Schema`, :class:`Key` and the validators), so a driver's settings are
validated with the same messages and positions as the core's.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import tomlkit
import tomlkit.exceptions

__all__ = [
    "Problem",
    "ConfigError",
    "Secret",
    "Key",
    "Schema",
    "Validator",
    "Str",
    "Int",
    "Float",
    "Bool",
    "Duration",
    "Size",
    "Enum",
    "List",
    "Table",
    "Map",
    "AnyValue",
    "SecretStr",
    "Config",
    "GatewayConfig",
    "ControlConfig",
    "HistoryConfig",
    "OutboxConfig",
    "BackupConfig",
    "DriverConfig",
    "DeviceConfig",
    "PointConfig",
    "ConnectorConfig",
    "load_config",
    "parse_duration",
    "parse_size",
    "REQUIRED",
]


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One configuration problem, printed as ``file:line:col: message``."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class ConfigError(Exception):
    """Raised by :func:`load_config` with every :class:`Problem` found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class Secret(str):
    """A string resolved from ``{ env = ... }`` / ``{ file = ... }``; never shown in repr/logs."""

    def __repr__(self) -> str:  # pragma: no cover - trivial
        return "Secret('***')"


# --------------------------------------------------------------------------- positions


_BARE = r"[A-Za-z0-9_-]+"
_KEYPART = rf'(?:{_BARE}|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_KEYPART}(?:\s*\.\s*{_KEYPART})*"
_HEADER_RE = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?")
_KEYLINE_RE = re.compile(rf"^(\s*)({_DOTTED})\s*=")
_PART_RE = re.compile(_KEYPART)


def _split_dotted(s: str) -> tuple[str, ...]:
    parts = []
    for m in _PART_RE.finditer(s):
        p = m.group(0)
        if p[0] == '"':
            p = p[1:-1].encode().decode("unicode_escape")
        elif p[0] == "'":
            p = p[1:-1]
        parts.append(p)
    return tuple(parts)


def key_positions(text: str) -> dict[tuple[str, ...], tuple[int, int]]:
    """Map every key path in a TOML document to its (line, col), 1-based.

    tomlkit keeps layout but not positions, so this is a small line scanner:
    table headers, ``key = value`` lines (dotted keys too) and one level of
    inline tables. Array-of-table entries get their index in the path.
    Positions of headers are recorded for the table path itself.
    """
    pos: dict[tuple[str, ...], tuple[int, int]] = {}
    table: tuple[str, ...] = ()
    aot_count: dict[tuple[str, ...], int] = {}
    in_ml: str | None = None
    depth = 0  # bracket depth of a multi-line array value
    for lineno, line in enumerate(text.splitlines(), 1):
        if in_ml:
            if line.count(in_ml) % 2 == 1:
                in_ml = None
            continue
        if depth > 0:
            depth += line.count("[") - line.count("]")
            continue
        m = _HEADER_RE.match(line)
        if m:
            path = _split_dotted(m.group(2))
            if m.group(1) == "[[":
                n = aot_count.get(path, 0)
                aot_count[path] = n + 1
                path = path + (str(n),)
            table = path
            pos.setdefault(table, (lineno, line.index(m.group(1)) + 1))
            continue
        m = _KEYLINE_RE.match(line)
        if not m:
            continue
        key = table + _split_dotted(m.group(2))
        col = len(m.group(1)) + 1
        for i in range(len(table) + 1, len(key) + 1):
            pos.setdefault(key[:i], (lineno, col))
        rest = line[m.end():]
        # inline table on one line: record its keys at their columns
        stripped = rest.strip()
        if stripped.startswith("{"):
            off = m.end() + rest.index("{")
            for km in re.finditer(rf"[{{,]\s*({_DOTTED})\s*=", line[off:]):
                sub = key + _split_dotted(km.group(1))
                pos.setdefault(sub, (lineno, off + km.start(1) + 1))
        for q in ('"""', "'''"):
            if rest.count(q) % 2 == 1:
                in_ml = q
                break
        if not in_ml and stripped.startswith("["):
            d = _bracket_balance(stripped)
            if d > 0:
                depth = d
    return pos


def _bracket_balance(s: str) -> int:
    depth, quote = 0, None
    for ch in s:
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
    return depth


# --------------------------------------------------------------------------- validation context


class _Ctx:
    """Collects problems; knows where each key came from."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        # key path -> (file, line, col); tables from includes are merged in
        self.where: dict[tuple[str, ...], tuple[str, int, int]] = {}
        self.file_of_root: str = "<config>"

    def at(self, path: tuple[str, ...]) -> tuple[str, int, int]:
        p = tuple(path)
        while p:
            if p in self.where:
                return self.where[p]
            p = p[:-1]
        return (self.file_of_root, 1, 1)

    def error(self, path: tuple[str, ...], message: str) -> None:
        f, line, col = self.at(path)
        self.problems.append(Problem(f, line, col, message))


def _fmt_path(path: Iterable[str]) -> str:
    out = []
    for p in path:
        out.append(p if re.fullmatch(_BARE, p) else f'"{p}"')
    return ".".join(out)


class _Invalid(Exception):
    """Raised by a validator; the message is reported at the key's position."""


REQUIRED: Any = object()


class Validator:
    """Checks and converts one TOML value. Subclasses implement :meth:`convert`."""

    label = "value"

    def convert(self, value: Any, path: tuple[str, ...], ctx: _Ctx) -> Any:
        raise NotImplementedError

    def __call__(self, value: Any, path: tuple[str, ...], ctx: _Ctx) -> Any:
        value = _resolve_indirection(value, self, path)
        return self.convert(value, path, ctx)


def _resolve_indirection(value: Any, v: Validator, path) -> Any:
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("env", "file") \
            and isinstance(v, (Str, SecretStr)):
        (kind, ref), = value.items()
        if not isinstance(ref, str) or not ref:
            raise _Invalid(f"{_fmt_path(path)}: {{ {kind} = ... }} needs a non-empty string")
        if kind == "env":
            if ref not in os.environ:
                raise _Invalid(f"{_fmt_path(path)}: environment variable {ref!r} is not set")
            return Secret(os.environ[ref])
        try:
            with open(ref, encoding="utf-8") as fh:
                return Secret(fh.read().rstrip("\r\n"))
        except OSError as e:
            raise _Invalid(f"{_fmt_path(path)}: cannot read secret file {ref!r}: {e.strerror}") from None
    return value


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


class Str(Validator):
    label = "a string"

    def __init__(self, *, pattern: str | None = None, nonempty: bool = True, check: Callable[[str], str | None] | None = None):
        self.pattern = re.compile(pattern) if pattern else None
        self.nonempty = nonempty
        self.check = check

    def convert(self, value, path, ctx):
        if not isinstance(value, str):
            raise _Invalid(f"{_fmt_path(path)} must be a string, not {_type_name(value)}")
        if self.nonempty and not value:
            raise _Invalid(f"{_fmt_path(path)} must not be empty")
        if self.pattern and not self.pattern.fullmatch(value):
            raise _Invalid(f"{_fmt_path(path)}: {value!r} does not match {self.pattern.pattern}")
        if self.check:
            msg = self.check(value)
            if msg:
                raise _Invalid(f"{_fmt_path(path)}: {msg}")
        return value


class SecretStr(Str):
    """A string that should come from ``{ env = ... }`` or ``{ file = ... }``."""

    def convert(self, value, path, ctx):
        return Secret(super().convert(value, path, ctx))


class Int(Validator):
    label = "an integer"

    def __init__(self, *, min: int | None = None, max: int | None = None):
        self.min, self.max = min, max

    def convert(self, value, path, ctx):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"{_fmt_path(path)} must be an integer, not {_type_name(value)}")
        _range(value, self.min, self.max, path)
        return int(value)


class Float(Validator):
    label = "a number"

    def __init__(self, *, min: float | None = None, max: float | None = None):
        self.min, self.max = min, max

    def convert(self, value, path, ctx):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"{_fmt_path(path)} must be a number, not {_type_name(value)}")
        _range(value, self.min, self.max, path)
        return float(value)


def _range(value, lo, hi, path):
    if lo is not None and value < lo:
        raise _Invalid(f"{_fmt_path(path)} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise _Invalid(f"{_fmt_path(path)} must be <= {hi}, got {value}")


class Bool(Validator):
    label = "true or false"

    def convert(self, value, path, ctx):
        if not isinstance(value, bool):
            raise _Invalid(f"{_fmt_path(path)} must be true or false, not {_type_name(value)}")
        return value


_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)?\s*$")
_DUR_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> float:
    """``"250ms"``, ``"5s"``, ``"2m"``, ``"1h"``, ``"30d"``, ``"1w"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration must not be negative")
        return float(value)
    if isinstance(value, str):
        m = _DUR_RE.match(value)
        if m:
            return float(m.group(1)) * _DUR_UNITS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration (examples: \"500ms\", \"5s\", \"2m\", \"1h\", \"30d\")")


class Duration(Validator):
    label = "a duration"

    def __init__(self, *, min: float | None = None, max: float | None = None):
        self.min, self.max = min, max

    def convert(self, value, path, ctx):
        try:
            secs = parse_duration(value)
        except ValueError as e:
            raise _Invalid(f"{_fmt_path(path)}: {e}") from None
        if self.min is not None and secs < self.min:
            raise _Invalid(f"{_fmt_path(path)} must be at least {self.min:g}s, got {value!r}")
        if self.max is not None and secs > self.max:
            raise _Invalid(f"{_fmt_path(path)} must be at most {self.max:g}s, got {value!r}")
        return secs


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|k|K|M|G)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "k": 1000, "K": 1024, "KiB": 1024, "MB": 1000**2,
               "M": 1024**2, "MiB": 1024**2, "GB": 1000**3, "G": 1024**3, "GiB": 1024**3}


def parse_size(value: Any) -> int:
    """``"512MiB"``, ``"10MB"``, ``"64KiB"`` or an integer number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError("a size, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    raise ValueError(f"{value!r} is not a size (examples: 1048576, \"64KiB\", \"512MiB\", \"2GB\")")


class Size(Validator):
    label = "a size"

    def convert(self, value, path, ctx):
        try:
            return parse_size(value)
        except ValueError as e:
            raise _Invalid(f"{_fmt_path(path)}: {e}") from None


class Enum(Validator):
    def __init__(self, *choices: Any):
        self.choices = choices
        self.label = "one of " + ", ".join(repr(c) for c in choices)

    def convert(self, value, path, ctx):
        if value not in self.choices or isinstance(value, bool) != any(isinstance(c, bool) for c in self.choices if c == value):
            hint = ""
            if isinstance(value, str):
                close = difflib.get_close_matches(value, [str(c) for c in self.choices], n=1)
                if close:
                    hint = f" (did you mean {close[0]!r}?)"
            raise _Invalid(f"{_fmt_path(path)} must be {self.label}, got {value!r}{hint}")
        return value


class List(Validator):
    def __init__(self, item: Validator, *, min_len: int = 0):
        self.item = item
        self.min_len = min_len
        self.label = f"an array of {item.label}"

    def convert(self, value, path, ctx):
        if not isinstance(value, list):
            raise _Invalid(f"{_fmt_path(path)} must be {self.label}, not {_type_name(value)}")
        if len(value) < self.min_len:
            raise _Invalid(f"{_fmt_path(path)} needs at least {self.min_len} item(s)")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(self.item(v, path + (str(i),), ctx))
            except _Invalid as e:
                raise _Invalid(f"{e} (item {i + 1})") from None
        return out


class AnyValue(Validator):
    label = "any value"

    def convert(self, value, path, ctx):
        return value


class Table(Validator):
    """A nested table validated by a :class:`Schema`."""

    label = "a table"

    def __init__(self, schema: "Schema"):
        self.schema = schema

    def convert(self, value, path, ctx):
        if not isinstance(value, dict):
            raise _Invalid(f"{_fmt_path(path)} must be a table, not {_type_name(value)}")
        return self.schema.validate(value, path, ctx)


class Map(Validator):
    """A table of sub-tables keyed by stable ids (``[drivers.<id>]``)."""

    label = "a table of tables"
    ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")

    def __init__(self, schema: "Schema | None" = None, item: Validator | None = None):
        self.schema = schema
        self.item = item

    def convert(self, value, path, ctx):
        if not isinstance(value, dict):
            raise _Invalid(f"{_fmt_path(path)} must be a table, not {_type_name(value)}")
        out = {}
        for k, v in value.items():
            if not self.ID_RE.match(k):
                ctx.error(path + (k,), f"{_fmt_path(path + (k,))}: id {k!r} must start with a letter or digit "
                          "and contain only letters, digits and _ . : -")
                continue
            if self.schema is not None:
                if not isinstance(v, dict):
                    ctx.error(path + (k,), f"{_fmt_path(path + (k,))} must be a table, not {_type_name(v)}")
                    continue
                out[k] = self.schema.validate(v, path + (k,), ctx)
            else:
                try:
                    out[k] = self.item(v, path + (k,), ctx)
                except _Invalid as e:
                    ctx.error(path + (k,), str(e))
        return out


@dataclass
class Key:
    """One allowed key: its validator, default (``REQUIRED`` if none) and doc line."""

    validator: Validator
    default: Any = None
    doc: str = ""


class Schema:
    """Allowed keys of one table. Unknown keys are errors.

    ``Schema({"host": Key(Str(), REQUIRED, "device address"), "port": Key(Int(min=1, max=65535), 502)})``
    """

    def __init__(self, keys: dict[str, Key] | None = None, *, check: Callable[[dict, Callable[[str, str], None]], None] | None = None):
        self.keys: dict[str, Key] = dict(keys or {})
        self.check = check

    def extend(self, other: "Schema | dict[str, Key] | None") -> "Schema":
        """A new schema with the keys of both (``other`` wins on clashes)."""
        if other is None:
            return self
        keys = other.keys if isinstance(other, Schema) else other
        checks = [c for c in (self.check, getattr(other, "check", None)) if c]

        def check(d, err):
            for c in checks:
                c(d, err)

        return Schema({**self.keys, **keys}, check=check if checks else None)

    def validate(self, table: dict, path: tuple[str, ...], ctx: _Ctx) -> dict:
        out: dict[str, Any] = {}
        for k, v in table.items():
            key = self.keys.get(k)
            if key is None:
                close = difflib.get_close_matches(k, list(self.keys), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                where = f"[{_fmt_path(path)}]" if path else "the top level"
                ctx.error(path + (k,), f"unknown key {k!r} in {where}{hint}")
                continue
            try:
                out[k] = key.validator(v, path + (k,), ctx)
            except _Invalid as e:
                ctx.error(path + (k,), str(e))
        for k, key in self.keys.items():
            if k in out or k in table:
                continue
            if key.default is REQUIRED:
                where = f"[{_fmt_path(path)}]" if path else "the top level"
                ctx.error(path, f"missing required key {k!r} in {where}" + (f" ({key.doc})" if key.doc else ""))
            else:
                d = key.default
                out[k] = d() if callable(d) else d
        if self.check:
            self.check(out, lambda k, msg: ctx.error(path + ((k,) if k else ()), msg))
        return out


# --------------------------------------------------------------------------- typed config


@dataclass
class GatewayConfig:
    id: str
    state_dir: str
    log_level: str
    stale_time: float
    shutdown_grace: float


@dataclass
class ControlConfig:
    socket: str
    socket_mode: int
    socket_group: str | None
    max_request_bytes: int
    admin: list[str]
    operator: list[str]
    viewer: list[str]


@dataclass
class HistoryConfig:
    enabled: bool
    mode: str
    interval: float
    retention: float
    flush_interval: float
    batch_size: int
    current_save_interval: float


@dataclass
class OutboxConfig:
    memory: bool
    max_age: float
    max_bytes: int


@dataclass
class BackupConfig:
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
    id: str
    driver: str
    enabled: bool
    settings: dict
    points: dict[str, PointConfig]


@dataclass
class DriverConfig:
    id: str
    type: str
    plugin: str | None
    enabled: bool
    settings: dict
    devices: dict[str, DeviceConfig]


@dataclass
class ConnectorConfig:
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

    def iter_points(self) -> Iterator[PointConfig]:
        for drv in self.drivers.values():
            for dev in drv.devices.values():
                yield from dev.points.values()

    def summary(self) -> str:
        devices = sum(len(d.devices) for d in self.drivers.values())
        points = sum(1 for _ in self.iter_points())
        return (f"{self.files[0]}: ok — {len(self.drivers)} driver(s), {devices} device(s), "
                f"{points} point(s), {len(self.connectors)} connector(s)")

    def state_path(self, name: str) -> str:
        return os.path.join(self.gateway.state_dir, name)


# --------------------------------------------------------------------------- core schemas


def _octal(value: str) -> str | None:
    return None if re.fullmatch(r"0?[0-7]{3,4}", value) else f"{value!r} is not an octal mode like \"0660\""


def _convert_check(value: str) -> str | None:
    from .units import parse_convert  # local: units imports nothing from config

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

CONTROL_SCHEMA = Schema({
    "socket": Key(Str(), lambda: os.path.join(os.environ.get("RUNTIME_DIRECTORY", "var").split(":")[0], "gatewayd.sock")),
    "socket_mode": Key(Str(check=_octal), "0660"),
    "socket_group": Key(Str(), None),
    "max_request_bytes": Key(Size(), 1 << 20),
    "admin": Key(List(Str()), list),
    "operator": Key(List(Str()), list),
    "viewer": Key(List(Str()), lambda: ["*"]),
})

HISTORY_SCHEMA = Schema({
    "enabled": Key(Bool(), True),
    "mode": Key(Enum("cov", "interval"), "cov", "cov: every value that passed the COV filter; interval: one sample per point per interval"),
    "interval": Key(Duration(min=1), 60.0),
    "retention": Key(Duration(min=60), 30 * 86400.0),
    "flush_interval": Key(Duration(min=0.05, max=60), 1.0),
    "batch_size": Key(Int(min=1, max=100_000), 1000),
    "current_save_interval": Key(Duration(min=1), 60.0),
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


def _read_toml(path: str, ctx: _Ctx, shown: str | None = None) -> dict | None:
    """Parse one file; problems and key positions are recorded under ``shown`` (the path as given)."""
    shown = shown or path
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        ctx.problems.append(Problem(shown, 1, 1, "file not found"))
        return None
    except (OSError, UnicodeDecodeError) as e:
        ctx.problems.append(Problem(shown, 1, 1, f"cannot read file: {e}"))
        return None
    # tomllib reads ~10x faster than tomlkit (4.3 s -> 0.45 s for a 10,000-point
    # file); tomlkit is kept for edits and for its clearer syntax-error messages.
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as fast_error:
        try:
            tomlkit.parse(text)
        except tomlkit.exceptions.ParseError as e:
            msg = str(e)
            msg = re.sub(r"\s+at line \d+ col \d+$", "", msg)
            ctx.problems.append(Problem(shown, e.line, e.col + 1, f"TOML syntax error: {msg}"))  # tomlkit counts columns from 0
            return None
        m = re.search(r"\(at line (\d+), column (\d+)\)$", str(fast_error))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)$", "", str(fast_error)) or "invalid TOML"
        line, col = (int(m.group(1)), int(m.group(2))) if m else (1, 1)
        ctx.problems.append(Problem(shown, line, col, f"TOML syntax error: {msg}"))
        return None
    for kp, (line, col) in key_positions(text).items():
        ctx.where.setdefault(kp, (shown, line, col))
    return data


def load_config(path: str, *, registry: "Any | None" = None, load_plugins: bool = True) -> Config:
    """Read, merge includes, validate. Raises :class:`ConfigError` with every problem.

    ``registry`` is a :class:`gatewayd.plugins.PluginRegistry`; when omitted a
    fresh one is made and the plugins the file names are loaded into it, so
    driver- and connector-specific keys are validated too.
    """
    from .plugins import PluginRegistry  # avoid an import cycle at module load

    ctx = _Ctx()
    path = os.path.abspath(path) if not os.path.isabs(path) else path
    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    ctx.file_of_root = shown
    raw = _read_toml(path, ctx, shown)
    if raw is None:
        raise ConfigError(ctx.problems)
    files = [shown]

    # ---- includes: merge [drivers.*], [connectors.*] (and others, if not clashing)
    includes = raw.pop("include", [])
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        ctx.error(("include",), "include must be an array of glob strings, e.g. include = [\"conf.d/*.toml\"]")
        includes = []
    base = os.path.dirname(path)
    for pattern in includes:
        matches = sorted(glob.glob(os.path.join(base, pattern)))
        for inc in matches:
            if os.path.abspath(inc) == path:
                continue
            sub = _Ctx()
            inc_shown = os.path.relpath(inc) if not os.path.relpath(inc).startswith("..") else inc
            sub.file_of_root = inc_shown
            data = _read_toml(inc, sub, inc_shown)
            ctx.problems.extend(sub.problems)
            if data is None:
                continue
            files.append(inc_shown)
            if "include" in data:
                f, line, col = sub.where.get(("include",), (inc_shown, 1, 1))
                ctx.problems.append(Problem(f, line, col,
                                            "include is only allowed in the main file"))
                data.pop("include")
            _merge(raw, data, (), ctx, sub.where)

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

    if registry is None:
        registry = PluginRegistry()
    for i, mod in enumerate(plugins):
        err = registry.load_module(mod)
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
        dcfg = _load_driver(did, dtab, dpath, ctx, registry, load_plugins, gw, hist, device_owner)
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
        ccfg = _load_connector(cid, ctab, cpath, ctx, registry, load_plugins)
        if ccfg:
            connectors[cid] = ccfg

    if ctx.problems:
        raise ConfigError(sorted(_dedupe(ctx.problems), key=lambda p: (files.index(p.file) if p.file in files else 99, p.line, p.col)))

    return Config(
        path=path,
        files=files,
        gateway=GatewayConfig(**gw),
        control=ControlConfig(**{**ctl, "socket_mode": int(ctl["socket_mode"], 8)}),
        history=HistoryConfig(**hist),
        outbox=OutboxConfig(**outb),
        backup=BackupConfig(**bkp),
        drivers=drivers,
        connectors=connectors,
        plugins=plugins,
    )


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _merge(dst: dict, src: dict, path: tuple[str, ...], ctx: _Ctx, where: dict) -> None:
    """Merge an included file into the main document; a clash is an error at both places."""
    for k, v in src.items():
        p = path + (k,)
        for kp, loc in where.items():
            if kp[: len(p)] == p:
                ctx.where.setdefault(kp, loc)
        if k not in dst:
            dst[k] = v
        elif isinstance(dst[k], dict) and isinstance(v, dict) and len(p) < 2:
            _merge(dst[k], v, p, ctx, where)
        else:
            f, line, col = where.get(p, ("?", 1, 1))
            first = ctx.at(p)
            ctx.problems.append(Problem(f, line, col,
                                        f"{_fmt_path(p)} is already defined at {first[0]}:{first[1]}:{first[2]}"))


def _plugin_type(registry, kind: str, type_name: str, plugin: str | None, load_plugins: bool):
    """(class, error message)"""
    if plugin:
        err = registry.load_module(plugin)
        if err:
            return None, err
    cls = registry.get(kind, type_name)
    if cls is None and load_plugins:
        err = registry.load_entry_point(type_name)
        if err:
            return None, err
        cls = registry.get(kind, type_name)
    if cls is None:
        known = ", ".join(sorted(registry.available(kind))) or "none"
        return None, (f"unknown {kind} type {type_name!r} (installed plugins: {known}; a plugin outside "
                      f"gatewayd needs plugin = \"module.path\")")
    return cls, None


def _load_driver(did, dtab, dpath, ctx, registry, load_plugins, gw, hist, device_owner) -> DriverConfig | None:
    tname = dtab.get("type")
    if not isinstance(tname, str):
        ctx.error(dpath, f"missing required key 'type' in [drivers.{did}] (the driver type, e.g. \"sim\", \"modbus\")"
                  if tname is None else f"drivers.{did}.type must be a string")
        return None
    plugin = dtab.get("plugin") if isinstance(dtab.get("plugin"), str) else None
    cls, err = _plugin_type(registry, "driver", tname, plugin, load_plugins)
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
        for keypath, msg in validate(dcfg) or ():
            ctx.error(dpath + tuple(keypath), msg)
    return dcfg


def _load_connector(cid, ctab, cpath, ctx, registry, load_plugins) -> ConnectorConfig | None:
    tname = ctab.get("type")
    if not isinstance(tname, str):
        ctx.error(cpath, f"missing required key 'type' in [connectors.{cid}] (the connector type, e.g. \"mqtt\")"
                  if tname is None else f"connectors.{cid}.type must be a string")
        return None
    plugin = ctab.get("plugin") if isinstance(ctab.get("plugin"), str) else None
    cls, err = _plugin_type(registry, "connector", tname, plugin, load_plugins)
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
        for keypath, msg in validate(ccfg) or ():
            ctx.error(cpath + tuple(keypath), msg)
    return ccfg


def config_fingerprint(obj: Any) -> Any:
    """A comparable form of a driver/connector config, for reload diffs."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
