"""``fastdrv``: a test/bench driver that pushes numbered values as fast as asked.

Every value is a global counter k = 1, 2, 3 ... written to point ``k % n`` of
the devices' points (round robin), so a subscriber can check completeness
(every k once) and order per point (increasing k). ``per_cycle`` values every
``interval``; ``total`` stops it (0: only values asked for with
:meth:`FastDriver.produce`). Points are ``p0000``... (``count`` per device);
``setpoint`` is a writable point that stores what is written.
"""

from __future__ import annotations

import trio

from gatewayd.plugin import Bool, Driver, Duration, Int, Key, Schema, hookimpl


class FastDriver(Driver):
    settings_schema = Schema({
        "interval": Key(Duration(min=0.0001), 0.01),
        "per_cycle": Key(Int(min=1), 100),
        "total": Key(Int(min=0), 0),
        "autostart": Key(Bool(), True),
    })
    device_schema = Schema({"count": Key(Int(min=1, max=100_000), 10)})

    @classmethod
    def expand_points(cls, driver_id, device_id, settings):
        pts = {f"p{i:04d}": {"unit": "W", "tags": ["fast"]} for i in range(settings.get("count", 10))}
        pts["setpoint"] = {"writable": True, "relinquish_default": 0.0, "unit": "°C"}
        return pts

    def __init__(self, ctx):
        super().__init__(ctx)
        self.ids = [p.id for d in self.config.devices.values() for p in d.points.values()
                    if not p.id.endswith("/setpoint")]
        self.k = 0
        self.budget = self.config.settings["total"] if self.config.settings["autostart"] else 0
        self.wake = trio.Event()
        self.done = trio.Event()

    def produce(self, n: int) -> None:
        """Produce ``n`` more values; ``done`` is set again once they are all reported."""
        self.budget += n
        if self.done.is_set():
            self.done = trio.Event()
        self.wake.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        s = self.config.settings
        task_status.started()
        ids, n = self.ids, len(self.ids)
        for d in self.config.devices.values():
            self.sink.health(d.id).success()
        while True:
            if self.budget <= 0:
                self.done.set()
                self.wake = trio.Event()
                await self.wake.wait()
                continue
            m = min(s["per_cycle"], self.budget)
            ts = self.sink.now()
            k0 = self.k
            self.sink.update_many([(ids[(k0 + i) % n], k0 + i + 1) for i in range(m)], ts=ts)
            self.k += m
            self.budget -= m
            await trio.sleep(s["interval"])

    async def write(self, point, value):
        return value


@hookimpl
def gatewayd_register(registry):
    registry.add_driver("fastdrv", FastDriver)
