"""The ``bacnet`` driver class: its schemas, state and lifecycle (:meth:`BacnetDriver.run`);
the work is done by the parts it is made of (:mod:`.network`, :mod:`.polling`, :mod:`.cov`,
:mod:`.writes`, :mod:`.monitor`, :mod:`.timesync`, :mod:`.learned`)."""

from __future__ import annotations

from typing import Any

import trio

from gatewayd.plugin import DIAGNOSTICS, DISCOVERY, PRIORITY_ARRAY, Driver

from .config import DEVICE_SCHEMA, DRIVER_DEFAULTS, POINT_SCHEMA, SETTINGS_SCHEMA, validate
from .cov import CovMixin
from .device import _Dev
from .learned import LearnedMixin
from .monitor import MonitorMixin
from .network import NetworkMixin
from .polling import PollingMixin
from .stack import Stack
from .timesync import TimeSyncMixin
from .writes import WritesMixin


class BacnetDriver(NetworkMixin, LearnedMixin, PollingMixin, CovMixin, WritesMixin, MonitorMixin, TimeSyncMixin,
                   Driver):
    """BACnet/IP devices on one or more networks; see the package docstring and README.md."""

    settings_schema = SETTINGS_SCHEMA
    device_schema = DEVICE_SCHEMA
    point_schema = POINT_SCHEMA
    #: BACnet devices keep their own priority arrays (WriteProperty at a priority), answer Who-Is,
    #: and the plugin adds diagnostic RPC methods (read-property, time-sync, reinitialize ...).
    capabilities = frozenset({PRIORITY_ARRAY, DISCOVERY, DIAGNOSTICS})

    @classmethod
    def validate_config(cls, config):
        """Cross-key checks after schema validation (see :func:`.config.validate`)."""
        yield from validate(config)

    # ------------------------------------------------------------------ setup
    def __init__(self, ctx):
        super().__init__(ctx)
        self.aio = None
        self.stacks: dict[str, Stack] = {}
        self.net_status: dict[str, dict] = {}
        self.devs: dict[str, _Dev] = {}
        self.by_pid: dict[tuple[str, int], _Dev] = {}
        self.by_inst: dict[tuple[str, int], _Dev] = {}
        self.seen: dict[tuple[str, int], dict] = {}
        self.listeners: list = []
        self._nursery: trio.Nursery | None = None
        self.new_since_cycle: set = set()
        self._changed = trio.Event()
        self.stats = {"requests": 0, "values": 0, "properties": 0, "cov_notifications": 0, "i_ams": 0, "errors": 0,
                      "timeouts": 0, "monitor_cycles": 0, "time_syncs": 0}
        s = self.config.settings
        nets = s.get("networks") or {}
        for i, dev in enumerate(self.config.devices.values()):
            net = dev.settings.get("network") or next(iter(nets), "")
            d = _Dev(dev, self.settings(dev), net, s["cov_process_id"] + i)
            self.devs[dev.id] = d
            self.by_pid[(net, d.pid)] = d
            self.by_inst[(net, d.instance)] = d

    def _bump(self) -> None:
        """Something observable changed (a cycle, a notification, a subscription round)."""
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, predicate, timeout: float = 10.0, what: str = "") -> None:
        """Wait (event-driven) until ``predicate()`` holds; for tests and the bench."""
        with trio.move_on_after(timeout):
            while not predicate():
                await self._changed.wait()
            return
        raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")

    def settings(self, dev) -> dict:
        out = dict(DRIVER_DEFAULTS)
        out.update({k: v for k, v in self.config.settings.items() if k in DRIVER_DEFAULTS and v is not None})
        out.update({k: v for k, v in dev.settings.items() if k in DRIVER_DEFAULTS and v is not None})
        return out

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        self.aio = await self.ctx.asyncio()
        await self._forget_if_reconfigured()
        for d in self.devs.values():
            self._load_learned(d)
        async with self.aio.channel(max_buffer=100_000) as (send, inbox):
            try:
                for name, n in (self.config.settings.get("networks") or {}).items():
                    await self._open_network(name, n, send)
                task_status.started()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._pump, inbox)
                    for name, n in self.net_status.items():
                        if n["mode"] == "foreign":
                            nursery.start_soon(self._watch_registration, name)
                    for d in self.devs.values():
                        if d.cfg.enabled and d.network in self.stacks:
                            nursery.start_soon(self._device_loop, d)
                    if self.config.settings["monitor_interval"] > 0:
                        nursery.start_soon(self._monitor_loop)
                    if self.config.settings["time_sync"]:
                        nursery.start_soon(self._time_sync_loop)
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        with trio.move_on_after(3):
                            await self._cancel_all_subscriptions()
                        for stack in self.stacks.values():
                            await self.aio.run_sync(stack.close)
                    except RuntimeError:  # the bridge is already gone (the whole gateway is failing)
                        self.log.debug("asyncio bridge closed before the networks", exc_info=True)

    # ------------------------------------------------------------------ device management
    def device(self, device_id: str) -> _Dev:
        d = self.devs.get(device_id)
        if d is None:
            raise KeyError(device_id)
        return d

    async def reinitialize(self, device_id: str, state: str, password: str | None) -> None:
        d = self.device(device_id)
        await self.aio.run(self.stacks[d.network].reinitialize, d.address, state, password)

    async def communication_control(self, device_id: str, enable: str, duration: int | None,
                                    password: str | None) -> None:
        d = self.device(device_id)
        await self.aio.run(self.stacks[d.network].communication_control, d.address, enable, duration, password)

    # ------------------------------------------------------------------ discovery
    async def discover(self, **params: Any) -> dict:
        from .discovery import discover

        return await discover(self, **params)

    def accept_discovered(self, key: str, data: dict) -> tuple[str, dict]:
        from .discovery import device_table

        return device_table(key, data)

    def status(self) -> dict:
        return {**self.stats, "networks": self.net_status,
                "devices": {d.id: {"requests": d.requests, "values": d.values, "cycles": d.cycles,
                                   "read_mode": d.read_mode, "batch_cap": d.batch_cap}
                            for d in self.devs.values()}}
