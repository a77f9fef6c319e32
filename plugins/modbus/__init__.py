"""``modbus``: Modbus TCP polling on the native planner and decoder (work in progress: see README).

What works now: Modbus TCP with one persistent connection per device (reused for
writes, reopened after a timeout or cancel, optional ``disconnect_between_polls``),
per-device settings with driver-level defaults, polling with the native block
planner and one native decode call per block, exception 02/03 on a block split into
its members in the same cycle with the refused gaps learned and persisted (so one
unmapped register never blacks out its neighbours nor counts as a device failure),
short responses marking the missing points FAULT, distinct error kinds, writes
(FC5/6/15/16, FC22 for bit points) with read-back, backoff/DeviceDown through the
core's DeviceHealth, and ``modbus.refused_ranges`` / ``modbus.clear_refused`` over RPC.
Not yet: RTU, diagnostics, discovery, profiles (issue 4).
"""

from __future__ import annotations

import trio

from gatewayd.native import codec, planner
from gatewayd.plugin import (Bool, Driver, Duration, Enum, Int, Key, Schema, Str, WriteError, hookimpl)

from .pdu import ModbusException, ProtocolError, TcpFraming, mask_write_request, read_request, write_request

EXTRA = "modbus"
TABLES = {"coil": 0, "discrete": 1, "holding": 2, "input": 3}
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
TYPES = tuple(codec.TYPES)

# keys valid at driver level (defaults) and device level (overrides)
_COMMON = {
    "port": Key(Int(min=1, max=65535), None, "TCP port (default 502)"),
    "unit": Key(Int(min=0, max=255), None, "unit id (default 1)"),
    "response_timeout_ms": Key(Int(min=10, max=60_000), None, "default 1000"),
    "retry_count": Key(Int(min=0, max=10), None, "retries of a timed-out request within a cycle (default 1)"),
    "throttle_delay_ms": Key(Int(min=0, max=10_000), None, "pause between requests (default 0)"),
    "max_registers": Key(Int(min=1, max=125), None, "registers per request (default 125)"),
    "max_bits": Key(Int(min=1, max=2000), None, "bits per request (default 2000)"),
    "max_gap": Key(Int(min=0, max=125), None, "unrequested registers a block may bridge (default 10)"),
    "order": Key(Enum(*ORDERS), None, "default byte/word order of multi-register values (default ABCD)"),
    "poll_interval": Key(Duration(min=0.01), None, "default 1s"),
    "disconnect_between_polls": Key(Bool(), None, "close the connection after every cycle (default false)"),
}
DEFAULTS = {"port": 502, "unit": 1, "response_timeout_ms": 1000, "retry_count": 1, "throttle_delay_ms": 0,
            "max_registers": 125, "max_bits": 2000, "max_gap": 10, "order": "ABCD", "poll_interval": 1.0,
            "disconnect_between_polls": False}


class Timeout(Exception):
    pass


class TcpLink:
    """One persistent TCP connection; requests serialized; reopened after any failure."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stream: trio.SocketStream | None = None
        self.framing = TcpFraming()
        self.lock = trio.Lock()
        self.buf = bytearray()
        self.requests = 0

    async def close(self) -> None:
        if self.stream is not None:
            s, self.stream = self.stream, None
            with trio.CancelScope(shield=True):
                await s.aclose()
        self.buf.clear()

    async def request(self, pdu, unit: int, timeout: float):
        """Send one request, return its Response; raises Timeout, OSError, ModbusException, ProtocolError."""
        async with self.lock:
            ok = False
            try:
                with trio.move_on_after(timeout) as cs:
                    if self.stream is None:
                        self.stream = await trio.open_tcp_stream(self.host, self.port)
                    tid = self.framing.next_tid()
                    pdu.transaction_id = tid
                    await self.stream.send_all(self.framing.build(pdu))
                    self.requests += 1
                    while True:
                        used, resp = self.framing.parse(bytes(self.buf), unit, tid)
                        if resp is not None:
                            del self.buf[:used]
                            ok = True
                            return resp
                        data = await self.stream.receive_some(65536)
                        if not data:
                            raise ConnectionResetError("the device closed the connection")
                        self.buf += data
                if cs.cancelled_caught:
                    raise Timeout(f"no response within {timeout * 1000:.0f} ms")
            except ModbusException:
                ok = True  # a clean answer: the connection stays usable
                self.buf.clear()
                raise
            finally:
                # after a timeout, cancel or garbage the connection is out of step: reopen it
                if not ok:
                    await self.close()


class _Plan:
    """A device's current plan: blocks with compiled decoders."""

    def __init__(self, points, settings, refused):
        self.points = points
        specs = []
        for p in points:
            b = p.binding
            specs.append((TABLES[b["table"]], settings["unit"], b["address"], _width(b)))
        plan = planner.plan(specs, max_gap=settings["max_gap"], max_registers=settings["max_registers"],
                            max_bits=settings["max_bits"], forbidden=refused)
        self.errors = {points[i].id: msg for i, msg in plan.errors.items()}
        self.blocks = []
        for blk in plan.blocks:
            members = [points[i] for i, _ in blk.members]
            pspecs = [_spec(points[i], off, settings) for i, off in blk.members]
            self.blocks.append((blk, members, codec.BlockDecoder(pspecs, bits=blk.table <= 1)))


