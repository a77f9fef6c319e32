"""The recorder stages outbox entries as events arrive: connectors see a value at once,
the flash sees one commit per flush interval, and a clean stop commits what was staged."""

from gatewayd.store import Outbox
from gatewayd.testing import run_gateway, wait_until

SITE = """
[history]
flush_interval = "60s"

[drivers.c]
type = "counter"
plugin = "ext_plugins.counter"
interval = "20ms"
[drivers.c.devices.d1.points.n]

[connectors.up]
type = "collector"
plugin = "ext_plugins.collector"
"""


async def test_a_connector_gets_values_long_before_the_commit(tmp_path):
    from ext_plugins import collector

    collector.DELIVERED.clear()
    async with run_gateway(tmp_path, SITE) as gw:
        values = lambda: [e for e in collector.DELIVERED.get("up", []) if e["kind"] == "value"]  # noqa: E731
        await wait_until(gw, lambda: len(values()) >= 20, timeout=10, what="20 values delivered")
        # delivered and acknowledged, yet the 60 s flush has not come: nothing committed so far
        assert gw.outbox.committed_head == 0 and gw.outbox.head >= 20
        assert gw.recorder.entries_written == 0
        assert [e["value"] for e in values()[:5]] == [1.0, 2.0, 3.0, 4.0, 5.0]
        status = gw.outbox.cursor("up").status()
        assert status["acked"] >= 20 and status["delivered"] >= 20
        head_at_stop = gw.outbox.head
    # the clean stop committed every staged entry and the acknowledged position
    with Outbox(tmp_path / "var" / "outbox.db") as ob:
        assert ob.skipped is None and ob.committed_head >= head_at_stop
        assert ob.cursor("up").position() >= 20
