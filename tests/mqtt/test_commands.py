"""Write-back over MQTT and the BEMCom contract, against a real Mosquitto."""

from __future__ import annotations

import json

import paho.mqtt.client as paho
import trio
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gatewayd.testing import rpc, run_gateway
from helpers import site
from test_connector import driver, wait_connected

CMD = """
[connectors.up.commands]
enabled = true
allow = ["d0/setpoint"]
"""


async def publish(sub, topic, payload, *, retain=False, props=None):
    info = sub.client.publish(topic, payload, qos=1, retain=retain, properties=props)
    await trio.to_thread.run_sync(info.wait_for_publish, 5)


def results(sub):
    return [json.loads(p) for t, p, _r, _q in sub.snapshot() if t.endswith("/set/result")]


async def test_command_round_trip_and_rejections(tmp_path, broker, subscriber_factory, plugin_path):
    sub = subscriber_factory(broker.port, "gatewayd/test/+/+/set/result")
    async with run_gateway(tmp_path, site(broker.port, connector=CMD)) as gw:
        await wait_connected(gw)
        with trio.fail_after(5):  # the subscription is made right after CONNACK
            while not gw.connectors["up"].instance._cmd_send:
                await trio.sleep(0.02)
        await trio.sleep(0.2)
        await publish(sub, "gatewayd/test/d0/setpoint/set", json.dumps({"value": 21.5, "priority": 8, "id": "a1"}))
        await sub.wait_for(lambda ms: len(results(sub)) >= 1, 10)
        ok = results(sub)[0]
        assert ok["ok"] is True and ok["id"] == "a1" and ok["value"] == 21.5 and ok["priority"] == 8
        assert gw.points.points["d0/setpoint"].value == 21.5
        audit = await rpc(gw, "audit.list", {})
        rows = audit if isinstance(audit, list) else audit.get("entries", audit.get("rows", []))
        assert any(r.get("actor") == "mqtt:up" for r in rows), rows

        bad = [
            ("gatewayd/test/d0/setpoint/set", b"{not json", "not JSON"),
            ("gatewayd/test/d0/setpoint/set", json.dumps([1, 2]), "JSON object"),
            ("gatewayd/test/d0/setpoint/set", json.dumps({"priority": 3}), "JSON object"),
            ("gatewayd/test/d0/setpoint/set", json.dumps({"value": 1, "priority": 0}), "priority"),
            ("gatewayd/test/d0/setpoint/set", json.dumps({"value": "warm"}), "analog"),
            ("gatewayd/test/d0/p0000/set", json.dumps({"value": 1}), "allow-list"),
        ]
        for topic, payload, _ in bad:
            await publish(sub, topic, payload)
        await sub.wait_for(lambda ms: len(results(sub)) >= 1 + len(bad), 10)
        got = results(sub)[1:]
        for (topic, _p, expect), r in zip(bad, got):
            assert r["ok"] is False and expect in r["error"], (topic, r)
        assert gw.points.points["d0/setpoint"].value == 21.5  # nothing changed

        (st,) = await rpc(gw, "connectors.status", {"connector": "up"})
        assert st["commands"]["ok"] == 1 and st["commands"]["rejected"] >= len(bad)


async def test_retained_command_is_not_executed(tmp_path, broker, subscriber_factory, plugin_path):
    """A retained command would run again at every (re)subscription: it is answered and ignored."""
    sub = subscriber_factory(broker.port, "gatewayd/test/+/+/set/result")
    await publish(sub, "gatewayd/test/d0/setpoint/set", json.dumps({"value": 5}), retain=True)
    try:
        async with run_gateway(tmp_path, site(broker.port, connector=CMD)) as gw:
            await sub.wait_for(lambda ms: len(results(sub)) >= 1, 10)
            assert "retained" in results(sub)[0]["error"]
            assert gw.points.points["d0/setpoint"].value != 5
    finally:
        await publish(sub, "gatewayd/test/d0/setpoint/set", b"", retain=True)


