"""The write protocol (gatewayd/writes.py) end to end over the real control socket, with the sim driver:
limits, refusals that leave the priority array as it was, audit of refusals, write tuning
(on start / on open / min time / max time), the overridden flag, and the per-device write lock."""

import math

import pytest
import trio

from gatewayd.config import ConfigError, load_config
from gatewayd import events
from gatewayd.events import WriteCompleted
from gatewayd.plugins import PluginRegistry
from gatewayd.rpc.client import RpcRemoteError
from gatewayd.testing import rpc, run_gateway, site_toml, wait_until

SITE = """
[drivers.sim]
type = "sim"
interval = "20ms"
{driver_extra}
[drivers.sim.devices.d1]
{device_extra}
[drivers.sim.devices.d1.points.sp]
signal = "setpoint"
base = 18.0
unit = "°C"
writable = true
min = 5
max = 100
{sp_extra}
[drivers.sim.devices.d1.points.power]
signal = "setpoint"
unit = "kW"
scale = 0.1
raw_min = 0
raw_max = 65535
writable = true
[drivers.sim.devices.d1.points.r]
signal = "setpoint"
base = 1
writable = true
refuse = [99]
[drivers.sim.devices.d1.points.ro]
signal = "sine"
[drivers.sim.devices.d1.points.wave]
signal = "sine"
period = 0.5
amplitude = 10
"""


TICK = """
[drivers.sim.devices.tick]
[drivers.sim.devices.tick.points.w]
signal = "sine"
period = 0.5
amplitude = 10
"""


def site(driver_extra="", device_extra="", sp_extra=""):
    return SITE.format(driver_extra=driver_extra, device_extra=device_extra, sp_extra=sp_extra)


async def _audit_last(gw, target):
    return (await rpc(gw, "audit.list", {"target": target, "limit": 1}))[0]


async def test_write_limits_refuse_in_point_units_for_rpc_and_connectors(tmp_path):
    async with run_gateway(tmp_path, site()) as gw:
        await wait_until(gw, lambda: gw.points.points["d1/sp"].status == "ok")
        drv = gw.drivers["sim"].instance
        await rpc(gw, "points.write", {"point": "d1/sp", "value": 21.5, "priority": 16})
        writes = drv.writes
        with pytest.raises(RpcRemoteError, match=r"^1e\+300 °C is above the maximum 100 °C for this point$"):
            await rpc(gw, "points.write", {"point": "d1/sp", "value": 1e300, "priority": 8})
        with pytest.raises(RpcRemoteError, match=r"^-500 °C is below the minimum 5 °C for this point$"):
            await rpc(gw, "points.write", {"point": "d1/sp", "value": -500, "priority": 8})
        # the driver's raw range (Driver.write_range) mapped through scale = 0.1
        with pytest.raises(RpcRemoteError, match=r"^50000 kW is above the maximum 6553.5 kW for this point "
                                                 r"\(raw register limit 65535\)$"):
            await rpc(gw, "points.write", {"point": "d1/power", "value": 50000})
        with pytest.raises(RpcRemoteError, match=r"below the minimum 0 kW"):
            await rpc(gw, "points.write", {"point": "d1/power", "value": -1})
        r = await rpc(gw, "points.write", {"point": "d1/power", "value": 6553.5})
        assert r["effective"] == 6553.5 and math.isclose(drv.state["d1/power"], 65535)
        # connectors (MQTT commands) take the same path: ConnectorContext.write_point
        from gatewayd.config import ConnectorConfig
        from gatewayd.plugin import ConnectorContext, PointError

        ctx = ConnectorContext(gw, ConnectorConfig("mq", "mqtt", None, True, {}))
        with pytest.raises(PointError, match="above the maximum 100 °C"):
            await ctx.write_point("d1/sp", 1000.0, priority=9)
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(PointError, match="finite number"):
                await ctx.write_point("d1/sp", bad, priority=9)
        p = gw.points.points["d1/sp"]
        assert p.pa.effective() == (21.5, 16) and drv.writes == writes + 1  # only the 6553.5 kW write
        assert gw.state.load_priority_arrays()["d1/sp"] == {16: 21.5}
        last = await _audit_last(gw, "d1/sp")
        assert last["ok"] is False and last["actor"] == "mqtt:mq" and "finite" in last["detail"]["error"]


