"""``sim``: simulated devices for the embedded default site, demos and tests.

Devices pick a ``model`` (``ahu``, ``meter`` or ``generic``); a model brings
plausible points (explicit ``points`` tables add to or override them), and
``generate = N`` adds N extra analog points ``p0000``... for load tests. Every
point follows a ``signal``:

=========  ================================================================
signal     behaviour
=========  ================================================================
sine       ``base + amplitude*sin(2πt/period)`` plus ``noise``
random     ``base ± amplitude`` uniformly
ramp       ``base + rate*t`` wrapping at ``base + amplitude``
counter    grows by ``rate`` per second (energy meters)
toggle     a binary that flips every ``period`` seconds
state      a multistate cycling 1..``len(states)`` every ``period``
setpoint   holds the last written value (starts at ``base``); writable
follow     first-order lag towards the point named by ``follows`` (+ noise)
=========  ================================================================

A device can be made to fail: ``fail = true`` in its table (applied on reload)
or at run time ``gatewayctl sim fail --device ahu-1`` / ``--on false``. A failing
device times out every cycle, so you see the backoff, ``down`` after 5 failures
and ``DeviceRecovered`` when it comes back.

For trying writes (see "Writes" in the README):

* ``gatewayctl sim restart --device ahu-1`` power-cycles a device: one cycle
  fails and every setpoint forgets what was written (back to ``base``), as a
  real controller without retained commands does; write tuning re-sends;
* ``gatewayctl sim set --point ahu-1/fan_speed --value 40`` changes a setpoint
  at the device (a local panel), which flags a commanded point ``overridden``;
* setpoint points with ``register = "<name>"`` and ``bit = 0..15`` are bits of a
  shared 16-bit register, written by read-modify-write under the core's
  per-device write lock (``rmw_lock = false`` on the device shows the race);
  ``write_delay`` is the simulated time between that read and that write;
* ``raw_min``/``raw_max`` on a point give the driver's write range (like a
  register's data type), and ``refuse`` lists raw values the device refuses.
"""

from __future__ import annotations

import math
import random

import trio

from gatewayd.plugin import (Bool, Driver, Duration, Enum, Float, Int, Key, List, Schema, Str, WriteError,
                             hookimpl)

MODELS = {
    "ahu": {
        "supply_temp_sp": {"signal": "setpoint", "base": 18.0, "unit": "°C", "writable": True,
                           "relinquish_default": 18.0, "description": "supply air temperature setpoint"},
        "supply_temp": {"signal": "follow", "follows": "supply_temp_sp", "noise": 0.05, "unit": "°C",
                        "cov_deadband": 0.05, "description": "supply air temperature"},
        "return_temp": {"signal": "sine", "base": 22.0, "amplitude": 1.5, "period": 600.0, "noise": 0.05,
                        "unit": "°C", "cov_deadband": 0.05},
        "fan_cmd": {"signal": "setpoint", "kind": "binary", "base": 1, "writable": True, "relinquish_default": True},
        "fan_status": {"signal": "follow", "follows": "fan_cmd", "kind": "binary"},
        "fan_speed": {"signal": "setpoint", "base": 65.0, "unit": "%", "writable": True, "relinquish_default": 65.0},
        "damper_pos": {"signal": "sine", "base": 40.0, "amplitude": 20.0, "period": 300.0, "unit": "%",
                       "cov_deadband": 0.5},
        "mode": {"signal": "state", "kind": "multistate", "period": 120.0,
                 "states": ["off", "heating", "cooling", "economizer"]},
    },
    "meter": {
        "power": {"signal": "sine", "base": 42.0, "amplitude": 8.0, "period": 900.0, "noise": 0.3, "unit": "kW",
                  "cov_deadband": 0.1},
        "energy": {"signal": "counter", "base": 120_000.0, "rate": 0.0117, "unit": "kWh"},
        "voltage_l1": {"signal": "random", "base": 230.0, "amplitude": 1.5, "unit": "V", "cov_deadband": 0.5},
        "current_l1": {"signal": "sine", "base": 60.0, "amplitude": 12.0, "period": 900.0, "noise": 0.4, "unit": "A",
                       "cov_deadband": 0.2},
        "power_factor": {"signal": "random", "base": 0.93, "amplitude": 0.02, "unit": "ratio"},
        "frequency": {"signal": "random", "base": 50.0, "amplitude": 0.02, "unit": "Hz"},
    },
    "generic": {},
}

