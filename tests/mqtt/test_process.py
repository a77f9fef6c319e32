"""``gatewayd run`` as a subprocess: Last Will on kill -9, nothing committed lost across kill -9."""

from __future__ import annotations

import collections
import json
import os

import trio

from gatewayd.store import Outbox
from gatewayd.testing import DaemonProcess, site_toml
from helpers import counters, site


def write_site(tmp_path, body: str) -> str:
    path = os.path.join(str(tmp_path), "gatewayd.toml")
    with open(path, "w") as fh:
        fh.write(site_toml(tmp_path, body))
    return path


async def test_last_will_when_gateway_dies(tmp_path, broker, subscriber_factory, plugin_path):
    sub = subscriber_factory(broker.port, "gatewayd/test/status")
    path = write_site(tmp_path, site(broker.port, connector='keepalive = "2s"'))
    with DaemonProcess(path) as d:
        await trio.to_thread.run_sync(d.wait_ready)
        await sub.wait_for(lambda ms: any(b'"online"' in p for _t, p, _r, _q in ms), 10, "online")
        d.kill()
        # the broker notices the dead TCP connection (RST on kill) and publishes the will
        msgs = await sub.wait_for(lambda ms: b'"offline"' in ms[-1][1], 10, "offline will")
    will = json.loads(msgs[-1][1])
    assert will["state"] == "offline" and will["reason"] == "connection lost"
    # retained: a late subscriber sees it too
    late = subscriber_factory(broker.port, "gatewayd/test/status")
    msgs = await late.wait_count(1)
    assert msgs[0][2] is True and b'"offline"' in msgs[0][1]


async def test_kill9_mid_stream_loses_nothing(tmp_path, broker, subscriber_factory, plugin_path):
    """kill -9 while values stream: after a restart every committed value arrives; duplicates
    are only entries the outbox had not recorded as acknowledged; no seq sent before the kill
    (values are sent as soon as they are staged, before their commit) is ever used again."""
    sub = subscriber_factory(broker.port, "gatewayd/+/+/+/value")
    body = site(broker.port, points=20, connector="qos = 1",
                driver='autostart = true\ntotal = 40000\nper_cycle = 200\ninterval = "10ms"')
    body = body.replace("autostart = false\n", "")
    path = write_site(tmp_path, body)
    outbox_path = os.path.join(str(tmp_path), "var", "outbox.db")
    with DaemonProcess(path) as d:
        await trio.to_thread.run_sync(d.wait_ready)
        await sub.wait_count(3000, timeout=20)
        d.kill()
    before_restart = len(sub.snapshot())
    ob = Outbox(outbox_path)  # opened after an unclean stop: new seqs start past the reservation
    try:
        head = ob.head
        assert ob.skipped is not None and ob.skipped[1] == head
        last = ob.skipped[0] - 1  # the last committed entry
        acked = ob.cursor("up").position()
    finally:
        ob.close()
    assert 0 < last <= head and 0 < acked <= head
    # what was delivered before the kill, by outbox seq: all below the next seq to be used
    seqs_before = [json.loads(p)["seq"] for _t, p, _r, _q in sub.snapshot()[:before_restart]]
    assert max(seqs_before) <= head
    if acked > last:  # it had acknowledged everything committed: moved past the skipped seqs
        assert acked == head
    # restart without new production: the backlog since the last persisted ack is sent again
    body2 = body.replace("total = 40000", "total = 0")
    path = write_site(tmp_path, body2)
    with DaemonProcess(path) as d:
        await trio.to_thread.run_sync(d.wait_ready)
        resent = max(0, last - acked)  # the committed entries not acknowledged at the kill
        await sub.wait_for(lambda ms: len(ms) >= before_restart + resent, 20, f"{resent} entries sent again")
        # and the gateway got the broker's PUBACKs for them (the subscriber may see a message first)
        sock = os.path.join(str(tmp_path), "var", "gatewayd.sock")

        def acked_now():
            from gatewayd.rpc.client import RpcClient

            with RpcClient(sock, timeout=10) as c:
                return c.call("connectors.status", {"connector": "up"})[0]["outbox"]["acked"]

        with trio.fail_after(20):
            while await trio.to_thread.run_sync(acked_now) < last:
                await trio.sleep(0.05)
    msgs = sub.snapshot()
    seqs = [json.loads(p)["seq"] for _t, p, _r, _q in msgs]
    ob = Outbox(outbox_path)
    try:
        assert ob.cursor("up").position() >= last
    finally:
        ob.close()
    # committed values form a prefix of the produced counter: no gap may be missing
    ks = {k for _p, k in counters(msgs)}
    assert set(range(1, max(ks) + 1)) == ks, "a committed value is missing"
    assert max(ks) >= 3000
    counts = collections.Counter(seqs)
    dups = {s: c for s, c in counts.items() if c > 1}
    assert all(s > acked for s in dups), "an entry acknowledged in the outbox was sent again"
    assert all(c == 2 for c in dups.values())
    assert len(dups) <= max(0, last - acked)  # the unacknowledged window at the kill
