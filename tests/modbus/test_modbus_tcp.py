"""Modbus TCP against a real pymodbus server (SimDevice) in a subprocess."""

import pytest
import trio

from gatewayd.events import DeviceDown, DeviceRecovered
from gatewayd.rpc.client import RpcRemoteError
from gatewayd.testing import rpc, run_gateway, wait_until

UNIT1 = {"holding": {"0": 10, "1": 11, "2": 12, "5": 0x4049, "6": 0x0FDB, "7": 7, "20": 0x8001, "40": 0x1234, "41": 0,
                     "100": 1, "101": 2, "102": 3, "103": 4},
         "input": {"0": 100, "1": 65535},
         "coils": {"0": 1, "1": 0, "2": 1},
         "identity": {"vendor": "Schneider Electric", "product_code": "METSEPM5330", "revision": "2.1.4",
                      "model": "PM5330"},
         "short_at": [100]}


@pytest.fixture
def server(tcp_server_factory):
    return tcp_server_factory({"1": UNIT1})


def site(port, extra="", device_extra=""):
    return f"""
[drivers.mb]
type = "modbus"
poll_interval = "50ms"
response_timeout_ms = 300
[drivers.mb.devices.m1]
host = "127.0.0.1"
port = {port}
{device_extra}
[drivers.mb.devices.m1.points.a]
address = 0
[drivers.mb.devices.m1.points.b]
address = 1
writable = true
[drivers.mb.devices.m1.points.c]
address = 2
scale = 0.5
writable = true
[drivers.mb.devices.m1.points.pi]
address = 5
type = "float32"
writable = true
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


async def wait_cycles(drv, dev, n, timeout=10):
    """Unchanged values publish no event: wait on the driver's own cycle counter."""
    c0 = drv.devices[dev].stats["cycles"]
    with trio.fail_after(timeout):
        while drv.devices[dev].stats["cycles"] < c0 + n:
            await trio.sleep(0.02)


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
        assert refused == [{"table": "holding", "unit": 1, "start": 3, "end": 4}]
        drv = gw.drivers["mb"].instance
        d = drv.devices["m1"]
        await wait_cycles(drv, "m1", 1)
        assert d.stats["splits"] == 1 and gw.points.devices["m1"].failures == 0
        assert gw.points.devices["m1"].conn_status == "ok"
        blocks = sorted((b.table, b.start, b.count) for g in d.groups for b in g.blocks)
        assert blocks == [(0, 2, 1), (2, 0, 3), (2, 5, 3), (2, 20, 1), (3, 0, 2)]  # the planner minimum
        dev = next(x for x in await rpc(gw, "devices.list") if x["device"] == "m1")
        assert dev["refused_ranges"] == refused and dev["modbus"]["planned_requests"] == 5
        # later cycles read the minimal plan: 5 requests, no more splitting
        await wait_cycles(drv, "m1", 5)
        assert d.stats["splits"] == 1 and d.stats["last_cycle_requests"] == 5
        # persisted in state.db under the driver's namespace
        assert gw.state.kv_get("driver:mb", "refused/m1")["ranges"] == [[2, 1, 3, 4]]
        # clearing re-plans at once: the hole is found again (and learned again) in the next cycle
        await rpc(gw, "modbus.clear_refused", {"device": "m1"})
        await wait_cycles(drv, "m1", 3)
        assert d.stats["splits"] == 2
        assert await rpc(gw, "modbus.refused_ranges", {"device": "m1"}) == refused


async def test_learned_ranges_survive_a_restart_and_clear_when_the_device_config_changes(tmp_path, server):
    async with run_gateway(tmp_path, site(server.port)) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/pi"].status == "ok", timeout=15)
        await wait_cycles(gw.drivers["mb"].instance, "m1", 2)
        assert gw.state.kv_get("driver:mb", "refused/m1")["ranges"] == [[2, 1, 3, 4]]
    async with run_gateway(tmp_path, site(server.port)) as gw:  # same state dir: remembered, no split
        await wait_until(gw, lambda: gw.points.points["m1/pi"].status == "ok", timeout=15)
        d = gw.drivers["mb"].instance.devices["m1"]
        assert d.refused == [(2, 1, 3, 4)] and d.stats["splits"] == 0
    async with run_gateway(tmp_path, site(server.port, device_extra="max_gap = 20")) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/pi"].status == "ok", timeout=15)
        d = gw.drivers["mb"].instance.devices["m1"]
        assert d.stats["splits"] >= 1  # changed configuration: learned afresh


