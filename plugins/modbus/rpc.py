"""The ``modbus.*`` JSON-RPC methods: register browser, diagnostics, learned refusals.

Every method takes ``device`` (a configured modbus device: its link and unit id are
used) and optionally ``driver`` (needed only when several modbus drivers run) and
``unit`` (another unit id on the same link, e.g. to browse a neighbour on the bus).
Errors: NOT_FOUND for an unknown device, INVALID_PARAMS for bad arguments,
UNAVAILABLE for a timeout/transport/invalid answer, CONFLICT for a Modbus exception
(``data`` carries ``{"kind": "exception", "code": N}``).
"""

from __future__ import annotations

import inspect

from gatewayd.plugin import native

from .pdu import InvalidResponse, ModbusException
from .profiles import list_profiles, match_profile
from .transport import Timeout, TransportError

codec = native.codec


def _reason(e):
    from .driver import _reason as reason

    return reason(e)

DIAG_COUNTERS = {11: "bus_message_count", 12: "bus_communication_errors", 13: "bus_exception_errors",
                 14: "server_message_count", 15: "server_no_response_count", 16: "server_nak_count",
                 17: "server_busy_count", 18: "bus_character_overruns"}


def add_methods(registry, gateway) -> None:
    from gatewayd.plugin import CONFLICT, INVALID_PARAMS, NOT_FOUND, UNAVAILABLE, Role, RpcError

    from .driver import DeviceBusy

    def find(driver, device):
        inst = gateway.driver_instance("modbus", driver)
        if device not in inst.devices:
            raise RpcError(NOT_FOUND, f"no modbus device {device!r} in driver {inst.config.id!r}")
        return inst

    def method(name, role=Role.OPERATOR, mutating=False):
        def deco(fn):
            fsig = inspect.signature(fn)

            async def handler(call, *args, driver: str | None = None, **params):
                bound = fsig.bind(None, *args, **params)
                device = bound.arguments["device"]
                bound.arguments["inst"] = inst = find(driver, device)
                try:
                    return await fn(*bound.args, **bound.kwargs)
                except (ValueError, KeyError, codec.EncodeError) as e:
                    raise RpcError(INVALID_PARAMS, str(e).strip("'\"")) from None  # the core names the method
                except ModbusException as e:
                    raise RpcError(CONFLICT, f"{device}: the device answered {e}",
                                   {"kind": "exception", "code": e.code}) from None
                except (Timeout, TransportError, InvalidResponse, DeviceBusy) as e:
                    raise RpcError(UNAVAILABLE, f"{device}: {_reason(e)}", {"kind": e.kind}) from None

            sig = inspect.signature(fn)
            ps = list(sig.parameters.values())
            ps[0] = ps[0].replace(name="call")
            ps.append(inspect.Parameter("driver", inspect.Parameter.KEYWORD_ONLY, default=None))
            handler.__signature__ = sig.replace(parameters=ps)
            registry.add(name, handler, role=role, mutating=mutating, doc=(fn.__doc__ or "").strip())
            return fn
        return deco

    @method("modbus.read_registers")
    async def read_registers(inst, device, address: int, count: int = 1, table: str = "holding",
                             unit: int | None = None, type: str | None = None, order: str | None = None):
        """Read holding/input registers (FC3/FC4) of any address range; type= decodes them too."""
        return await inst.read_registers(device, address, count, table, unit, type, order)

    @method("modbus.read_bits")
    async def read_bits(inst, device, address: int, count: int = 1, table: str = "coil", unit: int | None = None):
        """Read coils/discrete inputs (FC1/FC2) of any address range."""
        return await inst.read_bits(device, address, count, table, unit)

    @method("modbus.echo")
    async def echo(inst, device, data: int = 0xA55A, unit: int | None = None):
        """FC8/00 return query data: the device echoes a 16-bit value."""
        r = await inst.diagnostic(device, 0, int(data).to_bytes(2, "big"), unit)
        return {"device": device, "sent": data, "echoed": int(r["data"], 16) if r["data"] else None,
                "ok": r["data"] == f"{data:04x}"}

    @method("modbus.diagnostic")
    async def diagnostic(inst, device, sub_function: int, data: int = 0, unit: int | None = None):
        """FC8 with any sub-function (0 echo, 1 restart communications, 10 clear counters, 11-18 counters)."""
        return await inst.diagnostic(device, sub_function, data, unit)

    @method("modbus.counters")
    async def counters(inst, device, unit: int | None = None):
        """FC8/11-18: the device's communication counters."""
        out = {}
        for sub, name in DIAG_COUNTERS.items():
            try:
                out[name] = (await inst.diagnostic(device, sub, 0, unit)).get("value")
            except ModbusException as e:
                out[name] = f"not supported ({e.code:02d})"
        return {"device": device, "counters": out}

    @method("modbus.clear_counters", mutating=True)
    async def clear_counters(inst, device, unit: int | None = None):
        """FC8/10: clear the device's counters and diagnostic register."""
        await inst.diagnostic(device, 10, 0, unit)
        return {"device": device, "cleared": True}

    @method("modbus.mask_write", mutating=True)
    async def mask_write(inst, device, address: int, and_mask: int, or_mask: int, unit: int | None = None):
        """FC22: register = (register AND and_mask) OR (or_mask AND NOT and_mask)."""
        from . import pdu

        req = pdu.mask_write(address, and_mask, or_mask)
        resp = await inst.diag(device, req, unit)
        pdu.check_echo(req, resp)
        return {"device": device, "address": address, "and_mask": and_mask, "or_mask": or_mask}

    @method("modbus.read_write_registers", mutating=True)
    async def read_write_registers(inst, device, read_address: int, read_count: int, write_address: int,
                                   values: list, unit: int | None = None):
        """FC23: write ``values`` at write_address, then read read_count registers, in one transaction."""
        from . import pdu

        req = pdu.read_write(read_address, read_count, write_address, [int(v) for v in values])
        payload = pdu.read_payload(req, await inst.diag(device, req, unit))
        return {"device": device, "registers": [int.from_bytes(payload[i:i + 2], "big")
                                                for i in range(0, len(payload) - 1, 2)]}

    @method("modbus.read_fifo")
    async def read_fifo(inst, device, address: int, unit: int | None = None):
        """FC24: the FIFO queue behind a pointer register."""
        from . import pdu

        return {"device": device, "address": address,
                "values": pdu.parse_fifo(await inst.diag(device, pdu.read_fifo(address), unit))}

    @method("modbus.device_identification")
    async def device_identification(inst, device, level: str = "regular", unit: int | None = None):
        """FC43/14: vendor, product code, revision (+ URL, product, model at level regular/extended)."""
        r = await inst.device_identification(device, level, unit)
        o = r["objects"]
        # profile None below MATCH_THRESHOLD
        r["profile"], r["profile_score"] = match_profile(o.get("vendor"), o.get("model") or o.get("product_name")
                                                         or o.get("product_code"))
        return r

    @method("modbus.refused_ranges", role=Role.VIEWER)
    async def refused_ranges(inst, device):
        """Address ranges the device refused (exception 02/03), learned while polling."""
        return inst.refused_ranges(device)

    @method("modbus.clear_refused", mutating=True)
    async def clear_refused(inst, device):
        """Forget the learned refused ranges of a device; it is re-planned at once."""
        await inst.clear_refused(device)
        return {"device": device, "cleared": True}

    async def profiles(call):
        """Device profiles available to ``profile = "..."`` (profiles/modbus)."""
        return list_profiles()

    registry.add("modbus.profiles", profiles, role=Role.VIEWER)
