"""A device on a remote BACnet network, reached through a bacpypes3 router (two BACnet/IP ports on
loopback): discovery, polling and a priority write address it as ``net:address`` through the router."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio

from bacnet_helpers import HERE, Device, free_udp_port
from gatewayd.testing import rpc, run_gateway, wait_until


@pytest.fixture
def router():
    """Network 1 (the gateway's side) on 127.0.0.3, network 2 on 127.0.0.4."""
    p1, p2 = free_udp_port("127.0.0.3"), free_udp_port("127.0.0.4")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "bacnet_router.py"), "--port1", f"127.0.0.3:{p1}",
                             "--net1", "1", "--port2", f"127.0.0.4:{p2}", "--net2", "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), f"the test router did not start: {line!r}"
        yield f"127.0.0.3:{p1}", f"127.0.0.4:{p2}"
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


async def test_device_behind_a_router(tmp_path, router):
    side1, _side2 = router
    port = free_udp_port("127.0.0.5")
    dev = Device(f"127.0.0.5:{port}", 7001, 18)  # on network 2, answers through the router
    remote = f"2:127.0.0.5:{port}"
    try:
        async with run_gateway(tmp_path, f"""
[drivers.bac]
type = "bacnet"
server_device_instance = 596
apdu_timeout = "500ms"
apdu_retries = 1
poll_interval = "200ms"
[drivers.bac.networks.main]
address = "127.0.0.1"
port = {free_udp_port()}
routes = {{ "2" = "{side1}" }}

[drivers.bac.devices.far]
device_instance = 7001
address = "{remote}"
[drivers.bac.devices.far.points.ai1]
object = "analog-input,1"
[drivers.bac.devices.far.points.ao1]
object = "analog-output,1"
writable = true
""") as gw:
            pts = gw.points.points
            await wait_until(gw, lambda: pts["far/ai1"].status == "ok" and pts["far/ao1"].status == "ok",
                             timeout=15, what="points of the routed device")
            assert pts["far/ai1"].value == 21.0
            res = await rpc(gw, "points.write", {"point": "far/ao1", "value": 33.0, "priority": 9})
            assert res["priority"] == 9 and pts["far/ao1"].value == 33.0
            pa = await trio.to_thread.run_sync(dev.priority_array, "analog-output,1")
            assert pa[8] == 33.0
            # discovery: the I-Am comes back through the router, its source keeps the network number
            res = await rpc(gw, "discovery.scan", {"driver": "bac", "address": remote, "timeout": 1.0,
                                                   "objects": False})
            assert res["count"] == 1 and not res["errors"], res
            row = next(r for r in await rpc(gw, "discovery.list", {"driver": "bac"}) if r["key"] == "main:7001")
            assert row["data"]["address"] == remote
    finally:
        dev.stop()