async def test_commands_off_by_default(tmp_path, broker, subscriber_factory, plugin_path):
    sub = subscriber_factory(broker.port, "gatewayd/#")
    async with run_gateway(tmp_path, site(broker.port)) as gw:
        await wait_connected(gw)
        await publish(sub, "gatewayd/test/d0/setpoint/set", json.dumps({"value": 3}))
        driver(gw).produce(5)
        await sub.wait_count(5, lambda t: t.endswith("/value"))
        assert not results(sub)
        assert gw.points.points["d0/setpoint"].value != 3


async def test_mqtt5_response_topic_and_correlation(tmp_path, broker, subscriber_factory, plugin_path):
    sub = subscriber_factory(broker.port, "replies/#", protocol=paho.MQTTv5)
    async with run_gateway(tmp_path, site(broker.port, connector='protocol = "5"\n' + CMD)) as gw:
        await wait_connected(gw)
        await trio.sleep(0.3)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "replies/me"
        props.CorrelationData = b"corr-7"
        await publish(sub, "gatewayd/test/d0/setpoint/set", json.dumps({"value": 7}), props=props)
        msgs = await sub.wait_count(1, lambda t: t == "replies/me")
        assert json.loads(msgs[-1][1])["ok"] is True
        assert gw.points.points["d0/setpoint"].value == 7


BEM = """
[connectors.up.bemcom]
enabled = true
name = "gw-conn"
heartbeat_interval = "1s"
map_wait = "0s"

[connectors.up.commands]
enabled = true
allow = ["d0/setpoint"]
"""


async def test_bemcom_contract(tmp_path, broker, subscriber_factory, plugin_path):
    sub = subscriber_factory(broker.port, "gw-conn/#")
    async with run_gateway(tmp_path, site(broker.port, points=3, connector=BEM)) as gw:
        await wait_connected(gw)
        msgs = await sub.wait_for(lambda ms: {"gw-conn/available_datapoints", "gw-conn/heartbeat"}
                                  <= {t for t, *_ in ms}, 10)
        avail = json.loads([p for t, p, _r, _q in msgs if t == "gw-conn/available_datapoints"][-1])
        assert set(avail["sensor"]) == {"d0__p0000", "d0__p0001", "d0__p0002", "d0__setpoint"}
        assert set(avail["actuator"]) == {"d0__setpoint"}
        hb = json.loads([p for t, p, _r, _q in msgs if t == "gw-conn/heartbeat"][-1])
        assert hb["next_heartbeats_timestamp"] - hb["this_heartbeats_timestamp"] == 1000
        # the API service publishes the (retained) datapoint map
        dmap = {"sensor": {"d0__p0001": "gw-conn/messages/17/value"},
                "actuator": {"gw-conn/messages/18/value": "d0__setpoint"}}
        await publish(sub, "gw-conn/datapoint_map", json.dumps(dmap), retain=True)
        with trio.fail_after(5):
            while gw.connectors["up"].instance._bem_map != dmap:
                await trio.sleep(0.02)
        driver(gw).produce(30)
        msgs = await sub.wait_count(10, lambda t: t == "gw-conn/messages/17/value")
        vals = [json.loads(p) for t, p, _r, _q in msgs if t == "gw-conn/messages/17/value"]
        assert set(vals[0]) == {"value", "timestamp"} and isinstance(vals[0]["value"], str)
        assert [int(v["value"]) for v in vals] == sorted(int(v["value"]) for v in vals)
        assert not [t for t, *_ in msgs if t.startswith("gatewayd/") and t.endswith("/value")]
        # actuator value message -> points.write
        await publish(sub, "gw-conn/messages/18/value", json.dumps({"value": "23.5", "timestamp": 1}))
        with trio.fail_after(5):
            while gw.points.points["d0/setpoint"].value != 23.5:
                await trio.sleep(0.02)
        # the map survives a restart (kept in state.db)
        with trio.fail_after(5):
            while gw.state.kv_get("connector:up", "bemcom_map") != dmap:
                await trio.sleep(0.02)
        await publish(sub, "gw-conn/datapoint_map", b"", retain=True)
