"""Writes at a priority with relinquish, the device's priority array over RPC, COV subscriptions."""

import dataclasses
import logging

import pytest
import trio

from gatewayd.plugin import WriteError
from gatewayd.testing import rpc, run_gateway, wait_until

from bacnet_helpers import bacnet_site


async def _ready(gw, *pids):
    await wait_until(gw, lambda: all(gw.points.points[p].status == "ok" for p in pids), what=f"{pids} ok")


async def test_write_priority_and_relinquish(tmp_path, devices):
    d = devices(2001, 18)
    async with run_gateway(tmp_path, bacnet_site([d])) as gw:
        pts = gw.points.points
        await _ready(gw, "dev2001/ao1", "dev2001/bo1")
        # priority 8 lands in slot 8 of the device's own array; the read-back is the point's value
        res = await rpc(gw, "points.write", {"point": "dev2001/ao1", "value": 42.5, "priority": 8})
        assert res["priority"] == 8
        assert pts["dev2001/ao1"].value == 42.5
        pa = await trio.to_thread.run_sync(d.priority_array, "analog-output,1")
        assert pa[7] == 42.5 and pa.count(None) == 15
        # a lower priority does not win on the device
        await rpc(gw, "points.write", {"point": "dev2001/ao1", "value": 10.0, "priority": 12})
        assert pts["dev2001/ao1"].value == 42.5
        arr = await rpc(gw, "bacnet.read_priority_array", {"point": "dev2001/ao1"})
        assert arr["slots"]["8"] == 42.5 and arr["slots"]["12"] == 10.0 and arr["slots"]["1"] is None
        assert arr["active_level"] == 8 and arr["relinquish_default"] == 0.0 and arr["present_value"] == 42.5
        assert len(arr["slots"]) == 16
        # relinquish 8: the device falls back to 12; relinquish 12: to the relinquish default
        await rpc(gw, "points.write", {"point": "dev2001/ao1", "value": None, "priority": 8})
        assert pts["dev2001/ao1"].value == 10.0
        await rpc(gw, "points.write", {"point": "dev2001/ao1", "value": None, "priority": 12})
        assert pts["dev2001/ao1"].value == 0.0
        assert (await trio.to_thread.run_sync(d.priority_array, "analog-output,1")) == [None] * 16
        # binary, default priority of points.write is 16 — never 1
        await rpc(gw, "points.write", {"point": "dev2001/bo1", "value": True})
        pa = await trio.to_thread.run_sync(d.priority_array, "binary-output,1")
        assert pa[15] in (1, "active") and pa[0] is None
        assert pts["dev2001/bo1"].value is True
        # the driver's own write() (no priority given) uses the configured default, 16
        inst = gw.drivers["bac"].instance
        await inst.write(gw.points.points["dev2001/ao1"].cfg, 5.0)
        pa = await trio.to_thread.run_sync(d.priority_array, "analog-output,1")
        assert pa[15] == 5.0 and pa[0] is None
        # the device's error is the operator's message
        cfg = gw.points.points["dev2001/ao1"].cfg
        missing = dataclasses.replace(cfg, binding={**cfg.binding, "object": "analog-output,99"})
        with pytest.raises(WriteError, match="unknown-object"):
            await inst.write_priority(missing, 1.0, 8)
        # a non-commandable point has no priority array
        with pytest.raises(Exception, match="no priority array"):
            await rpc(gw, "bacnet.read_priority_array", {"point": "dev2001/ai1"})


def _cov_site(devs, mode, extra="", poll="30s"):
    return bacnet_site(devs, extra_driver=f'cov_silence = "1s"\n{extra}', device_extra=f'cov = "{mode}"', poll=poll)


