"""The ``modbus`` driver: planning, polling, refused-range learning, writes, diagnostics, discovery."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import trio

from gatewayd.native import codec, planner
from gatewayd.plugin import Bool, Driver, Duration, Enum, Int, Key, Map, Schema, Str, WriteError

from . import pdu
from .pdu import InvalidResponse, ModbusException
from .profiles import ProfileError, load_profile, match_profile
from .transport import Link, RtuStreamLink, SerialLink, TcpLink, Timeout, TransportError

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


class DeviceUnreachable(Exception):
    kind = "exception"


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
        self.groups: list[_Group] = []
        self.replan = trio.Event()
        self.stats = {"requests": 0, "cycles": 0, "failed_cycles": 0, "timeouts": 0, "transport_errors": 0,
                      "invalid_responses": 0, "exceptions": 0, "short_responses": 0, "splits": 0, "retries": 0,
                      "planned_requests": 0, "last_cycle_requests": 0, "last_error": None}

    def spec(self, p, offset: int) -> codec.PointSpec:
        b = p.binding
        return codec.PointSpec(offset, b["type"] if b["table"] in ("holding", "input") else "bool",
                               b["order"] or self.s["order"], b["bit_offset"], b["bit_mask"], 1.0, 0.0, b["length"])


class ModbusDriver(Driver):
    """Modbus TCP, RTU and RTU-over-TCP devices; see plugins/modbus/README.md."""

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

    async def _save_learned(self, d: Device) -> None:
        mr = d.max_registers if d.max_registers < d.s["max_registers"] else None
        await self.ctx.kv_set(f"refused/{d.id}", {"fp": _fingerprint(d.cfg), "ranges": [list(r) for r in d.refused],
                                                  "max_registers": mr})
        self._publish_info(d)

    def _publish_info(self, d: Device) -> None:
        self.sink.device_info(d.id, transport=d.link.name, unit=d.unit,
                              refused_ranges=[_range_dict(r) for r in d.refused],
                              learned_max_registers=d.max_registers if d.max_registers < d.s["max_registers"]
                              else None, modbus=d.stats)

    def refused_ranges(self, device_id: str) -> list[dict]:
        return [_range_dict(r) for r in self.devices[device_id].refused]

    async def clear_refused(self, device_id: str) -> None:
        d = self.devices[device_id]
        d.refused = []
        d.max_registers = d.s["max_registers"]
        await self.ctx.kv_delete(f"refused/{device_id}")
        self._publish_info(d)
        d.replan.set()

    async def reloaded(self) -> None:
        """A reload that kept this instance (its configuration unchanged) forgets what was learned:
        refused ranges and request-size limits are found again in the next cycles. (A changed
        device configuration restarts the instance, which drops them by their fingerprint.)"""
        for d in self.devices.values():
            if d.refused or d.max_registers < d.s["max_registers"]:
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
                                max_bits=s["max_bits"], forbidden=d.refused)
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
        for attempt in range(retries + 1):
            if throttle:
                await trio.sleep(throttle)
            d.stats["requests"] += 1
            try:
                return await d.link.request(d.unit if unit is None else unit, req, timeout or d.timeout)
            except ModbusException:
                d.stats["exceptions"] += 1
                raise
            except LINK_ERRORS as e:
                key = {"timeout": "timeouts", "transport": "transport_errors", "invalid": "invalid_responses"}[e.kind]
                d.stats[key] += 1
                if attempt == retries:
                    raise
                d.stats["retries"] += 1

    async def _read_payload(self, d: Device, req: pdu.Request, **kw) -> bytes:
        return pdu.read_payload(req, await self.transact(d, req, **kw))

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        for d in self.devices.values():
            self._load_learned(d)
            self._plan(d)
            self._publish_info(d)
        task_status.started()
        try:
            async with trio.open_nursery() as n:
                for d in self.devices.values():
                    if d.cfg.enabled:
                        n.start_soon(self._device_loop, d, name=f"modbus:{self.config.id}:{d.id}")
        finally:
            for link in self.links.values():
                with trio.CancelScope(shield=True):
                    await link.close()

    async def _device_loop(self, d: Device) -> None:
        health = self.sink.health(d.id)
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
                except (*LINK_ERRORS, DeviceUnreachable) as e:
                    d.stats["failed_cycles"] += 1
                    d.stats["last_error"] = f"{e.kind}: {e}"
                    delay = health.failure(f"{e.kind}: {e}")
                    log.debug("cycle failed (%s: %s), next attempt in %.1fs", e.kind, e, delay)
                    break
                finally:
                    d.stats["cycles"] += 1
                    d.stats["last_cycle_requests"] = d.stats["requests"] - n0
                health.success()
                if learned:
                    log.warning("device refused %s; remembered (clear with modbus.clear_refused), re-planned",
                                ", ".join(f"{TABLE_NAMES[r[0]]} {r[2]}..{r[3]}" if len(r) == 4 else str(r)
                                          for r in learned))
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
                if e.code in (2, 3):
                    learned += await self._split(d, b, ts)
                elif e.code in FAILING_CODES:
                    raise DeviceUnreachable(str(e)) from None
                else:
                    for pid in b.ids:
                        self.sink.fault(pid, str(e))
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

    async def _split(self, d: Device, b: _Block, ts: float) -> list:
        """Exception 02/03 on a block: read its halves (recursively) in this same cycle.

        A single point refused is learned as a refused range (its registers); when two
        halves read fine on their own, the refusal lay in the gap between them, which is
        learned; with no gap between them the device refused the *size*: its largest
        working request becomes the device's learned ``max_registers``.
        """
        d.stats["splits"] += 1
        t, u = b.table, d.unit
        members = sorted(b.members, key=lambda p: p.binding["address"])
        learned: list = []

        async def part(ms) -> bool:
            start = ms[0].binding["address"]
            end = max(p.binding["address"] + _width(p.binding) for p in ms)
            if len(ms) > 1 or ms is not members:
                req = pdu.read(t, start, end - start)
                try:
                    payload = await self._read_payload(d, req)
                except ModbusException as e:
                    if e.code in FAILING_CODES:
                        raise DeviceUnreachable(str(e)) from None
                    if e.code not in (2, 3) or len(ms) == 1:
                        for p in ms:
                            self.sink.fault(p.id, str(e))
                        if e.code in (2, 3):
                            learned.append((t, u, start, end - 1))
                        return False
                else:
                    dec = codec.BlockDecoder([d.spec(p, p.binding["address"] - start) for p in ms], bits=t <= 1)
                    self._deliver(d, [p.id for p in ms], dec, payload, ts, b)
                    return True
            k = len(ms) // 2
            left, right = ms[:k], ms[k:]
            ok_l = await part(left)
            ok_r = await part(right)
            if ok_l and ok_r:
                gap_start = max(p.binding["address"] + _width(p.binding) for p in left)
                gap_end = right[0].binding["address"] - 1
                if gap_end >= gap_start:
                    learned.append((t, u, gap_start, gap_end))
                elif t >= 2:
                    span = max(gap_start - left[0].binding["address"],
                               max(p.binding["address"] + _width(p.binding) for p in right) - right[0].binding["address"])
                    if span < d.max_registers:
                        d.max_registers = max(1, span)
                        learned.append(("max_registers", span))
            return False

        if len(members) == 1:  # the planner's block was one point: it is the refused range
            p = members[0]
            self.sink.fault(p.id, "refused by the device (exception 02/03)")
            learned.append((t, u, p.binding["address"], p.binding["address"] + _width(p.binding) - 1))
        else:
            await part(members)  # the whole block just failed: split at once, without re-reading it
        for r in learned:
            if len(r) == 4 and r not in d.refused:
                d.refused.append(r)
        d.refused.sort()
        return learned

    # ------------------------------------------------------------------ writes
    async def write(self, point, value):
        d = self.devices[point.device]
        b = point.binding
        table = TABLES[b["table"]]
        spec = d.spec(point, 0)
        try:
            if table in (1, 3):
                raise WriteError(f"{point.id} is a {b['table']} point: read-only", kind="encode")
            if table == 2 and (b["bit_offset"] is not None or b["bit_mask"] is not None):
                # the field's register: not always the first one for 32/64-bit points (and word orders)
                reg_off, and_mask, or_mask = codec.mask_write_at(spec, value)
                address = b["address"] + reg_off
                try:
                    await self.transact(d, pdu.mask_write(address, and_mask, or_mask), retries=0)
                except ModbusException as e:
                    if e.code != 1:
                        raise
                    # no FC22 on this device: read-modify-write with FC3 + FC6
                    cur = await self._read_payload(d, pdu.read(2, address, 1), retries=0)
                    reg = int.from_bytes(cur[:2], "big")
                    new = (reg & and_mask) | (or_mask & ~and_mask & 0xFFFF)
                    await self.transact(d, pdu.write(2, address, [new], multiple=d.s["write_multiple"]),
                                        retries=0)
            else:
                if table == 0:
                    regs = [bool(value)]
                else:
                    if isinstance(value, float) and not spec.type.startswith("float") and spec.type != "string":
                        value = int(round(value))
                    regs = codec.encode(spec, value)
                req = pdu.write(table, b["address"], regs, multiple=d.s["write_multiple"])
                resp = await self.transact(d, req, retries=0)
                if resp is not None:
                    pdu.check_echo(req, resp)
        except codec.EncodeError as e:
            raise WriteError(f"{point.id}: {e}", kind="encode") from None
        except ModbusException as e:
            raise WriteError(f"{point.id}: the device answered {e}", kind="exception") from None
        except LINK_ERRORS as e:
            raise WriteError(f"{point.id}: {e.kind}: {e}", kind=e.kind) from None
        # read back; if that fails keep the written value and say so
        log = self.ctx.device_log(d.id)
        try:
            payload = await self._read_payload(d, pdu.read(table, b["address"], _width(b)))
            got = codec.BlockDecoder([spec], bits=table <= 1).decode(payload)[0]
        except (ModbusException, *LINK_ERRORS) as e:
            log.warning("read-back of %s failed after the write (%s); keeping the written value %r",
                        point.id, e, value)
            return value
        if got != value and not (isinstance(got, float) and isinstance(value, (int, float))
                                 and abs(got - value) <= 1e-6 * max(1.0, abs(value))):
            log.warning("read-back of %s after writing %r gave %r (the device keeps its own value)",
                        point.id, value, got)
        return got

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
        except InvalidResponse:
            pass  # something answered
        except (Timeout, TransportError):
            return None
        try:
            r = await self.device_identification(d.id, "basic", unit=unit, timeout=timeout)
            info.update(r["objects"])
        except ModbusException as e:
            info["identification"] = f"not supported ({e})"
        except (InvalidResponse, Timeout, TransportError) as e:
            info["identification"] = f"no valid answer ({e})"
        model = info.get("model") or info.get("product_name") or info.get("product_code")
        prof, score = match_profile(info.get("vendor"), model)
        if prof and score >= 0.5:
            info["profile"], info["profile_score"] = prof, score
        return info

    async def discover(self, mode: str = "configured", host: str | None = None, port: int = 502,
                       units: str | list | None = None, device: str | None = None, parallel: int = 8,
                       timeout_ms: int = 1000, transport: str = "tcp") -> dict:
        """User-initiated scan.

        * ``mode="configured"``: every configured device: presence + FC43 vendor/product/revision.
        * ``mode="tcp"``: probe ``host:port`` for ``units`` (e.g. "1-247"), 1 s timeout, no retries,
          ``parallel`` connections at most (``transport="rtu-over-tcp"`` for serial device servers).
        * ``mode="rtu"``: probe ``units`` on the bus of configured ``device`` (requests interleave with polling).
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
            s = {**DEFAULTS, "transport": transport, "host": host, "port": port}
            links = [TcpLink(host, port) if transport == "tcp" else RtuStreamLink(host, port)
                     for _ in range(max(1, min(parallel, 32, len(unit_list))))]
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
                    with trio.CancelScope(shield=True):
                        await pd.link.close()
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


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "modbus"


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