SIGNALS = ("sine", "random", "ramp", "counter", "toggle", "state", "setpoint", "follow")


class SimDriver(Driver):
    """Simulated devices: see the module docstring."""

    settings_schema = Schema({
        "interval": Key(Duration(min=0.01), 1.0, "how often every device is sampled"),
        "seed": Key(Int(), None, "random seed (repeatable noise)"),
    })
    device_schema = Schema({
        "model": Key(Enum(*MODELS), "generic"),
        "generate": Key(Int(min=0, max=100_000), 0, "extra analog points p0000... (load tests)"),
        "fail": Key(Bool(), False, "the device times out every cycle"),
        "interval": Key(Duration(min=0.01), None, "overrides the driver interval"),
        "timeout": Key(Duration(min=0), 0.5, "how long a failing device takes to time out"),
        "write_delay": Key(Duration(min=0), 0.0, "time between the read and the write of a register bit"),
        "rmw_lock": Key(Bool(), True, "take the core's write lock around register read-modify-write"),
    })
    point_schema = Schema({
        "signal": Key(Enum(*SIGNALS), "sine"),
        "base": Key(Float(), 0.0),
        "amplitude": Key(Float(), 1.0),
        "period": Key(Float(min=0.001), 60.0),
        "rate": Key(Float(), 1.0),
        "noise": Key(Float(min=0), 0.0),
        "follows": Key(Str(), None),
        "lag": Key(Float(min=0.0, max=1.0), 0.3, "fraction of the gap closed per sample (follow)"),
        "register": Key(Str(), None, "name of a shared 16-bit register this setpoint is a bit of"),
        "bit": Key(Int(min=0, max=15), None, "the bit of that register"),
        "raw_min": Key(Float(), None, "lowest raw value a write may carry (Driver.write_range)"),
        "raw_max": Key(Float(), None, "highest raw value a write may carry (Driver.write_range)"),
        "refuse": Key(List(Float()), list, "raw values the simulated device refuses"),
    })

    @classmethod
    def write_range(cls, point):
        """``raw_min``/``raw_max`` of the point (a register bit takes 0..1)."""
        if point.binding.get("register") is not None:
            return (0, 1)
        return (point.binding.get("raw_min"), point.binding.get("raw_max"))

    @classmethod
    def expand_points(cls, driver_id, device_id, settings):
        pts = {k: dict(v) for k, v in MODELS[settings.get("model", "generic")].items()}
        for i in range(settings.get("generate", 0)):
            pts[f"p{i:04d}"] = {"signal": "sine", "base": 100.0 + i % 50, "amplitude": 10.0,
                                "period": 30.0 + (i % 17), "noise": 0.01}
        return pts

    @classmethod
    def validate_config(cls, config):
        for dev in config.devices.values():
            for p in dev.points.values():
                f = p.binding.get("follows")
                if p.binding.get("signal") == "follow" and not f:
                    yield (("devices", dev.id, "points", p.name, "signal"),
                           f"point {p.id}: signal \"follow\" needs follows = \"<point name>\"")
                elif f and f not in dev.points:
                    yield (("devices", dev.id, "points", p.name, "follows"),
                           f"point {p.id}: follows {f!r}, which is not a point of device {dev.id!r}")
                if (p.binding.get("register") is None) != (p.binding.get("bit") is None):
                    yield (("devices", dev.id, "points", p.name),
                           f"point {p.id}: register and bit go together")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.rng = random.Random(self.config.settings["seed"])
        self.failing = {d.id: d.settings["fail"] for d in self.config.devices.values()}
        self.state: dict[str, float] = {}
        self.registers: dict[tuple[str, str], int] = {}  # (device, register name) -> 16-bit value
        self.restarting: set[str] = set()
        self.cycles = 0
        self.writes = 0

    # ----- simulation
    def _initial(self, p) -> float:
        b = p.binding
        if b["signal"] in ("setpoint",):
            return b["base"]
        return b["base"]

    def _sample(self, p, t: float):
        b = p.binding
        sig = b["signal"]
        noise = self.rng.gauss(0.0, b["noise"]) if b["noise"] else 0.0
        if sig == "sine":
            v = b["base"] + b["amplitude"] * math.sin(2 * math.pi * t / b["period"]) + noise
        elif sig == "random":
            v = b["base"] + self.rng.uniform(-b["amplitude"], b["amplitude"])
        elif sig == "ramp":
            v = b["base"] + (b["rate"] * t) % (b["amplitude"] or 1.0)
        elif sig == "counter":
            v = self.state.get(p.id, b["base"]) + b["rate"] * self._dt
            self.state[p.id] = v
        elif sig == "toggle":
            v = int(t // b["period"]) % 2 == 0
        elif sig == "state":
            n = max(1, len(p.states))
            v = int(t // b["period"]) % n + 1
        elif sig == "setpoint" and b.get("register") is not None:
            v = (self.registers.get((p.device, b["register"]), 0) >> b["bit"]) & 1
        elif sig == "setpoint":
            v = self.state.setdefault(p.id, b["base"])
        else:  # follow
            target = self.state.get(f"{p.device}/{b['follows']}")
            if target is None:
                target = self.state.get(f"{p.device}/{b['follows']}#last", b["base"])
            if p.kind != "analog":
                return bool(target) if p.kind == "binary" else target
            cur = self.state.get(p.id, target)
            v = cur + (float(target) - cur) * b["lag"]
            self.state[p.id] = v
            v = v + noise
        if p.kind == "binary":
            return bool(v)
        if p.kind == "multistate":
            return int(v)
        return round(v, 4) if isinstance(v, float) else v

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        async with trio.open_nursery() as nursery:
            for dev in self.config.devices.values():
                if dev.enabled:
                    nursery.start_soon(self._device_loop, dev)

    async def _device_loop(self, dev):
        interval = dev.settings["interval"] or self.config.settings["interval"]
        health = self.sink.health(dev.id)
        points = [p for p in dev.points.values() if p.enabled]
        dlog = self.ctx.device_log(dev.id)
        self._dt = interval
        next_t = trio.current_time()
        while True:
            if dev.id in self.restarting:  # a power cycle: one missed cycle, written values forgotten
                self.restarting.discard(dev.id)
                for p in points:
                    self.state.pop(p.id, None)
                    if p.binding.get("register") is not None:
                        self.registers.pop((dev.id, p.binding["register"]), None)
                health.failure("no response (simulated restart)")
                await trio.sleep(interval)
                next_t = trio.current_time()
                continue
            if self.failing.get(dev.id):
                await trio.sleep(dev.settings["timeout"])
                delay = health.failure(f"no response within {dev.settings['timeout']:g}s (simulated failure)")
                dlog.debug("simulated timeout, retry in %.1fs", delay)
                await trio.sleep(max(0.0, delay - dev.settings["timeout"]))
                next_t = trio.current_time()
                continue
            t = trio.current_time()
            ts = self.sink.now()
            values = []
            for p in points:
                v = self._sample(p, t)
                if p.binding["signal"] != "follow":
                    self.state[f"{p.id}#last"] = v
                values.append((p.id, v))
            self.sink.update_many(values, ts=ts)
            health.success()
            self.cycles += 1
            next_t += interval
            now = trio.current_time()
            if next_t < now:  # fell behind: skip, don't burst
                next_t = now + interval
            await trio.sleep_until(next_t)

    async def write(self, point, value):
        if point.binding.get("signal") != "setpoint":
            raise WriteError(f"{point.id} is a simulated {point.binding.get('signal')} signal, not a setpoint")
        if self.failing.get(point.device):
            raise WriteError(f"device {point.device} does not answer (simulated failure)", kind="timeout")
        if value is None:
            value = point.binding["base"]
        if value in point.binding.get("refuse", ()):
            raise WriteError(f"{point.id}: the simulated device refuses {value!r}", kind="refused")
        if point.binding.get("register") is not None:
            return await self._write_bit(point, value)
        self.state[point.id] = value
        self.writes += 1
        return value  # read-back

    async def _write_bit(self, point, value):
        """Read-modify-write of one bit of a shared register (as Modbus FC3 + FC6)."""
        dev = self.config.devices[point.device]
        key = (point.device, point.binding["register"])
        if dev.settings["rmw_lock"]:
            async with self.ctx.write_lock(point.device, ("register", point.binding["register"])):
                return await self._rmw(dev, key, point.binding["bit"], value)
        return await self._rmw(dev, key, point.binding["bit"], value)

    async def _rmw(self, dev, key, bit, value):
        cur = self.registers.get(key, 0)                        # read ...
        await trio.sleep(dev.settings["write_delay"])           # ... the device takes its time ...
        new = (cur | (1 << bit)) if value else (cur & ~(1 << bit))
        self.registers[key] = new                               # ... write
        self.writes += 1
        return (new >> bit) & 1

    def set_value(self, point_id: str, value) -> None:
        """Change a setpoint at the device, behind the gateway's back (a local panel)."""
        for dev in self.config.devices.values():
            p = dev.points.get(point_id.split("/", 1)[-1]) if point_id.startswith(dev.id + "/") else None
            if p is not None and p.binding.get("signal") == "setpoint":
                if p.binding.get("register") is not None:
                    key, bit = (p.device, p.binding["register"]), p.binding["bit"]
                    cur = self.registers.get(key, 0)
                    self.registers[key] = (cur | (1 << bit)) if value else (cur & ~(1 << bit))
                else:
                    self.state[p.id] = value
                return
        raise KeyError(point_id)

    def restart(self, device: str) -> None:
        """Power-cycle a simulated device: its next cycle fails and setpoints go back to ``base``."""
        if device not in self.failing:
            raise KeyError(device)
        self.restarting.add(device)

    def set_failing(self, device: str, on: bool) -> None:
        if device not in self.failing:
            raise KeyError(device)
        self.failing[device] = on

    def status(self):
        return {"cycles": self.cycles, "writes": self.writes,
                "failing": sorted(d for d, f in self.failing.items() if f)}


@hookimpl
def gatewayd_register(registry):
    registry.add_driver("sim", SimDriver)


@hookimpl
def gatewayd_rpc_methods(registry, gateway):
    from gatewayd.plugin import NOT_FOUND, Role, RpcError

    async def fail(call, device: str, on: bool = True, driver: str | None = None):
        """Make a simulated device fail (on=true) or recover (on=false)."""
        inst = gateway.driver_instance("sim", driver)
        try:
            inst.set_failing(device, bool(on))
        except KeyError:
            raise RpcError(NOT_FOUND, f"no simulated device {device!r} in driver {inst.config.id!r}") from None
        return {"device": device, "failing": bool(on)}

    registry.add("sim.fail", fail, role=Role.OPERATOR, mutating=True)

    async def restart(call, device: str, driver: str | None = None):
        """Power-cycle a simulated device: written setpoints are forgotten (write tuning re-sends them)."""
        inst = gateway.driver_instance("sim", driver)
        try:
            inst.restart(device)
        except KeyError:
            raise RpcError(NOT_FOUND, f"no simulated device {device!r} in driver {inst.config.id!r}") from None
        return {"device": device, "restarting": True}

    async def set_(call, point: str, value, driver: str | None = None):
        """Change a simulated setpoint at the device (as a local panel would), bypassing points.write."""
        inst = gateway.driver_instance("sim", driver)
        try:
            inst.set_value(point, value)
        except KeyError:
            raise RpcError(NOT_FOUND, f"no simulated setpoint {point!r} in driver {inst.config.id!r}") from None
        return {"point": point, "value": value}

    registry.add("sim.restart", restart, role=Role.OPERATOR, mutating=True)
    registry.add("sim.set", set_, role=Role.OPERATOR, mutating=True)