async def test_every_refused_request_is_audited_with_the_actor(tmp_path):
    async with run_gateway(tmp_path, site()) as gw:
        await wait_until(gw, lambda: gw.points.points["d1/sp"].status == "ok")
        cases = [
            ({"point": "d1/ro", "value": 1}, "not writable"),
            ({"point": "d1/sp", "value": 20, "priority": 17}, "priority must be an integer"),
            ({"point": "d1/sp", "value": "hot"}, "finite number"),
            ({"point": "d1/sp", "value": 101}, "above the maximum"),
            ({"point": "nope/x", "value": 1}, "unknown point"),
        ]
        for params, msg in cases:
            with pytest.raises(RpcRemoteError, match=msg):
                await rpc(gw, "points.write", params)
            last = await _audit_last(gw, params["point"])
            assert (last["action"], last["ok"]) == ("points.write", False), params
            assert last["actor"].startswith("uid:") and msg in last["detail"]["error"]
        with pytest.raises(RpcRemoteError, match="not writable"):
            await rpc(gw, "points.relinquish", {"point": "d1/ro", "priority": 8})
        last = await _audit_last(gw, "d1/ro")
        assert (last["action"], last["ok"]) == ("points.relinquish", False) and last["actor"].startswith("uid:")


async def test_a_write_the_device_refuses_leaves_the_priority_array_as_it_was(tmp_path):
    async with run_gateway(tmp_path, site()) as gw:
        await wait_until(gw, lambda: gw.points.points["d1/r"].status == "ok")
        await rpc(gw, "points.write", {"point": "d1/r", "value": 20, "priority": 16})
        with pytest.raises(RpcRemoteError, match=r"refuses 99.*priority array is unchanged \(effective 20 at "
                                                 r"priority 16\)"):
            await rpc(gw, "points.write", {"point": "d1/r", "value": 99, "priority": 8})
        pa = await rpc(gw, "points.priority_array", {"point": "d1/r"})
        assert (pa["effective"], pa["active_level"], pa["slots"]["8"]) == (20, 16, None)
        assert gw.state.load_priority_arrays()["d1/r"] == {16: 20}
        p = gw.points.points["d1/r"]
        assert p.write_status == "fault" and "99" in p.write_error
        assert gw.drivers["sim"].instance.state["d1/r"] == 20
        last = await _audit_last(gw, "d1/r")
        assert last["ok"] is False and last["detail"]["restored"] is True and last["detail"]["kind"] == "refused"
        # a later write reports the right effective value and level
        r = await rpc(gw, "points.write", {"point": "d1/r", "value": 30, "priority": 12})
        assert (r["effective"], r["active_level"]) == (30, 12)


async def test_a_write_the_device_does_not_answer_stays_and_is_sent_when_it_is_back(tmp_path):
    # device "tick" keeps events flowing while d1 is silent (wait_until is event-driven)
    body = site(device_extra='timeout = "20ms"') + TICK
    async with run_gateway(tmp_path, body) as gw:
        await wait_until(gw, lambda: gw.points.points["d1/sp"].status == "ok")
        drv = gw.drivers["sim"].instance
        drv.set_failing("d1", True)
        await wait_until(gw, lambda: gw.points.devices["d1"].failures > 0, what="d1 failing")
        with pytest.raises(RpcRemoteError, match="not confirmed.*stays at priority 8"):
            await rpc(gw, "points.write", {"point": "d1/sp", "value": 22.75, "priority": 8})
        p = gw.points.points["d1/sp"]
        assert p.pa.effective() == (22.75, 8) and gw.state.load_priority_arrays()["d1/sp"] == {8: 22.75}
        assert p.write_status == "pending"
        drv.set_failing("d1", False)  # the next success of the device re-sends (write_on_open)
        await wait_until(gw, lambda: drv.state.get("d1/sp") == 22.75 and p.write_status == "ok", what="re-sent")


async def test_a_device_restart_gets_the_commanded_value_again_and_start_writes_after_a_gateway_restart(tmp_path):
    async with run_gateway(tmp_path, site()) as gw:
        await wait_until(gw, lambda: gw.points.points["d1/sp"].status == "ok")
        drv = gw.drivers["sim"].instance
        await rpc(gw, "points.write", {"point": "d1/sp", "value": 22.75, "priority": 8})
        assert drv.state["d1/sp"] == 22.75
        with gw.bus.subscribe("t", accept=lambda e: isinstance(e, WriteCompleted)) as sub:
            drv.restart("d1")
            with trio.fail_after(10):
                ev = (await sub.get_batch())[0]
        assert (ev.actor, ev.ok, ev.effective, ev.priority) == ("write-tuning", True, 22.75, 8)
        assert drv.state["d1/sp"] == 22.75
        await wait_until(gw, lambda: gw.points.points["d1/sp"].value == 22.75)
    # gatewayd restarts: the persisted command is written once the device answers (write_on_start)
    async with run_gateway(tmp_path, site()) as gw:
        drv = gw.drivers["sim"].instance
        await wait_until(gw, lambda: drv.state.get("d1/sp") == 22.75, what="start write")
        assert gw.points.points["d1/sp"].pa.effective() == (22.75, 8)


