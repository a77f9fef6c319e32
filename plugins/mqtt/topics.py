"""Topic templates, id sanitization and JSON payloads.

A template is a topic with ``{placeholders}``: ``{gateway}``, ``{connector}``,
``{driver}``, ``{device}``, ``{point}`` (the point's name inside its device),
``{severity}``, ``{event}``. Substituted ids are sanitized so they stay one
topic level: ``+``, ``#``, ``/``, NUL and every other control character
become ``_`` (and a leading ``$`` too, which brokers reserve); an empty id
becomes ``_``.
"""

from __future__ import annotations

import json
import math
import re
import string
import time
from typing import Any

__all__ = ["FIELDS", "sanitize", "Template", "check_template", "rfc3339", "dumps", "Filters"]

FIELDS = ("gateway", "connector", "driver", "device", "point", "severity", "event")

_BAD = re.compile(r"[+#/\x00-\x1f\x7f\u0080-\u009f]")


def sanitize(value: Any) -> str:
    """One topic level from an id: wildcards, ``/`` and control characters become ``_``."""
    s = "" if value is None else str(value)
    s = _BAD.sub("_", s)
    if s.startswith("$"):
        s = "_" + s[1:]
    return s or "_"


def check_template(value: str, *, allowed: tuple[str, ...] = FIELDS, whole_level: tuple[str, ...] = ()) -> str | None:
    """Error message for a bad template (for ``Str(check=...)``), else None."""
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as e:
        return f"bad topic template {value!r}: {e}"
    for _lit, field, spec, conv in parts:
        if field is None:
            continue
        if field not in allowed:
            return f"unknown placeholder {{{field}}} in {value!r} (allowed: " + ", ".join(
                "{" + a + "}" for a in allowed) + ")"
        if spec or conv:
            return f"placeholder {{{field}}} in {value!r} takes no format spec or conversion"
    literal = "".join(lit for lit, *_ in parts)
    if "+" in literal or "#" in literal:
        return f"topic template {value!r} must not contain the wildcards + or #"
    if "\x00" in literal:
        return f"topic template {value!r} contains NUL"
    for f in whole_level:
        for level in value.split("/"):
            if "{" + f + "}" in level and level != "{" + f + "}":
                return f"{{{f}}} must be a whole topic level in {value!r} (e.g. \".../{{{f}}}/...\")"
    return None


class Template:
    """A compiled topic template; :meth:`render` sanitizes every substituted value."""

    def __init__(self, text: str, **fixed: str) -> None:
        self.text = text
        self.fields = tuple(f for _l, f, _s, _c in string.Formatter().parse(text) if f is not None)
        # fixed values (gateway, connector) are substituted once
        self._fixed = {k: sanitize(v) for k, v in fixed.items() if k in self.fields}
        self._fmt = text.replace("{{", "\x00L").replace("}}", "\x00R")
        self._needs = tuple(f for f in self.fields if f not in self._fixed)

    def render(self, **values: Any) -> str:
        vals = dict(self._fixed)
        for f in self._needs:
            vals[f] = sanitize(values.get(f))
        return self._fmt.format_map(vals).replace("\x00L", "{").replace("\x00R", "}")

    def subscription(self, wildcards: tuple[str, ...]) -> str:
        """The template with ``wildcards`` as ``+`` (for a SUBSCRIBE)."""
        return self.render(**{}) if not wildcards else self._fmt.format_map(
            {**self._fixed, **{f: "+" for f in wildcards}}).replace("\x00L", "{").replace("\x00R", "}")

    def match(self, topic: str, wildcards: tuple[str, ...]) -> dict[str, str] | None:
        """Inverse of :meth:`subscription`: the values of ``wildcards`` in ``topic`` (None if no match)."""
        pattern = self.subscription(wildcards).split("/")
        levels = topic.split("/")
        if len(levels) != len(pattern):
            return None
        order = [f for f in self.fields if f in wildcards]
        out: dict[str, str] = {}
        i = 0
        for p, lv in zip(pattern, levels):
            if p == "+":
                out[order[i]] = lv
                i += 1
            elif p != lv:
                return None
        return out


# --------------------------------------------------------------------------- payloads

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str).encode


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def dumps(obj: Any) -> bytes:
    """Compact JSON (UTF-8); NaN/inf become null."""
    try:
        return _dumps(obj).encode()
    except ValueError:  # NaN/inf somewhere deeper
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str,
                          allow_nan=True).replace("NaN", "null").replace("Infinity", "null").encode()


_sec_cache: list = [None, ""]


def rfc3339(ts: float) -> str:
    """``2024-04-05T19:34:38.901Z`` (UTC, milliseconds)."""
    ms = int(round(ts * 1000))
    sec, msec = divmod(ms, 1000)
    if _sec_cache[0] != sec:
        _sec_cache[0] = sec
        _sec_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_sec_cache[1]}.{msec:03d}Z"


def value_body(d: dict, include_seq: bool) -> dict:
    """The JSON object of one value: value, unit, status, ts (epoch ms), time (RFC 3339), flags, seq."""
    ts = d["ts"]
    body = {"value": _clean(d.get("value")), "unit": d.get("unit"), "status": d.get("status"),
            "ts": int(round(ts * 1000)), "time": rfc3339(ts)}
    if d.get("flags"):
        body["flags"] = d["flags"]
    if include_seq:
        body["seq"] = d["seq"]
    return body


# --------------------------------------------------------------------------- filters


def _glob_re(globs: list[str]) -> re.Pattern | None:
    import fnmatch

    if not globs or "*" in globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))


class Filters:
    """Per-connector selection: event kinds, device and point globs, tags.

    ``events`` are globs over kinds (``value``, ``status``, ``device_*``,
    ``alarm*`` ...); ``devices`` globs over device ids; ``points`` and
    ``exclude_points`` globs over point ids (``device/name``); ``tags``: a
    point event passes if its point has any of them. Device/point/tag filters
    apply to events that carry a device/point; others (e.g. ``driver_event``
    without a device) pass on their kind alone.
    """

    def __init__(self, events: list[str], devices: list[str], points: list[str], exclude_points: list[str],
                 tags: list[str]) -> None:
        import fnmatch

        self._events = [re.compile(fnmatch.translate(g)) for g in events]
        self._kinds: dict[str, bool] = {}
        self._devices = _glob_re(devices)
        self._points = _glob_re(points)
        self._exclude = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in exclude_points)) \
            if exclude_points else None
        self._tags = frozenset(tags)
        self._point_ok: dict[str, bool] = {}

    def kind(self, kind: str) -> bool:
        ok = self._kinds.get(kind)
        if ok is None:
            ok = self._kinds[kind] = any(r.match(kind) for r in self._events)
        return ok

    def point(self, point_id: str, device: str | None, tags) -> bool:
        ok = self._point_ok.get(point_id)
        if ok is None:
            ok = self._point_ok[point_id] = (
                (self._devices is None or (device is not None and bool(self._devices.match(device))))
                and (self._points is None or bool(self._points.match(point_id)))
                and (self._exclude is None or not self._exclude.match(point_id))
                and (not self._tags or bool(self._tags.intersection(tags or ()))))
        return ok

    def device(self, device: str | None) -> bool:
        return self._devices is None or device is None or bool(self._devices.match(device))

    def accepts(self, d: dict) -> bool:
        if not self.kind(d["kind"]):
            return False
        point = d.get("point")
        if point:
            return self.point(point, d.get("device") or point.split("/", 1)[0], d.get("tags"))
        return self.device(d.get("device"))
