"""``modbus``: Modbus TCP, RTU and RTU-over-TCP devices (see plugins/modbus/README.md).

Polling runs on the native block planner and one native decode call per block;
exception 02/03 on a block splits it in the same cycle and the refused range is
learned (persisted in state.db, shown by ``devices.list`` and ``modbus.refused_ranges``).
Writes use FC5/6/15/16 by type and FC22 for bit points, with a read-back. The
``modbus.*`` RPC methods are a register browser and the diagnostic functions
(FC8, FC22, FC23, FC24, FC43); discovery is user-initiated (``discovery.scan``).

pymodbus is used for PDUs and MBAP framing only, behind :mod:`.pdu`.
"""

from __future__ import annotations

from gatewayd.plugin import hookimpl

from .driver import ModbusDriver
from .profiles import list_profiles, load_profile, match_profile

__all__ = ["ModbusDriver", "load_profile", "list_profiles", "match_profile"]

EXTRA = "modbus"


@hookimpl
def gatewayd_register(registry):
    registry.add_driver("modbus", ModbusDriver)


@hookimpl
def gatewayd_rpc_methods(registry, gateway):
    from .rpc import add_methods

    add_methods(registry, gateway)
