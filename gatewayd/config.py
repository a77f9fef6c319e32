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

import contextvars
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


def _scan(text: str, *, stop_at: int | None = None) -> Iterator[tuple[int, str, tuple[str, ...], int]]:
    """Yield ``(line, kind, path, col)`` for every table header (kind ``"table"``) and
    key (kind ``"key"``; dotted keys yield each prefix) of a TOML text, 1-based.

    A small line scanner (tomlkit keeps layout but not positions; tomllib keeps
    neither): table headers, ``key = value`` lines (dotted keys too) and one
    level of inline tables. Array-of-table entries get their index in the path.
    A final ``(line, "open-string", (), col)`` is yielded when a multi-line
    string opened at ``line`` is never closed. ``stop_at`` ends the scan after that line.
    """
    table: tuple[str, ...] = ()
    aot_count: dict[tuple[str, ...], int] = {}
    in_ml: str | None = None
    ml_start = (0, 0)
    depth = 0  # bracket depth of a multi-line array value
    for lineno, line in enumerate(text.splitlines(), 1):
        if stop_at is not None and lineno > stop_at:
            return
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
            yield lineno, "table", table, line.index(m.group(1)) + 1
            continue
        m = _KEYLINE_RE.match(line)
        if not m:
            continue
        key = table + _split_dotted(m.group(2))
        col = len(m.group(1)) + 1
        for i in range(len(table) + 1, len(key) + 1):
            yield lineno, "key", key[:i], col
        rest = line[m.end():]
        # inline table on one line: record its keys at their columns
        stripped = rest.strip()
        if stripped.startswith("{"):
            off = m.end() + rest.index("{")
            for km in re.finditer(rf"[{{,]\s*({_DOTTED})\s*=", line[off:]):
                sub = key + _split_dotted(km.group(1))
                yield lineno, "key", sub, off + km.start(1) + 1
        for q in ('"""', "'''"):
            if rest.count(q) % 2 == 1:
                in_ml = q
                ml_start = (lineno, m.end() + rest.index(q) + 1)
                break
        if not in_ml and stripped.startswith("["):
            d = _bracket_balance(stripped)
            if d > 0:
                depth = d
    if in_ml:
        yield ml_start[0], "open-string", (), ml_start[1]


def key_positions(text: str) -> dict[tuple[str, ...], tuple[int, int]]:
    """Map every key path in a TOML document to its (line, col), 1-based.

    Positions of headers are recorded for the table path itself; a key defined
    twice keeps its first position.
    """
    pos: dict[tuple[str, ...], tuple[int, int]] = {}
    for lineno, kind, path, col in _scan(text):
        if kind != "open-string":
            pos.setdefault(path, (lineno, col))
    return pos


def _positions_and_tables(text: str) -> tuple[dict[tuple[str, ...], tuple[int, int]], set[tuple[str, ...]]]:
    """:func:`key_positions` plus the set of paths declared explicitly (a ``[header]``
    or a ``key = ...`` line naming the path itself, not a dotted prefix of it)."""
    pos: dict[tuple[str, ...], tuple[int, int]] = {}
    declared: set[tuple[str, ...]] = set()
    last_line, last_path, last_col = 0, (), 0
    for lineno, kind, path, col in _scan(text):
        if kind == "open-string":
            continue
        pos.setdefault(path, (lineno, col))
        if kind == "table":
            declared.add(path)
        else:
            # a dotted key yields each prefix: only the longest one of a line is the key itself
            if (lineno, col) == (last_line, last_col) and path[: len(last_path)] == last_path \
                    and len(path) > len(last_path):
                declared.discard(last_path)
            declared.add(path)
        last_line, last_path, last_col = lineno, path, col
    return pos, declared


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
        self.warnings: list[Problem] = []
        # paths declared explicitly by a [header] or a key line (not only implied by a longer one)
        self.declared: set[tuple[str, ...]] = set()

    def at(self, path: tuple[str, ...]) -> tuple[str, int, int]:
        p = tuple(path)
        if p and p not in self.where:
            # a table only declared through its children ([[a.b]] entries, [a.b.c] headers): its first child
            first = self._first_under().get(p)
            if first is not None:
                return first
        while p:
            if p in self.where:
                return self.where[p]
            p = p[:-1]
        return (self.file_of_root, 1, 1)

    def _first_under(self) -> dict[tuple[str, ...], tuple[str, int, int]]:
        """prefix -> the earliest position of a key under it (built once per state of ``where``)."""
        if getattr(self, "_under_n", -1) != len(self.where):
            idx: dict[tuple[str, ...], tuple[str, int, int]] = {}
            for kp, loc in self.where.items():
                for i in range(1, len(kp)):
                    old = idx.get(kp[:i])
                    if old is None or (loc[1], loc[2]) < (old[1], old[2]):
                        idx[kp[:i]] = loc
            self._under, self._under_n = idx, len(self.where)
        return self._under

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
        try:
            return self.convert(value, path, ctx)
        except _Invalid:
            raise
        except Exception as e:  # a validator's surprise is a config problem at this key, never a traceback
            raise _Invalid(f"{_fmt_path(path)}: {value!r} cannot be checked as {self.label} "
                           f"({type(e).__name__}: {e})") from None


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
            if k in out:
                continue
            if k in table:
                # invalid (already reported): stand in the default so later checks see a complete table
                if key.default is not REQUIRED:
                    d = key.default
                    out[k] = d() if callable(d) else d
                continue
            if key.default is REQUIRED:
                where = f"[{_fmt_path(path)}]" if path else "the top level"
                ctx.error(path, f"missing required key {k!r} in {where}" + (f" ({key.doc})" if key.doc else ""))
            else:
                d = key.default
                out[k] = d() if callable(d) else d
        if self.check:
            try:
                self.check(out, lambda k, msg: ctx.error(path + ((k,) if k else ()), msg))
            except Exception as e:
                ctx.error(path, f"[{_fmt_path(path)}]: cannot check this table ({type(e).__name__}: {e})")
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
    audit: list[str] = field(default_factory=lambda: ["role:operator"])
    max_connections: int = 64
    max_connections_per_uid: int = 16
    max_watchers: int = 32
    idle_timeout: float = 300.0
    request_timeout: float = 10.0


