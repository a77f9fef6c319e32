"""The schema language the core and the plugins describe their keys with.

A :class:`Schema` maps key names to a :class:`Key` (a :class:`Validator`, a default
or :data:`REQUIRED`, a doc line). Validators check and convert one value and report
problems at the key's ``file:line:col``; unknown keys are errors with a "did you
mean" hint. ``parse_duration`` and ``parse_size`` are the unit parsers behind
:class:`Duration` and :class:`Size`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable

from .problems import _Ctx, _fmt_path, _Invalid
from .secrets import Secret, _resolve_indirection


REQUIRED: Any = object()


class Validator:
    """Checks and converts one TOML value. Subclasses implement :meth:`convert`."""

    label = "value"

    def convert(self, value: Any, path: tuple[str, ...], ctx: _Ctx) -> Any:
        """Return ``value`` checked and converted, or raise if it does not fit.

        ``path`` is the key path and ``ctx`` the collecting context (a nested
        validator passes both on). Any exception raised here becomes one problem at
        the key's ``file:line:col`` naming the key, the value and this ``label``.
        """
        raise NotImplementedError

    def __call__(self, value: Any, path: tuple[str, ...], ctx: _Ctx) -> Any:
        if isinstance(self, Str):  # string keys may be given as { env = ... } / { file = ... }
            value = _resolve_indirection(value, path)
        try:
            return self.convert(value, path, ctx)
        except _Invalid:
            raise
        except Exception as e:  # a validator's surprise is a config problem at this key, never a traceback
            raise _Invalid(f"{_fmt_path(path)}: {value!r} cannot be checked as {self.label} "
                           f"({type(e).__name__}: {e})") from None


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
    """A string; ``pattern`` (full match), ``nonempty`` and ``check`` (returns a message or None) narrow it.

    Like every string key, it may be given as ``{ env = ... }`` or ``{ file = ... }``.
    """

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
    """An integer (not a boolean) within ``min`` .. ``max`` if given."""

    label = "an integer"

    def __init__(self, *, min: int | None = None, max: int | None = None):
        self.min, self.max = min, max

    def convert(self, value, path, ctx):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"{_fmt_path(path)} must be an integer, not {_type_name(value)}")
        _range(value, self.min, self.max, path)
        return int(value)


class Float(Validator):
    """A number (integers accepted, returned as float) within ``min`` .. ``max`` if given."""

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
    """``true`` or ``false``."""

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
    """A duration (see :func:`parse_duration`) in seconds, within ``min`` .. ``max`` seconds if given."""

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
    """A size in bytes (see :func:`parse_size`)."""

    label = "a size"

    def convert(self, value, path, ctx):
        try:
            return parse_size(value)
        except ValueError as e:
            raise _Invalid(f"{_fmt_path(path)}: {e}") from None


class Enum(Validator):
    """One of the given choices (a close string gets a "did you mean" hint)."""

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
    """An array whose items each pass ``item``; at least ``min_len`` of them."""

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
    """Any value, unchecked (the plugin checks it itself)."""

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
        """Check ``table`` (found at ``path``) and return it with defaults filled in.

        Problems go to ``ctx`` (all of them, not only the first); a key whose value
        is invalid gets its default so that the table-wide ``check`` sees every key.
        """
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
