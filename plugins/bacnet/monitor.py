"""The device monitor of the ``bacnet`` driver: a Who-Is to every known device each
``monitor_interval`` (DeviceDown after ``monitor_missed`` silent cycles) and object-list checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from .stack import BacnetError

if TYPE_CHECKING:
    from .device import _Dev

class MonitorMixin:
    """The Who-Is monitor; part of :class:`~.driver.BacnetDriver`."""

    async def _monitor_loop(self) -> None:
        s = self.config.settings
        cycle = 0
        while True:
            await trio.sleep(s["monitor_interval"])
            cycle += 1
            await self.monitor_cycle(cycle)

    async def monitor_cycle(self, cycle: int) -> dict:
        s = self.config.settings
        t0 = trio.current_time()
        devs = [d for d in self.devs.values() if d.cfg.enabled and d.cfg.settings.get("monitor", True)
                and d.network in self.stacks]
        async with trio.open_nursery() as n:
            for d in devs:
                n.start_soon(self._monitor_one, d, t0)
        responded = [d.id for d in devs if d.last_iam is not None and d.last_iam >= t0]
        missed, down, changed = [], [], []
        for d in devs:
            health = self.sink.health(d.id)
            if d.id in responded:
                d.missed = 0
                if health.is_down:
                    health.success()
                continue
            d.missed += 1
            missed.append(d.id)
            if d.missed >= s["monitor_missed"] and not health.is_down:
                st = health.state
                st.failures = max(st.failures, health.down_after - 1)
                health.failure(f"no I-Am for {d.missed} monitor cycles")
            if health.is_down:
                down.append(d.id)
        if s["object_check_cycles"] and cycle % s["object_check_cycles"] == 0:
            for d in devs:
                if d.id in responded and await self._check_object_list(d):
                    changed.append(d.id)
        new = sorted(f"{k[0]}:{k[1]}" for k in self.new_since_cycle)
        self.new_since_cycle.clear()
        self.stats["monitor_cycles"] += 1
        summary = {"cycle": cycle, "devices": len(devs), "responded": len(responded), "missed": missed,
                   "down": down, "object_list_changed": changed, "new_devices": new,
                   "duration": round(trio.current_time() - t0, 3)}
        self.ctx.emit("DeviceMonitorCycle", None, **summary)
        self._bump()
        return summary

    async def _monitor_one(self, d: _Dev, t0: float) -> None:
        stack = self.stacks[d.network]
        with trio.move_on_after(self.config.settings["who_is_timeout"]):
            try:
                await self.aio.run(stack.who_is, d.instance, d.instance, d.address)
            except BacnetError:
                return
            while d.last_iam is None or d.last_iam < t0:
                await d.iam_event.wait()

    async def _check_object_list(self, d: _Dev) -> bool:
        try:
            res = await self._rpm_or_rp(d, [(f"device,{d.instance}", [("object-list", 0)])])
        except BacnetError as e:
            self.ctx.device_log(d.id).debug("object-list length check failed: %s", e)
            return False
        count = res[0][3] if res and res[0][4] is None else None
        if count is None:
            return False
        old = d.object_count
        d.object_count = count
        if old is None:
            await self._learn(d, object_count=count)
            return False
        if old == count:
            return False
        await self._learn(d, object_count=count)
        self.ctx.device_log(d.id).warning("object list changed: %d -> %d objects", old, count)
        self.ctx.emit("ObjectListChanged", d.id, device_instance=d.instance, network=d.network, old=old, new=count)
        key = f"{d.network}:{d.instance}"
        try:
            await self.ctx.gateway.state.discovery_set_status(self.ctx.id, key, "stale")
        except KeyError:
            pass
        return True
