"""The point table: one normalized point model for every protocol.

Drivers report raw readings through a :class:`PointSink` (the only way in). The
table turns a raw reading into the point's value::

    value = convert(raw * scale + offset) + calibration        # analog
    value = bool(raw)                                            # binary
    value = int(raw)                                             # multistate
    value = str(raw)                                             # string

then applies the COV filter (``cov_deadband``: an analog value is reported when
it moved by more than the deadband since the last *reported* value; any change
of other kinds, any status change and the first value are always reported) and
keeps the status model:

===========  ================================================================
status       meaning
===========  ================================================================
ok           fresh value, device reachable
stale        no fresh value within ``stale_time`` (monotonic clock)
fault        the point itself failed (decode error, exception from the device)
down         the point's connection (device) is down — inherited
disabled     the point, its device or its driver is disabled in the config
unknown      no value yet since start
remote-*     the device reports the status itself (e.g. BACnet ``fault`` flag)
===========  ================================================================

A device's connection status (``conn_status``: ok/down/fault/disabled/unknown)
is inherited by its points: a down device makes every point ``down``; when it
comes back the points return to ``ok`` on their next value.

:class:`DeviceHealth` implements the per-device reconnection rule shared by all
drivers: exponential backoff from 2 s to 5 min, ``DeviceDown`` after 5
consecutive failures, ``DeviceRecovered`` on the first success.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import trio

from .bus import Bus
from .events import (DeviceDown, DeviceRecovered, DeviceStatusChanged, StatusChanged, ValueChanged, value_changed)
from .units import Conversion, parse_convert

log = logging.getLogger("gatewayd.points")

# The configuration model (gatewayd.config's Config, DriverConfig, PointConfig) appears
# here in annotations only and is not imported: the configuration validator imports this
# module (coerce_value), and the core keeps its import graph free of cycles.
Config = DriverConfig = PointConfig = Any

__all__ = ["PointTable", "PointState", "PointSink", "DeviceHealth", "PriorityArray", "DeviceState",
           "PointError", "coerce_value"]

STATUSES = ("ok", "stale", "fault", "down", "disabled", "unknown")
CONN_STATUSES = ("ok", "down", "fault", "disabled", "unknown")


class PointError(Exception):
    """A bad request about a point (unknown id, not writable, bad value); the message says which."""


# --------------------------------------------------------------------------- priority array


class PriorityArray:
    """BACnet-style 16-level command priority array with a relinquish default.

    Level 1 is the highest priority. ``effective()`` is the value at the
    highest non-null level, else the relinquish default (may be ``None``).
    """

    __slots__ = ("slots", "relinquish_default")

    def __init__(self, relinquish_default: Any = None, levels: dict[int, Any] | None = None) -> None:
        self.slots: list[Any] = [None] * 16
        self.relinquish_default = relinquish_default
        for lvl, v in (levels or {}).items():
            self.slots[int(lvl) - 1] = v

    def set(self, level: int, value: Any) -> None:
        if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= 16:
            raise PointError(f"priority must be an integer 1..16, got {level!r}")
        self.slots[level - 1] = value

    def effective(self) -> tuple[Any, int | None]:
        for i, v in enumerate(self.slots):
            if v is not None:
                return v, i + 1
        return self.relinquish_default, None

    def as_dict(self) -> dict:
        v, lvl = self.effective()
        return {"slots": {str(i + 1): s for i, s in enumerate(self.slots)},
                "relinquish_default": self.relinquish_default, "effective": v, "active_level": lvl}


def coerce_value(kind: str, value: Any, states: tuple[str, ...] = ()) -> Any:
    """Check and normalize a value written to a point of ``kind``; raises :class:`PointError`."""
    if value is None:
        return None
    if kind == "analog":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PointError(f"an analog point takes a finite number, not {value!r}")
        return value
    if kind == "binary":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "active", "inactive"):
            return value.lower() in ("true", "on", "active")
        raise PointError(f"a binary point takes true/false (or 0/1, on/off), not {value!r}")
    if kind == "multistate":
        if isinstance(value, str) and value in states:
            return states.index(value) + 1
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PointError(f"a multistate point takes a state number >= 1"
                             + (f" or one of {list(states)}" if states else "") + f", not {value!r}")
        if states and value > len(states):
            raise PointError(f"state {value} is out of range 1..{len(states)}")
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise PointError(f"a string point takes a string, not {value!r}")
        return value
    raise PointError(f"unknown point kind {kind!r}")  # pragma: no cover


def _same_raw(a: Any, b: Any) -> bool:
    """Whether a reading ``a`` agrees with the commanded raw value ``b``: integers
    within rounding (0.5), floats within float32 precision, anything else equal."""
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, int) or isinstance(b, int):
            return abs(a - b) <= 0.5 + 1e-9 * abs(b)
        return abs(a - b) <= 1e-6 * max(abs(a), abs(b)) + 1e-9
    return a == b


# --------------------------------------------------------------------------- state


@dataclass(eq=False)
class DeviceState:
    driver: str
    device: str
    conn_status: str = "unknown"
    conn_state: str = "closed"
    reason: str | None = None
    enabled: bool = True
    failures: int = 0
    down_since: float | None = None
    last_ok: float | None = None
    last_error: str | None = None
    next_retry: float | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"driver": self.driver, "device": self.device, "conn_status": self.conn_status,
                "conn_state": self.conn_state, "reason": self.reason, "enabled": self.enabled,
                "failures": self.failures, "down_since": self.down_since, "last_ok": self.last_ok,
                "last_error": self.last_error, "next_retry": self.next_retry, **self.extra}


class PointState:
    """Runtime state of one point (config + current value + status + priority array)."""

    __slots__ = ("cfg", "conv", "value", "raw", "ts", "mono", "status", "point_status", "reason", "flags",
                 "reported", "reported_status", "pa", "write_lock", "write_status", "write_error", "device",
                 "identity", "fast", "unit_", "cmd_raw", "mismatches", "overridden")

    def __init__(self, cfg: PointConfig, device: DeviceState) -> None:
        self.cfg = cfg
        self.conv: Conversion | None = parse_convert(cfg.convert) if cfg.convert else None
        self.value: Any = None
        self.raw: Any = None
        self.ts: float | None = None
        self.mono: float | None = None
        self.status = "unknown"
        self.point_status = "unknown"  # the point's own status before inheritance (ok/fault/remote-*)
        self.reason: str | None = None
        self.flags: tuple[str, ...] = ()
        self.reported: Any = _NOTHING
        self.reported_status: str | None = None
        self.pa = PriorityArray(cfg.relinquish_default)
        self.write_lock = trio.Lock()
        self.write_status: str | None = None
        self.write_error: str | None = None
        self.device = device
        self.identity = (cfg.scale == 1.0 and cfg.offset == 0.0 and cfg.calibration == 0.0 and self.conv is None)
        self.fast = cfg.kind == "analog"   # eligible for PointTable.ingest_many's fast path
        self.unit_ = self.conv.dst if self.conv else cfg.unit
        # read-back check of a commanded value (gatewayd/writes.py): the raw value the device
        # should hold, consecutive readings that disagree, and whether the point is flagged
        self.cmd_raw: Any = None
        self.mismatches = 0
        self.overridden = False

    def track_command(self, raw: Any) -> None:
        """Compare later readings with ``raw`` (what the device holds after a confirmed
        write), or stop comparing (``None``, e.g. while a re-send is pending)."""
        self.cmd_raw = raw
        self.mismatches = 0
        self.fast = self.cfg.kind == "analog" and raw is None

    @property
    def unit(self) -> str | None:
        return self.unit_

    def convert_in(self, raw: Any) -> Any:
        cfg = self.cfg
        kind = cfg.kind
        if raw is None:
            return None
        if kind == "analog":
            if isinstance(raw, bool):
                raw = int(raw)
            if not isinstance(raw, (int, float)):
                raise ValueError(f"analog point got non-numeric {raw!r}")
            if cfg.scale == 1.0 and cfg.offset == 0.0 and cfg.calibration == 0.0 and self.conv is None:
                return raw
            # calibration comes last, in the point's unit (after conversion), as Haxall's
            # curCalibration after curConvert: "+0.5" on a °F point is +0.5 °F
            v = raw * cfg.scale + cfg.offset
            if self.conv is not None:
                v = self.conv(v)
            return v + cfg.calibration
        if kind == "binary":
            return bool(raw)
        if kind == "multistate":
            return int(raw)
        return raw if isinstance(raw, str) else str(raw)

    def convert_out(self, value: Any) -> Any:
        """Inverse of :meth:`convert_in` for writes: point units -> device (raw) units."""
        cfg = self.cfg
        if value is None or cfg.kind != "analog":
            return value
        v = value - cfg.calibration
        if self.conv is not None:
            v = self.conv.back(v)
        v = v - cfg.offset
        if cfg.scale != 1.0:
            v = v / cfg.scale
        if isinstance(value, int) and cfg.scale == 1.0 and self.conv is None and float(v).is_integer():
            return int(v)
        return v

    def snapshot(self) -> dict:
        cfg = self.cfg
        return {"id": cfg.id, "name": cfg.name, "driver": cfg.driver, "device": cfg.device, "kind": cfg.kind,
                "value": self.value, "unit": self.unit, "status": self.status, "reason": self.reason,
                "flags": list(self.flags), "ts": self.ts, "writable": cfg.writable, "tags": list(cfg.tags),
                "write_status": self.write_status, "write_error": self.write_error,
                "overridden": self.overridden,
                "description": cfg.description, "states": list(cfg.states)}


class _Nothing:
    def __repr__(self) -> str:  # pragma: no cover
        return "<nothing>"


_NOTHING = _Nothing()


# --------------------------------------------------------------------------- the table


class PointTable:
    """All points, keyed by ``"<device>/<name>"``. Lives on the trio thread."""

    def __init__(self, bus: Bus, *, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] | None = None) -> None:
        self.bus = bus
        self.wall = wall
        self._mono = mono
        self.points: dict[str, PointState] = {}
        self.devices: dict[str, DeviceState] = {}
        self.by_device: dict[str, list[PointState]] = {}
        self.ingested = 0
        #: called as ``device_opened(device_id, "start"|"open")`` when a driver instance's first
        #: success for a device, or a success after failures/down, is reported (write tuning)
        self.device_opened: Callable[[str, str], None] | None = None
        #: called as ``on_override(point, overridden, raw)`` when a commanded point's reading
        #: disagrees with the command twice in a row, or agrees again
        self.on_override: Callable[[PointState, bool, Any], None] | None = None

    def mono(self) -> float:
        return self._mono() if self._mono else trio.current_time()

    # ----- building
    def load(self, config: Config, priority_arrays: dict | None = None, current: dict | None = None) -> None:
        for drv in config.drivers.values():
            self.apply_driver(drv, priority_arrays, current)

    def apply_driver(self, drv: DriverConfig, priority_arrays: dict | None = None,
                     current: dict | None = None) -> None:
        """(Re)build the points of one driver. Priority arrays and last values of
        points that survive keep their state."""
        old_points = {pid: p for pid, p in self.points.items() if p.cfg.driver == drv.id}
        old_devices = {d: s for d, s in self.devices.items() if s.driver == drv.id}
        self.remove_driver(drv.id)
        for dev in drv.devices.values():
            ds = old_devices.get(dev.id) or DeviceState(drv.id, dev.id)
            ds.enabled = drv.enabled and dev.enabled
            if not ds.enabled:
                ds.conn_status = "disabled"
            elif ds.conn_status == "disabled":
                ds.conn_status = "unknown"
            self.devices[dev.id] = ds
            lst = self.by_device.setdefault(dev.id, [])
            for pc in dev.points.values():
                ps = PointState(pc, ds)
                old = old_points.get(pc.id)
                if old is not None:
                    ps.pa.slots = old.pa.slots
                    ps.write_status, ps.write_error = old.write_status, old.write_error
                    if old.cfg.kind == pc.kind and old.cfg.convert == pc.convert:
                        ps.value, ps.raw, ps.ts, ps.mono = old.value, old.raw, old.ts, old.mono
                        ps.status, ps.point_status, ps.flags = old.status, old.point_status, old.flags
                        ps.reported, ps.reported_status = old.reported, old.reported_status
                else:
                    if priority_arrays and pc.id in priority_arrays:
                        for lvl, v in priority_arrays[pc.id].items():
                            ps.pa.slots[int(lvl) - 1] = v
                    if current and pc.id in current:
                        ts, v, st = current[pc.id]
                        ps.value, ps.ts = v, ts
                        ps.status = "unknown"  # a value from before the restart is not fresh
                if not (ds.enabled and pc.enabled):
                    ps.status = "disabled"
                self.points[pc.id] = ps
                lst.append(ps)

    def remove_driver(self, driver_id: str) -> None:
        for pid in [pid for pid, p in self.points.items() if p.cfg.driver == driver_id]:
            del self.points[pid]
        for d in [d for d, s in self.devices.items() if s.driver == driver_id]:
            del self.devices[d]
            self.by_device.pop(d, None)

    # ----- queries
    def get(self, point_id: str) -> PointState:
        try:
            return self.points[point_id]
        except KeyError:
            raise PointError(f"unknown point {point_id!r} (points are named \"<device>/<point>\")") from None

    def select(self, *, driver: str | None = None, device: str | None = None, glob: str | None = None,
               tag: str | None = None) -> list[PointState]:
        out = []
        for p in self.points.values():
            c = p.cfg
            if driver and c.driver != driver:
                continue
            if device and c.device != device:
                continue
            if glob and not fnmatch.fnmatchcase(c.id, glob):
                continue
            if tag and tag not in c.tags:
                continue
            out.append(p)
        return out

    # ----- ingestion (from PointSink)
    def ingest(self, point_id: str, raw: Any, ts: float | None = None, flags: Iterable[str] = (),
               status: str | None = None) -> None:
        p = self.points.get(point_id)
        if p is None:
            raise PointError(f"driver reported unknown point {point_id!r}")
        self.ingested += 1
        if p.status == "disabled":
            return
        ts = ts if ts is not None else self.wall()
        try:
            value = p.convert_in(raw)
        except (ValueError, TypeError, OverflowError) as e:
            self.point_fault(point_id, f"bad value from device: {e}")
            return
        p.raw = raw
        p.value = value
        p.ts = ts
        p.mono = self.mono()
        old_flags = p.flags
        p.flags = tuple(flags) if flags else ()
        if p.cmd_raw is not None:
            self._check_command(p, raw)
        if p.overridden and "overridden" not in p.flags:
            p.flags = p.flags + ("overridden",)
        p.point_status = status or "ok"
        p.reason = None
        new_status = self._effective_status(p)
        status_changed = new_status != p.status
        if status_changed:
            self._set_status(p, new_status, None, ts)
        if p.reported is _NOTHING or status_changed or p.reported_status != p.status or p.flags != old_flags \
                or self._cov_changed(p, value):
            p.reported = value
            p.reported_status = p.status
            self.bus.publish(ValueChanged(ts, p.cfg.id, p.cfg.device, p.cfg.driver, value, p.status,
                                          p.unit, p.flags, p.cfg.tags))

    def ingest_many(self, items, ts: float) -> None:
        """Many raw readings taken at ``ts``: the hot path of polling drivers.

        A number for an analog point that is already ``ok`` and was last reported ``ok``
        (device up, fresh value, no flags) takes a short path: convert, COV check, publish. Anything else (first
        value, status change, flags, other kinds) goes through :meth:`ingest`.
        Same results as calling :meth:`ingest` for each item (tests check both).
        """
        points = self.points
        out: list = []  # events of the short path, published together (the bus takes a batch per subscriber)
        add = out.append
        make_value = value_changed
        mono = self.mono()
        n = 0
        try:
            for pid, raw in items:
                p = points.get(pid)
                tr = type(raw)
                if p is None or not p.fast or p.status != "ok" or p.reported_status != "ok" or p.flags \
                        or (tr is not float and tr is not int):
                    if out:  # keep the order of events
                        self.bus.publish_many(out)
                        out = []
                        add = out.append
                    self.ingest(pid, raw, ts)
                    continue
                n += 1
                cfg = p.cfg
                value = raw if p.identity else p.convert_in(raw)
                p.raw = raw
                p.value = value
                p.ts = ts
                p.mono = mono
                old = p.reported
                db = cfg.cov_deadband
                if (abs(value - old) > db) if (db > 0 and type(old) in (int, float)) else \
                        (value != old or type(value) is not type(old)):
                    p.reported = value
                    add(make_value(ts, cfg.id, cfg.device, cfg.driver, value, "ok", p.unit_, (), cfg.tags))
        finally:  # a failing conversion must not take the events before it along
            self.ingested += n
            if out:
                self.bus.publish_many(out)

    def _check_command(self, p: PointState, raw: Any) -> None:
        """Read-back check of a commanded point: two readings in a row that differ from
        the command flag it ``overridden`` (one may have been taken before the write)."""
        if _same_raw(raw, p.cmd_raw):
            p.mismatches = 0
            if p.overridden:
                p.overridden = False
                if self.on_override is not None:
                    self.on_override(p, False, raw)
            return
        p.mismatches += 1
        if p.mismatches >= 2 and not p.overridden:
            p.overridden = True
            if self.on_override is not None:
                self.on_override(p, True, raw)

    @staticmethod
    def _cov_changed(p: PointState, value: Any) -> bool:
        old = p.reported
        if p.cfg.kind == "analog" and p.cfg.cov_deadband > 0 and isinstance(value, (int, float)) \
                and isinstance(old, (int, float)):
            return abs(value - old) > p.cfg.cov_deadband
        return value != old or type(value) is not type(old)

    def point_fault(self, point_id: str, reason: str, status: str = "fault") -> None:
        p = self.points.get(point_id)
        if p is None:
            raise PointError(f"driver reported unknown point {point_id!r}")
        if p.status == "disabled":
            return
        p.point_status = status
        new = self._effective_status(p)
        if new != p.status or reason != p.reason:
            self._set_status(p, new, reason, self.wall())

    def _effective_status(self, p: PointState) -> str:
        ds = p.device
        if not ds.enabled or not p.cfg.enabled:
            return "disabled"
        if ds.conn_status in ("down", "fault"):
            return ds.conn_status
        if p.point_status != "ok":
            return p.point_status
        if p.mono is None:
            return "unknown"
        return "ok"

    def _set_status(self, p: PointState, new: str, reason: str | None, ts: float) -> None:
        old = p.status
        p.status = new
        p.reason = reason
        if old != new:
            self.bus.publish(StatusChanged(ts, p.cfg.id, p.cfg.device, p.cfg.driver, old, new, reason))

    def set_device_status(self, device_id: str, status: str, *, conn_state: str | None = None,
                          reason: str | None = None) -> None:
        ds = self.devices.get(device_id)
        if ds is None:
            raise PointError(f"driver reported unknown device {device_id!r}")
        if status not in CONN_STATUSES:
            raise ValueError(f"conn_status must be one of {CONN_STATUSES}, not {status!r}")
        if not ds.enabled:
            status = "disabled"
        changed = status != ds.conn_status or (conn_state and conn_state != ds.conn_state)
        ds.conn_status = status
        if conn_state:
            ds.conn_state = conn_state
        ds.reason = reason if status != "ok" else None
        if not changed:
            return
        ts = self.wall()
        self.bus.publish(DeviceStatusChanged(ts, ds.driver, device_id, status, ds.conn_state, reason))
        for p in self.by_device.get(device_id, ()):
            if p.status == "disabled":
                continue
            new = self._effective_status(p)
            if new != p.status:
                self._set_status(p, new, reason if new in ("down", "fault") else None, ts)

    def check_stale(self) -> int:
        """Mark points whose value is older than their ``stale_time``; returns how many turned stale."""
        now = self.mono()
        n = 0
        ts = None
        for p in self.points.values():
            if p.status == "ok" and p.mono is not None and now - p.mono > p.cfg.stale_time:
                ts = ts or self.wall()
                p.point_status = "stale"
                self._set_status(p, "stale", f"no value for {p.cfg.stale_time:g}s", ts)
                n += 1
        return n


# --------------------------------------------------------------------------- what drivers get


class DeviceHealth:
    """Per-device failure bookkeeping with exponential backoff.

    ``failure()`` returns the delay before the next attempt (2 s, 4 s, ... capped
    at 5 min, ±10 % jitter). The ``down_after``-th consecutive failure marks the
    device down and publishes :class:`DeviceDown`; the next ``success()``
    publishes :class:`DeviceRecovered`. The first ``success()`` of a driver
    instance, and any ``success()`` after a failure, tell the write protocol the
    device is open (``PointTable.device_opened``: write tuning re-sends commands).
    """

    BASE = 2.0
    CAP = 300.0
    DOWN_AFTER = 5

    def __init__(self, table: PointTable, device_id: str, *, base: float | None = None,
                 cap: float | None = None, down_after: int | None = None) -> None:
        self.table = table
        self.device_id = device_id
        self.base = base if base is not None else self.BASE
        self.cap = cap if cap is not None else self.CAP
        self.down_after = down_after if down_after is not None else self.DOWN_AFTER
        self.state = table.devices[device_id]
        self._fresh = True  # no success yet from this driver instance

    @property
    def failures(self) -> int:
        return self.state.failures

    @property
    def is_down(self) -> bool:
        return self.state.conn_status == "down"

    def success(self) -> None:
        st = self.state
        was_down = st.conn_status == "down"
        opened = self._fresh or st.failures > 0 or st.conn_status != "ok" or st.conn_state != "open"
        reason = "start" if self._fresh else "open"
        self._fresh = False
        st.failures = 0
        st.last_ok = self.table.wall()
        st.next_retry = None
        if st.conn_status != "ok" or st.conn_state != "open":
            self.table.set_device_status(self.device_id, "ok", conn_state="open")
        if was_down:
            down_for = (st.last_ok - st.down_since) if st.down_since else 0.0
            st.down_since = None
            log.warning("device %s recovered after %.0fs", self.device_id, down_for,
                        extra={"DRIVER": st.driver, "DEVICE": self.device_id})
            self.table.bus.publish(DeviceRecovered(st.last_ok, st.driver, self.device_id, down_for))
        if opened and self.table.device_opened is not None:
            self.table.device_opened(self.device_id, reason)

    def mark_down(self, reason: str) -> None:
        """Declare the device down now (e.g. a monitor that missed its cycles), publishing
        :class:`DeviceDown` unless it is down already. The next :meth:`success` recovers it."""
        st = self.state
        st.failures = max(st.failures, self.down_after)
        st.last_error = reason
        if st.conn_status != "down":
            st.down_since = self.table.wall()
            log.error("device %s is down: %s", self.device_id, reason,
                      extra={"DRIVER": st.driver, "DEVICE": self.device_id})
            self.table.set_device_status(self.device_id, "down", conn_state="closed", reason=reason)
            self.table.bus.publish(DeviceDown(st.down_since, st.driver, self.device_id, reason, st.failures))

    def failure(self, reason: str) -> float:
        st = self.state
        st.failures += 1
        st.last_error = reason
        delay = min(self.cap, self.base * (2 ** (st.failures - 1)))
        delay *= 1 + random.uniform(-0.1, 0.1)
        st.next_retry = self.table.wall() + delay
        if st.failures >= self.down_after and st.conn_status != "down":
            st.down_since = self.table.wall()
            log.error("device %s is down after %d consecutive failures: %s", self.device_id, st.failures, reason,
                      extra={"DRIVER": st.driver, "DEVICE": self.device_id})
            self.table.set_device_status(self.device_id, "down", conn_state="closed", reason=reason)
            self.table.bus.publish(DeviceDown(st.down_since, st.driver, self.device_id, reason, st.failures))
        elif st.conn_status == "down":
            st.reason = reason
        return delay


class PointSink:
    """The only way a driver reports values and status. Bound to one driver instance.

    Point ids are ``"<device>/<name>"`` as in :attr:`PointConfig.id`.
    """

    def __init__(self, table: PointTable, driver_id: str) -> None:
        self._t = table
        self.driver_id = driver_id
        self._health: dict[str, DeviceHealth] = {}

    def update(self, point_id: str, raw: Any, *, ts: float | None = None, flags: Iterable[str] = (),
               status: str | None = None) -> None:
        """Report a raw reading (before scale/convert). ``flags``: BACnet-style flags;
        ``status``: a status the device reports itself (e.g. ``"remote-fault"``)."""
        self._t.ingest(point_id, raw, ts, flags, status)

    def update_many(self, items: Iterable[tuple[str, Any]], *, ts: float | None = None) -> None:
        """Report many ``(point_id, raw)`` readings taken at the same time."""
        self._t.ingest_many(items, ts if ts is not None else self._t.wall())

    def fault(self, point_id: str, reason: str, *, status: str = "fault") -> None:
        """The point itself failed (e.g. exception 02 for its register, decode error)."""
        self._t.point_fault(point_id, reason, status)

    def device_status(self, device_id: str, status: str, *, conn_state: str | None = None,
                      reason: str | None = None) -> None:
        """Set a device's connection status (ok/down/fault/disabled/unknown); its points inherit it."""
        self._t.set_device_status(device_id, status, conn_state=conn_state, reason=reason)

    def health(self, device_id: str) -> DeviceHealth:
        """The :class:`DeviceHealth` of one of this driver's devices."""
        h = self._health.get(device_id)
        if h is None:
            h = self._health[device_id] = DeviceHealth(self._t, device_id)
        return h

    def device_info(self, device_id: str, **fields: Any) -> None:
        """Attach driver-specific details shown by ``devices.list`` (e.g. learned refused ranges)."""
        self._t.devices[device_id].extra.update(fields)

    def now(self) -> float:
        return self._t.wall()