@pytest.mark.parametrize("mode,confirmed", [("object", False), ("property", True)])
async def test_cov_notifications_and_cancel(tmp_path, devices, mode, confirmed):
    d = devices(2101, 18)
    extra = "cov_confirmed = true" if confirmed else ""
    async with run_gateway(tmp_path, _cov_site([d], mode, extra)) as gw:
        pts = gw.points.points
        inst = gw.drivers["bac"].instance
        dev = inst.devs["dev2101"]
        covered = ["analog-input,1", "analog-output,1", "binary-output,1"]
        # bacpypes3's own SubscribeCOV refuses multi-state values: that one is polled instead
        await inst.until(lambda: all(dev.subs.get(o, {}).get("state") == "active" for o in covered)
                         and dev.subs["multi-state-value,1"]["state"] in ("active", "refused"),
                         what="subscriptions settled")
        assert dev.subs["multi-state-value,1"]["state"] == ("refused" if mode == "object" else "active")
        await _ready(gw, "dev2101/ai1", "dev2101/bo1", "dev2101/msv1")
        polled = dev.requests
        await trio.to_thread.run_sync(d.cmd, "set analog-input,1 77.25")
        await wait_until(gw, lambda: pts["dev2101/ai1"].value == 77.25, what="analog value by COV")
        await trio.to_thread.run_sync(d.cmd, "set binary-output,1 active")
        await wait_until(gw, lambda: pts["dev2101/bo1"].value is True, what="binary value by COV")
        assert dev.requests == polled  # nothing was polled for these (poll_interval is 30 s)
        assert dev.subs["analog-input,1"]["mode"] == mode
        assert (await trio.to_thread.run_sync(d.cmd, "subs")) == f"SUBS {3 if mode == 'object' else 4}"
    # shutdown cancelled every subscription on the device
    assert (await trio.to_thread.run_sync(d.cmd, "subs")) == "SUBS 0"


async def test_cov_renewal_before_expiry(tmp_path, devices):
    d = devices(2201, 9)
    site = _cov_site([d], "object", 'cov_lifetime = "10s"\ncov_renew = 0.1').replace(
        "[drivers.bac.devices.dev2201.points.msv1]", "[drivers.bac.devices.dev2201.points.msv1]\ncov = \"off\"")
    async with run_gateway(tmp_path, site) as gw:
        inst = gw.drivers["bac"].instance
        sub = lambda: inst.devs["dev2201"].subs.get("analog-input,1", {"renewals": 0})  # noqa: E731
        await inst.until(lambda: sub()["renewals"] >= 2, timeout=8, what="two renewals")
        assert sub()["state"] == "active"
        assert sub()["notifications"] >= 3  # the device confirms every (re)subscription with a notification


async def test_cov_refused_or_silent_falls_back_to_polling(tmp_path, devices):
    refusing = devices(2301, 9, "--no-cov")
    silent = devices(2302, 9, "--cov-silent")
    async with run_gateway(tmp_path, _cov_site([refusing, silent], "object", poll="200ms")) as gw:
        inst = gw.drivers["bac"].instance
        pts = gw.points.points
        r, s = inst.devs["dev2301"], inst.devs["dev2302"]
        state = lambda dev, oid: dev.subs.get(oid, {}).get("state")  # noqa: E731
        await inst.until(lambda: state(r, "analog-input,1") == "refused", what="refused")
        await inst.until(lambda: state(s, "analog-input,1") == "silent", what="silent")
        for dev in (refusing, silent):
            await trio.to_thread.run_sync(dev.cmd, "set analog-input,1 12.5")
        await wait_until(gw, lambda: pts["dev2301/ai1"].value == 12.5 and pts["dev2302/ai1"].value == 12.5,
                         what="polled values")
        assert gw.points.devices["dev2302"].extra["bacnet"]["cov"]["analog-input,1"] == "silent"