async def test_a_lone_unmapped_point_is_fault_and_its_neighbours_keep_reading(tmp_path, server):
    extra = "[drivers.mb.devices.m1.points.hole]\naddress = 3\n"
    async with run_gateway(tmp_path, site(server.port, extra)) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: pts["m1/hole"].status == "fault" and pts["m1/pi"].status == "ok"
                         and pts["m1/c"].status == "ok", timeout=15)
        assert "exception 02" in pts["m1/hole"].reason or "refused" in pts["m1/hole"].reason
        refused = await rpc(gw, "modbus.refused_ranges", {"device": "m1"})
        assert {"table": "holding", "unit": 1, "start": 3, "end": 3} in refused
        await wait_cycles(gw.drivers["mb"].instance, "m1", 1)
        assert gw.points.devices["m1"].conn_status == "ok"


async def test_short_response_marks_the_missing_points_fault(tmp_path, server):
    extra = "".join(f"[drivers.mb.devices.m1.points.s{i}]\naddress = {100 + i}\n" for i in range(4))
    async with run_gateway(tmp_path, site(server.port, extra)) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: pts["m1/s3"].status == "fault" and pts["m1/s0"].status == "ok", timeout=15)
        assert [pts[f"m1/s{i}"].status for i in range(4)] == ["ok", "ok", "fault", "fault"]
        assert "short response" in pts["m1/s2"].reason
        await wait_cycles(gw.drivers["mb"].instance, "m1", 1)
        assert gw.drivers["mb"].instance.devices["m1"].stats["short_responses"] >= 1
        assert gw.points.devices["m1"].conn_status == "ok"


async def test_a_reload_forgets_learned_ranges_even_when_nothing_changed(tmp_path, server):
    async with run_gateway(tmp_path, site(server.port)) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/pi"].status == "ok", timeout=15)
        drv = gw.drivers["mb"].instance
        await wait_cycles(drv, "m1", 2)
        assert drv.devices["m1"].refused == [(2, 1, 3, 4)] and drv.devices["m1"].stats["splits"] == 1
        res = await rpc(gw, "config.reload")
        assert res["ok"] and res["changed"] == [] and gw.drivers["mb"].instance is drv  # kept running
        assert gw.state.kv_get("driver:mb", "refused/m1") is None  # forgotten in state.db too
        await wait_cycles(drv, "m1", 3)
        # learned again from scratch in the next cycle (one more split), and remembered again
        assert drv.devices["m1"].stats["splits"] == 2 and drv.devices["m1"].refused == [(2, 1, 3, 4)]


WIDE_FLAG = """
[drivers.mb.devices.m1.points.wide_flag]
address = 40
type = "uint32"
order = "CDAB"
bit_offset = 20
kind = "binary"
writable = true
"""


async def test_fc22_on_a_32_bit_point_writes_the_register_that_holds_the_bit(tmp_path, server):
    # CDAB: register 40 is the low word, 41 the high word, so bit 20 is bit 4 of register 41
    async with run_gateway(tmp_path, site(server.port, extra=WIDE_FLAG)) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: pts["m1/wide_flag"].status == "ok", timeout=15)
        assert pts["m1/wide_flag"].value is False
        r = await rpc(gw, "points.write", {"point": "m1/wide_flag", "value": True})
        assert r["readback"] is True
        regs = await rpc(gw, "modbus.read_registers", {"device": "m1", "address": 40, "count": 2})
        assert regs["registers"] == [0x1234, 0x0010]                      # low word untouched
        r = await rpc(gw, "points.write", {"point": "m1/wide_flag", "value": False})
        assert r["readback"] is False
        regs = await rpc(gw, "modbus.read_registers", {"device": "m1", "address": 40, "count": 2})
        assert regs["registers"] == [0x1234, 0x0000]


