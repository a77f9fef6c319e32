"""The gateway end to end, in process: values flow, writes, reload, crash isolation, asyncio bridge."""

import os
import socket
import textwrap

import pytest
import trio

from gatewayd.events import ValueChanged
from gatewayd.testing import rpc, run_gateway, wait_until

COUNTERS = """
[drivers.a]
type = "counter"
plugin = "ext_plugins.counter"
interval = "20ms"
[drivers.a.devices.da]
[drivers.a.devices.da.points.n]
writable = true
relinquish_default = 0
[drivers.a.devices.da.points.m]
step = 2

[drivers.b]
type = "counter"
plugin = "ext_plugins.counter"
interval = "20ms"
[drivers.b.devices.db]
[drivers.b.devices.db.points.n]
"""


async def test_sim_site_values_flow_and_are_listed_over_rpc(tmp_path):
    async with run_gateway(tmp_path, """
        [drivers.sim]
        type = "sim"
        interval = "50ms"
        [drivers.sim.devices.meter-1]
        model = "meter"
        [drivers.sim.devices.ahu-1]
        model = "ahu"
        """) as gw:
        await wait_until(gw, lambda: all(p.status == "ok" for p in gw.points.points.values()), what="all ok")
        rows = await rpc(gw, "points.list", {"device": "meter-1"})
        assert {r["id"] for r in rows} == {f"meter-1/{n}" for n in
                                           ("power", "energy", "voltage_l1", "current_l1", "power_factor", "frequency")}
        power = next(r for r in rows if r["id"] == "meter-1/power")
        assert power["unit"] == "kW" and power["status"] == "ok" and 20 < power["value"] < 70
        assert (await rpc(gw, "points.list", {"glob": "ahu-1/supply_*"}))[0]["id"].startswith("ahu-1/supply_")
        st = await rpc(gw, "gateway.status")
        assert st["points_by_status"] == {"ok": 14} and st["ready"] is True
        devs = await rpc(gw, "devices.list")
        assert {d["device"]: d["conn_status"] for d in devs} == {"meter-1": "ok", "ahu-1": "ok"}


async def test_write_priority_relinquish_readback_and_audit(tmp_path):
    async with run_gateway(tmp_path, COUNTERS) as gw:
        await wait_until(gw, lambda: gw.points.points["da/n"].status == "ok")
        drv = gw.drivers["a"].instance
        r = await rpc(gw, "points.write", {"point": "da/n", "value": 500, "priority": 8})
        assert (r["effective"], r["active_level"]) == (500, 8)
        assert drv.written[-1] == ("da/n", 500)
        await rpc(gw, "points.write", {"point": "da/n", "value": 900, "priority": 12})
        assert drv.written[-1] == ("da/n", 500)  # level 8 still wins: effective value re-sent
        pa = await rpc(gw, "points.priority_array", {"point": "da/n"})
        assert pa["slots"]["8"] == 500 and pa["slots"]["12"] == 900 and pa["effective"] == 500
        r = await rpc(gw, "points.relinquish", {"point": "da/n", "priority": 8})
        assert (r["effective"], r["active_level"]) == (900, 12)
        assert drv.written[-1] == ("da/n", 900)
        await rpc(gw, "points.relinquish", {"point": "da/n", "priority": 12})
        assert drv.written[-1] == ("da/n", 0)  # relinquish default
        audit = await rpc(gw, "audit.list", {"target": "da/n"})
        assert [a["action"] for a in audit][:4] == ["points.relinquish", "points.relinquish", "points.write",
                                                     "points.write"]
        assert all(a["actor"].startswith("uid:") for a in audit)
        # priority arrays are persisted in state.db
        assert gw.state.load_priority_arrays().get("da/n", {}) == {}


async def test_write_errors_are_clear_and_change_nothing_they_should_not(tmp_path):
    from gatewayd.rpc.client import RpcRemoteError

    async with run_gateway(tmp_path, COUNTERS) as gw:
        with pytest.raises(RpcRemoteError, match="not writable"):
            await rpc(gw, "points.write", {"point": "da/m", "value": 1})
        with pytest.raises(RpcRemoteError, match="unknown point 'nope/x'") as ei:
            await rpc(gw, "points.write", {"point": "nope/x", "value": 1})
        assert ei.value.code == -32002
        with pytest.raises(RpcRemoteError, match="priority must be an integer 1..16"):
            await rpc(gw, "points.write", {"point": "da/n", "value": 1, "priority": 0})
        with pytest.raises(RpcRemoteError, match="finite number"):
            await rpc(gw, "points.write", {"point": "da/n", "value": "hot"})
        with pytest.raises(RpcRemoteError, match="the device refused 666"):
            await rpc(gw, "points.write", {"point": "da/n", "value": 666, "priority": 5})
        p = gw.points.points["da/n"]
        assert p.write_status == "fault" and "666" in p.write_error
        last = (await rpc(gw, "audit.list", {"target": "da/n", "limit": 1}))[0]
        assert last["ok"] is False and "666" in str(last["detail"])


