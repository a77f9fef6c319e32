"""The ``modbus`` driver: planning, polling, refused-range learning, writes, diagnostics, discovery."""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

import trio

from gatewayd.plugin import (DIAGNOSTICS, DISCOVERY, Bool, Driver, Duration, Enum, Int, Key, Map, Schema, Str,
                             WriteError, native)

from . import pdu
from .pdu import InvalidResponse, ModbusException
from .profiles import ProfileError, load_profile, match_profile
from .transport import Link, RtuStreamLink, SerialLink, TcpLink, Timeout, TransportError

codec, planner = native.codec, native.planner

TABLES = {"coil": 0, "discrete": 1, "holding": 2, "input": 3}
TABLE_NAMES = {v: k for k, v in TABLES.items()}
ORDERS = tuple(codec.ORDERS)
TYPES = tuple(codec.TYPES)
LINK_ERRORS = (Timeout, TransportError, InvalidResponse)

# keys valid at driver level (defaults) and device level (overrides)
COMMON = {
    "transport": Key(Enum("tcp", "rtu", "rtu-over-tcp"), None, "default: rtu when serial_port is set, else tcp"),
    "host": Key(Str(), None, "device, gateway or serial device server address"),
    "port": Key(Int(min=1, max=65535), None, "TCP port (default 502)"),
    "serial_port": Key(Str(), None, "serial device, e.g. /dev/ttyUSB0 (one shared bus per port)"),
    "baudrate": Key(Int(min=300, max=4_000_000), None, "default 9600"),
    "parity": Key(Enum("N", "E", "O"), None, "default E (the Modbus default)"),
    "stopbits": Key(Enum(1, 2), None, "default 1"),
    "bytesize": Key(Enum(7, 8), None, "default 8"),
    "unit": Key(Int(min=0, max=255), None, "unit id (default 1)"),
    "response_timeout_ms": Key(Int(min=10, max=60_000), None, "default 1000"),
    "retry_count": Key(Int(min=0, max=10), None, "retries of a failed request within a cycle (default 1)"),
    "throttle_delay_ms": Key(Int(min=0, max=10_000), None, "pause before every request (default 0)"),
    "max_registers": Key(Int(min=1, max=125), None, "registers per request (default 125)"),
    "max_bits": Key(Int(min=1, max=2000), None, "bits per request (default 2000)"),
    "max_gap": Key(Int(min=0, max=125), None, "unrequested registers one request may bridge (default 10)"),
    "order": Key(Enum(*ORDERS), None, "default byte/word order of multi-register values (default ABCD)"),
    "poll_interval": Key(Duration(min=0.01), None, "default 1s"),
    "disconnect_between_polls": Key(Bool(), None, "close the TCP connection after every cycle (default false)"),
    "write_multiple": Key(Bool(), None, "always write with FC15/FC16 (for devices without FC5/FC6)"),
}
DEFAULTS = {"transport": None, "host": None, "port": 502, "serial_port": None, "baudrate": 9600, "parity": "E",
            "stopbits": 1, "bytesize": 8, "unit": 1, "response_timeout_ms": 1000, "retry_count": 1,
            "throttle_delay_ms": 0, "max_registers": 125, "max_bits": 2000, "max_gap": 10, "order": "ABCD",
            "poll_interval": 1.0, "disconnect_between_polls": False, "write_multiple": False}

FAILING_CODES = (10, 11)  # gateway path unavailable / target failed to respond: the device is unreachable
BUSY_RETRIES = 3          # exception 05/06 (acknowledge / busy): asked again this many times ...
BUSY_DELAY = 0.1          # ... after 0.1 s, 0.2 s, 0.4 s; never learned, never a refusal
CRASH_BACKOFF_MAX = 60.0  # a device task that raised something unexpected restarts after 1 s doubling to 60 s


class DeviceUnreachable(Exception):
    """Exception 10/11 from a gateway: the device behind it did not answer (a failed cycle)."""

    kind = "exception"


class DeviceBusy(Exception):
    """The device stayed busy (exception 05/06) through every retry: a failed cycle, not a refusal."""

    kind = "busy"


def _reason(e: BaseException) -> str:
    """One line for ``last_error``/the device's reason, saying what happened."""
    if isinstance(e, Timeout):
        return f"timeout: {e}"
    if isinstance(e, InvalidResponse):
        return f"invalid answer: {e}"
    return str(e)


def _learned_text(r: tuple) -> str:
    """A learned fact as the operator reads it in the log (never a raw tuple)."""
    if r[0] in ("max_registers", "max_bits"):
        what = "registers" if r[0] == "max_registers" else "bits"
        return f"at most {r[1]} {what} per request (exception 03 to a {r[2]}-{what[:-1]} read)"
    return f"{TABLE_NAMES[r[0]]} {r[2]}..{r[3]} not readable"


def _width(b: dict) -> int:
    if b["table"] in ("coil", "discrete"):
        return 1
    if b["type"] == "string":
        return b["length"] or 1
    return codec.WIDTHS[b["type"]]


def _fingerprint(dev) -> str:
    data = [sorted((k, str(v)) for k, v in dev.settings.items()),
            sorted((p.id, sorted((k, str(v)) for k, v in p.binding.items())) for p in dev.points.values())]
    return hashlib.sha1(json.dumps(data).encode()).hexdigest()[:16]


def _range_dict(r) -> dict:
    return {"table": TABLE_NAMES[r[0]], "unit": r[1], "start": r[2], "end": r[3]}


class _Block:
    __slots__ = ("table", "start", "count", "req", "ids", "members", "decoder")

    def __init__(self, table, start, count, members, specs):
        self.table, self.start, self.count = table, start, count
        self.req = pdu.read(table, start, count)
        self.members = members
        self.ids = [p.id for p in members]
        self.decoder = codec.BlockDecoder(specs, bits=table <= 1)


