"""Learned per-device behaviour (ReadProperty fallback, RPM batch cap, object count) is kept
across a daemon restart but forgotten by every reload that changes the driver's configuration
(a replaced device's new address, an accepted device, any changed key)."""

import trio

from gatewayd.testing import rpc, run_gateway, site_toml

from bacnet_helpers import bacnet_site, free_udp_port


async def _rpms(dev) -> int:
    return int((await trio.to_thread.run_sync(dev.cmd, "rpm")).split()[1])


async def test_reload_with_a_changed_device_forgets_the_read_property_fallback(tmp_path, devices):
    old = devices(1301, 18, "--no-rpm")
    port = free_udp_port()  # our own port: part of the configuration, the same for both runs
    async with run_gateway(tmp_path, bacnet_site([old], port=port)) as gw:
        inst = gw.drivers["bac"].instance
        dev = inst.devs["dev1301"]
        await inst.until(lambda: dev.read_mode == "rp" and dev.cycles >= 2, what="ReadProperty fallback learned")
        assert inst.ctx.kv_get("learned/dev1301")["read_mode"] == "rp"
    # a daemon restart with the same configuration keeps what the device taught us: no RPM is tried
    refused = await _rpms(old)
    async with run_gateway(tmp_path, bacnet_site([old], port=port)) as gw:
        inst = gw.drivers["bac"].instance
        dev = inst.devs["dev1301"]
        await inst.until(lambda: dev.cycles >= 3, what="three cycles")
        assert dev.read_mode == "rp" and await _rpms(old) == refused
        # the device is replaced by one that answers RPM, at a new address: reload
        new = devices(1301, 18, host="127.0.0.3")
        (tmp_path / "gatewayd.toml").write_text(site_toml(tmp_path, bacnet_site([new], port=port)))
        res = await rpc(gw, "config.reload")
        assert res["changed"] == ["driver bac restarted"], res
        inst = gw.drivers["bac"].instance
        dev = inst.devs["dev1301"]
        assert dev.read_mode == "auto"  # re-probed: RPM first
        await inst.until(lambda: dev.cycles >= 2 and gw.points.points["dev1301/ai1"].status == "ok",
                         what="values from the new device")
        assert dev.read_mode == "auto" and await _rpms(new) >= 2
        assert "read_mode" not in (inst.ctx.kv_get("learned/dev1301") or {})
        # the refusing device again, and a changed poll interval: RPM is tried again and refused again
        before = await _rpms(old)
        (tmp_path / "gatewayd.toml").write_text(site_toml(tmp_path, bacnet_site([old], port=port, poll="150ms")))
        assert (await rpc(gw, "config.reload"))["changed"] == ["driver bac restarted"]
        inst = gw.drivers["bac"].instance
        dev = inst.devs["dev1301"]
        await inst.until(lambda: dev.read_mode == "rp" and dev.cycles >= 1, what="fallback learned again")
        assert await _rpms(old) > before


async def test_discovery_accept_forgets_learned_state(tmp_path, devices):
    old = devices(1311, 18, "--no-rpm")
    other = devices(1312, 9)
    async with run_gateway(tmp_path, bacnet_site([old])) as gw:
        inst = gw.drivers["bac"].instance
        dev = inst.devs["dev1311"]
        await inst.until(lambda: dev.read_mode == "rp" and dev.cycles >= 2, what="ReadProperty fallback learned")
        before = await _rpms(old)
        res = await rpc(gw, "discovery.scan", {"driver": "bac", "address": other.addr, "timeout": 0.5,
                                               "objects": False})
        assert res["count"] == 1, res
        await rpc(gw, "discovery.accept", {"driver": "bac", "key": "main:1312"})
        inst = gw.drivers["bac"].instance
        dev = inst.devs["dev1311"]
        assert "testdev-1312" in inst.devs
        # the configured device is probed again (RPM, refused, learned again)
        await inst.until(lambda: dev.read_mode == "rp" and dev.cycles >= 1, what="fallback learned again")
        assert await _rpms(old) > before
