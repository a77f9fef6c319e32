"""Two BACnet networks in one running driver; the periodic time synchronization reaching a device."""

import json

import pytest
import trio

from gatewayd.testing import rpc, run_gateway, wait_until

from bacnet_helpers import free_udp_port


def _two_network_site(a, b) -> str:
    # the same device instance on both networks: they are separate BACnet internetworks
    out = f"""
[drivers.bac]
type = "bacnet"
server_device_instance = 597
apdu_timeout = "300ms"
apdu_retries = 1
who_is_timeout = "500ms"
poll_interval = "200ms"
[drivers.bac.networks.north]
address = "127.0.0.1"
port = {free_udp_port()}
[drivers.bac.networks.south]
address = "127.0.0.1"
port = {free_udp_port()}
"""
    for name, net, d in (("n", "north", a), ("s", "south", b)):
        out += f"""
[drivers.bac.devices.{name}]
network = "{net}"
device_instance = {d.instance}
address = "{d.addr}"
[drivers.bac.devices.{name}.points.ai1]
object = "analog-input,1"
[drivers.bac.devices.{name}.points.ao1]
object = "analog-output,1"
writable = true
"""
    return out


async def test_two_networks_in_one_running_driver(tmp_path, devices):
    a = devices(3501, 9, host="127.0.0.2")
    b = devices(3501, 9, host="127.0.0.3")
    await trio.to_thread.run_sync(b.cmd, "set analog-input,1 55.5")
    async with run_gateway(tmp_path, _two_network_site(a, b)) as gw:
        inst = gw.drivers["bac"].instance
        pts = gw.points.points
        assert set(inst.stacks) == {"north", "south"}
        await wait_until(gw, lambda: pts["n/ai1"].value == 21.0 and pts["s/ai1"].value == 55.5,
                         what="values from both networks")
        nets = await rpc(gw, "bacnet.networks", {})
        assert {nets["north"]["address"], nets["south"]["address"]} == \
            {inst.net_status["north"]["address"], inst.net_status["south"]["address"]}
        assert nets["north"]["address"] != nets["south"]["address"]
        # a write goes out on the device's own network only
        await rpc(gw, "points.write", {"point": "s/ao1", "value": 12.0, "priority": 9})
        assert (await trio.to_thread.run_sync(b.priority_array, "analog-output,1"))[8] == 12.0
        assert (await trio.to_thread.run_sync(a.priority_array, "analog-output,1")) == [None] * 16
        # an I-Am arrives on the network it was sent to: one device instance, two networks
        for dev, net in ((a, "north"), (b, "south")):
            await trio.to_thread.run_sync(dev.cmd, f"iam {inst.net_status[net]['address']}")
        await inst.until(lambda: ("north", 3501) in inst.seen and ("south", 3501) in inst.seen, what="I-Ams")
        assert inst.seen[("north", 3501)]["address"] == a.addr and inst.seen[("south", 3501)]["address"] == b.addr
        # each device is polled on its own network
        st = inst.status()["devices"]
        assert st["n"]["cycles"] > 0 and st["s"]["cycles"] > 0


async def _device_status(dev) -> dict:
    return json.loads((await trio.to_thread.run_sync(dev.cmd, "status"))[len("STATUS "):])


@pytest.mark.parametrize("utc", [True, False])
async def test_periodic_time_sync_reaches_the_device(tmp_path, devices, utc):
    from bacnet_helpers import bacnet_site

    d = devices(3601, 9)
    extra = f'time_sync = true\ntime_sync_interval = "1s"\ntime_sync_utc = {str(utc).lower()}'
    async with run_gateway(tmp_path, bacnet_site([d], extra_driver=extra)) as gw:
        inst = gw.drivers["bac"].instance
        await inst.until(lambda: inst.stats["time_syncs"] >= 2, timeout=10, what="two periodic time syncs")
        key = "utc_time_syncs" if utc else "time_syncs"
        with trio.fail_after(5):  # the device answers nothing to an unconfirmed request: ask it
            while (await _device_status(d)).get(key, 0) < 2:
                await trio.sleep(0.05)
        st = await _device_status(d)
        assert ("time_syncs" if utc else "utc_time_syncs") not in st