class _Group:
    def __init__(self, name: str, interval: float, points: list) -> None:
        self.name, self.interval, self.points = name, interval, points
        self.blocks: list[_Block] = []
        self.next_due = 0.0
        self.plan_key: tuple | None = None  # the points packed in plan_input (re-plans reuse it)
        self.plan_input = None


class Device:
    """Runtime state of one configured device."""

    def __init__(self, cfg, s: dict, link: Link) -> None:
        self.cfg, self.id, self.s, self.link = cfg, cfg.id, s, link
        self.unit = s["unit"]
        self.timeout = s["response_timeout_ms"] / 1000
        self.refused: list[tuple] = []
        self.max_registers = s["max_registers"]
        self.max_bits = s["max_bits"]
        self.groups: list[_Group] = []
        self.replan = trio.Event()
        self.failing_since: float | None = None  # wall clock of the first failure of the current outage
        self.no_fc22 = False                     # learned from exception 01 to a mask write
        self.rmw_locks: dict[int, trio.Lock] = {}
        self.stats = {"requests": 0, "cycles": 0, "failed_cycles": 0, "timeouts": 0, "transport_errors": 0,
                      "invalid_responses": 0, "exceptions": 0, "busy": 0, "short_responses": 0, "splits": 0,
                      "retries": 0, "crashes": 0, "planned_requests": 0, "last_cycle_requests": 0,
                      "last_error": None}

    def register_lock(self, address: int) -> trio.Lock:
        """The lock held across a read-modify-write (and every other write) of one holding register."""
        lock = self.rmw_locks.get(address)
        if lock is None:
            lock = self.rmw_locks[address] = trio.Lock()
        return lock

    def spec(self, p, offset: int) -> codec.PointSpec:
        b = p.binding
        return codec.PointSpec(offset, b["type"] if b["table"] in ("holding", "input") else "bool",
                               b["order"] or self.s["order"], b["bit_offset"], b["bit_mask"], 1.0, 0.0, b["length"])


