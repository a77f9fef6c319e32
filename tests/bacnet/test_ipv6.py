"""BACnet/IPv6 (Annex U) on ::1: polling, a write at a priority and unicast discovery between the
driver and a bacpypes3 test device, both on gatewayd's IPv6 link. Stations are addressed by VMAC;
multicast address resolution needs a real link (loopback has none), so each side is told where the
other lives (``peers``), as a site without multicast would be configured."""

from __future__ import annotations

import socket

import pytest
import trio

from bacnet_helpers import Device
from gatewayd.testing import rpc, run_gateway, wait_until

if not socket.has_ipv6:  # pragma: no cover
    pytest.skip("no IPv6 on this host", allow_module_level=True)


def free_udp6_port() -> int:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def site(gw_port: int, dev: Device, dev_port: int) -> str:
    return f"""
[drivers.bac]
type = "bacnet"
server_device_instance = 599
apdu_timeout = "500ms"
apdu_retries = 1
who_is_timeout = "500ms"
poll_interval = "200ms"
[drivers.bac.networks.v6]
mode = "ipv6"
address = "::1"
port = {gw_port}
peers = {{ "0x{dev.instance:06x}" = "[::1]:{dev_port}" }}

[drivers.bac.devices.dev{dev.instance}]
device_instance = {dev.instance}
address = "0x{dev.instance:06x}"
[drivers.bac.devices.dev{dev.instance}.points.ai1]
object = "analog-input,1"
[drivers.bac.devices.dev{dev.instance}.points.ao1]
object = "analog-output,1"
writable = true
"""


async def test_ipv6_polling_write_and_unicast_discovery(tmp_path):
    gw_port, dev_port = free_udp6_port(), free_udp6_port()
    dev = Device(f"[::1]:{dev_port}", 4001, 18, "--ipv6", "--peer", f"0x000257=[::1]:{gw_port}")
    try:
        async with run_gateway(tmp_path, site(gw_port, dev, dev_port)) as gw:
            pts = gw.points.points
            await wait_until(gw, lambda: pts["dev4001/ai1"].status == "ok" and pts["dev4001/ao1"].status == "ok",
                             timeout=15, what="points read over BACnet/IPv6")
            assert pts["dev4001/ai1"].value == 21.0
            net = gw.drivers["bac"].instance.status()["networks"]["v6"]
            assert net["mode"] == "ipv6" and net["vmac"] == "0x000257" and net["address"] == f"[::1]:{gw_port}"
            # a write at priority 8 lands in the device's own priority array
            res = await rpc(gw, "points.write", {"point": "dev4001/ao1", "value": 42.5, "priority": 8})
            assert res["priority"] == 8 and pts["dev4001/ao1"].value == 42.5
            pa = await trio.to_thread.run_sync(dev.priority_array, "analog-output,1")
            assert pa[7] == 42.5 and pa.count(None) == 15
            # discovery by unicast Who-Is to the VMAC: the I-Am's source is the device's VMAC
            res = await rpc(gw, "discovery.scan", {"driver": "bac", "address": "0x000fa1", "timeout": 1.0,
                                                   "objects": False})
            assert res["count"] == 1 and not res["errors"], res
            row = next(r for r in await rpc(gw, "discovery.list", {"driver": "bac"}) if r["key"] == "v6:4001")
            assert row["data"]["address"] == "0x000fa1" and row["data"]["vendor_name"] == "Gatewayd Test Devices"
    finally:
        dev.stop()


@pytest.fixture
def ipv6_link():
    """A namespace joined to the root one by a veth pair with IPv6 addresses (fd7x::1 here, ::2 there):
    a link where FF02::BAC0 multicast really flows. Removed afterwards."""
    from test_networks import _can_netns

    why = _can_netns()
    if why:
        pytest.skip(f"multicast Who-Is needs a real link: {why}")
    import os
    import subprocess

    pid = os.getpid() % 10000
    ns, a, b = f"gw6n{pid}", f"gw6v{pid}a", f"gw6v{pid}b"
    cmds = [["ip", "netns", "add", ns],
            ["ip", "link", "add", a, "type", "veth", "peer", "name", b],
            ["ip", "link", "set", b, "netns", ns],
            ["ip", "-6", "addr", "add", "fd7b::1/64", "dev", a, "nodad"],
            ["ip", "link", "set", a, "up"],
            ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
            ["ip", "netns", "exec", ns, "ip", "link", "set", b, "up"],
            ["ip", "netns", "exec", ns, "ip", "-6", "addr", "add", "fd7b::2/64", "dev", b, "nodad"]]
    try:
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True)
        yield ns, a, b
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.needs_root
async def test_multicast_who_is_and_address_resolution_on_a_real_link(tmp_path, ipv6_link):
    ns, a, b = ipv6_link
    dev = Device(f"[::%{b}]:47808", 6001, 9, "--ipv6", netns=ns)  # no peers on either side
    try:
        async with run_gateway(tmp_path, f"""
[drivers.bac]
type = "bacnet"
server_device_instance = 598
apdu_timeout = "500ms"
poll_interval = "200ms"
[drivers.bac.networks.lan6]
mode = "ipv6"
address = "[::%{a}]"
[drivers.bac.devices.dev6001]
device_instance = 6001
address = "0x001771"
[drivers.bac.devices.dev6001.points.ai1]
object = "analog-input,1"
""") as gw:
            # the first request to the VMAC resolves its IPv6 address by multicast Address-Resolution
            await wait_until(gw, lambda: gw.points.points["dev6001/ai1"].status == "ok", timeout=15,
                             what="a point read after address resolution")
            res = await rpc(gw, "discovery.scan", {"driver": "bac", "timeout": 1.0, "objects": False})
            assert res["devices"] == ["lan6:6001"], res  # global Who-Is to FF02::BAC0
            rows = {r["key"]: r["data"] for r in await rpc(gw, "discovery.list", {"driver": "bac"})}
            assert rows["lan6:6001"]["address"] == "0x001771"
    finally:
        dev.stop()
