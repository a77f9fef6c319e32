"""A pymodbus TCP server for the tests, in its own process: `python sim_server.py PORT SPEC.json`.

SPEC: {"holding": {"addr": value, ...}, "input": {...}, "coils": {...}} — addresses not listed
answer exception 02 (ModbusSparseDataBlock), which is how real devices refuse unmapped registers.
"""

import asyncio
import json
import logging
import sys
import warnings

warnings.simplefilter("ignore")  # pymodbus 3.16 deprecates the datastore classes it still ships

from pymodbus.datastore import ModbusDeviceContext, ModbusServerContext, ModbusSparseDataBlock  # noqa: E402
from pymodbus.server import ModbusTcpServer  # noqa: E402


def block(d):
    return ModbusSparseDataBlock({int(k): v for k, v in d.items()} or {65535: 0})


async def main(port, spec):
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    dev = ModbusDeviceContext(co=block(spec.get("coils", {})), di=block(spec.get("discrete", {})),
                              hr=block(spec.get("holding", {})), ir=block(spec.get("input", {})))
    ctx = ModbusServerContext(devices={1: dev}, single=False)
    server = ModbusTcpServer(ctx, address=("127.0.0.1", port))
    await server.serve_forever()


if __name__ == "__main__":
    with open(sys.argv[2]) as fh:
        asyncio.run(main(int(sys.argv[1]), json.load(fh)))
