"""Discovery (Who-Is, object-list walk, enrichment, accept), Who-Has, the Who-Is monitor,
device management and our own device object."""

import functools

import trio

from gatewayd.testing import rpc, run_gateway, wait_until

from bacnet_helpers import bacnet_site


async def test_discovery_of_three_devices_and_accept(tmp_path, devices):
    a = devices(3001, 54)
    b = devices(3002, 60, "--no-rpm")
    c = devices(3003, 300, "--segmentation", "none")  # its object-list does not fit one APDU: index by index
    site = bacnet_site([], extra_driver="")
    async with run_gateway(tmp_path, site) as gw:
        res = await rpc(gw, "discovery.scan", {"driver": "bac", "address": [a.addr, b.addr, c.addr],
                                               "timeout": 0.5})
        assert res["count"] == 3 and not res["errors"], res
        rows = {r["key"]: r for r in await rpc(gw, "discovery.list", {"driver": "bac"})}
        assert set(rows) == {"main:3001", "main:3002", "main:3003"}
        da, db, dc = (rows[f"main:{i}"]["data"] for i in (3001, 3002, 3003))
        assert da["vendor_name"] == "Gatewayd Test Devices" and da["model_name"] == "TD-9"
        assert da["firmware_revision"] == "1.2.3" and da["application_software_version"] == "4.5.6"
        assert da["location"] == "lab rack 3001" and da["description"] == "test device 3001"
        assert da["max_apdu_length_accepted"] == 1476 and da["segmentation_supported"] == "segmented-both"
        assert da["protocol_version"] == 1
        assert da["object_count"] == 55 and len(da["objects"]) == 54
        assert db["object_count"] == 61 and len(db["objects"]) == 60 and db["rpm"] is False
        assert dc["object_count"] == 301 and len(dc["objects"]) == 300
        objs = {o["object"]: o for o in da["objects"]}
        ai = objs["analog-input,1"]
        assert ai["name"] == "d3001-analog-input-1" and ai["units"] == "degrees-celsius"
        assert ai["writable"] is False and ai["kind"] == "analog" and ai["description"] == "test analog-input 1"
        assert objs["analog-output,1"]["writable"] is True
        assert objs["multi-state-value,1"]["states"] == ["low", "medium", "high"]
        assert objs["binary-output,1"]["states"] == ["stopped", "running"]
        assert {o["object"]: o for o in db["objects"]}["analog-output,2"]["writable"] is True
        # accept: the core writes the table into the TOML and reloads; the points poll
        acc = await rpc(gw, "discovery.accept", {"driver": "bac", "key": "main:3001"})
        dev = acc["device"]
        assert dev == "testdev-3001"
        pid = f"{dev}/d3001-analog-input-1"
        await wait_until(gw, lambda: pid in gw.points.points and gw.points.points[pid].status == "ok",
                         what="accepted device polled")
        p = gw.points.points[pid]
        assert p.value == 21.0 and p.unit == "°C" and p.cfg.kind == "analog"
        assert p.cfg.binding["object"] == "analog-input,1" and p.cfg.binding["property"] == "present-value"
        ao = gw.points.points[f"{dev}/d3001-analog-output-1"]
        assert ao.cfg.writable and gw.points.points[f"{dev}/d3001-multi-state-value-1"].cfg.states == (
            "low", "medium", "high")
        assert len([x for x in gw.points.points if x.startswith(dev + "/")]) == 54
        # a re-scan keeps the decision
        await rpc(gw, "discovery.scan", {"driver": "bac", "address": a.addr, "timeout": 0.3, "objects": False})
        rows = {r["key"]: r for r in await rpc(gw, "discovery.list", {"driver": "bac"})}
        assert rows["main:3001"]["status"] == "accepted"


async def test_ranged_who_is_and_who_has(tmp_path, devices):
    a, b = devices(3101, 9), devices(3102, 9)
    async with run_gateway(tmp_path, bacnet_site([])) as gw:
        res = await rpc(gw, "discovery.scan", {"driver": "bac", "address": [a.addr, b.addr], "low": 3102,
                                               "high": 3200, "timeout": 0.5, "objects": False})
        assert res["devices"] == ["main:3102"]
        res = await rpc(gw, "discovery.scan", {"driver": "bac", "address": [a.addr, b.addr], "timeout": 0.5,
                                               "who_has": {"name": "d3101-binary-value-1"}})
        assert [(h["device_instance"], h["object"]) for h in res["i_have"]] == [(3101, "binary-value,1")]
        res = await rpc(gw, "discovery.scan", {"driver": "bac", "address": [a.addr, b.addr], "timeout": 0.5,
                                               "who_has": {"object": "analog-input,1"}})
        assert sorted(h["device_instance"] for h in res["i_have"]) == [3101, 3102]