async def test_every_write_path_with_read_back(tmp_path, server):
    async with run_gateway(tmp_path, site(server.port)) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: all(p.status == "ok" for p in pts.values()), timeout=15)
        r = await rpc(gw, "points.write", {"point": "m1/b", "value": 1234, "priority": 8})     # FC6
        assert r["readback"] == 1234 and pts["m1/b"].value == 1234
        r = await rpc(gw, "points.write", {"point": "m1/c", "value": 21.0})                    # scale inverted
        assert r["readback"] == 21.0
        regs = await rpc(gw, "modbus.read_registers", {"device": "m1", "address": 2, "count": 1})
        assert regs["registers"] == [42]
        r = await rpc(gw, "points.write", {"point": "m1/pi", "value": 2.5})                    # FC16
        assert r["readback"] == 2.5
        r = await rpc(gw, "points.write", {"point": "m1/flag", "value": False})                # FC22, bit 15
        assert r["readback"] is False
        regs = await rpc(gw, "modbus.read_registers", {"device": "m1", "address": 20, "count": 1})
        assert regs["registers"] == [0x0001]                                                   # other bits kept
        r = await rpc(gw, "points.write", {"point": "m1/coil2", "value": False})               # FC5
        assert r["readback"] is False and pts["m1/coil2"].value is False
        before = (pts["m1/seven"].value, pts["m1/seven"].write_status)
        with pytest.raises(RpcRemoteError) as ei:                    # beyond the register: refused before sending
            await rpc(gw, "points.write", {"point": "m1/seven", "value": 70000})
        assert ei.value.code == -32602
        assert ei.value.message == "70000 is above the maximum 65535 for this point (raw register limit 65535)"
        assert (pts["m1/seven"].value, pts["m1/seven"].write_status) == before  # nothing was written
        # a scaled point (scale 0.5): the message speaks in the point's units, the raw limit second
        with pytest.raises(RpcRemoteError) as ei:
            await rpc(gw, "points.write", {"point": "m1/c", "value": 40000})
        assert ei.value.message == "40000 is above the maximum 32767.5 for this point (raw register limit 65535)"


async def test_write_multiple_uses_fc15_and_fc16(tmp_path, server):
    async with run_gateway(tmp_path, site(server.port, device_extra="write_multiple = true")) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: pts["m1/b"].status == "ok", timeout=15)
        r = await rpc(gw, "points.write", {"point": "m1/b", "value": 77})
        assert r["readback"] == 77
        r = await rpc(gw, "points.write", {"point": "m1/coil2", "value": True})
        assert r["readback"] is True


async def test_a_write_whose_read_back_fails_keeps_the_written_value(tmp_path, server, monkeypatch):
    async with run_gateway(tmp_path, site(server.port)) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: pts["m1/b"].status == "ok", timeout=15)
        drv = gw.drivers["mb"].instance
        real = drv._read_payload

        async def failing(d, req, **kw):
            from gatewayd_modbus.transport import Timeout
            if req.function == 3 and req.count == 1 and req.pdu[1:3] == b"\x00\x01":
                raise Timeout("simulated")
            return await real(d, req, **kw)

        monkeypatch.setattr(drv, "_read_payload", failing)
        r = await rpc(gw, "points.write", {"point": "m1/b", "value": 555})
        assert r["readback"] == 555


async def test_a_device_that_stops_answering_goes_down_and_recovers(tmp_path, server, monkeypatch):
    import gatewayd.points as points_mod

    monkeypatch.setattr(points_mod.DeviceHealth, "BASE", 0.01)
    async with run_gateway(tmp_path, site(server.port)) as gw:
        sub = gw.bus.subscribe("test", maxlen=100000)
        await wait_until(gw, lambda: gw.points.points["m1/a"].status == "ok", timeout=15)
        server.stop()
        await wait_until(gw, lambda: gw.points.devices["m1"].conn_status == "down", timeout=30)
        assert gw.points.points["m1/a"].status == "down"
        d = gw.drivers["mb"].instance.devices["m1"]
        assert d.stats["splits"] == 1  # transport errors never split
        assert d.stats["transport_errors"] >= 5
        server.start()
        await wait_until(gw, lambda: gw.points.points["m1/a"].status == "ok", timeout=30)
        assert gw.points.devices["m1"].conn_status == "ok"
        events = await sub.get_batch()
        kinds = [type(e) for e in events]
        assert DeviceDown in kinds and DeviceRecovered in kinds
        dev = next(x for x in await rpc(gw, "devices.list") if x["device"] == "m1")
        assert dev["conn_status"] == "ok" and dev["failures"] == 0
        sub.close()