class ModbusDriver(Driver):
    """Modbus TCP, RTU and RTU-over-TCP devices; see plugins/modbus/README.md."""

    capabilities = frozenset({DISCOVERY, DIAGNOSTICS})

    settings_schema = Schema(dict(COMMON))
    device_schema = Schema({**COMMON,
                            "profile": Key(Str(), None, "register map from profiles/modbus/<name>.toml"),
                            "poll_groups": Key(Map(item=Duration(min=0.01)), None,
                                               'named poll intervals for point groups: { fast = "200ms" }')})
    point_schema = Schema({
        "table": Key(Enum(*TABLES), "holding"),
        "address": Key(Int(min=0, max=65535), None, "0-based register/bit address"),
        "type": Key(Enum(*TYPES), "uint16"),
        "order": Key(Enum(*ORDERS), None),
        "bit_offset": Key(Int(min=0, max=63), None),
        "bit_mask": Key(Int(min=1), None),
        "length": Key(Int(min=1, max=125), None, "registers, for strings"),
        "group": Key(Str(), None, "poll group (a key of the device's poll_groups)"),
    })

    # ------------------------------------------------------------------ config
    @classmethod
    def expand_points(cls, driver_id, device_id, settings):
        name = settings.get("profile")
        if not name:
            return {}
        try:
            prof = load_profile(name)
        except ProfileError as e:
            raise ValueError(str(e)) from None
        return {k: dict(v) for k, v in prof["points"].items()}

    @classmethod
    def validate_config(cls, config):
        for dev in config.devices.values():
            s = {**DEFAULTS, **{k: v for k, v in config.settings.items() if v is not None},
                 **{k: v for k, v in dev.settings.items() if v is not None}}
            transport = s["transport"] or ("rtu" if s["serial_port"] else "tcp")
            if transport == "rtu" and not s["serial_port"]:
                yield (("devices", dev.id), f"device {dev.id}: transport rtu needs serial_port")
            if transport != "rtu" and not s["host"]:
                yield (("devices", dev.id), f"device {dev.id}: missing required key 'host'")
            groups = dev.settings.get("poll_groups") or {}
            for p in dev.points.values():
                b = p.binding
                path = ("devices", dev.id, "points", p.name)
                if b["address"] is None:
                    yield (path, f"point {p.id}: missing required key 'address'")
                if b["type"] == "string" and not b["length"]:
                    yield (path + ("type",), f"point {p.id}: a string needs length = <registers>")
                if b["table"] in ("coil", "discrete") and b["type"] not in ("bool", "uint16"):
                    yield (path + ("type",), f"point {p.id}: {b['table']} points are bits (type = \"bool\")")
                if b["group"] is not None and b["group"] not in groups:
                    yield (path + ("group",), f"point {p.id}: poll group {b['group']!r} is not in the device's "
                                              f"poll_groups ({', '.join(groups) or 'none defined'})")
                if p.writable and b["table"] in ("discrete", "input"):
                    yield (path + ("writable",), f"point {p.id}: {b['table']} points are read-only")

    # ------------------------------------------------------------------ setup
    def __init__(self, ctx):
        super().__init__(ctx)
        self.links: dict[str, Link] = {}
        self.devices: dict[str, Device] = {}
        for dev in self.config.devices.values():
            s = self.settings(dev)
            self.devices[dev.id] = Device(dev, s, self._link(s))

    def settings(self, dev) -> dict:
        s = dict(DEFAULTS)
        s.update({k: v for k, v in self.config.settings.items() if v is not None})
        s.update({k: v for k, v in dev.settings.items() if v is not None})
        s["transport"] = s["transport"] or ("rtu" if s["serial_port"] else "tcp")
        return s

    def _link(self, s: dict) -> Link:
        t = s["transport"]
        key = f"rtu:{s['serial_port']}" if t == "rtu" else f"{t}:{s['host']}:{s['port']}"
        link = self.links.get(key)
        if link is None:
            if t == "tcp":
                link = TcpLink(s["host"], s["port"])
            elif t == "rtu-over-tcp":
                link = RtuStreamLink(s["host"], s["port"])
            else:
                link = SerialLink(s["serial_port"], baudrate=s["baudrate"], parity=s["parity"],
                                  stopbits=s["stopbits"], bytesize=s["bytesize"])
            self.links[key] = link
        link.users += 1
        return link

    # ------------------------------------------------------------------ refused ranges (state.db)
    def _load_learned(self, d: Device) -> None:
        saved = self.ctx.kv_get(f"refused/{d.id}")
        if not isinstance(saved, dict) or saved.get("fp") != _fingerprint(d.cfg):
            d.refused = []  # never learned, or the device's configuration changed since (a reload)
            return
        d.refused = [tuple(r) for r in saved.get("ranges", [])]
        if saved.get("max_registers"):
            d.max_registers = min(d.max_registers, saved["max_registers"])
        if saved.get("max_bits"):
            d.max_bits = min(d.max_bits, saved["max_bits"])

    async def _save_learned(self, d: Device) -> None:
        mr = d.max_registers if d.max_registers < d.s["max_registers"] else None
        mb = d.max_bits if d.max_bits < d.s["max_bits"] else None
        await self.ctx.kv_set(f"refused/{d.id}", {"fp": _fingerprint(d.cfg), "ranges": [list(r) for r in d.refused],
                                                  "max_registers": mr, "max_bits": mb})
        self._publish_info(d)

    def _publish_info(self, d: Device) -> None:
        self.sink.device_info(d.id, transport=d.link.name, unit=d.unit,
                              refused_ranges=[_range_dict(r) for r in d.refused],
                              learned_max_registers=d.max_registers if d.max_registers < d.s["max_registers"]
                              else None,
                              learned_max_bits=d.max_bits if d.max_bits < d.s["max_bits"] else None, modbus=d.stats)

    def refused_ranges(self, device_id: str) -> list[dict]:
        return [_range_dict(r) for r in self.devices[device_id].refused]

    async def clear_refused(self, device_id: str) -> None:
        d = self.devices[device_id]
        d.refused = []
        d.max_registers = d.s["max_registers"]
        d.max_bits = d.s["max_bits"]
        d.no_fc22 = False
        await self.ctx.kv_delete(f"refused/{device_id}")
        self._publish_info(d)
        d.replan.set()

    async def reloaded(self) -> None:
        """A reload that kept this instance (its configuration unchanged) forgets what was learned:
        refused ranges and request-size limits are found again in the next cycles. (A reload that
        restarts the instance forgets them as the old instance stops: see :meth:`run`.)"""
        for d in self.devices.values():
            if d.refused or d.max_registers < d.s["max_registers"] or d.max_bits < d.s["max_bits"]:
                self.ctx.device_log(d.id).info("reload: forgetting %d learned refused range(s) of %s",
                                               len(d.refused), d.id)
                await self.clear_refused(d.id)

    # ------------------------------------------------------------------ planning
    def _plan(self, d: Device) -> None:
        s = d.s
        groups: dict[str, list] = {}
        for p in d.cfg.points.values():
            if p.enabled:
                groups.setdefault(p.binding["group"] or "", []).append(p)
        intervals = d.cfg.settings.get("poll_groups") or {}
        old = {g.name: g for g in d.groups}  # kept: a re-plan in the middle of a cycle keeps the schedule
        d.groups = []
        total = 0
        for name, pts in sorted(groups.items()):
            interval = intervals.get(name, s["poll_interval"]) if name else s["poll_interval"]
            g = old.get(name) or _Group(name, interval, pts)
            g.interval, g.points, g.blocks = interval, pts, []
            key = tuple(p.id for p in pts)
            if g.plan_key != key:  # packed once; a re-plan after a learned refusal reuses it
                g.plan_key = key
                g.plan_input = planner.PlanInput(
                    [(TABLES[p.binding["table"]], d.unit, p.binding["address"], _width(p.binding)) for p in pts])
            plan = planner.plan(g.plan_input, max_gap=s["max_gap"], max_registers=d.max_registers,
                                max_bits=d.max_bits, forbidden=d.refused)
            for i, msg in plan.errors.items():
                self.sink.fault(pts[i].id, f"not polled: {msg}")
            for blk in plan.blocks:
                members = [pts[i] for i, _ in blk.members]
                g.blocks.append(_Block(blk.table, blk.start, blk.count, members,
                                       [d.spec(pts[i], off) for i, off in blk.members]))
            total += len(g.blocks)
            d.groups.append(g)
        d.stats["planned_requests"] = total

    # ------------------------------------------------------------------ requests
    async def transact(self, d: Device, req: pdu.Request, *, unit: int | None = None, retries: int | None = None,
                       timeout: float | None = None) -> bytes | None:
        """One request with the device's throttle and retries (only while the device is healthy)."""
        if retries is None:
            retries = d.s["retry_count"] if self.sink.health(d.id).failures == 0 else 0
        throttle = d.s["throttle_delay_ms"] / 1000
        attempt = busy = 0
        while True:
            if throttle:
                await trio.sleep(throttle)
            d.stats["requests"] += 1
            try:
                return await d.link.request(d.unit if unit is None else unit, req, timeout or d.timeout)
            except ModbusException as e:
                if not e.is_busy:
                    d.stats["exceptions"] += 1
                    raise
                d.stats["busy"] += 1
                if busy == BUSY_RETRIES:
                    raise DeviceBusy(f"the device stayed busy (exception {e.code:02d}, "
                                     f"{pdu.EXCEPTION_TEXT[e.code]}) through {BUSY_RETRIES} retries") from None
                await trio.sleep(BUSY_DELAY * 2 ** busy)  # the device asked for time: give it some
                busy += 1
            except LINK_ERRORS as e:
                key = {"timeout": "timeouts", "transport": "transport_errors", "invalid": "invalid_responses"}[e.kind]
                d.stats[key] += 1
                if attempt == retries:
                    raise
                attempt += 1
                d.stats["retries"] += 1

    async def _read_payload(self, d: Device, req: pdu.Request, **kw) -> bytes:
        """A read through :meth:`transact`, its answer checked strictly (a malformed one is counted)."""
        resp = await self.transact(d, req, **kw)
        try:
            return pdu.read_payload(req, resp)
        except InvalidResponse:
            d.stats["invalid_responses"] += 1
            raise

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        """Poll every enabled device, each in its own task with its own crash boundary.

        Learned state (refused ranges, request-size limits) is forgotten when a reload stops this
        instance (a changed configuration, ``discovery.accept``): the next instance learns afresh.
        A shutdown or a crash keeps it (it is tied to the device configuration's fingerprint)."""
        for d in self.devices.values():
            self._load_learned(d)
            self._plan(d)
            self._publish_info(d)
            d.link.on_back.append(lambda d=d: self._link_back(d))
        task_status.started()
        try:
            async with trio.open_nursery() as n:
                for d in self.devices.values():
                    if d.cfg.enabled:
                        n.start_soon(self._device_task, d, name=f"modbus:{self.config.id}:{d.id}")
        finally:
            cancelled = trio.current_effective_deadline() == float("-inf")
            stopping = getattr(self.ctx.gateway, "stopping", None)
            with trio.CancelScope(shield=True):
                if cancelled and stopping is not None and not stopping.is_set():
                    await self._forget_learned()  # stopped by a reload, not by a shutdown
                self._conn_state("closing")
                for link in self.links.values():
                    await link.close()
                self._conn_state("closed")

    def _conn_state(self, state: str) -> None:
        """Report ``conn_state`` of every device as this instance stops (its status unchanged)."""
        for d in self.devices.values():
            ds = self.sink.health(d.id).state
            if d.cfg.enabled and ds.conn_state != state:
                self.sink.device_status(d.id, ds.conn_status, conn_state=state, reason=ds.reason)

    async def _forget_learned(self) -> None:
        for d in self.devices.values():
            if self.ctx.kv_get(f"refused/{d.id}") is not None:
                self.ctx.device_log(d.id).info("reload: forgetting what was learned about %s (%s)", d.id,
                                               ", ".join(_learned_text(r) for r in d.refused) or "request limits")
                await self.ctx.kv_delete(f"refused/{d.id}")

    def _link_back(self, d: Device) -> None:
        """The shared link answered again: a device waiting out its backoff retries now."""
        if d.failing_since is not None:
            for g in d.groups:
                g.next_due = 0.0
            d.replan.set()

    async def _device_task(self, d: Device) -> None:
        """The device's crash boundary: something unexpected in its loop (a driver bug, a decoder
        surprise) is logged with its traceback and restarts this device's loop alone, after 1 s
        doubling to 60 s; the other devices of the instance keep polling."""
        log = self.ctx.device_log(d.id)
        backoff = 1.0
        while True:
            t0 = trio.current_time()
            try:
                await self._device_loop(d)
                return
            except Exception as e:
                d.stats["crashes"] += 1
                reason = f"internal error: {type(e).__name__}: {e}"
                d.stats["last_error"] = reason
                log.error("polling %s failed unexpectedly (%s); restarting this device in %.0fs, the other "
                          "devices keep polling", d.id, reason, backoff, exc_info=True)
                self._failed(d, reason)
            if trio.current_time() - t0 > CRASH_BACKOFF_MAX:
                backoff = 1.0
            await trio.sleep(backoff)
            backoff = min(backoff * 2, CRASH_BACKOFF_MAX)
            d.replan.set()

    def _failed(self, d: Device, reason: str) -> float:
        """A failed cycle: counted, shown at once (status ``fault`` with the reason until the device is
        ``down``), the device's backoff delay returned."""
        health = self.sink.health(d.id)
        if d.failing_since is None:
            d.failing_since = self.sink.now()
        delay = health.failure(reason)
        if not health.is_down:
            self.sink.device_status(d.id, "fault", conn_state="opening",
                                    reason=f"{reason} (failure {health.failures} of {health.down_after} before "
                                           f"down; next attempt in {delay:.0f}s)")
        return delay

    def _succeeded(self, d: Device) -> None:
        health = self.sink.health(d.id)
        if d.failing_since is not None:
            if health.is_down and health.state.down_since:
                health.state.down_since = min(health.state.down_since, d.failing_since)  # the real outage
            d.failing_since = None
        health.success()

    async def _device_loop(self, d: Device) -> None:
        log = self.ctx.device_log(d.id)
        while True:
            if d.replan.is_set():
                d.replan = trio.Event()
                self._plan(d)
            now = trio.current_time()
            due = [g for g in d.groups if g.next_due <= now]
            if not due:
                if not d.groups:
                    await d.replan.wait()
                    continue
                with trio.move_on_at(min(g.next_due for g in d.groups)):
                    await d.replan.wait()
                continue
            delay = None
            for g in due:
                n0 = d.stats["requests"]
                try:
                    learned = await self._poll_group(d, g)
                except (*LINK_ERRORS, DeviceUnreachable, DeviceBusy) as e:
                    reason = _reason(e)
                    d.stats["failed_cycles"] += 1
                    d.stats["last_error"] = reason
                    delay = self._failed(d, reason)
                    log.debug("cycle failed (%s), next attempt in %.1fs", reason, delay)
                    break
                finally:
                    d.stats["cycles"] += 1
                    d.stats["last_cycle_requests"] = d.stats["requests"] - n0
                self._succeeded(d)
                if learned:
                    log.warning("learned about %s: %s; remembered (clear with modbus.clear_refused), re-planned",
                                d.id, "; ".join(_learned_text(r) for r in learned))
                    await self._save_learned(d)
                    self._plan(d)
                now = trio.current_time()
                g.next_due = max(g.next_due + g.interval, now) if g.next_due else now + g.interval
                if g.next_due > now + g.interval:  # pragma: no cover - clock jumps
                    g.next_due = now + g.interval
            if d.s["disconnect_between_polls"] and isinstance(d.link, (TcpLink, RtuStreamLink)):
                await d.link.close()
            if delay is not None:
                t = trio.current_time() + delay
                for g in d.groups:
                    g.next_due = t

    async def _poll_group(self, d: Device, g: _Group) -> list:
        """Read every block of a group once; returns what was learned (refused ranges / size limits)."""
        learned: list = []
        ts = self.sink.now()
        for b in g.blocks:
            try:
                payload = await self._read_payload(d, b.req)
            except ModbusException as e:
                if e.code in FAILING_CODES:
                    raise DeviceUnreachable(str(e)) from None
                if e.code in (2, 3):
                    learned += await self._refused(d, b, e.code, ts)
                else:
                    for pid in b.ids:
                        self.sink.fault(pid, f"the device answered {e}")
                continue
            self._deliver(d, b.ids, b.decoder, payload, ts, b)
        return learned

    def _deliver(self, d: Device, ids, decoder, payload: bytes, ts: float, where) -> None:
        vals, kinds = decoder.decode_into(payload)
        if 5 not in kinds:
            self.sink.update_many(zip(ids, vals), ts=ts)
            return
        d.stats["short_responses"] += 1
        self.ctx.device_log(d.id).warning("short response to %s %d..%d: %d bytes", TABLE_NAMES[where.table],
                                          where.start, where.start + where.count - 1, len(payload))
        update, fault = self.sink.update, self.sink.fault
        for pid, v, k in zip(ids, vals, kinds):
            if k == 5:
                fault(pid, f"short response: {len(payload)} bytes do not hold this point")
            else:
                update(pid, v, ts=ts)

    async def _refused(self, d: Device, b: _Block, code: int, ts: float) -> list:
        """Exception 02/03 to a block: find out why in this same cycle, without re-reading the block.

        * 03 (illegal data value) to a read of several registers/bits is about the request *size*:
          the largest count the device accepts from the block's start is found by bisection and
          learned as the device's ``max_registers``/``max_bits``; the block's points are then read
          in requests of that size. (A largest count below the block's widest point is no size
          limit: the addresses are split as for 02.)
        * 02 (illegal data address), or 03 to a single-register read, is about *addresses*: the
          block's points are split in halves (recursively); a single point refused is learned as a
          refused range, and so is the gap between two halves that read fine on their own.
        """
        d.stats["splits"] += 1
        learned: list = []
        members = sorted(b.members, key=lambda p: p.binding["address"])
        if code == 3 and b.count > 1:
            limit = await self._learn_size(d, b)
            # a limit below the block's widest point would leave that point unreadable for good:
            # then the 03 is about that point's registers, not the request size
            if limit and limit >= max(_width(p.binding) for p in members):
                attr = "max_bits" if b.table <= 1 else "max_registers"
                if limit < getattr(d, attr):
                    setattr(d, attr, limit)
                    learned.append((attr, limit, b.count))
                for ms in _chunks(members, limit):
                    await self._read_part(d, b, ms, ts, learned)
                return self._remember(d, learned)
        await self._split_addresses(d, b, members, code, ts, learned)
        return self._remember(d, learned)

    def _remember(self, d: Device, learned: list) -> list:
        for r in learned:
            if isinstance(r[0], int) and r not in d.refused:
                d.refused.append(r)
        d.refused.sort()
        return learned

    async def _learn_size(self, d: Device, b: _Block) -> int | None:
        """The largest count read from ``b.start`` that the device accepts (bisection between 0 and
        the refused ``b.count``); 0 when even one is refused; None when an answer was about
        addresses (02), not size."""
        lo, hi = 0, b.count
        while hi - lo > 1:
            mid = (lo + hi) // 2
            try:
                await self._read_payload(d, pdu.read(b.table, b.start, mid))
            except ModbusException as e:
                if e.code in FAILING_CODES:
                    raise DeviceUnreachable(str(e)) from None
                if e.code != 3:
                    return None
                hi = mid
                continue
            lo = mid
        return lo

    async def _read_part(self, d: Device, b: _Block, ms: list, ts: float, learned: list) -> bool:
        """Read the span of points ``ms``; on 02/03 split it by addresses. True when it read."""
        t = b.table
        start = ms[0].binding["address"]
        end = max(p.binding["address"] + _width(p.binding) for p in ms)
        try:
            payload = await self._read_payload(d, pdu.read(t, start, end - start))
        except ModbusException as e:
            if e.code in FAILING_CODES:
                raise DeviceUnreachable(str(e)) from None
            if e.code not in (2, 3):
                for p in ms:
                    self.sink.fault(p.id, f"the device answered {e}")
                return False
            await self._split_addresses(d, b, ms, e.code, ts, learned)
            return False
        dec = codec.BlockDecoder([d.spec(p, p.binding["address"] - start) for p in ms], bits=t <= 1)
        self._deliver(d, [p.id for p in ms], dec, payload, ts, b)
        return True

    async def _split_addresses(self, d: Device, b: _Block, ms: list, code: int, ts: float, learned: list) -> None:
        """``ms`` was just refused as a whole (02/03): read its halves; learn holes (see :meth:`_refused`)."""
        t, u = b.table, d.unit
        if len(ms) == 1:
            p = ms[0]
            first, last = p.binding["address"], p.binding["address"] + _width(p.binding) - 1
            self.sink.fault(p.id, f"refused by the device (exception {code:02d}, {pdu.EXCEPTION_TEXT[code]}): "
                                  f"{TABLE_NAMES[t]} {first}..{last} cannot be read")
            learned.append((t, u, first, last))
            return
        k = len(ms) // 2
        left, right = ms[:k], ms[k:]
        ok_l = await self._read_part(d, b, left, ts, learned)
        ok_r = await self._read_part(d, b, right, ts, learned)
        if ok_l and ok_r:  # each half reads: the refusal lay in the registers between them
            gap_start = max(p.binding["address"] + _width(p.binding) for p in left)
            gap_end = right[0].binding["address"] - 1
            if gap_end >= gap_start:
                learned.append((t, u, gap_start, gap_end))

    # ------------------------------------------------------------------ writes
    @classmethod
    def write_range(cls, point) -> tuple[float | None, float | None]:
        """The raw values a write to ``point`` can carry (driver-value space, before the core's
        scale/offset): the register type's range, a ``bit_mask`` field's range, or (None, None)
        where no numeric range applies (coils, bits, strings, read-only tables)."""
        b = point.binding
        if b.get("table", "holding") != "holding":
            return (None, None)
        typ = b.get("type") or "uint16"
        if b.get("bit_offset") is not None or typ in ("bool", "string"):
            return (None, None)
        if b.get("bit_mask") is not None:
            mask = b["bit_mask"]
            return (0, mask >> ((mask & -mask).bit_length() - 1))
        return codec.RANGES.get(typ) or codec.FLOAT_RANGES.get(typ) or (None, None)

    def _encode_message(self, point, value, e: codec.EncodeError) -> str:
        """An encode error in the point's own units, the raw limit second."""
        lo, hi = self.write_range(point)
        conv = getattr(point, "convert", None)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or lo is None or conv:
            return f"{point.id}: {e}"
        scale, offset = getattr(point, "scale", 1.0), getattr(point, "offset", 0.0) + getattr(point, "calibration", 0.0)

        def units(raw):
            v = raw * scale + offset
            return f"{v:g}" + (f" {point.unit}" if getattr(point, "unit", None) else "")

        plo, phi = sorted((lo * scale + offset, hi * scale + offset))
        typed = units(value)
        if value > hi:
            bound, limit = ("maximum", phi) if scale > 0 else ("minimum", plo)
            raw = hi
        elif value < lo:
            bound, limit = ("minimum", plo) if scale > 0 else ("maximum", phi)
            raw = lo
        else:
            return f"{point.id}: {e}"
        side = "above" if bound == "maximum" else "below"
        lim = f"{limit:g}" + (f" {point.unit}" if getattr(point, "unit", None) else "")
        return f"{point.id}: {typed} is {side} the {bound} {lim} for this point (raw register limit {raw:g})"

    async def write(self, point, value):
        """Write ``value`` (driver units) to the point's register(s), then read it back.

        Failures raise :class:`WriteError` with these kinds: ``refused`` (the device
        answered an exception), ``encode`` (the value does not fit the register), ``timeout`` (no or
        no valid answer: the device may have applied it), ``transport`` (the link is down or the
        device stayed busy: nothing was applied)."""
        d = self.devices[point.device]
        b = point.binding
        table = TABLES[b["table"]]
        spec = d.spec(point, 0)
        try:
            if table in (1, 3):
                raise WriteError(f"{point.id} is a {b['table']} point: read-only", kind="invalid")
            if table == 2 and (b["bit_offset"] is not None or b["bit_mask"] is not None):
                # the field's register: not always the first one for 32/64-bit points (and word orders)
                reg_off, and_mask, or_mask = codec.mask_write_at(spec, value)
                address = b["address"] + reg_off
                async with d.register_lock(address):  # FC22 and its read-modify-write fallback, one at a time
                    await self._mask_write(d, address, and_mask, or_mask)
            else:
                if table == 0:
                    regs = [bool(value)]
                else:
                    if (isinstance(value, float) and math.isfinite(value) and not spec.type.startswith("float")
                            and spec.type != "string"):
                        value = int(round(value))
                    regs = codec.encode(spec, value)
                req = pdu.write(table, b["address"], regs, multiple=d.s["write_multiple"])
                async with d.register_lock(b["address"]) if table == 2 else _nolock():
                    resp = await self.transact(d, req, retries=0)
                if resp is not None:
                    pdu.check_echo(req, resp)
        except codec.EncodeError as e:
            raise WriteError(self._encode_message(point, value, e), kind="encode") from None
        except ModbusException as e:
            raise WriteError(f"{point.id}: the device refused the write: {e}", kind="refused") from None
        except Timeout as e:
            raise WriteError(f"{point.id}: no answer from the device ({e}); it may have applied the write: "
                             "read the point back to check", kind="timeout") from None
        except InvalidResponse as e:
            raise WriteError(f"{point.id}: the device's answer was not valid ({e}); it may have applied the "
                             "write: read the point back to check", kind="timeout") from None
        except TransportError as e:
            raise WriteError(f"{point.id}: not written, the link is down: {e}", kind="transport") from None
        except DeviceBusy as e:
            raise WriteError(f"{point.id}: not written, {e}", kind="transport") from None
        # read back; if that fails keep the written value and say so
        log = self.ctx.device_log(d.id)
        try:
            payload = await self._read_payload(d, pdu.read(table, b["address"], _width(b)))
            got = codec.BlockDecoder([spec], bits=table <= 1).decode(payload)[0]
        except (ModbusException, DeviceBusy, *LINK_ERRORS) as e:
            log.warning("read-back of %s failed after the write (%s); keeping the written value %r",
                        point.id, e, value)
            return value
        if got != value and not (isinstance(got, float) and isinstance(value, (int, float))
                                 and abs(got - value) <= 1e-6 * max(1.0, abs(value))):
            log.warning("read-back of %s after writing %r gave %r (the device keeps its own value)",
                        point.id, value, got)
        return got

    async def _mask_write(self, d: Device, address: int, and_mask: int, or_mask: int) -> None:
        """FC22, or FC3 + FC6 read-modify-write on a device without FC22 (the caller holds the
        register's lock, so two bit writes to one register cannot undo each other)."""
        if not d.no_fc22:
            req = pdu.mask_write(address, and_mask, or_mask)
            try:
                resp = await self.transact(d, req, retries=0)
            except ModbusException as e:
                if e.code != 1:
                    raise
                d.no_fc22 = True  # "illegal function": this device has no FC22
            else:
                if resp is not None:
                    pdu.check_echo(req, resp)
                return
        cur = await self._read_payload(d, pdu.read(2, address, 1), retries=0)
        if len(cur) < 2:
            raise InvalidResponse(f"read of register {address} before the masked write returned no register")
        reg = int.from_bytes(cur[:2], "big")
        new = (reg & and_mask) | (or_mask & ~and_mask & 0xFFFF)
        req = pdu.write(2, address, [new], multiple=d.s["write_multiple"])
        resp = await self.transact(d, req, retries=0)
        if resp is not None:
            pdu.check_echo(req, resp)

    # ------------------------------------------------------------------ diagnostics (RPC)
    def device(self, device_id: str) -> Device:
        return self.devices[device_id]

    async def diag(self, device_id: str, req: pdu.Request, unit: int | None = None) -> bytes:
        d = self.devices[device_id]
        return await self.transact(d, req, unit=unit, retries=0)

    async def read_registers(self, device_id: str, address: int, count: int, table: str = "holding",
                             unit: int | None = None, type: str | None = None, order: str | None = None) -> dict:
        t = TABLES[table]
        if t <= 1:
            raise ValueError(f"{table} is a bit table: use modbus.read_bits")
        req = pdu.read(t, address, count)
        payload = pdu.read_payload(req, await self.diag(device_id, req, unit))
        regs = [int.from_bytes(payload[i:i + 2], "big") for i in range(0, len(payload) - 1, 2)]
        out = {"device": device_id, "table": table, "address": address, "count": count, "registers": regs,
               "hex": [f"{r:04X}" for r in regs]}
        if type:
            d = self.devices[device_id]
            w = codec.WIDTHS.get(type, count)
            specs = [codec.PointSpec(off, type, order or d.s["order"], length=count if type == "string" else None)
                     for off in range(0, count - w + 1, w)] if type != "string" else \
                [codec.PointSpec(0, "string", order or d.s["order"], length=count)]
            out["values"] = codec.BlockDecoder(specs).decode(payload)
        return out

    async def read_bits(self, device_id: str, address: int, count: int, table: str = "coil",
                        unit: int | None = None) -> dict:
        t = TABLES[table]
        if t >= 2:
            raise ValueError(f"{table} is a register table: use modbus.read_registers")
        req = pdu.read(t, address, count)
        payload = pdu.read_payload(req, await self.diag(device_id, req, unit))
        bits = [bool(payload[i // 8] >> (i % 8) & 1) for i in range(min(count, 8 * len(payload)))]
        return {"device": device_id, "table": table, "address": address, "count": count, "bits": bits}

    async def diagnostic(self, device_id: str, sub_function: int, data: int = 0, unit: int | None = None) -> dict:
        req = pdu.diagnostic(sub_function, data)
        return pdu.parse_diagnostic(req, await self.diag(device_id, req, unit))

    async def device_identification(self, device_id: str, level: str = "basic", unit: int | None = None,
                                    timeout: float | None = None) -> dict:
        code = {"basic": 1, "regular": 2, "extended": 3}[level]
        d = self.devices[device_id]
        objects: dict[int, str] = {}
        oid, conformity = 0, None
        for _ in range(32):  # "more follows" paging
            req = pdu.device_identification(code, oid)
            r = pdu.parse_device_identification(await self.transact(d, req, unit=unit, retries=0, timeout=timeout))
            objects.update(r["objects"])
            conformity = r["conformity"]
            if not r["more_follows"] or r["next_object_id"] <= oid:
                break
            oid = r["next_object_id"]
        named = {pdu.DEVICE_ID_OBJECTS.get(k, f"object_{k}"): v for k, v in sorted(objects.items())}
        return {"device": device_id, "level": level, "conformity": conformity, "objects": named}

    # ------------------------------------------------------------------ discovery
    async def _identify(self, d: Device, unit: int, timeout: float) -> dict | None:
        """Presence (any answer to a register read, even an exception) + FC43 identity when available.

        Presence is asked with a plain read first: some TCP gateways answer FC43 themselves
        for every unit id, present or not.
        """
        info: dict[str, Any] = {"unit": unit}
        try:
            await self.transact(d, pdu.read(2, 0, 1), unit=unit, retries=0, timeout=timeout)
        except ModbusException as e:
            if e.code in FAILING_CODES:
                return None
        except (InvalidResponse, DeviceBusy):
            pass  # something answered
        except (Timeout, TransportError):
            return None
        try:
            r = await self.device_identification(d.id, "basic", unit=unit, timeout=timeout)
            info.update(r["objects"])
        except ModbusException as e:
            info["identification"] = f"not supported ({e})"
        except (InvalidResponse, Timeout, TransportError, DeviceBusy) as e:
            info["identification"] = f"no valid answer ({e})"
        model = info.get("model") or info.get("product_name") or info.get("product_code")
        prof, score = match_profile(info.get("vendor"), model)  # None below MATCH_THRESHOLD
        if prof:
            info["profile"], info["profile_score"] = prof, score
        return info

    async def discover(self, mode: str = "configured", host: str | None = None, port: int = 502,
                       units: str | list | None = None, device: str | None = None, parallel: int = 8,
                       timeout_ms: int = 1000, transport: str = "tcp") -> dict:
        """User-initiated scan.

        * ``mode="configured"``: every configured device: presence + FC43 vendor/product/revision.
        * ``mode="tcp"``: probe ``host:port`` for ``units`` (e.g. "1-247"), 1 s timeout, no retries,
          ``parallel`` connections at most. ``transport="rtu-over-tcp"`` (serial device servers):
          one probe at a time on one connection (the serial line behind it carries one transaction at
          a time), through the polling link of that endpoint when one is configured.
        * ``mode="rtu"``: probe ``units`` on the bus of configured ``device``, queued one at a time
          through the bus's link between polling requests.
        """
        timeout = timeout_ms / 1000
        found, probed = [], 0
        if mode == "configured":
            for d in self.devices.values():
                info = await self._identify(d, d.unit, timeout)
                probed += 1
                present = info is not None
                entry = {"device": d.id, "present": present, **(info or {})}
                self.sink.device_info(d.id, identity={k: v for k, v in (info or {}).items() if k != "unit"})
                if present:
                    await self.ctx.report_discovery(self._key(d.s, d.unit), {**self._target(d.s, d.unit),
                                                                           **(info or {}), "configured_as": d.id})
                found.append(entry)
            return {"mode": mode, "probed": probed, "found": found}
        unit_list = _parse_units(units or "1-247")
        if mode == "tcp":
            if not host:
                raise ValueError("mode tcp needs host")
            if transport not in ("tcp", "rtu-over-tcp"):
                raise ValueError(f"mode tcp takes transport tcp or rtu-over-tcp, not {transport!r}")
            s = {**DEFAULTS, "transport": transport, "host": host, "port": port}
            if transport == "tcp":  # Modbus TCP: the endpoint takes parallel connections
                links = [TcpLink(host, port) for _ in range(max(1, min(parallel, 32, len(unit_list))))]
                owned = links
            else:
                # one serial line behind the device server: one transaction at a time, through the link
                # that polls it when one is configured (probes queue between the polls)
                shared = self.links.get(f"rtu-over-tcp:{host}:{port}")
                links = [shared or RtuStreamLink(host, port)]
                owned = [] if shared else links
            probes = [Device(_Probe(f"probe-{i}"), s, link) for i, link in enumerate(links)]
            todo = list(unit_list)
            results: dict[int, dict] = {}

            async def worker(pd: Device):
                while todo:
                    u = todo.pop(0)
                    self.devices[pd.id] = pd
                    info = await self._identify(pd, u, timeout)
                    if info is not None:
                        results[u] = info

            try:
                async with trio.open_nursery() as n:
                    for pd in probes:
                        n.start_soon(worker, pd)
            finally:
                for pd in probes:
                    self.devices.pop(pd.id, None)
                for link in owned:
                    with trio.CancelScope(shield=True):
                        await link.close()
            probed = len(unit_list)
        elif mode == "rtu":
            if device is None:
                buses = [d for d in self.devices.values() if d.s["transport"] == "rtu"]
                if len({d.link for d in buses}) != 1:
                    raise ValueError("mode rtu needs device=<a configured device on the bus to scan>")
                device = buses[0].id
            base = self.devices[device]
            s = dict(base.s)
            pd = Device(_Probe("probe-rtu"), s, base.link)
            self.devices[pd.id] = pd
            results = {}
            try:
                for u in unit_list:
                    info = await self._identify(pd, u, timeout)
                    if info is not None:
                        results[u] = info
            finally:
                self.devices.pop(pd.id, None)
            probed = len(unit_list)
        else:
            raise ValueError(f"unknown discovery mode {mode!r} (configured, tcp, rtu)")
        configured = {(self._key(d.s, d.unit)): d.id for d in self.devices.values()}
        for u, info in sorted(results.items()):
            key = self._key(s, u)
            data = {**self._target(s, u), **info}
            if key in configured:
                data["configured_as"] = configured[key]
            await self.ctx.report_discovery(key, data)
            found.append({"key": key, **data})
        return {"mode": mode, "probed": probed, "found": found}

    @staticmethod
    def _key(s: dict, unit: int) -> str:
        if s["transport"] == "rtu":
            return f"rtu:{s['serial_port']}:{unit}"
        return f"{s['transport']}:{s['host']}:{s['port']}:{unit}"

    @staticmethod
    def _target(s: dict, unit: int) -> dict:
        if s["transport"] == "rtu":
            return {"transport": "rtu", "serial_port": s["serial_port"], "unit": unit}
        return {"transport": s["transport"], "host": s["host"], "port": s["port"], "unit": unit}

    def accept_discovered(self, key: str, data: dict) -> tuple[str, dict]:
        if data.get("configured_as"):
            raise WriteError(f"{key} is already configured as device {data['configured_as']!r}")
        base = data.get("profile") or _slug(data.get("model") or data.get("product_name") or data.get("vendor")
                                            or "modbus")
        dev_id = f"{base}-{data['unit']}"
        n = 2
        while dev_id in self.config.devices:
            dev_id = f"{base}-{data['unit']}-{n}"
            n += 1
        table: dict[str, Any] = {}
        drv = {**DEFAULTS, **{k: v for k, v in self.config.settings.items() if v is not None}}
        drv["transport"] = drv["transport"] or ("rtu" if drv["serial_port"] else "tcp")
        for k in ("transport", "host", "port", "serial_port"):
            if data.get(k) is not None and data.get(k) != drv.get(k):
                table[k] = data[k]
        table["unit"] = data["unit"]
        if data.get("profile"):
            table["profile"] = data["profile"]
        return dev_id, table

    def status(self) -> dict:
        st = {"devices": len(self.devices), "links": {k: {"requests": v.requests, "users": v.users}
                                                      for k, v in self.links.items()}}
        for key in ("requests", "timeouts", "exceptions", "splits", "short_responses", "planned_requests",
                    "last_cycle_requests"):
            st[key] = sum(d.stats[key] for d in self.devices.values())
        return st


class _Probe:
    """A stand-in device config for discovery probes."""

    def __init__(self, id: str) -> None:
        self.id = id
        self.settings: dict = {}
        self.points: dict = {}
        self.enabled = True


class _nolock:
    """A no-op async context manager (coil writes share no register)."""

    async def __aenter__(self):
        return None

    async def __aexit__(self, *exc):
        return False


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "modbus"


def _chunks(members: list, limit: int) -> list[list]:
    """Consecutive points (sorted by address) grouped so that each group's span fits ``limit``."""
    out: list[list] = []
    for p in members:
        end = p.binding["address"] + _width(p.binding)
        if out and end - out[-1][0].binding["address"] <= limit:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def _parse_units(units) -> list[int]:
    if isinstance(units, int):
        return [units]
    if isinstance(units, list):
        out = [int(u) for u in units]
    else:
        out = []
        for part in str(units).split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    if not out or any(not 1 <= u <= 247 for u in out):
        raise ValueError("units must be within 1..247 (e.g. \"1-10\" or [1, 5, 7])")
    return sorted(set(out))