@dataclass
class HistoryConfig:
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
    warnings: list[Problem] = field(default_factory=list, compare=False)

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


_TOMLLIB_POS_RE = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")
_BOM = "\ufeff"


def _end_position(text: str) -> tuple[int, int]:
    lines = text.splitlines() or [""]
    if text.endswith(("\n", "\r")):
        return len(lines) + 1, 1
    return len(lines), len(lines[-1]) + 1


def _line_of_offset(data: bytes | str, offset: int) -> tuple[int, int]:
    nl = b"\n" if isinstance(data, bytes) else "\n"
    line = data.count(nl, 0, offset) + 1
    start = data.rfind(nl, 0, offset) + 1
    return line, offset - start + 1


def _first_definition(text: str, lineno: int) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """The key or table path declared on ``lineno`` and where it was first declared (or None)."""
    first: dict[tuple[str, ...], tuple[int, int]] = {}
    here: tuple[str, ...] = ()
    for ln, kind, path, col in _scan(text, stop_at=lineno):
        if kind == "open-string":
            continue
        if ln == lineno:
            if len(path) > len(here):
                here = path
            continue
        first.setdefault(path, (ln, col))
    return here, first.get(here)


def _describe_toml_error(text: str, message: str, line: int, col: int) -> tuple[int, int, str]:
    """Turn a TOML parser's terse message into one an operator can act on."""
    lines = text.splitlines()
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    low = message.lower()
    if low.startswith("cannot overwrite a value") or (low.startswith("cannot declare") and "twice" in low) \
            or "already exists" in low or low.startswith("duplicate"):
        path, first = _first_definition(text, line)
        if path:
            what = f"table [{_fmt_path(path)}]" if _HEADER_RE.match(src) else f"key {_fmt_path(path)!r}"
            where = f" (first defined at line {first[0]})" if first else ""
            km = _KEYLINE_RE.match(src)
            kcol = 1 if _HEADER_RE.match(src) else (len(km.group(1)) + 1 if km else col)
            return line, kcol, f"{what} is defined twice{where}"
        return line, col, f"a key or table is defined twice: {message}"
    if low.startswith("illegal character '\\n'") or low.startswith("illegal character '\\r'") \
            or low.startswith("unterminated string") or (low.startswith("expected \"'\"") and col == 1) \
            or low.startswith('expected "\'"'):
        for ln, kind, _path, c in (_scan(text) if low.startswith("unterminated string") else ()):
            if kind == "open-string":
                return ln, c, ("unterminated multi-line string: the \"\"\" (or \'\'\') opened here is never "
                               "closed")
        ln = line
        while ln > 1 and not ('"' in src or "'" in src):  # "at end of document": find the open quote above
            ln -= 1
            src = lines[ln - 1] if ln <= len(lines) else ""
        line = ln
        q = src.find('"') if src.count('"') % 2 else src.find("'") if src.count("'") % 2 else \
            max(src.rfind('"'), src.rfind("'"))
        return line, (q + 1 if q >= 0 else col), ("unterminated string: the quote opened here is not closed on "
                                                  "this line (a \"...\" string must end on its line; use "
                                                  "\"\"\"...\"\"\" for text over several lines)")
    if low.startswith("invalid value"):
        after = src.split("=", 1)[1].strip() if "=" in src else ""
        hint = ""
        if after and re.fullmatch(r"[A-Za-z_][\w.-]*", after) and after not in ("true", "false", "inf", "nan"):
            hint = f" (text values need quotes: \"{after}\")"
        elif not after:
            hint = " (nothing after \'=\')"
        return line, col, f"TOML syntax error: invalid value{hint}"
    return line, col, f"TOML syntax error: {message}"


