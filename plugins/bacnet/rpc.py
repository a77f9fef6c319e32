"""``bacnet.*`` JSON-RPC methods (added through the ``gatewayd_rpc_methods`` hook)."""

from __future__ import annotations

from .stack import BacnetError

REINIT_STATES = {"warm": "warmstart", "cold": "coldstart", "warmstart": "warmstart", "coldstart": "coldstart"}
DCC_STATES = {"enable": "enable", "disable": "disable", "disable-initiation": "disableInitiation",
              "disableInitiation": "disableInitiation"}


def register(registry, gateway) -> None:
    from gatewayd.rpc import INVALID_PARAMS, NOT_FOUND, UNAVAILABLE, Role, RpcError

    def driver_of_device(device: str, driver: str | None):
        r = gateway.points.devices.get(device)
        if r is None or gateway.drivers.get(r.driver) is None or gateway.drivers[r.driver].cfg.type != "bacnet":
            raise RpcError(NOT_FOUND, f"no bacnet device {device!r}")
        if driver is not None and r.driver != driver:
            raise RpcError(NOT_FOUND, f"device {device!r} belongs to driver {r.driver!r}, not {driver!r}")
        inst = gateway.driver_instance("bacnet", r.driver)
        return inst, inst.device(device)

    def failed(e: BacnetError):
        return RpcError(UNAVAILABLE, f"the device answered {e}" if e.kind in ("error", "reject", "abort")
                        else str(e))

    async def read_priority_array(call, point: str):
        """The device's 16-slot priority array and relinquish default of a commandable point."""
        try:
            p = gateway.points.get(point)
        except Exception:
            raise RpcError(NOT_FOUND, f"unknown point {point!r}") from None
        r = gateway.drivers.get(p.cfg.driver)
        if r is None or r.cfg.type != "bacnet":
            raise RpcError(NOT_FOUND, f"{point} is not a bacnet point")
        inst = gateway.driver_instance("bacnet", p.cfg.driver)
        try:
            return await inst.read_priority_array(p.cfg)
        except BacnetError as e:
            raise failed(e) from None
        except Exception as e:  # WriteError: device not found yet
            raise RpcError(UNAVAILABLE, str(e)) from None

    async def time_sync(call, device: str | None = None, driver: str | None = None):
        """Send a time synchronization now (one device, or every device of the driver): UTC, or
        local time when the driver has ``time_sync_utc = false``."""
        if device is not None:
            inst, d = driver_of_device(device, driver)
            return await inst.time_sync([d.id], utc=inst.config.settings["time_sync_utc"])
        inst = gateway.driver_instance("bacnet", driver)
        return await inst.time_sync(utc=inst.config.settings["time_sync_utc"])

    async def reinitialize(call, device: str, state: str = "warm", password: str | None = None,
                           driver: str | None = None):
        """ReinitializeDevice (state warm|cold), with the device's password if it has one."""
        if state not in REINIT_STATES:
            raise RpcError(INVALID_PARAMS, f"state must be warm or cold, not {state!r}")
        inst, d = driver_of_device(device, driver)
        try:
            await inst.reinitialize(d.id, REINIT_STATES[state], password)
        except BacnetError as e:
            raise failed(e) from None
        return {"device": device, "state": state, "ok": True}

    async def communication_control(call, device: str, enable: str = "enable", duration: int | None = None,
                                    password: str | None = None, driver: str | None = None):
        """DeviceCommunicationControl: enable | disable | disable-initiation, for duration minutes (optional)."""
        if enable not in DCC_STATES:
            raise RpcError(INVALID_PARAMS, f"enable must be one of enable, disable, disable-initiation, "
                                           f"not {enable!r}")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int) or duration < 0):
            raise RpcError(INVALID_PARAMS, "duration is a number of minutes >= 0")
        inst, d = driver_of_device(device, driver)
        try:
            await inst.communication_control(d.id, DCC_STATES[enable], duration, password)
        except BacnetError as e:
            raise failed(e) from None
        return {"device": device, "enable": enable, "duration": duration, "ok": True}

    async def read_property(call, device: str, object: str, property: str = "present-value",
                            index: int | None = None, driver: str | None = None):
        """ReadProperty on a configured device (diagnostics)."""
        inst, d = driver_of_device(device, driver)
        if not d.address:
            raise RpcError(UNAVAILABLE, f"device {device} has not been found yet")
        try:
            return {"value": await inst.aio.run(inst.stacks[d.network].read, d.address, object, property, index)}
        except BacnetError as e:
            raise failed(e) from None

    async def clear_learned(call, device: str, driver: str | None = None):
        """Forget a device's learned ReadProperty fallback and RPM batch cap; they are learned again."""
        inst, d = driver_of_device(device, driver)
        return await inst.clear_learned(d.id)

    async def networks(call, driver: str | None = None):
        """Networks of a bacnet driver: mode, local address, foreign-device registration."""
        inst = gateway.driver_instance("bacnet", driver)
        return inst.net_status

    async def monitor(call, driver: str | None = None):
        """Run one Who-Is monitor cycle now and return its summary."""
        inst = gateway.driver_instance("bacnet", driver)
        return await inst.monitor_cycle(inst.stats["monitor_cycles"] + 1)

    registry.add("bacnet.read_priority_array", read_priority_array, role=Role.VIEWER)
    registry.add("bacnet.read_property", read_property, role=Role.VIEWER)
    registry.add("bacnet.networks", networks, role=Role.VIEWER)
    registry.add("bacnet.time_sync", time_sync, role=Role.OPERATOR, mutating=True)
    registry.add("bacnet.monitor", monitor, role=Role.OPERATOR, mutating=True)
    registry.add("bacnet.clear_learned", clear_learned, role=Role.OPERATOR, mutating=True)
    registry.add("bacnet.reinitialize", reinitialize, role=Role.ADMIN, mutating=True)
    registry.add("bacnet.communication_control", communication_control, role=Role.ADMIN, mutating=True)
