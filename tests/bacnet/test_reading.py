"""Reading: RPM packing, shrinking on segmentation refusal, ReadProperty fallback, status flags."""

import logging

import trio

from gatewayd.testing import rpc, run_gateway, wait_until

from bacnet_helpers import bacnet_site
from gatewayd_bacnet.reading import ObjectRead, plan_batches, request_size, response_size


def _ok(gw, *pids):
    return lambda: all(gw.points.points[p].status in ("ok", "remote-fault") for p in pids)


async def test_poll_values_flags_and_units(tmp_path, devices):
    d = devices(1001, 18)
    async with run_gateway(tmp_path, bacnet_site([d])) as gw:
        pts = gw.points.points
        await wait_until(gw, _ok(gw, "dev1001/ai1", "dev1001/ao1", "dev1001/bo1", "dev1001/msv1",
                                 "dev1001/ai1_units"), what="first values")
        assert pts["dev1001/ai1"].value == 21.0
        assert pts["dev1001/bo1"].value is False
        assert pts["dev1001/msv1"].value == 2
        assert pts["dev1001/ai1_units"].value == "degrees-celsius"
        # flags alone do not pass the core's COV filter: change them first, then the value
        await trio.to_thread.run_sync(d.cmd, "flags analog-input,1 1 0 0 1")
        await trio.to_thread.run_sync(d.cmd, "set analog-input,1 33.5")
        await wait_until(gw, lambda: pts["dev1001/ai1"].value == 33.5 and pts["dev1001/ai1"].flags, what="new value")
        assert pts["dev1001/ai1"].flags == ("in_alarm", "out_of_service")
        await trio.to_thread.run_sync(d.cmd, "flags analog-input,1 0 1 0 0")
        await wait_until(gw, lambda: pts["dev1001/ai1"].status == "remote-fault", what="remote fault")
        inst = gw.drivers["bac"].instance
        # 4 objects, one RPM per cycle
        st = inst.status()["devices"]["dev1001"]
        assert st["read_mode"] == "auto" and st["requests"] <= st["cycles"] + 2


def test_plan_respects_max_apdu():
    objs = []
    for i in range(50):
        o = ObjectRead(f"analog-value,{i}")
        o.add(f"d/p{i}", "present-value", None)
        objs.append(o)
    small = plan_batches(objs, 206, False, 1000)  # the request must fit the device's 206 octets
    assert all(sum(request_size(o) for o in b.objects) <= 202 for b in small)
    assert sum(len(b.objects) for b in small) == 50 and len(small) >= 3
    unseg = plan_batches(objs * 3, 1476, False, 1000)  # the answer must fit our 1476 octets unsegmented
    assert all(sum(response_size(o) for o in b.objects) <= 1472 for b in unseg) and len(unseg) >= 3
    seg = plan_batches(objs * 3, 1476, True, 1000, max_segments=8)
    assert len(seg) < len(unseg)  # now only the request size limits
    capped = plan_batches(objs, 1476, True, 10)
    assert len(capped) == 5


def _many_points(n):
    kinds = ["analog-input", "analog-output", "analog-value", "binary-input", "binary-output", "binary-value",
             "multi-state-input", "multi-state-output", "multi-state-value"]
    out = []
    for i in range(n):
        k = kinds[i % 9]
        kind = "analog" if k.startswith("analog") else "binary" if k.startswith("binary") else "multistate"
        out.append(f"""
[drivers.bac.devices.{{dev}}.points.p{i}]
object = "{k},{i // 9 + 1}"
kind = "{kind}"
""")
    return "".join(out)


async def test_small_apdu_batches_and_segmentation_refused(tmp_path, devices):
    # small: max APDU 206, the requests must be split. nosegs: cannot segment, but the config
    # claims it can (segmentation = "both", answers of up to 8 segments), so the first
    # 90-object request gets an abort
    # "segmentation not supported"; the driver halves the batch in the same cycle and remembers.
    small = devices(1101, 45, "--max-apdu", "206", "--segmentation", "none")
    nosegs = devices(1102, 90, "--segmentation", "none")
    site = bacnet_site([small, nosegs], points=lambda d: _many_points(d.objects))
    site = site.replace('[drivers.bac.devices.dev1102]\n', '[drivers.bac.devices.dev1102]\nsegmentation = "both"\n'
                                                                 'rpm_segments = 8\n')
    async with run_gateway(tmp_path, site) as gw:
        ids = [f"dev1101/p{n}" for n in range(45)] + [f"dev1102/p{n}" for n in range(90)]
        await wait_until(gw, _ok(gw, *ids), timeout=20, what="all 90 points")
        inst = gw.drivers["bac"].instance
        st = inst.status()["devices"]
        assert st["dev1101"]["batch_cap"] == 100  # never refused: planned small from the start
        assert st["dev1102"]["batch_cap"] <= 45   # learned
        assert inst.ctx.kv_get("learned/dev1102")["batch_cap"] == st["dev1102"]["batch_cap"]
        # every cycle of the small device needs 3 requests (45 objects x 2 properties in 206 octets)
        small_st = st["dev1101"]
        assert small_st["cycles"] >= 1
        assert 3 * small_st["cycles"] <= small_st["requests"] <= 3 * small_st["cycles"] + 3, small_st


async def test_rpm_refused_falls_back_to_read_property(tmp_path, devices, caplog):
    d = devices(1201, 18, "--no-rpm")
    async with run_gateway(tmp_path, bacnet_site([d])) as gw:
        await wait_until(gw, _ok(gw, "dev1201/ai1", "dev1201/msv1", "dev1201/ai1_units"), what="values via RP")
        inst = gw.drivers["bac"].instance
        assert inst.status()["devices"]["dev1201"]["read_mode"] == "rp"
        assert inst.ctx.kv_get("learned/dev1201")["read_mode"] == "rp"
        assert gw.points.points["dev1201/ai1"].value == 21.0
        # forgetting it over RPC: RPM is tried again at the next cycle, refused again, learned again
        async def relearned():  # unchanged values publish no event: watch the driver's own state
            with trio.fail_after(10):
                while inst.ctx.kv_get("learned/dev1201").get("read_mode") != "rp":
                    await trio.sleep(0.02)

        res = await rpc(gw, "bacnet.clear_learned", {"device": "dev1201"})
        assert res["forgotten"]["read_mode"] == "rp" and "read_mode" not in inst.ctx.kv_get("learned/dev1201")
        await relearned()
        # a reload with an unchanged file forgets it too
        caplog.set_level(logging.INFO)
        caplog.clear()
        assert (await rpc(gw, "config.reload"))["changed"] == [] and gw.drivers["bac"].instance is inst
        assert any("reload: forgetting what dev1201 taught us (rp" in r.getMessage() for r in caplog.records)
        await relearned()
