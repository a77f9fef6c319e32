"""``bacnet``: BACnet/IP driver on bacpypes3, hosted on the core's asyncio bridge.

One bacpypes3 stack per configured network (``ip``, ``ipv6`` — Annex U, wired
by :mod:`.ipv6` from bacpypes3's own pieces — or ``foreign``). Reading packs ReadPropertyMultiple to the device's max APDU and ours,
shrinks batches on "segmentation not supported" and uses ReadProperty after
"unrecognized service" (both remembered in state.db);
SubscribeCOV / SubscribeCOVProperty with renewal at 0.75 of the lifetime,
polling while refused or silent; writes at the requested priority with NULL to
relinquish; a Who-Is monitor (DeviceDown after two missed cycles, object-list
checks); user-initiated discovery; device management over RPC. The protocol
work lives in :mod:`.stack` (asyncio thread), :mod:`.reading` (batch plans) and
:mod:`.discovery`; this module is the trio side. See README.md for settings.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import trio

from gatewayd.plugin import Driver, hookimpl

from .config import (DEFAULT_PORT, DEVICE_SCHEMA, DRIVER_DEFAULTS, MODES,  # noqa: F401 (re-exported)
                     NETWORK_SCHEMA, PLANNED_MODES, POINT_SCHEMA, SETTINGS_SCHEMA, norm_objid, validate)
from .cov import CovMixin
from .device import _Dev, flags_of  # noqa: F401 (re-exported)
from .learned import LearnedMixin
from .monitor import MonitorMixin
from .polling import PollingMixin
from .reading import Batch, ObjectRead, kind_of, plan_batches  # noqa: F401 (kind_of: public helper)
from .stack import BacnetError, Stack
from .timesync import TimeSyncMixin
from .writes import WritesMixin, write_error_kind  # noqa: F401 (re-exported)

EXTRA = "bacnet"


class BacnetDriver(WritesMixin, TimeSyncMixin, MonitorMixin, CovMixin, PollingMixin, LearnedMixin, Driver):
    """BACnet/IP devices on one or more networks; see the module docstring and README.md."""

    settings_schema = SETTINGS_SCHEMA
    device_schema = DEVICE_SCHEMA
    point_schema = POINT_SCHEMA

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

    def _local_address(self, name: str, n: dict) -> str:
        addr = n.get("address")
        if n["mode"] == "ipv6":
            if addr.startswith("["):
                return addr if "]:" in addr else f"{addr}:{n['port']}"
            return f"[{addr.split('/')[0]}]:{n['port']}"
        if not addr:
            addr = _interface_address(n["interface"])
        if ":" in addr.split("/")[-1]:
            return addr
        port = n["port"]
        return f"{addr}:{port}"

    async def _open_network(self, name: str, n: dict, send) -> None:
        s = self.config.settings
        addr = self._local_address(name, n)
        bbmd = n.get("bbmd_addr")
        if bbmd and ":" not in bbmd:
            bbmd = f"{bbmd}:{DEFAULT_PORT}"
        if n["mode"] != "ipv6" and n["port"] != 0:
            # bacpypes3 retries a failed bind forever (SO_REUSEPORT): try the address ourselves first,
            # without SO_REUSEPORT, so a port held by anyone else is a clear start error at once
            from .bindcheck import probe_bind

            host = addr.rsplit(":", 1)[0].split("/")[0]
            problem = await trio.to_thread.run_sync(probe_bind, host, int(addr.rsplit(":", 1)[1]))
            if problem:
                raise RuntimeError(f"network {name}: {problem}")
        try:
            stack = await self.aio.run_sync(partial(
                Stack, name, n["mode"], addr, s["server_device_instance"], s["server_device_name"],
                int(s["apdu_timeout"] * 1000), s["apdu_retries"], send, bbmd=bbmd, ttl=n["ttl"],
                renew=n["reregister_at"], vmac=n.get("vmac"), peers=n.get("peers"), routes=n.get("routes")))
        except BacnetError as e:
            raise RuntimeError(f"network {name}: {e.reason}") from None
        self.stacks[name] = stack
        failure = None
        with trio.move_on_after(10) as cs:
            try:
                await self.aio.run(stack.ready)
            except OSError as e:
                failure = e
        if cs.cancelled_caught or failure is not None:
            await self.aio.run_sync(stack.close)
            del self.stacks[name]
            raise RuntimeError(f"network {name}: {await self._bind_problem(n, addr, failure)}") from None
        self.net_status[name] = {"mode": n["mode"], "address": addr, "registration": None}
        if n["mode"] == "ipv6":
            self.net_status[name]["vmac"] = stack.vmac
        if n["mode"] == "foreign":
            self.net_status[name].update(bbmd=bbmd, ttl=n["ttl"], registration="pending")
        self.log.info("network %s: %s on %s%s", name, n["mode"], addr, f" (BBMD {bbmd})" if bbmd else "")

    async def _bind_problem(self, n: dict, addr: str, failure: OSError | None) -> str:
        """Why the network's socket did not bind: the address, and who holds the port when the OS says."""
        from .bindcheck import probe_bind

        host = addr.rsplit(":", 1)[0].split("/")[0].strip("[]").split("%")[0]
        port = int(addr.rsplit(":", 1)[1])
        try:
            msg = await trio.to_thread.run_sync(probe_bind, host, port)
        except (OSError, ValueError):
            msg = None
        if msg:
            return msg
        why = f"{failure.strerror or failure}" if failure is not None else "no answer from the socket within 10s"
        return f"cannot bind UDP {addr} ({why}; address not on this host, or in use)"

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

    # ------------------------------------------------------------------ unsolicited traffic
    async def _pump(self, inbox):
        async for item in inbox:
            kind = item[0]
            try:
                if kind == "i-am":
                    await self._on_iam(*item[1:])
                elif kind == "cov":
                    self._on_cov(*item[1:])
                elif kind == "fd":
                    self._on_fd(item[1], item[2])
                for fn in list(self.listeners):
                    fn(item)
            except Exception:  # one bad notification must not stop the pump
                self.log.error("handling %s failed", kind, exc_info=True)

    async def _on_iam(self, net, inst, address, max_apdu, seg, vendor):
        self.stats["i_ams"] += 1
        now = trio.current_time()
        key = (net, inst)
        known = key in self.seen
        self.seen[key] = {"network": net, "device_instance": inst, "address": address, "max_apdu": max_apdu,
                          "segmentation": seg, "vendor_id": vendor, "seen": time.time()}
        d = self.by_inst.get(key)
        if d is not None:
            d.last_iam = now
            if d.address is None or d.cfg.settings.get("address") is None:
                d.address = address
            if d.cfg.settings.get("max_apdu") is None:
                d.max_apdu = max_apdu
            if d.cfg.settings.get("segmentation") is None:
                d.segmentation = seg
            d.iam_event.set()
            d.iam_event = trio.Event()
            d.resolved.set()
            return
        if not known:
            self.new_since_cycle.add(key)
            dkey = f"{net}:{inst}"
            try:
                rows = self.ctx.gateway.state.discovery_list(driver=self.ctx.id)
            except Exception:
                rows = []
            if not any(r["key"] == dkey for r in rows):
                await self.ctx.report_discovery(dkey, {**self.seen[key], "passive": True})

    def _on_fd(self, net, status):
        st = self.net_status.get(net)
        if st is None:
            return
        if status == 0:
            if st.get("registration") != "registered":
                self.log.info("network %s: registered with BBMD %s (ttl %ss)", net, st.get("bbmd"), st.get("ttl"))
            st["registration"] = "registered"
            st["registered_at"] = time.time()
            st["registrations"] = st.get("registrations", 0) + 1
            st.pop("registration_error", None)
        else:
            reason = "expired" if status == "expired" else f"refused by the BBMD (result code {status:#06x})"
            st["registration"] = "failed"
            st["registration_error"] = reason
            self.log.error("network %s: foreign-device registration %s", net, reason)
            self.ctx.emit("ForeignRegistrationFailed", None, network=net, bbmd=st.get("bbmd"), reason=reason)
        self._bump()

    async def _watch_registration(self, net):
        """Report a BBMD that never answers (bacpypes3 keeps retrying by itself)."""
        st = self.net_status[net]
        limit = max(5.0, 2 * self.config.settings["apdu_timeout"])
        await trio.sleep(limit)
        if st.get("registration") == "pending":
            st["registration"] = "failed"
            st["registration_error"] = f"no answer from BBMD {st.get('bbmd')} within {limit:g}s (still trying)"
            self.log.error("network %s: %s", net, st["registration_error"])
            self.ctx.emit("ForeignRegistrationFailed", None, network=net, bbmd=st.get("bbmd"),
                          reason=st["registration_error"])

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


def _interface_address(name: str) -> str:
    import fcntl
    import socket
    import struct

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
        addr = socket.inet_ntoa(packed[20:24])
        mask = fcntl.ioctl(s.fileno(), 0x891B, struct.pack("256s", name.encode()[:15]))  # SIOCGIFNETMASK
        prefix = bin(struct.unpack("!I", mask[20:24])[0]).count("1")
    except OSError as e:
        raise RuntimeError(f"interface {name!r}: {e.strerror}") from None
    finally:
        s.close()
    return f"{addr}/{prefix}"


@hookimpl
def gatewayd_register(registry):
    registry.add_driver("bacnet", BacnetDriver)


@hookimpl
def gatewayd_rpc_methods(registry, gateway):
    from .rpc import register

    register(registry, gateway)
