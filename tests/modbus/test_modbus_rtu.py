"""Modbus RTU through a pty pair (pyserial on the driver side), and RTU over TCP."""

import functools

import pytest
import trio

from gatewayd.events import DeviceDown
from gatewayd.testing import rpc, run_gateway, wait_until

from mbtest import RtuResponder


def holding(n, base=0, start=100):
    return {a: start + a for a in range(base, base + n)}


def rtu_site(path, devices, extra_driver=""):
    out = f"""
[drivers.bus]
type = "modbus"
serial_port = "{path}"
baudrate = 115200
poll_interval = "50ms"
response_timeout_ms = 100
retry_count = 1
{extra_driver}
"""
    for dev, unit, points in devices:
        out += f"[drivers.bus.devices.{dev}]\nunit = {unit}\n"
        for name, body in points.items():
            out += f"[drivers.bus.devices.{dev}.points.{name}]\n{body}\n"
    return out


async def wait_cycles(drv, dev, n, timeout=10):
    c0 = drv.devices[dev].stats["cycles"]
    with trio.fail_after(timeout):
        while drv.devices[dev].stats["cycles"] < c0 + n:
            await trio.sleep(0.02)


POINTS = {"r0": "address = 0", "r1": "address = 1", "r5": "address = 5", "f": 'address = 6\ntype = "float32"',
          "bit": "address = 9\nbit_offset = 2\nkind = \"binary\"\nwritable = true",
          "w": "address = 1\nwritable = true\nname = \"w\"", "c1": 'table = "coil"\naddress = 1\ntype = "bool"\n'
          'kind = "binary"\nwritable = true'}


async def test_polls_over_a_pty_and_learns_a_hole(tmp_path, rtu_bus):
    mem = holding(3)                    # 0..2
    mem.update({5: 5, 6: 0x4049, 7: 0x0FDB, 9: 0b100})  # 3..4 and 8 unmapped
    rtu_bus.units[1] = {"holding": mem, "coils": {0: False, 1: True}}
    pts = {k: POINTS[k] for k in ("r0", "r1", "r5", "f", "bit", "c1")}
    async with run_gateway(tmp_path, rtu_site(rtu_bus.path, [("m1", 1, pts)])) as gw:
        p = gw.points.points
        await wait_until(gw, lambda: all(x.status == "ok" for x in p.values()), timeout=15)
        assert [p["m1/r0"].value, p["m1/r1"].value, p["m1/r5"].value] == [100, 101, 5]
        assert p["m1/f"].value == pytest.approx(3.14159, abs=1e-5) and p["m1/bit"].value is True
        drv = gw.drivers["bus"].instance
        d = drv.devices["m1"]
        await wait_cycles(drv, "m1", 3)
        refused = await rpc(gw, "modbus.refused_ranges", {"device": "m1"})
        assert refused == [{"table": "holding", "unit": 1, "start": 2, "end": 4},
                           {"table": "holding", "unit": 1, "start": 8, "end": 8}] or \
            {"table": "holding", "unit": 1, "start": 8, "end": 8} in refused
        # back to the planner minimum: holding 0..1, 5..9 (bridging 8 is no longer allowed: 5..7 and 9), coil 1
        assert d.stats["last_cycle_requests"] == d.stats["planned_requests"] <= 4
        assert gw.points.devices["m1"].conn_status == "ok" and gw.points.devices["m1"].failures == 0
        # write paths with read-back over RTU: FC6, FC16, FC22, FC5
        assert (await rpc(gw, "points.write", {"point": "m1/bit", "value": False}))["readback"] is False
        assert rtu_bus.units[1]["holding"][9] == 0
        assert (await rpc(gw, "points.write", {"point": "m1/c1", "value": False}))["readback"] is False


async def test_two_devices_on_one_bus_one_dead(tmp_path, rtu_bus, monkeypatch):
    import gatewayd.points as points_mod

    monkeypatch.setattr(points_mod.DeviceHealth, "BASE", 0.2)
    rtu_bus.units[1] = {"holding": holding(4)}
    rtu_bus.units[2] = {"holding": holding(4)}
    rtu_bus.dead.add(2)
    pts = {"r0": "address = 0", "r1": "address = 1"}
    site = rtu_site(rtu_bus.path, [("live", 1, pts), ("dead", 2, pts)])
    async with run_gateway(tmp_path, site) as gw:
        sub = gw.bus.subscribe("test", maxlen=100000)
        await wait_until(gw, lambda: gw.points.devices["dead"].conn_status == "down", timeout=20)
        assert gw.points.points["dead/r0"].status == "down"
        drv = gw.drivers["bus"].instance
        live = drv.devices["live"]
        # the live device keeps its rate: the dead one costs one timeout per backoff period, not per cycle
        t0, c0 = trio.current_time(), live.stats["cycles"]
        await wait_cycles(drv, "live", 10)
        rate = (live.stats["cycles"] - c0) / (trio.current_time() - t0)
        assert rate > 8  # 50 ms interval -> ~20/s; a dead unit retried every cycle would drag it to < 5/s
        assert live.stats["timeouts"] == 0 and gw.points.points["live/r0"].status == "ok"
        dead = drv.devices["dead"]
        assert dead.stats["timeouts"] >= 5 and dead.stats["splits"] == 0
        events = await sub.get_batch()
        assert any(isinstance(e, DeviceDown) and e.device == "dead" for e in events)
        # it comes back
        rtu_bus.dead.discard(2)
        await wait_until(gw, lambda: gw.points.points["dead/r0"].status == "ok", timeout=20)
        sub.close()