def _width(b: dict) -> int:
    if b["table"] in ("coil", "discrete"):
        return 1
    if b["type"] == "string":
        return b["length"] or 1
    return codec.WIDTHS[b["type"]]


def _spec(p, offset: int, settings) -> codec.PointSpec:
    b = p.binding
    return codec.PointSpec(offset, b["type"], b["order"] or settings["order"], b["bit_offset"], b["bit_mask"],
                           1.0, 0.0, b["length"])


class ModbusDriver(Driver):
    """Modbus TCP devices; see the module docstring and plugins/modbus/README.md."""

    settings_schema = Schema(dict(_COMMON))
    device_schema = Schema({"host": Key(Str(), None, "device or gateway address"), **_COMMON})
    point_schema = Schema({
        "table": Key(Enum(*TABLES), "holding"),
        "address": Key(Int(min=0, max=65535), None, "0-based register/bit address"),
        "type": Key(Enum(*TYPES), "uint16"),
        "order": Key(Enum(*ORDERS), None),
        "bit_offset": Key(Int(min=0, max=63), None),
        "bit_mask": Key(Int(min=1), None),
        "length": Key(Int(min=1, max=125), None, "registers, for strings"),
    })

    @classmethod
    def validate_config(cls, config):
        for dev in config.devices.values():
            if not dev.settings.get("host"):
                yield (("devices", dev.id), f"device {dev.id}: missing required key 'host'")
            for p in dev.points.values():
                b = p.binding
                if b["address"] is None:
                    yield (("devices", dev.id, "points", p.name),
                           f"point {p.id}: missing required key 'address'")
                if b["type"] == "string" and not b["length"]:
                    yield (("devices", dev.id, "points", p.name, "type"),
                           f"point {p.id}: a string needs length = <registers>")
                if b["table"] in ("coil", "discrete") and b["type"] not in ("bool", "uint16"):
                    yield (("devices", dev.id, "points", p.name, "type"),
                           f"point {p.id}: {b['table']} points are bits (type = \"bool\")")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.links: dict[str, TcpLink] = {}
        self.plans: dict[str, _Plan] = {}
        self.stats = {"cycles": 0, "requests": 0, "exceptions": 0, "timeouts": 0, "splits": 0}

    def settings(self, dev) -> dict:
        s = dict(DEFAULTS)
        s.update({k: v for k, v in self.config.settings.items() if v is not None})
        s.update({k: v for k, v in dev.settings.items() if v is not None})
        return s

    def refused(self, dev_id: str) -> list:
        return [tuple(r) for r in self.ctx.kv_get(f"refused/{dev_id}", [])]

    async def _learn_refused(self, dev_id: str, ranges: list) -> None:
        cur = self.refused(dev_id)
        new = sorted(set(cur) | {tuple(r) for r in ranges})
        await self.ctx.kv_set(f"refused/{dev_id}", [list(r) for r in new])
        self.sink.device_info(dev_id, refused_ranges=[{"table": r[0], "unit": r[1], "start": r[2], "end": r[3]}
                                                      for r in new])

    def _replan(self, dev) -> _Plan:
        s = self.settings(dev)
        pts = [p for p in dev.points.values() if p.enabled]
        plan = _Plan(pts, s, self.refused(dev.id))
        self.plans[dev.id] = plan
        for pid, msg in plan.errors.items():
            self.sink.fault(pid, msg)
        return plan

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        for dev in self.config.devices.values():
            s = self.settings(dev)
            self.links[dev.id] = TcpLink(dev.settings["host"], s["port"])
            if self.refused(dev.id):
                self.sink.device_info(dev.id, refused_ranges=[{"table": r[0], "unit": r[1], "start": r[2],
                                                               "end": r[3]} for r in self.refused(dev.id)])
        task_status.started()
        try:
            async with trio.open_nursery() as n:
                for dev in self.config.devices.values():
                    if dev.enabled:
                        n.start_soon(self._device_loop, dev)
        finally:
            for link in self.links.values():
                await link.close()

    async def _device_loop(self, dev):
        s = self.settings(dev)
        health = self.sink.health(dev.id)
        link = self.links[dev.id]
        plan = self._replan(dev)
        log = self.ctx.device_log(dev.id)
        next_t = trio.current_time()
        while True:
            try:
                learned = await self._cycle(dev, s, link, plan)
                health.success()
                if learned:
                    log.warning("device refused %s; remembered, re-planning", learned)
                    plan = self._replan(dev)
                if s["disconnect_between_polls"]:
                    await link.close()
                delay = None
            except (Timeout, OSError, ProtocolError) as e:
                kind = "timeout" if isinstance(e, Timeout) else "transport" if isinstance(e, OSError) else "invalid"
                if kind == "timeout":
                    self.stats["timeouts"] += 1
                delay = health.failure(f"{kind}: {e}")
                log.debug("cycle failed (%s), retry in %.1fs", e, delay)
            self.stats["cycles"] += 1
            self.stats["requests"] = sum(x.requests for x in self.links.values())
            if delay is not None:
                await trio.sleep(delay)
                next_t = trio.current_time()
                continue
            next_t += s["poll_interval"]
            now = trio.current_time()
            if next_t < now:
                next_t = now + s["poll_interval"]
            await trio.sleep_until(next_t)

    async def _read(self, link, s, table, address, count):
        timeout = s["response_timeout_ms"] / 1000
        for attempt in range(s["retry_count"] + 1):
            try:
                if s["throttle_delay_ms"]:
                    await trio.sleep(s["throttle_delay_ms"] / 1000)
                resp = await link.request(read_request(table, s["unit"], address, count), s["unit"], timeout)
                return resp.data[1:1 + resp.data[0]] if resp.data else b""
            except Timeout:
                if attempt == s["retry_count"]:
                    raise

    async def _cycle(self, dev, s, link, plan) -> list:
        """One poll of every block; returns refused ranges learned in this cycle."""
        learned = []
        ts = self.sink.now()
        for blk, members, dec in plan.blocks:
            try:
                payload = await self._read(link, s, blk.table, blk.start, blk.count)
            except ModbusException as e:
                self.stats["exceptions"] += 1
                if e.code not in (2, 3):
                    for p in members:
                        self.sink.fault(p.id, str(e))
                    continue
                learned += await self._split(dev, s, link, blk, members, e, ts)
                continue
            self._deliver(blk, members, dec, payload, ts)
        return learned

    def _deliver(self, blk, members, dec, payload, ts):
        vals, kinds = dec.decode_into(payload)
        update, fault = self.sink.update, self.sink.fault
        for p, v, k in zip(members, vals, kinds):
            if k == 5:
                fault(p.id, f"short response: {len(payload)} bytes do not hold this point")
            else:
                update(p.id, v, ts=ts)

    async def _split(self, dev, s, link, blk, members, exc, ts) -> list:
        """Exception 02/03 on a block: read its members one by one now; learn what was refused."""
        self.stats["splits"] += 1
        learned = []
        ok_ranges = []
        for p in members:
            b = p.binding
            t, w = TABLES[b["table"]], _width(b)
            try:
                payload = await self._read(link, s, t, b["address"], w)
            except ModbusException as e:
                self.sink.fault(p.id, str(e))
                if e.code in (2, 3):
                    learned.append((t, s["unit"], b["address"], b["address"] + w - 1))
                continue
            dec = codec.BlockDecoder([_spec(p, 0, s)], bits=t <= 1)
            self._deliver(blk, [p], dec, payload, ts)
            ok_ranges.append((b["address"], b["address"] + w))
        # the gaps between readable members are what the device refused
        ok_ranges.sort()
        for (a0, e0), (a1, _) in zip(ok_ranges, ok_ranges[1:]):
            if a1 > e0:
                learned.append((blk.table, s["unit"], e0, a1 - 1))
        if learned:
            await self._learn_refused(dev.id, learned)
        return learned

    # ------------------------------------------------------------------ writes
    async def write(self, point, value):
        dev = self.config.devices[point.device]
        s = self.settings(dev)
        link = self.links[dev.id]
        b = point.binding
        table = TABLES[b["table"]]
        timeout = s["response_timeout_ms"] / 1000
        spec = _spec(point, 0, s)
        try:
            if table in (1, 3):
                raise WriteError(f"{point.id} is a {b['table']} point: read-only", kind="encode")
            if table == 2 and (b["bit_offset"] is not None or b["bit_mask"] is not None):
                a, o = codec.mask_write(spec, value)
                await link.request(mask_write_request(s["unit"], b["address"], a, o), s["unit"], timeout)
            else:
                if table == 0:
                    regs = [bool(value)]
                else:
                    if isinstance(value, float) and value.is_integer() and not spec.type.startswith("float"):
                        value = int(value)
                    if isinstance(value, float) and not spec.type.startswith("float"):
                        value = int(round(value))
                    regs = codec.encode(spec, value)
                await link.request(write_request(table, s["unit"], b["address"], regs), s["unit"], timeout)
        except codec.EncodeError as e:
            raise WriteError(f"{point.id}: {e}", kind="encode") from None
        except ModbusException as e:
            raise WriteError(f"{point.id}: the device answered {e}", kind="exception") from None
        except Timeout as e:
            raise WriteError(f"{point.id}: {e}", kind="timeout") from None
        except OSError as e:
            raise WriteError(f"{point.id}: {e}", kind="transport") from None
        # read back; if that fails keep the written value and say so
        try:
            payload = await self._read(link, s, table, b["address"], _width(b))
            return codec.BlockDecoder([spec], bits=table <= 1).decode(payload)[0]
        except (ModbusException, Timeout, OSError, ProtocolError) as e:
            self.ctx.device_log(dev.id).warning("read-back of %s failed after the write (%s); keeping the written "
                                                "value", point.id, e)
            return value

    def status(self):
        return dict(self.stats)


