"""A plugin that lives outside gatewayd (referenced from TOML by dotted path).

Driver type ``counter``: every point counts up by ``step`` each ``interval``.
Writable points take the written value as the new count. A device with
``crash = true`` makes the driver instance raise after ``crash_after`` cycles
(for crash-isolation tests).
"""

import trio

from gatewayd.plugin import Bool, Driver, Duration, Float, Int, Key, Schema, WriteError, hookimpl


class CounterDriver(Driver):
    settings_schema = Schema({"interval": Key(Duration(min=0.001), 0.05),
                              "crash_after": Key(Int(min=0), None)})
    device_schema = Schema({"dead": Key(Bool(), False)})
    point_schema = Schema({"step": Key(Float(), 1.0), "start": Key(Float(), 0.0)})

    def __init__(self, ctx):
        super().__init__(ctx)
        self.counts = {}
        self.cycles = 0
        self.written = []
        self.reloads_seen = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        while True:
            self.cycles += 1
            crash = self.config.settings["crash_after"]
            if crash is not None and self.cycles > crash:
                raise RuntimeError("counter driver crashed on purpose")
            for dev in self.config.devices.values():
                if dev.settings["dead"]:
                    self.sink.health(dev.id).failure("dead on purpose")
                    continue
                for p in dev.points.values():
                    v = self.counts.get(p.id, p.binding["start"]) + p.binding["step"]
                    self.counts[p.id] = v
                    self.sink.update(p.id, v)
                self.sink.health(dev.id).success()
            await trio.sleep(self.config.settings["interval"])

    async def write(self, point, value):
        if value == 666:
            raise WriteError("the device refused 666")
        self.counts[point.id] = value
        self.written.append((point.id, value))
        return value

    async def reloaded(self):
        self.reloads_seen += 1

    def status(self):
        return {"cycles": self.cycles}

    async def discover(self, count: int = 2):
        """Pretend to find ``count`` devices."""
        for i in range(count):
            await self.ctx.report_discovery(f"unit-{i}", {"name": f"found {i}", "unit": i})
        return {"found": count}

    def accept_discovered(self, key, data):
        return f"found-{data['unit']}", {"points": {"n": {"step": 5.0, "tags": ["found"]}}}


@hookimpl
def gatewayd_register(registry):
    registry.add_driver("counter", CounterDriver)