async def test_write_on_open_and_on_start_can_be_turned_off_per_device_and_point(tmp_path):
    async with run_gateway(tmp_path, site(device_extra="write_on_open = false",
                                          sp_extra="write_on_start = false")) as gw:
        await wait_until(gw, lambda: gw.points.points["d1/sp"].status == "ok")
        drv = gw.drivers["sim"].instance
        await rpc(gw, "points.write", {"point": "d1/sp", "value": 22.75, "priority": 8})
        await rpc(gw, "points.write", {"point": "d1/r", "value": 7, "priority": 8})
        drv.restart("d1")
        await wait_until(gw, lambda: "d1" not in drv.restarting and gw.points.points["d1/sp"].value == 18.0)
        await wait_until(gw, lambda: gw.points.points["d1/r"].value == 1)
        assert gw.writer.status()["pending"] == 0
    async with run_gateway(tmp_path, site(device_extra="write_on_open = false",
                                          sp_extra="write_on_start = false")) as gw:
        drv = gw.drivers["sim"].instance
        await wait_until(gw, lambda: drv.state.get("d1/r") == 7, what="d1/r written on start")
        assert drv.state["d1/sp"] == 18.0  # write_on_start = false on this point


async def test_a_value_changed_at_the_device_flags_the_point_overridden(tmp_path):
    async with run_gateway(tmp_path, site()) as gw:
        await wait_until(gw, lambda: gw.points.points["d1/sp"].status == "ok")
        drv = gw.drivers["sim"].instance
        await rpc(gw, "points.write", {"point": "d1/sp", "value": 30, "priority": 8})
        with gw.bus.subscribe("t", accept=lambda e: isinstance(e, events.WriteOverridden)) as sub:
            drv.set_value("d1/sp", 40.0)  # a local panel
            with trio.fail_after(10):
                ev = (await sub.get_batch())[0]
            assert (ev.point, ev.commanded, ev.actual, ev.level, ev.overridden) == ("d1/sp", 30, 40.0, 8, True)
            row = await rpc(gw, "points.read", {"points": "d1/sp"})
            assert row["overridden"] is True and "overridden" in row["flags"] and row["value"] == 40.0
            drv.set_value("d1/sp", 30.0)
            with trio.fail_after(10):
                ev = (await sub.get_batch())[0]
            assert ev.overridden is False
        await wait_until(gw, lambda: "overridden" not in gw.points.points["d1/sp"].flags)
        assert gw.writer.status()["overridden"] == 1


async def test_write_min_time_defers_and_write_max_time_refreshes(tmp_path):
    async with run_gateway(tmp_path, site(sp_extra='write_min_time = "1s"\nwrite_max_time = "1500ms"')) as gw:
        await wait_until(gw, lambda: gw.points.points["d1/sp"].status == "ok")
        drv = gw.drivers["sim"].instance
        await wait_until(gw, lambda: drv.state.get("d1/sp") is not None)
        with gw.bus.subscribe("t", accept=lambda e: isinstance(e, WriteCompleted)) as sub:
            await rpc(gw, "points.write", {"point": "d1/sp", "value": 20, "priority": 8})
            r = await rpc(gw, "points.write", {"point": "d1/sp", "value": 21, "priority": 8})
            assert r["pending"] is True and 0 < r["send_in"] <= 1 and drv.state["d1/sp"] == 20
            with trio.fail_after(10):
                evs = []
                while not any(e.actor == "write-tuning" for e in evs):
                    evs += await sub.get_batch()
            assert drv.state["d1/sp"] == 21
            drv.set_value("d1/sp", 50.0)  # changed at the device: the next max-time refresh puts it back
            with trio.fail_after(10):
                evs = []
                while not any(e.actor == "write-tuning" for e in evs):
                    evs += await sub.get_batch()
            assert drv.state["d1/sp"] == 21


@pytest.mark.parametrize("lock", [True, False])
async def test_device_write_lock_serialises_read_modify_write_of_a_shared_register(tmp_path, lock):
    body = f"""
    [drivers.sim]
    type = "sim"
    interval = "20ms"
    [drivers.sim.devices.d1]
    write_delay = "{'200ms' if lock else '1s'}"
    rmw_lock = {str(lock).lower()}
    [drivers.sim.devices.d1.points.b0]
    signal = "setpoint"
    kind = "binary"
    base = 0
    register = "ctl"
    bit = 0
    writable = true
    [drivers.sim.devices.d1.points.b1]
    signal = "setpoint"
    kind = "binary"
    base = 0
    register = "ctl"
    bit = 1
    writable = true
    """
    async with run_gateway(tmp_path, body) as gw:
        await wait_until(gw, lambda: gw.points.points["d1/b0"].status == "ok")
        drv = gw.drivers["sim"].instance
        async with trio.open_nursery() as n:
            n.start_soon(gw.write_point, "d1/b0", True)
            n.start_soon(gw.write_point, "d1/b1", True)
        reg = drv.registers[("d1", "ctl")]
        if lock:
            assert reg == 0b11
        else:  # without the lock one bit is lost (both reads fall inside the other's 1 s): what the lock is for
            assert reg in (0b01, 0b10)
        assert gw.writer.device_lock("d1", ("register", "ctl")) is gw.writer.device_lock("d1", ("register", "ctl"))


