"""Issue 11.1: SIGTERM during the catch-up after a broker outage commits every accepted value.

A real ``gatewayd run`` process with 1,000 fast points, a real Mosquitto that is down
while the values are produced and comes back; SIGTERM while the MQTT connector
catches up. Every value the driver produced (accepted into the gateway) must be in
history.db and in outbox.db afterwards, whatever ``shutdown_grace`` is: the grace bounds
connectors, never the recorder's commit of accepted values.
"""

from __future__ import annotations

import importlib.util
import os
import signal

import apsw
import pytest
import trio

from gatewayd.recorder import decode_entry
from gatewayd.rpc.client import RpcClient
from gatewayd.store import Outbox
from gatewayd.testing import DaemonProcess, site_toml

pytestmark = pytest.mark.slow

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MQTT_DIR = os.path.join(TESTS, "mqtt")


def _mqtt_conftest():
    """The Mosquitto helpers of tests/mqtt (loaded by path: tests/core has its own conftest scope)."""
    spec = importlib.util.spec_from_file_location("_mqtt_conftest_for_core", os.path.join(MQTT_DIR, "conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


POINTS = 1000
TOTAL = 60_000


def _site(tmp_path, port: int) -> str:
    body = f"""
[gateway]
id = "test"
state_dir = "{tmp_path}/var"
shutdown_grace = "0s"

[history]
flush_interval = "60s"
batch_size = 100000

[drivers.fast]
type = "fastdrv"
plugin = "fastdrv"
total = {TOTAL}
per_cycle = {POINTS}
interval = "50ms"
[drivers.fast.devices.d0]
count = {POINTS}

[connectors.up]
type = "mqtt"
host = "127.0.0.1"
port = {port}
qos = 1
reconnect_min = "100ms"
reconnect_max = "300ms"
ack_interval = "50ms"
"""
    path = os.path.join(str(tmp_path), "gatewayd.toml")
    with open(path, "w") as fh:
        fh.write(site_toml(tmp_path, body))
    return path


def _status(tmp_path) -> dict:
    with RpcClient(os.path.join(str(tmp_path), "var", "gatewayd.sock"), timeout=10) as c:
        return c.call("gateway.status", {})


async def test_sigterm_during_catch_up_commits_every_accepted_value(tmp_path, monkeypatch):
    mq = _mqtt_conftest()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([MQTT_DIR, TESTS, os.environ.get("PYTHONPATH", "")]))
    broker = mq.Broker(tmp_path)  # not started: the broker is down while values are produced
    path = _site(tmp_path, broker.port)
    os.makedirs(tmp_path / "var")
    with Outbox(tmp_path / "var" / "outbox.db") as ob:
        ob.cursor("hold")  # a cursor that never acks: nothing is compacted, the test reads it all
    sub = None
    try:
        with DaemonProcess(path) as d:
            await trio.to_thread.run_sync(d.wait_ready)
            with trio.fail_after(60):  # every value produced (and accepted) while the broker is down
                while (await trio.to_thread.run_sync(_status, tmp_path))["values_ingested"] < TOTAL:
                    await trio.sleep(0.1)  # polling another process's counter: no event to await
            await trio.to_thread.run_sync(broker.start)
            sub = mq.Subscriber(broker.port, "gatewayd/+/+/+/value")
            await sub.wait_count(200, timeout=30)  # the catch-up is under way
            d.signal(signal.SIGTERM)
            code = await trio.to_thread.run_sync(d.proc.wait, 60)
            log = d.log()
        assert code == 0, log
        assert "recorder stopped: every accepted event is committed" in log and ", 0 rows dropped" in log, log
    finally:
        if sub is not None:
            sub.close()
        broker.stop()
    var = tmp_path / "var"
    conn = apsw.Connection(str(var / "history.db"))
    try:
        values = sorted(v for (v,) in conn.execute("SELECT value FROM sample"))
    finally:
        conn.close()
    assert values == list(range(1, TOTAL + 1)), f"history lacks {TOTAL - len(set(values))} values\n{log[-3000:]}"
    with Outbox(var / "outbox.db") as ob:
        assert ob.skipped is None  # a clean stop: everything staged was committed
        entries = ob.cursor("hold").read(max_items=10 * TOTAL, max_bytes=1 << 30)
    got = sorted(decode_entry(None, e)["value"] for e in entries if e.kind == "value")
    assert got == list(range(1, TOTAL + 1)), f"outbox lacks {TOTAL - len(set(got))} values"