async def test_reload_while_values_flow_restarts_only_changed_drivers(tmp_path):
    async with run_gateway(tmp_path, COUNTERS) as gw:
        await wait_until(gw, lambda: gw.drivers["a"].instance.cycles > 3 and gw.drivers["b"].instance.cycles > 3)
        a_before, b_before = gw.drivers["a"].instance, gw.drivers["b"].instance
        path = gw.config.path
        with open(path) as fh:
            text = fh.read()
        # a bad file changes nothing and says why
        with open(path, "w") as fh:
            fh.write(text.replace('step = 2', 'step = "two"'))
        res = await rpc(gw, "config.reload")
        assert res["ok"] is False
        assert res["errors"] == [f"{path}:{text.splitlines().index('step = 2') + 1}:1: "
                                 "drivers.a.devices.da.points.m.step must be a number, not a string"]
        assert gw.drivers["a"].instance is a_before and gw.drivers["b"].instance is b_before
        # a good change to b only
        with open(path, "w") as fh:
            fh.write(text + '[drivers.b.devices.db.points.extra]\nstep = 10\n')
        seen_a = gw.points.points["da/n"].value
        res = await rpc(gw, "config.reload")
        assert res["ok"] is True and res["changed"] == ["driver b restarted"]
        assert gw.drivers["a"].instance is a_before  # untouched, kept running
        assert gw.drivers["b"].instance is not b_before
        # the kept instance heard of the reload (to reset what it learned); the restarted one did not
        assert a_before.reloads_seen == 1 and b_before.reloads_seen == 0
        assert gw.drivers["b"].instance.reloads_seen == 0
        await wait_until(gw, lambda: gw.points.points["db/extra"].status == "ok"
                         and gw.points.points["da/n"].value > seen_a)
        assert gw.reloads == 1


async def test_crash_isolation_one_plugin_raising_repeatedly(tmp_path):
    body = COUNTERS.replace('[drivers.b]\ntype = "counter"', '[drivers.b]\ntype = "counter"\ncrash_after = 1')
    async with run_gateway(tmp_path, body) as gw:
        start = gw.points.points["da/m"].value or 0
        await wait_until(gw, lambda: gw.drivers["b"].crashes >= 2, timeout=15)
        assert gw.drivers["b"].last_error == "RuntimeError: counter driver crashed on purpose"
        assert gw.drivers["a"].crashes == 0 and gw.drivers["a"].state == "running"
        assert gw.points.points["da/m"].value > start + 10  # a kept delivering throughout
        info = {d["id"]: d for d in await rpc(gw, "drivers.list")}
        assert info["b"]["crashes"] >= 2 and info["a"]["state"] == "running"


async def test_device_down_backoff_and_recovery_with_sim(tmp_path, monkeypatch):
    import gatewayd.points as points_mod

    monkeypatch.setattr(points_mod.DeviceHealth, "BASE", 0.001)  # fast backoff; the rule itself is unit-tested
    async with run_gateway(tmp_path, """
        [drivers.sim]
        type = "sim"
        interval = "20ms"
        [drivers.sim.devices.f]
        timeout = "1ms"
        [drivers.sim.devices.f.points.t]
        signal = "random"
        """) as gw:
        await wait_until(gw, lambda: gw.points.points["f/t"].status == "ok")
        await rpc(gw, "sim.fail", {"device": "f", "on": True})
        await wait_until(gw, lambda: gw.points.devices["f"].conn_status == "down", timeout=20)
        assert gw.points.points["f/t"].status == "down"
        devs = await rpc(gw, "devices.list")
        assert devs[0]["failures"] >= 5 and "simulated failure" in devs[0]["reason"]
        await rpc(gw, "sim.fail", {"device": "f", "on": False})
        await wait_until(gw, lambda: gw.points.points["f/t"].status == "ok", timeout=20)


async def test_asyncio_library_call_under_the_daemon_is_cancelled_cleanly(tmp_path):
    from ext_plugins import aio_probe

    aio_probe.EVENTS.clear()
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    conns = []
    async with run_gateway(tmp_path, f"""
        [drivers.p]
        type = "aio_probe"
        plugin = "ext_plugins.aio_probe"
        port = {port}
        [drivers.p.devices.d]
        [drivers.p.devices.d.points.v]
        """) as gw:
        conn, _ = await listener.accept()
        conns.append(conn)
        await conn.send(b"42.5\n")
        await wait_until(gw, lambda: gw.points.points["d/v"].value == 42.5)
        conn2, _ = await listener.accept()  # the second read is now pending on the asyncio side
        conns.append(conn2)
    # leaving the block stopped the gateway: the pending asyncio read was cancelled, its finally ran
    assert aio_probe.EVENTS[-2:] == ["asyncio-cancelled", "closed"], aio_probe.EVENTS
    for c in conns:
        c.close()
    listener.close()


async def test_full_disk_keeps_the_daemon_up_and_loses_no_sample(tmp_path):
    # SQLITE_FULL simulated with PRAGMA max_page_count on the history writer connection
    # (a real ENOSPC is covered at store level on a tiny tmpfs in tests/store).
    async with run_gateway(tmp_path, COUNTERS.replace('interval = "20ms"', 'interval = "10ms"', 1)
                           + '\n[history]\nflush_interval = "50ms"\n') as gw:
        await wait_until(gw, lambda: gw.recorder.samples_written > 20)
        db = gw.history.db
        pages = await db.write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await db.write(lambda c: c.execute(f"PRAGMA max_page_count={pages}").fetchall())
        await wait_until(gw, lambda: gw.recorder.write_errors >= 3 and gw.recorder.stats()["held_for_retry"] > 50)
        st = await rpc(gw, "gateway.status")
        assert "full" in st["recorder"]["last_error"].lower()
        assert gw.drivers["a"].state == "running"  # drivers never noticed
        held_from = gw.points.points["da/m"].value
        await db.write(lambda c: c.execute("PRAGMA max_page_count=1073741823").fetchall())
        await wait_until(gw, lambda: gw.recorder.stats()["held_for_retry"] == 0 and
                         gw.points.points["da/m"].value > held_from + 20)
        rows = gw.history.query("da/m", limit=100_000)
        vals = [r["value"] for r in rows]
        # the counter steps by 2 every cycle: every value from the first to the last is there, none missing
        assert vals == list(range(int(vals[0]), int(vals[-1]) + 1, 2))
