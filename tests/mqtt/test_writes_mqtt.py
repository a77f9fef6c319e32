"""Write limits and refusal audit for MQTT commands, against a real Mosquitto (gatewayd/writes.py):
a command over MQTT takes the same checks as points.write over RPC."""

from __future__ import annotations

import json

import trio

from gatewayd.testing import rpc, run_gateway
from helpers import site
from test_commands import publish, results
from test_connector import wait_connected

CMD = """
[connectors.up.commands]
enabled = true
allow = ["d0/setpoint"]

[drivers.fast.devices.d0.points.setpoint]
writable = true
unit = "°C"
min = 5
max = 100
"""


async def test_mqtt_commands_are_refused_outside_the_write_limits_and_audited(tmp_path, broker, subscriber_factory,
                                                                            plugin_path):
    sub = subscriber_factory(broker.port, "gatewayd/test/+/+/set/result")
    async with run_gateway(tmp_path, site(broker.port, connector=CMD)) as gw:
        await wait_connected(gw)
        # the command subscription is made after CONNACK: send a good command until it is answered
        with trio.fail_after(20):
            while not results(sub):
                await publish(sub, "gatewayd/test/d0/setpoint/set", json.dumps({"value": 21.5, "priority": 16}))
                try:
                    await sub.wait_for(lambda ms: len(results(sub)) >= 1, 1)
                except (AssertionError, TimeoutError, trio.TooSlowError):
                    pass
        assert results(sub)[-1]["ok"] is True
        n = len(results(sub))
        p = gw.points.points["d0/setpoint"]
        await publish(sub, "gatewayd/test/d0/setpoint/set", json.dumps({"value": 1e300, "priority": 8, "id": "big"}))
        await publish(sub, "gatewayd/test/d0/setpoint/set", json.dumps({"value": -500, "priority": 8, "id": "cold"}))
        await sub.wait_for(lambda ms: len(results(sub)) >= n + 2, 10)
        got = {r["id"]: r for r in results(sub)[n:]}
        assert got["big"]["ok"] is False and "1e+300 °C is above the maximum 100 °C for this point" in \
            json.dumps(got["big"], ensure_ascii=False)
        assert got["cold"]["ok"] is False and "-500 °C is below the minimum 5 °C" in \
            json.dumps(got["cold"], ensure_ascii=False)
        assert p.pa.effective() == (21.5, 16) and gw.state.load_priority_arrays()["d0/setpoint"] == {16: 21.5}
        rows = await rpc(gw, "audit.list", {"target": "d0/setpoint", "limit": 2})
        assert [(r["actor"], r["ok"]) for r in rows] == [("mqtt:up", False), ("mqtt:up", False)]
