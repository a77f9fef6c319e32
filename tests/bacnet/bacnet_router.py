"""A bacpypes3 BACnet/IP router between two networks, run as a subprocess by the bacnet tests.

    python bacnet_router.py --port1 127.0.0.3:47811 --net1 1 --port2 127.0.0.4:47812 --net2 2

Prints ``READY`` once both sockets are bound and routes until stdin closes. Test code,
not part of gatewayd.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bacpypes3.comm import bind
from bacpypes3.ipv4.link import NormalLinkLayer
from bacpypes3.netservice import NetworkServiceAccessPoint, NetworkServiceElement
from bacpypes3.pdu import IPv4Address


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port1", required=True)
    p.add_argument("--net1", type=int, required=True)
    p.add_argument("--port2", required=True)
    p.add_argument("--net2", type=int, required=True)
    a = p.parse_args()
    nsap = NetworkServiceAccessPoint()
    nse = NetworkServiceElement()
    bind(nse, nsap)
    links = []
    for addr, net in ((a.port1, a.net1), (a.port2, a.net2)):
        link = NormalLinkLayer(IPv4Address(addr))
        nsap.bind(link, net=net, address=IPv4Address(addr))
        links.append(link)
    for link in links:
        await asyncio.gather(*link.server._transport_tasks)
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        pass
    for link in links:
        link.close()


if __name__ == "__main__":
    asyncio.run(main())