async def test_garbage_and_bad_crc_on_the_line(tmp_path, rtu_bus):
    rtu_bus.units[1] = {"holding": holding(4)}
    rtu_bus.garbage_before = b"\x00\xff\x13\x37"
    pts = {"r0": "address = 0", "r1": "address = 1"}
    async with run_gateway(tmp_path, rtu_site(rtu_bus.path, [("m1", 1, pts)])) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/r1"].status == "ok", timeout=15)
        assert gw.points.points["m1/r1"].value == 101
        drv = gw.drivers["bus"].instance
        link = drv.devices["m1"].link
        assert link.garbage_bytes > 0
        # a corrupted answer: invalid response (bad CRC), retried in the same cycle, no failure
        rtu_bus.corrupt_next = 1
        rtu_bus.units[1]["holding"][1] = 999
        await wait_until(gw, lambda: gw.points.points["m1/r1"].value == 999, timeout=15)
        d = drv.devices["m1"]
        assert d.stats["invalid_responses"] == 1 and d.stats["retries"] >= 1 and link.bad_crc >= 1
        assert gw.points.devices["m1"].failures == 0


async def test_short_response_on_rtu(tmp_path, rtu_bus):
    rtu_bus.units[1] = {"holding": holding(4)}
    rtu_bus.short_at.add(0)
    pts = {f"r{i}": f"address = {i}" for i in range(4)}
    async with run_gateway(tmp_path, rtu_site(rtu_bus.path, [("m1", 1, pts)])) as gw:
        p = gw.points.points
        await wait_until(gw, lambda: p["m1/r3"].status == "fault" and p["m1/r0"].status == "ok", timeout=15)
        assert [p[f"m1/r{i}"].status for i in range(4)] == ["ok", "ok", "fault", "fault"]


async def test_write_paths_and_fc22_fallback_on_rtu(tmp_path, rtu_bus):
    rtu_bus.units[1] = {"holding": {**holding(4), 9: 0b1000}, "coils": {1: False}}
    rtu_bus.no_fc22 = True
    pts = {"w": "address = 1\nwritable = true", "f": 'address = 2\ntype = "int32"\nwritable = true',
           "bit": "address = 9\nbit_offset = 0\nkind = \"binary\"\nwritable = true",
           "c1": POINTS["c1"]}
    async with run_gateway(tmp_path, rtu_site(rtu_bus.path, [("m1", 1, pts)])) as gw:
        await wait_until(gw, lambda: all(x.status == "ok" for x in gw.points.points.values()), timeout=15)
        assert (await rpc(gw, "points.write", {"point": "m1/w", "value": 4242}))["readback"] == 4242
        assert (await rpc(gw, "points.write", {"point": "m1/f", "value": -70000}))["readback"] == -70000
        assert [rtu_bus.units[1]["holding"][a] for a in (2, 3)] == [0xFFFE, 0xEE90]
        # the device answers exception 01 to FC22: read-modify-write, the other bits kept
        assert (await rpc(gw, "points.write", {"point": "m1/bit", "value": True}))["readback"] is True
        assert rtu_bus.units[1]["holding"][9] == 0b1001
        assert (await rpc(gw, "points.write", {"point": "m1/c1", "value": True}))["readback"] is True


async def test_rtu_bus_scan_on_the_existing_bus(tmp_path, rtu_bus):
    rtu_bus.units[1] = {"holding": holding(2)}
    rtu_bus.units[3] = {"holding": holding(2)}
    rtu_bus.units[4] = {"holding": holding(2)}
    pts = {"r0": "address = 0"}
    async with run_gateway(tmp_path, rtu_site(rtu_bus.path, [("m1", 1, pts)])) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/r0"].status == "ok", timeout=15)
        r = await rpc(gw, "discovery.scan", {"driver": "bus", "mode": "rtu", "units": "1-5", "timeout_ms": 100})
        assert r["probed"] == 5
        keys = sorted(f["key"] for f in r["found"])
        assert keys == [f"rtu:{rtu_bus.path}:{u}" for u in (1, 3, 4)]
        rows = {x["key"]: x for x in await rpc(gw, "discovery.list", {"driver": "bus"})}
        assert rows[f"rtu:{rtu_bus.path}:1"]["data"]["configured_as"] == "m1"
        assert rows[f"rtu:{rtu_bus.path}:3"]["status"] == "discovered"
        assert gw.points.points["m1/r0"].status == "ok"  # polling went on during the scan


async def test_rtu_over_tcp(tmp_path):
    r = RtuResponder({1: {"holding": holding(4)}})
    r.close()
    async with trio.open_nursery() as n:
        listeners = await n.start(functools.partial(trio.serve_tcp, r.serve_tcp, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        site = f"""
[drivers.gw]
type = "modbus"
transport = "rtu-over-tcp"
host = "127.0.0.1"
port = {port}
poll_interval = "50ms"
[drivers.gw.devices.m1]
unit = 1
[drivers.gw.devices.m1.points.r2]
address = 2
writable = true
"""
        async with run_gateway(tmp_path, site) as gw:
            await wait_until(gw, lambda: gw.points.points["m1/r2"].status == "ok", timeout=15)
            assert gw.points.points["m1/r2"].value == 102
            assert (await rpc(gw, "points.write", {"point": "m1/r2", "value": 7}))["readback"] == 7
            r.dead.add(1)
            d = gw.drivers["gw"].instance.devices["m1"]
            with trio.fail_after(10):
                while d.stats["timeouts"] == 0:
                    await trio.sleep(0.02)
            r.dead.discard(1)
            await wait_until(gw, lambda: gw.points.devices["m1"].failures == 0 and d.stats["cycles"] > 0,
                             timeout=15)
        n.cancel_scope.cancel()
