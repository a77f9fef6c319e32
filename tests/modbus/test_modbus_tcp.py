"""Modbus TCP against a real pymodbus server in a subprocess: polling, refused holes, writes, outage."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import trio

from gatewayd.testing import rpc, run_gateway, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self, tmp_path, spec, port=None):
        self.port = port or free_port()
        self.spec_path = tmp_path / f"spec-{self.port}.json"
        self.spec_path.write_text(json.dumps(spec))
        self.start()

    def start(self):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "sim_server.py"), str(self.port),
                                      str(self.spec_path)])
        deadline = time.monotonic() + 20
        while True:  # another process's listening socket: nothing to await but a connect
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the pymodbus test server did not start")
                time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path, {"holding": {"0": 10, "1": 11, "2": 12, "5": 0x4049, "6": 0x0FDB, "7": 7,
                                        "20": 0x8001},
                            "input": {"0": 100, "1": 65535},
                            "coils": {"0": 1, "1": 0, "2": 1}})
    yield srv
    srv.stop()


def site(port, extra=""):
    return f"""
[drivers.mb]
type = "modbus"
poll_interval = "50ms"
response_timeout_ms = 300
[drivers.mb.devices.m1]
host = "127.0.0.1"
port = {port}
[drivers.mb.devices.m1.points.a]
address = 0
[drivers.mb.devices.m1.points.b]
address = 1
writable = true
[drivers.mb.devices.m1.points.c]
address = 2
scale = 0.5
[drivers.mb.devices.m1.points.pi]
address = 5
type = "float32"
[drivers.mb.devices.m1.points.seven]
address = 7
writable = true
[drivers.mb.devices.m1.points.flag]
address = 20
bit_offset = 15
kind = "binary"
writable = true
[drivers.mb.devices.m1.points.in0]
table = "input"
address = 0
[drivers.mb.devices.m1.points.in1]
table = "input"
address = 1
type = "int16"
[drivers.mb.devices.m1.points.coil2]
table = "coil"
address = 2
type = "bool"
kind = "binary"
writable = true
{extra}"""


async def test_polls_values_and_learns_the_refused_hole_without_failing_the_device(tmp_path, server):
    async with run_gateway(tmp_path, site(server.port)) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: all(p.status == "ok" for p in pts.values()), timeout=15, what="all ok")
        assert [pts[f"m1/{n}"].value for n in ("a", "b", "c", "in0", "in1")] == [10, 11, 6.0, 100, -1]
        assert pts["m1/pi"].value == pytest.approx(3.14159, abs=1e-5)
        assert pts["m1/flag"].value is True and pts["m1/coil2"].value is True
        # holding 0..7 was one block bridging the unmapped 3..4: refused (02), split in the same cycle,
        # the gap learned, and the device never counted a failure
        refused = await rpc(gw, "modbus.refused_ranges", {"device": "m1"})
        assert refused == [{"table": 2, "unit": 1, "start": 3, "end": 4}]
        drv = gw.drivers["mb"].instance
        assert drv.stats["splits"] == 1 and gw.points.devices["m1"].failures == 0
        assert gw.points.devices["m1"].conn_status == "ok"
        blocks = [(b.table, b.start, b.count) for b, _, _ in drv.plans["m1"].blocks]
        assert sorted(blocks) == [(0, 2, 1), (2, 0, 3), (2, 5, 3), (2, 20, 1), (3, 0, 2)]  # the planner minimum
        dev = next(d for d in await rpc(gw, "devices.list") if d["device"] == "m1")
        assert dev["refused_ranges"] == refused
        # once learned (and persisted in state.db), later cycles read the minimal plan without splitting
        n_before, c0 = drv.stats["splits"], drv.stats["cycles"]
        with trio.fail_after(10):
            while drv.stats["cycles"] < c0 + 10:  # unchanged values publish no event to await
                await trio.sleep(0.05)
        assert drv.stats["splits"] == n_before


async def test_writes_with_read_back(tmp_path, server):
    async with run_gateway(tmp_path, site(server.port)) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/b"].status == "ok", timeout=15)
        r = await rpc(gw, "points.write", {"point": "m1/b", "value": 1234, "priority": 8})
        assert r["readback"] == 1234 and gw.points.points["m1/b"].value == 1234
        r = await rpc(gw, "points.write", {"point": "m1/flag", "value": False})  # FC22 on bit 15
        assert r["readback"] is False
        await rpc(gw, "points.write", {"point": "m1/coil2", "value": False})   # FC5
        assert gw.points.points["m1/coil2"].value is False
        from gatewayd.rpc.client import RpcRemoteError
        with pytest.raises(RpcRemoteError, match="out of range for uint16"):
            await rpc(gw, "points.write", {"point": "m1/seven", "value": 70000})


async def test_a_device_that_stops_answering_goes_down_and_recovers(tmp_path, server, monkeypatch):
    import gatewayd.points as points_mod

    monkeypatch.setattr(points_mod.DeviceHealth, "BASE", 0.01)
    async with run_gateway(tmp_path, site(server.port)) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/a"].status == "ok", timeout=15)
        server.stop()
        await wait_until(gw, lambda: gw.points.devices["m1"].conn_status == "down", timeout=30)
        assert gw.points.points["m1/a"].status == "down"
        assert gw.drivers["mb"].instance.stats["splits"] == 1  # transport errors never split
        server.start()
        await wait_until(gw, lambda: gw.points.points["m1/a"].status == "ok", timeout=30)
        assert gw.points.devices["m1"].conn_status == "ok"


def test_config_errors_name_the_missing_keys(tmp_path):
    from gatewayd.config import ConfigError, load_config

    p = tmp_path / "g.toml"
    p.write_text('[drivers.mb]\ntype = "modbus"\n[drivers.mb.devices.x.points.p]\ntype = "string"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(str(p))
    msgs = [str(x).split(": ", 1)[1] for x in ei.value.problems]
    assert msgs == ["device x: missing required key 'host'", "point x/p: missing required key 'address'",
                    "point x/p: a string needs length = <registers>"]