def toml_problem(exc: BaseException, file: str, text: str | bytes | None = None) -> Problem:
    """Any error a TOML library raises while reading ``file`` as one ``file:line:col: message``.

    Handles ``tomllib.TOMLDecodeError``, every ``tomlkit.exceptions`` class (ParseError
    subclasses carry a position; ``KeyAlreadyPresent`` and the others do not, so the
    key is looked up in ``text``), ``UnicodeDecodeError`` (the offending byte's
    position) and anything else (reported at 1:1 with its type, never a traceback).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            text = text.decode("utf-8", errors="replace")
    text = text or ""
    if isinstance(exc, UnicodeDecodeError):
        data = exc.object if isinstance(exc.object, bytes) else b""
        line, col = _line_of_offset(data, exc.start)
        bad = data[exc.start:exc.start + 1].hex() if data else "?"
        return Problem(file, line, col, f"the file is not valid UTF-8 (byte 0x{bad} at line {line}, column {col}): "
                                        "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    if isinstance(exc, tomllib.TOMLDecodeError):
        msg = str(exc)
        m = _TOMLLIB_POS_RE.search(msg)
        if m and m.group(1):
            line, col = int(m.group(1)), int(m.group(2))
        else:
            line, col = _end_position(text)
        msg = _TOMLLIB_POS_RE.sub("", msg) or "invalid TOML"
        line, col, msg = _describe_toml_error(text, msg, line, col)
        return Problem(file, line, col, msg)
    if isinstance(exc, tomlkit.exceptions.ParseError):
        msg = re.sub(r"\s+at line \d+ col \d+$", "", str(exc))
        line, col, msg = _describe_toml_error(text, msg, exc.line, exc.col + 1)  # tomlkit counts columns from 0
        return Problem(file, line, col, msg)
    if isinstance(exc, tomlkit.exceptions.KeyAlreadyPresent):
        key = getattr(exc, "key", None) or re.sub(r'^Key "(.*)" already exists.*$', r"\1", str(exc))
        # find the second declaration of that key: the first line where it repeats
        seen: dict[tuple[str, ...], int] = {}
        for ln, kind, path, col in _scan(text):
            if kind == "open-string" or not path or path[-1] != str(key):
                continue
            if path in seen and seen[path] != ln:
                what = f"table [{_fmt_path(path)}]" if kind == "table" else f"key {_fmt_path(path)!r}"
                return Problem(file, ln, col, f"{what} is defined twice (first defined at line {seen[path]})")
            seen.setdefault(path, ln)
        return Problem(file, 1, 1, f"key {key!r} is defined twice")
    if isinstance(exc, tomlkit.exceptions.TOMLKitError):
        return Problem(file, 1, 1, f"TOML error: {exc}")
    return Problem(file, 1, 1, f"cannot read the file: {type(exc).__name__}: {exc}")


def _read_toml(path: str, ctx: _Ctx, shown: str | None = None) -> dict | None:
    """Parse one file; problems and key positions are recorded under ``shown`` (the path as given).

    Only tomllib parses here (fast, and a syntax error costs no more than a valid
    file: the old re-parse with tomlkit for its messages took ~50 s and 300 MB on a
    5 MB file); :func:`toml_problem` turns its terse messages into actionable ones.
    """
    shown = shown or path
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        ctx.problems.append(Problem(shown, 1, 1, "file not found"))
        return None
    except OSError as e:
        ctx.problems.append(Problem(shown, 1, 1, f"cannot read file: {e.strerror or e}"))
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        ctx.problems.append(toml_problem(e, shown))
        return None
    del data
    if text.startswith(_BOM):
        ctx.problems.append(Problem(shown, 1, 1, "the file starts with a byte-order mark (BOM), which TOML does not "
                                                 "allow: save it as UTF-8 without BOM (e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' "
                                                 f"{shown})"))
        return None
    # tomllib reads ~10x faster than tomlkit (4.3 s -> 0.45 s for a 10,000-point file)
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        ctx.problems.append(toml_problem(e, shown, text))
        return None
    except Exception as e:  # pragma: no cover - tomllib raises only TOMLDecodeError
        ctx.problems.append(toml_problem(e, shown, text))
        return None
    if not text.strip() or not parsed:
        ctx.warnings.append(Problem(shown, 1, 1, "the file is empty (no settings): defaults apply"
                                    if not text.strip() else "the file holds only comments: defaults apply"))
    pos, declared = _positions_and_tables(text)
    for kp, (line, col) in pos.items():
        ctx.where.setdefault(kp, (shown, line, col))
    ctx.declared |= declared
    return parsed


@dataclass
class RawConfig:
    """A configuration read and merged (main file + includes) but not validated yet.

    Made by :func:`read_config` on any thread (it touches no plugin); the plugins it
    names are loaded by :meth:`gatewayd.plugins.PluginRegistry.load_for` on the
    registry's own thread, then :func:`validate_config` (any thread) checks it.
    """

    path: str
    files: list[str]
    data: dict
    ctx: "_Ctx"

    def plugins_needed(self) -> list[tuple[str, str]]:
        """``("module", dotted)`` and ``("entry_point", type name)`` pairs this file needs, in file order."""
        out: list[tuple[str, str]] = []
        mods = self.data.get("plugins", [])
        if isinstance(mods, list):
            out += [("module", m) for m in mods if isinstance(m, str) and m]
        for section in ("drivers", "connectors"):
            tabs = self.data.get(section)
            if not isinstance(tabs, dict):
                continue
            for tab in tabs.values():
                if not isinstance(tab, dict):
                    continue
                if isinstance(tab.get("plugin"), str) and tab["plugin"]:
                    out.append(("module", tab["plugin"]))
                if isinstance(tab.get("type"), str) and tab["type"]:
                    out.append(("entry_point", tab["type"]))
        seen: set = set()
        return [x for x in out if not (x in seen or seen.add(x))]


def read_config(path: str) -> RawConfig:
    """Read and merge the main file and its includes (no validation, no plugin loading).

    Syntax problems are kept in the result and raised by :func:`validate_config`.
    """
    ctx = _Ctx()
    path = os.path.abspath(path) if not os.path.isabs(path) else path
    shown = _shown(path)
    ctx.file_of_root = shown
    raw = _read_toml(path, ctx, shown)
    files = [shown]
    if raw is None:
        return RawConfig(path, files, {}, ctx)

    # ---- includes: merge [drivers.*], [connectors.*] (and others, if not clashing)
    includes = raw.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        ctx.error(("include",), "include must be an array of glob strings, e.g. include = [\"conf.d/*.toml\"]")
        includes = []
    base = os.path.dirname(path)
    for pattern in includes:
        matches = sorted(glob.glob(os.path.join(base, pattern)))
        if not matches:
            f, line, col = ctx.at(("include",))
            ctx.warnings.append(Problem(f, line, col, f"include {pattern!r} matches no file (relative to {base})"))
        for inc in matches:
            if os.path.abspath(inc) == path or os.path.isdir(inc):
                continue
            sub = _Ctx()
            inc_shown = _shown(os.path.abspath(inc))
            sub.file_of_root = inc_shown
            data = _read_toml(inc, sub, inc_shown)
            ctx.problems.extend(sub.problems)
            ctx.warnings.extend(sub.warnings)
            if data is None:
                continue
            files.append(inc_shown)
            if "include" in data:
                f, line, col = sub.at(("include",))
                ctx.problems.append(Problem(f, line, col, "include is only allowed in the main file"))
                data.pop("include")
            ctx.declared |= sub.declared
            _merge(raw, data, (), ctx, sub.where, inc_shown)
    return RawConfig(path, files, raw, ctx)


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


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
    from .plugins import PluginRegistry  # avoid an import cycle at module load

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


def _merge(dst: dict, src: dict, path: tuple[str, ...], ctx: _Ctx, where: dict, file: str) -> None:
    """Merge an included file into the main document; a clash is an error at the included key."""
    for k, v in src.items():
        p = path + (k,)
        for kp, loc in where.items():
            if kp[: len(p)] == p:
                ctx.where.setdefault(kp, loc)
        if k not in dst:
            dst[k] = v
        elif isinstance(dst[k], dict) and isinstance(v, dict) and len(p) < 2:
            _merge(dst[k], v, p, ctx, where, file)
        else:
            f, line, col = _where_in(where, p, file)
            first = ctx.at(p)
            ctx.problems.append(Problem(f, line, col,
                                        f"{_fmt_path(p)} is already defined at {first[0]}:{first[1]}:{first[2]}"))


def _where_in(where: dict, p: tuple[str, ...], file: str) -> tuple[str, int, int]:
    """Position of ``p`` in one file: itself, else its first sub-key (a ``[p.x]`` header), else ``file:1:1``."""
    if p in where:
        return where[p]
    under = [loc for kp, loc in where.items() if kp[: len(p)] == p]
    if under:
        return min(under, key=lambda loc: (loc[1], loc[2]))
    return (file, 1, 1)


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
                from .points import PointError, coerce_value

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
