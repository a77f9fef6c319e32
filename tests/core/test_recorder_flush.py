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
[drivers.c.devices.d1]
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


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70), st.booleans(),
                 st.none(), st.text(max_size=5)),
       st.sampled_from(["ok", "stale", "fault", "down", "disabled", "unknown", "odd\"status"]),
       st.sampled_from([(), ("fault",)]))
def test_outbox_value_payload_is_the_json_of_value_and_status(value, status, flags):
    """The recorder's fast writer gives byte for byte what the JSON encoder gives, and reads back."""
    import json
    import math

    from gatewayd.events import ValueChanged
    from gatewayd.recorder import decode_entry, encode_event

    ts, kind, key, payload = encode_event(ValueChanged(1.5, "d/p", "d", "drv", value, status, None, flags))
    v = None if isinstance(value, float) and not math.isfinite(value) else value
    expected = [v, status] + ([list(flags)] if flags else [])
    assert payload == json.dumps(expected, separators=(",", ":"), ensure_ascii=False).encode()
    back = decode_entry(None, (7, ts, kind, key, payload))
    assert back["value"] == v and type(back["value"]) is type(v) and back["status"] == status