def test_write_keys_inherit_point_over_device_over_driver(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(site_toml(tmp_path, site(driver_extra='write_min_time = "2s"\nwrite_on_open = false',
                                             device_extra='write_max_time = "1m"\nwrite_on_start = false',
                                             sp_extra='write_on_start = true\nwrite_min_time = "0s"')))
    cfg = load_config(str(path), registry=PluginRegistry())
    sp, r = cfg.drivers["sim"].devices["d1"].points["sp"], cfg.drivers["sim"].devices["d1"].points["r"]
    assert (sp.write_on_open, sp.write_on_start, sp.write_min_time, sp.write_max_time) == (False, True, 0.0, 60.0)
    assert (r.write_on_open, r.write_on_start, r.write_min_time, r.write_max_time) == (False, False, 2.0, 60.0)
    assert (sp.min, sp.max, r.min, r.max) == (5, 100, None, None)
    assert "write_min_time" not in cfg.drivers["sim"].settings
    assert "write_max_time" not in cfg.drivers["sim"].devices["d1"].settings
    path.write_text(site_toml(tmp_path, site().replace("max = 100", "max = 1")))
    with pytest.raises(ConfigError, match=r"g.toml:\d+:\d+: point d1/sp: min 5 is above max 1"):
        load_config(str(path), registry=PluginRegistry())
    path.write_text(site_toml(tmp_path, site().replace("refuse = [99]", 'refuse = [99]\nkind = "binary"\nmax = 1')))
    with pytest.raises(ConfigError, match=r"g.toml:\d+:\d+: point d1/r: min/max are write limits of analog points"):
        load_config(str(path), registry=PluginRegistry())


async def test_a_deferred_command_the_device_refuses_is_taken_back_out_of_the_array(tmp_path):
    body = site().replace('refuse = [99]', 'refuse = [99]\nwrite_min_time = "1s"')
    async with run_gateway(tmp_path, body) as gw:
        await wait_until(gw, lambda: gw.points.points["d1/r"].status == "ok")
        p = gw.points.points["d1/r"]
        await rpc(gw, "points.write", {"point": "d1/r", "value": 20, "priority": 16})
        r = await rpc(gw, "points.write", {"point": "d1/r", "value": 99, "priority": 8})
        assert r["pending"] is True and p.pa.effective() == (99, 8)
        await wait_until(gw, lambda: p.write_status == "fault", what="the deferred send refused")
        assert p.pa.effective() == (20, 16) and gw.state.load_priority_arrays()["d1/r"] == {16: 20}
        last = await _audit_last(gw, "d1/r")
        assert last["ok"] is False and last["actor"].startswith("uid:") and last["detail"]["deferred"] is True


@pytest.mark.parametrize("kw, rng, expected", [
    ({"scale": 0.1}, (0, 65535), (0, 6553.5, 0, 65535)),
    ({"scale": -0.5, "offset": 10.0}, (0, 100), (-40.0, 10.0, 100, 0)),           # a falling mapping swaps the ends
    ({"scale": 1.0, "min": 5.0, "max": 50.0}, (-32768, 32767), (5.0, 50.0, None, None)),  # the point is tighter
    ({"unit": "°C", "convert": "°C => °F"}, (0, 100), (32.0, 212.0, 0, 100)),
    ({"scale": 2.0}, (None, 10), (None, 20.0, None, 10)),                         # one open end
    ({"scale": -2.0}, (None, 10), (-20.0, None, 10, None)),
])
def test_write_limits_map_the_raw_range_through_scale_offset_and_convert(kw, rng, expected):
    from gatewayd.config import PointConfig
    from gatewayd.points import DeviceState, PointState
    from gatewayd.writes import write_limits

    class Drv:
        @classmethod
        def write_range(cls, point):
            return rng

    p = PointState(PointConfig("d/p", "p", "d", "x", **kw), DeviceState("x", "d"))
    got = write_limits(p, Drv)
    assert all(g == pytest.approx(e) if e is not None else g is None for g, e in zip(got, expected)), got
