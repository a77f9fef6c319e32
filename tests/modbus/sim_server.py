"""pymodbus TCP servers (SimDevice/SimData) for the tests and the bench, in their own process.

``python sim_server.py SPEC.json`` where SPEC is::

    {"servers": [{"port": 15020, "units": {"1": UNIT, ...}, "ignore_missing": false}, ...],
     "ready": "/path/to/touch"}

    UNIT = {"holding": {"0": 10, "1": 11, ...}, "input": {...}, "coils": {"0": 1, ...}, "discrete": {...},
            "identity": {"vendor": "...", "product_code": "...", "revision": "...", "model": "..."},
            "short_at": [3000],      # a register read starting there answers with half the registers
            "changing": true}        # every read of holding/input registers bumps the registers read

Addresses not listed answer exception 02 (SimDevice marks them invalid), which is how
real devices refuse unmapped registers. ``ready`` is created once every server listens.
"""

import asyncio
import json
import logging
import sys

from pymodbus import ModbusDeviceIdentification
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


def runs(d: dict, bits: bool):
    """Contiguous runs of {address: value} as SimData blocks."""
    out, cur, start = [], [], None
    for a in sorted(int(k) for k in d):
        v = d[str(a)]
        if cur and a == start + len(cur):
            cur.append(v)
        else:
            if cur:
                out.append((start, cur))
            start, cur = a, [v]
    if cur:
        out.append((start, cur))
    if bits:
        return [SimData(s, values=[bool(x) for x in vals], datatype=DataType.BITS) for s, vals in out]
    return [SimData(s, values=vals, datatype=DataType.REGISTERS) for s, vals in out]


def make_device(unit: int, spec: dict) -> SimDevice:
    ident = None
    if "identity" in spec:
        i = spec["identity"]
        ident = ModbusDeviceIdentification(info_name={
            "VendorName": i.get("vendor", ""), "ProductCode": i.get("product_code", ""),
            "MajorMinorRevision": i.get("revision", ""), "VendorUrl": i.get("url", ""),
            "ProductName": i.get("product_name", ""), "ModelName": i.get("model", "")})
    action = None
    if spec.get("changing"):
        async def action(function_code, start_address, address, count, current_registers, set_values):
            if function_code in (3, 4) and set_values is None:
                off = address - start_address
                for k in range(off, off + count):
                    current_registers[k] = (current_registers[k] + 1) & 0xFFFF
            return None
    blocks = (runs(spec.get("coils", {}), True) or [SimData(65535, values=[False], datatype=DataType.BITS)],
              runs(spec.get("discrete", {}), True) or [SimData(65535, values=[False], datatype=DataType.BITS)],
              runs(spec.get("holding", {}), False) or [SimData(65535, values=[0], datatype=DataType.REGISTERS)],
              runs(spec.get("input", {}), False) or [SimData(65535, values=[0], datatype=DataType.REGISTERS)])
    return SimDevice(unit, simdata=blocks, identity=ident, action=action)


def make_server(srv: dict) -> ModbusTcpServer:
    devices = [make_device(int(u), spec) for u, spec in srv["units"].items()]
    short = {int(u): set(spec.get("short_at", [])) for u, spec in srv["units"].items()}
    last = {}

    def trace_pdu(sending, pdu):
        if not sending:
            last["req"] = (pdu.dev_id, pdu.function_code, getattr(pdu, "address", None))
        elif isinstance(pdu, ReadHoldingRegistersResponse) and last.get("req"):
            unit, fc, addr = last["req"]
            if addr in short.get(unit, ()) and len(pdu.registers) > 1:
                pdu.registers = pdu.registers[: len(pdu.registers) // 2]
        return pdu

    known = {int(u) for u in srv["units"]}

    def trace_packet(sending, data):
        # SimCore answers exception 04 for a unit it does not have; a real bus is silent
        if sending and srv.get("ignore_missing") and len(data) > 6 and data[6] not in known:
            return b""
        return data

    ident = next((d.identity for d in devices if d.identity), None)  # pymodbus answers FC43 server-wide
    return ModbusTcpServer(devices if len(devices) > 1 else devices[0], address=("127.0.0.1", srv["port"]),
                           trace_pdu=trace_pdu if any(short.values()) else None, identity=ident,
                           trace_packet=trace_packet)


async def main(spec):
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    servers = [make_server(s) for s in spec["servers"]]
    tasks = [asyncio.create_task(s.serve_forever()) for s in servers]
    while not all(s.transport for s in servers) and not any(t.done() for t in tasks):
        await asyncio.sleep(0.01)
    if spec.get("ready"):
        open(spec["ready"], "w").close()
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        asyncio.run(main(json.load(fh)))
