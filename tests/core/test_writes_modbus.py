"""The write protocol against a real pymodbus TCP server (tests/modbus/sim_server.py in a subprocess):
refused writes leave the priority array as it was, and a device restart gets the commanded value back."""

import os
import sys

import pytest
import trio

from gatewayd.rpc.client import RpcRemoteError
from gatewayd.testing import rpc, run_gateway, wait_until

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "modbus"))
from mbtest import TcpServer  # noqa: E402  (the shared pymodbus server helper, not edited here)

UNIT = {"holding": {"0": 80, "1": 11}}


@pytest.fixture
def server(tmp_path):
    s = TcpServer(tmp_path, {"1": UNIT})
    yield s
    s.stop()


def site(port):
    # the sim ticker keeps events flowing while the Modbus device is silent (wait_until is event-driven)
    return f"""
[drivers.tick]
type = "sim"
interval = "20ms"
[drivers.tick.devices.t]
[drivers.tick.devices.t.points.wave]
signal = "sine"
period = 0.5
amplitude = 10

[drivers.mb]
type = "modbus"
poll_interval = "50ms"
response_timeout_ms = 300
[drivers.mb.devices.m1]
host = "127.0.0.1"
port = {port}
[drivers.mb.devices.m1.points.u]
address = 0
writable = true
[drivers.mb.devices.m1.points.hole]
address = 50
writable = true
"""


def read_register(port, address):
    from pymodbus.client import ModbusTcpClient

    c = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
    try:
        assert c.connect()
        r = c.read_holding_registers(address, count=1, device_id=1)
        assert not r.isError(), r
        return r.registers[0]
    finally:
        c.close()


async def test_modbus_writes_the_encoder_or_the_device_refuse_leave_the_array_as_it_was(tmp_path, server):
    async with run_gateway(tmp_path, site(server.port)) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/u"].status == "ok")
        await rpc(gw, "points.write", {"point": "m1/u", "value": 80, "priority": 16})
        # -1 cannot be a uint16: refused (by the limits or the encoder), nothing changes
        with pytest.raises(RpcRemoteError, match="-1"):
            await rpc(gw, "points.write", {"point": "m1/u", "value": -1, "priority": 8})
        pa = await rpc(gw, "points.priority_array", {"point": "m1/u"})
        assert (pa["effective"], pa["active_level"], pa["slots"]["8"]) == (80, 16, None)
        assert gw.state.load_priority_arrays()["m1/u"] == {16: 80}
        assert await trio.to_thread.run_sync(read_register, server.port, 0) == 80
        # the device answers exception 02 (no register 50): refused, the array is as before
        with pytest.raises(RpcRemoteError, match=r"refused: .*(02|ILLEGAL|illegal).*priority array is unchanged"):
            await rpc(gw, "points.write", {"point": "m1/hole", "value": 7, "priority": 8})
        pa = await rpc(gw, "points.priority_array", {"point": "m1/hole"})
        assert (pa["effective"], pa["active_level"]) == (None, None)
        assert "m1/hole" not in gw.state.load_priority_arrays()
        last = (await rpc(gw, "audit.list", {"target": "m1/hole", "limit": 1}))[0]
        assert last["ok"] is False and last["detail"]["restored"] is True
        # later writes report the right effective value and level
        r = await rpc(gw, "points.write", {"point": "m1/u", "value": 90, "priority": 12})
        assert (r["effective"], r["active_level"], r["readback"]) == (90, 12, 90)


async def test_modbus_device_restart_gets_the_commanded_value_again(tmp_path, server):
    async with run_gateway(tmp_path, site(server.port)) as gw:
        u = gw.points.points["m1/u"]
        dev = gw.points.devices["m1"]
        await wait_until(gw, lambda: u.status == "ok")
        r = await rpc(gw, "points.write", {"point": "m1/u", "value": 2275, "priority": 8})
        assert r["readback"] == 2275
        assert await trio.to_thread.run_sync(read_register, server.port, 0) == 2275
        await trio.to_thread.run_sync(server.stop)
        await wait_until(gw, lambda: dev.failures > 0, what="the driver notices the server is gone")
        await trio.to_thread.run_sync(server.start)  # a fresh slave: register 0 holds 80 again
        # after the reconnect the first poll reads 80; write tuning (write_on_open) sends 2275 again
        await wait_until(gw, lambda: dev.failures == 0 and u.value == 2275, timeout=30,
                         what="the commanded value back at the device after its restart")
        assert await trio.to_thread.run_sync(read_register, server.port, 0) == 2275
        assert u.pa.effective() == (2275, 8) and not u.overridden and gw.writer.stats["resent"] >= 1
