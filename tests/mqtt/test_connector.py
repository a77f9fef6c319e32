"""The mqtt connector in a real (in-process) gateway against a real Mosquitto."""

from __future__ import annotations

import json
import time

import pytest
import trio

from gatewayd.testing import rpc, run_gateway
from helpers import RFC3339, check_complete_in_order, counters, site, values_of


def driver(gw):
    return gw.drivers["fast"].instance


async def connector_status(gw, cid="up") -> dict:
    (st,) = await rpc(gw, "connectors.status", {"connector": cid})
    return st


async def wait_delivered(gw, entries: int, cid="up", timeout=10.0) -> dict:
    """Until the connector's cursor has acknowledged ``entries`` entries and has no backlog."""
    with trio.fail_after(timeout):
        while True:
            st = await connector_status(gw, cid)
            ob = st["outbox"]
            if ob["head"] >= entries and ob["backlog"] == 0:
                return st
            await trio.sleep(0.05)


async def wait_connected(gw, cid="up", timeout=10.0):
    with trio.fail_after(timeout):
        while gw.connectors[cid].instance is None or gw.connectors[cid].instance.state != "connected":
            await trio.sleep(0.02)


@pytest.mark.parametrize("qos", [0, 1])
async def test_values_delivered_with_payload_shape(tmp_path, broker, subscriber_factory, plugin_path, qos):
    sub = subscriber_factory(broker.port, "gatewayd/#")
    async with run_gateway(tmp_path, site(broker.port, connector=f"qos = {qos}")) as gw:
        await wait_connected(gw)
        t0 = time.time()
        driver(gw).produce(1000)
        msgs = await sub.wait_count(1000, lambda t: t.endswith("/value"))
        vals = values_of(msgs)
        check_complete_in_order(counters(msgs), 1000)
        topic, body = vals[0]
        assert topic == "gatewayd/test/d0/p0000/value"
        assert set(body) == {"value", "unit", "status", "ts", "time", "seq"}
        assert body["unit"] == "W" and body["status"] == "ok"
        assert abs(body["ts"] / 1000 - t0) < 10
        assert RFC3339.match(body["time"])
        assert body["time"][:19] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(body["ts"] // 1000))
        assert all(q == min(qos, 1) for t, _p, _r, q in msgs if t.endswith("/value"))
        # the retained online status (Last Will counterpart)
        online = [json.loads(p) for t, p, _r, _q in msgs if t == "gatewayd/test/status"]
        assert online and online[-1]["state"] == "online"
        st = await wait_delivered(gw, 1000)
        assert st["connection"] == "connected" and st["broker"] == f"127.0.0.1:{broker.port}"
        assert st["outbox"]["delivered"] >= 1000 and st["outbox"]["dropped"] == 0
        assert st["inflight"] == 0
    # a clean stop publishes the retained offline status (no Last Will needed)
    msgs = await sub.wait_for(lambda ms: any(t == "gatewayd/test/status" and b'"offline"' in p
                                             for t, p, _r, _q in ms), 5)


async def test_batch_mode(tmp_path, broker, subscriber_factory, plugin_path):
    sub = subscriber_factory(broker.port, "gatewayd/#")
    text = site(broker.port, points=50, devices=2, connector="batch = true\nbatch_max = 40",
                driver="per_cycle = 100")
    async with run_gateway(tmp_path, text) as gw:
        await wait_connected(gw)
        driver(gw).produce(2000)
        await sub.wait_for(lambda ms: len(counters(ms)) >= 2000, 10, "2000 values in batches")
        msgs = sub.snapshot()
        batches = [(t, json.loads(p)) for t, p, _r, _q in msgs if t.endswith("/values")]
        assert not any(t.endswith("/value") for t, *_ in msgs)
        assert {t for t, _ in batches} == {"gatewayd/test/d0/values", "gatewayd/test/d1/values"}
        assert all(len(b["values"]) <= 40 for _, b in batches)
        assert len(batches) < 200  # many values per message
        t, b = batches[0]
        assert b["device"] in ("d0", "d1") and RFC3339.match(b["time"])
        v = b["values"][0]
        assert set(v) == {"point", "value", "unit", "status", "ts", "time", "seq"}
        check_complete_in_order(counters(msgs), 2000)


async def test_filters(tmp_path, broker, subscriber_factory, plugin_path):
    sub = subscriber_factory(broker.port, "gatewayd/#")
    conn = 'devices = ["d1"]\nexclude_points = ["*/p0001"]\nevents = ["value"]'
    async with run_gateway(tmp_path, site(broker.port, points=3, devices=2, connector=conn)) as gw:
        await wait_connected(gw)
        driver(gw).produce(600)
        await wait_delivered(gw, 600)
        await sub.wait_count(200, lambda t: t.endswith("/value"))
        vals = values_of(sub.snapshot())
        topics = {t for t, _ in vals}
        assert topics == {"gatewayd/test/d1/p0000/value", "gatewayd/test/d1/p0002/value"}
        assert len(vals) == 200
        st = await connector_status(gw)
        assert st["filtered"] >= 400


async def test_outage_30s_10000_values(tmp_path, broker, subscriber_factory, plugin_path):
    """Broker down 30 s while 10,000 values are produced: all arrive afterwards, in order per point."""
    sub_pre = subscriber_factory(broker.port, "gatewayd/#")
    async with run_gateway(tmp_path, site(broker.port, points=20, connector="qos = 1",
                                          driver="per_cycle = 50\ninterval = \"10ms\"")) as gw:
        await wait_connected(gw)
        driver(gw).produce(2000)
        await sub_pre.wait_count(2000, lambda t: t.endswith("/value"))
        sub_pre.close()
        broker.stop()
        t0 = trio.current_time()
        driver(gw).produce(10_000)
        with trio.fail_after(20):
            await driver(gw).done.wait()
        st = await connector_status(gw)
        assert st["connection"] in ("connecting", "backoff")
        assert st["last_error"]
        await trio.sleep(max(0.0, 30 - (trio.current_time() - t0)))
        broker.start()
        # a persistent subscriber session would need the broker up; subscribe now with retained-free topics
        sub = subscriber_factory(broker.port, "gatewayd/+/+/+/value")
        with trio.fail_after(30):
            while (st := await connector_status(gw))["outbox"]["backlog"]:
                await trio.sleep(0.05)
        msgs = await sub.wait_for(lambda ms: any(b'"value":12000,' in p for _t, p, _r, _q in ms), 10)
    dups = check_complete_in_order(counters(msgs), 12_000, start=2001)
    assert dups <= 1000  # at most the in-flight window is sent twice


async def test_auth_failure_reported(tmp_path, broker_factory, plugin_path, monkeypatch):
    b = broker_factory(users={"gw": "s3cret"})
    monkeypatch.setenv("MQTT_PW", "wrong")
    conn = 'username = "gw"\npassword = { env = "MQTT_PW" }'
    async with run_gateway(tmp_path, site(b.port, connector=conn)) as gw:
        with trio.fail_after(10):
            while "refused" not in ((await connector_status(gw)).get("last_error") or ""):
                await trio.sleep(0.05)
        st = await connector_status(gw)
        assert st["connection"] in ("backoff", "connecting")
        assert "not authorized" in st["last_error"].lower()
        assert "wrong" not in json.dumps(st)


async def test_auth_ok_with_password_file(tmp_path, broker_factory, subscriber_factory, plugin_path):
    b = broker_factory(users={"gw": "s3cret", "sub": "x"})
    (tmp_path / "pw").write_text("s3cret\n")
    sub = subscriber_factory(b.port, "gatewayd/#", username="sub", password="x")
    conn = f'username = "gw"\npassword = {{ file = "{tmp_path}/pw" }}\nprotocol = "5"'
    async with run_gateway(tmp_path, site(b.port, connector=conn)) as gw:
        await wait_connected(gw)
        driver(gw).produce(10)
        await sub.wait_count(10, lambda t: t.endswith("/value"))


async def test_outbox_cap_drops_oldest_and_counts(tmp_path, broker, subscriber_factory, plugin_path):
    text = site(broker.port, points=50, connector="qos = 1", outbox='max_bytes = "8KiB"',
                driver="per_cycle = 1000\ninterval = \"20ms\"")
    async with run_gateway(tmp_path, text) as gw:
        await wait_connected(gw)
        broker.stop()
        with trio.fail_after(10):
            while gw.connectors["up"].instance.state == "connected":
                await trio.sleep(0.02)
        driver(gw).produce(30_000)
        with trio.fail_after(20):
            await driver(gw).done.wait()
        with trio.fail_after(10):
            while not (await connector_status(gw))["outbox"]["dropped"]:
                await trio.sleep(0.05)
        broker.start()
        sub = subscriber_factory(broker.port, "gatewayd/+/+/+/value")
        with trio.fail_after(20):
            while (st := await connector_status(gw))["outbox"]["backlog"]:
                await trio.sleep(0.05)
        dropped = st["outbox"]["dropped"]
        assert dropped > 0
        assert st["connection"] == "connected"
        driver(gw).produce(100)
        msgs = await sub.wait_for(lambda ms: any(b'"value":30100,' in p for _t, p, _r, _q in ms), 10)
        ks = sorted(k for _p, k in counters(msgs))
        # the newest survived (drop OLDEST); what was dropped never arrives
        assert 30_000 in ks and 1 not in ks
        assert len(set(k for k in ks if k <= 30_000)) <= 30_000 - dropped + 1000


async def test_hot_reload_keeps_cursor(tmp_path, broker, subscriber_factory, plugin_path):
    sub = subscriber_factory(broker.port, "#")
    text = site(broker.port, points=10, connector="qos = 1", driver="per_cycle = 20\ninterval = \"5ms\"")
    async with run_gateway(tmp_path, text) as gw:
        await wait_connected(gw)
        old = gw.connectors["up"].instance
        driver(gw).produce(4000)
        await sub.wait_count(500, lambda t: t.endswith("/value"))
        with open(gw.config.path) as fh:
            conf = fh.read()
        with open(gw.config.path, "w") as fh:
            fh.write(conf + '\n[connectors.up.topics]\nvalue = "v2/{device}/{point}/value"\n')
        res = await gw.reload("test")
        assert res["ok"] and "connector up restarted" in res["changed"], res
        assert gw.connectors["up"].instance is not old
        with trio.fail_after(20):
            await driver(gw).done.wait()
        msgs = await sub.wait_for(lambda ms: any(b'"value":4000,' in p for _t, p, _r, _q in ms), 20)
        assert any(t.startswith("v2/") for t, *_ in msgs) and any(t.startswith("gatewayd/") for t, *_ in msgs)
        pairs = [(t.split("/")[-3] + "/" + t.split("/")[-2], json.loads(p)["value"])
                 for t, p, _r, _q in msgs if t.endswith("/value")]
        dups = check_complete_in_order(pairs, 4000)
        assert dups <= 1000


async def test_an_auth_refusal_is_not_probed(tmp_path, broker_factory, plugin_path):
    """A broker that answers and refuses (bad password) gets the plain backoff: the port probe
    that shortens an outage must not turn a wrong password into a retry every second."""
    b = broker_factory(users={"gw": "right"})
    conf = site(b.port, connector='username = "gw"\npassword = "wrong"') \
        .replace('reconnect_min = "100ms"', 'reconnect_min = "3s"').replace('reconnect_max = "500ms"',
                                                                          'reconnect_max = "3s"')
    async with run_gateway(tmp_path, conf) as gw:
        with trio.fail_after(10):
            while (await connector_status(gw))["connection"] != "backoff":
                await trio.sleep(0.05)
        assert "refused" in (await connector_status(gw))["last_error"]
        # the backoff is at least 2.4 s (3 s with jitter): no new attempt within the next 1.5 s
        with trio.move_on_after(1.5):
            while (await connector_status(gw))["connection"] == "backoff":
                await trio.sleep(0.05)
        assert (await connector_status(gw))["connection"] == "backoff"