async def test_device_disappears_and_returns(tmp_path, devices):
    d = devices(3201, 9)
    site = bacnet_site([d], extra_driver='monitor_interval = "300ms"\nobject_check_cycles = 2', poll="2s")
    async with run_gateway(tmp_path, site) as gw:
        ds = gw.points.devices["dev3201"]
        inst = gw.drivers["bac"].instance
        events = []
        sub = gw.bus.subscribe("test:events", maxlen=100_000)
        await wait_until(gw, lambda: ds.conn_status == "ok", what="device ok")
        await inst.until(lambda: inst.devs["dev3201"].object_count == 10, what="first object-list check")
        d.kill()
        await wait_until(gw, lambda: ds.conn_status == "down", timeout=8, what="DeviceDown")
        assert gw.points.points["dev3201/ai1"].status == "down"
        port = int(d.addr.rsplit(":", 1)[1])
        back = devices(3201, 10, port=port)  # returns with one more object
        await wait_until(gw, lambda: ds.conn_status == "ok", timeout=8, what="DeviceRecovered")
        await inst.until(lambda: inst.devs["dev3201"].object_count == 11, timeout=8, what="object-list change")
        for batch in [sub.get_nowait()]:
            events.extend(batch)
        sub.close()
        kinds = [e.kind for e in events]
        assert "device_down" in kinds and "device_recovered" in kinds
        named = [e for e in events if e.kind == "driver_event"]
        changed = [e for e in named if e.name == "ObjectListChanged"]
        assert changed and changed[0].data["old"] == 10 and changed[0].data["new"] == 11
        cycles = [e for e in named if e.name == "DeviceMonitorCycle"]
        assert any(c.data["missed"] == ["dev3201"] for c in cycles)
        assert any("dev3201" in c.data["down"] for c in cycles)
        assert cycles[-1].data["devices"] == 1
        back.stop()


async def test_passive_i_am_and_device_management(tmp_path, devices):
    d = devices(3301, 9)
    other = devices(3302, 9)
    async with run_gateway(tmp_path, bacnet_site([d], extra_driver='monitor_interval = "0"')) as gw:
        inst = gw.drivers["bac"].instance
        await wait_until(gw, lambda: gw.points.points["dev3301/ai1"].status == "ok", what="polling")
        # an I-Am nobody asked for (a monitor-less driver still records it)
        await trio.to_thread.run_sync(other.cmd, f"iam {inst.net_status['main']['address']}")
        await inst.until(lambda: ("main", 3302) in inst.seen, what="passive I-Am")
        rows = {r["key"]: r for r in await rpc(gw, "discovery.list", {"driver": "bac"})}
        assert rows["main:3302"]["data"]["passive"] is True
        # time sync, reinitialize (password checked by the device), communication control
        res = await rpc(gw, "bacnet.time_sync", {"device": "dev3301"})
        assert res["dev3301"]["ok"]
        st = await trio.to_thread.run_sync(d.cmd, "status")
        assert '"utc_time_sync"' in st
        res = await rpc(gw, "bacnet.reinitialize", {"device": "dev3301", "state": "warm", "password": "secret"})
        assert res["ok"]
        try:
            await rpc(gw, "bacnet.reinitialize", {"device": "dev3301", "state": "cold", "password": "wrong"})
            raise AssertionError("a wrong password must fail")
        except Exception as e:
            assert "password-failure" in str(e)
        res = await rpc(gw, "bacnet.communication_control", {"device": "dev3301", "enable": "disable",
                                                             "duration": 5, "password": "secret"})
        assert res["ok"]
        st = await trio.to_thread.run_sync(d.cmd, "status")
        assert '"reinitialize": "warmstart"' in st and '"dcc": "disable"' in st and '"dcc_minutes": 5' in st
        # our own device object answers ReadProperty and Who-Is
        own = await trio.to_thread.run_sync(functools.partial(
            d.cmd, f"read {inst.net_status['main']['address']} device,599 object-name"))
        assert own == "VALUE gatewayd"
        nets = await rpc(gw, "bacnet.networks", {})
        assert nets["main"]["mode"] == "ip"