@hookimpl
def gatewayd_register(registry):
    registry.add_driver("modbus", ModbusDriver)


@hookimpl
def gatewayd_rpc_methods(registry, gateway):
    from gatewayd.rpc import NOT_FOUND, Role, RpcError

    def find(driver, device):
        inst = gateway.driver_instance("modbus", driver)
        if device not in inst.config.devices:
            raise RpcError(NOT_FOUND, f"no modbus device {device!r} in driver {inst.config.id!r}")
        return inst

    async def refused_ranges(call, device: str, driver: str | None = None):
        """Address ranges the device refused (exception 02/03), learned while polling."""
        inst = find(driver, device)
        return [{"table": r[0], "unit": r[1], "start": r[2], "end": r[3]} for r in inst.refused(device)]

    async def clear_refused(call, device: str, driver: str | None = None):
        """Forget the learned refused ranges of a device (it is re-planned on its next cycle... after reload)."""
        inst = find(driver, device)
        await inst.ctx.kv_delete(f"refused/{device}")
        inst.sink.device_info(device, refused_ranges=[])
        return {"device": device, "cleared": True}

    registry.add("modbus.refused_ranges", refused_ranges, role=Role.VIEWER)
    registry.add("modbus.clear_refused", clear_refused, role=Role.OPERATOR, mutating=True)