async def test_diagnostics_over_rpc(tmp_path, server):
    async with run_gateway(tmp_path, site(server.port)) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/a"].status == "ok", timeout=15)
        r = await rpc(gw, "modbus.read_registers", {"device": "m1", "address": 5, "count": 2, "type": "float32"})
        assert r["registers"] == [0x4049, 0x0FDB] and r["values"][0] == pytest.approx(3.14159, abs=1e-5)
        r = await rpc(gw, "modbus.read_registers", {"device": "m1", "address": 0, "count": 2, "table": "input"})
        assert r["registers"] == [100, 65535]
        r = await rpc(gw, "modbus.read_bits", {"device": "m1", "address": 0, "count": 3})
        assert r["bits"] == [True, False, True]
        with pytest.raises(RpcRemoteError) as ei:
            await rpc(gw, "modbus.read_registers", {"device": "m1", "address": 3, "count": 1})
        assert ei.value.data == {"kind": "exception", "code": 2}
        with pytest.raises(RpcRemoteError, match="no modbus device"):
            await rpc(gw, "modbus.read_registers", {"device": "nope", "address": 0})
        assert (await rpc(gw, "modbus.echo", {"device": "m1", "data": 0x1234}))["ok"] is True
        c = await rpc(gw, "modbus.counters", {"device": "m1"})
        assert set(c["counters"]) >= {"bus_message_count", "server_busy_count"}
        assert (await rpc(gw, "modbus.clear_counters", {"device": "m1"}))["cleared"] is True
        await rpc(gw, "modbus.mask_write", {"device": "m1", "address": 20, "and_mask": 0xFFFD, "or_mask": 0x0002})
        r = await rpc(gw, "modbus.read_registers", {"device": "m1", "address": 20, "count": 1})
        assert r["registers"] == [0x8003]
        r = await rpc(gw, "modbus.read_write_registers", {"device": "m1", "read_address": 5, "read_count": 3,
                                                          "write_address": 7, "values": [99]})
        assert r["registers"] == [0x4049, 0x0FDB, 99]
        r = await rpc(gw, "modbus.read_fifo", {"device": "m1", "address": 0})
        assert isinstance(r["values"], list)
        r = await rpc(gw, "modbus.device_identification", {"device": "m1"})
        assert r["objects"]["vendor"] == "Schneider Electric" and r["objects"]["revision"] == "2.1.4"
        assert r["objects"]["model"] == "PM5330" and r["profile"] == "schneider-pm5300"
        r = await rpc(gw, "modbus.diagnostic", {"device": "m1", "sub_function": 0, "data": 7})
        assert r["value"] == 7


def test_config_errors_name_the_missing_keys(tmp_path):
    from gatewayd.config import ConfigError, load_config

    p = tmp_path / "g.toml"
    p.write_text('[drivers.mb]\ntype = "modbus"\n[drivers.mb.devices.x]\n[drivers.mb.devices.x.points.p]\ntype = "string"\ngroup = "fast"\n'
                 '[drivers.mb.devices.y]\ntransport = "rtu"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(str(p))
    msgs = [str(x).split(": ", 1)[1] for x in ei.value.problems]
    assert msgs == ["device x: missing required key 'host'", "point x/p: missing required key 'address'",
                    "point x/p: a string needs length = <registers>",
                    "point x/p: poll group 'fast' is not in the device's poll_groups (none defined)",
                    "device y: transport rtu needs serial_port"]


async def test_poll_groups_have_their_own_interval(tmp_path, server):
    extra = '[drivers.mb.devices.m1.points.slow]\naddress = 100\ngroup = "slow"\n'
    async with run_gateway(tmp_path, site(server.port, extra, device_extra='poll_groups = { slow = "1h" }')) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/slow"].status == "ok", timeout=15)
        drv = gw.drivers["mb"].instance
        d = drv.devices["m1"]
        slow = next(g for g in d.groups if g.name == "slow")
        assert slow.interval == 3600 and [(b.start, b.count) for b in slow.blocks] == [(100, 1)]
        ts = gw.points.points["m1/slow"].ts
        await wait_cycles(drv, "m1", 5)
        assert gw.points.points["m1/slow"].ts == ts  # not polled again within the hour