async def test_rejected_writes_have_the_contract_kinds(tmp_path, devices):
    """C3: what the device refuses is "refused", what cannot be encoded "encode", no answer "timeout"."""
    d = devices(2021, 18, "--read-only", "analog-output,2")
    async with run_gateway(tmp_path, bacnet_site([d])) as gw:
        await _ready(gw, "dev2021/ao1", "dev2021/ai1")
        inst = gw.drivers["bac"].instance
        cfg = gw.points.points["dev2021/ao1"].cfg
        denied = dataclasses.replace(cfg, binding={**cfg.binding, "object": "analog-output,2"})
        with pytest.raises(WriteError, match="write-access-denied") as e:
            await inst.write_priority(denied, 5.0, 8)
        assert e.value.kind == "refused"
        missing = dataclasses.replace(cfg, binding={**cfg.binding, "object": "analog-output,99"})
        with pytest.raises(WriteError, match="unknown-object") as e:
            await inst.write_priority(missing, 1.0, 8)
        assert e.value.kind == "refused"
        range_ = dataclasses.replace(cfg, binding={**cfg.binding, "object": "multi-state-output,1"},
                                     kind="multistate")
        with pytest.raises(WriteError, match="value-out-of-range") as e:
            await inst.write_priority(range_, 7, 8)  # 3 states
        assert e.value.kind == "refused", e.value
        with pytest.raises(WriteError, match="cannot encode 'warm'") as e:
            await inst.write_priority(cfg, "warm", 8)
        assert e.value.kind == "encode"
        # nothing of this reached the device's array
        assert (await trio.to_thread.run_sync(d.priority_array, "analog-output,1")) == [None] * 16
        await trio.to_thread.run_sync(d.kill)
        with pytest.raises(WriteError) as e:
            await inst.write_priority(cfg, 3.0, 8)
        assert e.value.kind == "timeout", e.value


async def test_cov_silence_and_resume_are_logged_once_per_device_with_the_count(tmp_path, devices, caplog):
    d = devices(2401, 27, "--cov-silent")
    objs = [f"{k},{i}" for k in ("analog-input", "analog-output", "analog-value") for i in (1, 2, 3)]
    objs.append("binary-output,1")
    points = "".join(f'\n[drivers.bac.devices.{{dev}}.points.p{n}]\nobject = "{o}"\n'
                     + ('kind = "binary"\n' if o.startswith("binary") else "") for n, o in enumerate(objs))
    site = bacnet_site([d], extra_driver='cov_silence = "1s"\ncov_lifetime = "10s"\ncov_renew = 0.15',
                       device_extra='cov = "object"', points=points, poll="500ms")
    caplog.set_level(logging.INFO, logger="gatewayd")
    async with run_gateway(tmp_path, site) as gw:
        inst = gw.drivers["bac"].instance
        dev = inst.devs["dev2401"]
        states = lambda: [dev.subs.get(o, {}).get("state") for o in objs]  # noqa: E731
        await inst.until(lambda: states() == ["silent"] * 10, what="all silent")
        # renewals of still-silent subscriptions say nothing new
        await inst.until(lambda: dev.cov_rounds >= 3, what="two renewals")
        silent = [r.getMessage() for r in caplog.records if "no COV notification" in r.getMessage()]
        assert silent == ["no COV notification within 1s of subscribing for 10 objects: polling them "
                          f"({', '.join(objs)})"], silent
        caplog.clear()
        await trio.to_thread.run_sync(d.cmd, "silent 0")
        await inst.until(lambda: dev.cov_resumed_reports >= 1, timeout=10, what="resume report")
        assert states() == ["active"] * 10
        resumed = [r.getMessage() for r in caplog.records if "resumed" in r.getMessage()]
        assert resumed == ["COV notifications resumed for 10 objects (of 10 subscribed)"], resumed


async def test_write_on_a_closed_network_socket_is_a_transport_error(tmp_path, devices):
    d = devices(2031, 9)
    async with run_gateway(tmp_path, bacnet_site([d])) as gw:
        await _ready(gw, "dev2031/ao1")
        inst = gw.drivers["bac"].instance
        # the network's socket goes away under the driver (interface gone, socket closed)
        await inst.aio.run_sync(inst.stacks["main"].link.server.local_transport.close)
        with trio.fail_after(5):  # old: the request hung forever
            with pytest.raises(WriteError, match="socket") as e:
                await inst.write_priority(gw.points.points["dev2031/ao1"].cfg, 3.0, 8)
        assert e.value.kind == "transport"
