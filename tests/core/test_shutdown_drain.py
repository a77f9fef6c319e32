"""Issue 11.10: at a stop, connectors get the rest of shutdown_grace to drain.

After the drivers stopped and the recorder committed every accepted event, each
connector's ``drain()`` runs (concurrently) until it returns or the grace is over;
then connectors are cancelled.
"""

from gatewayd.store import Outbox
from gatewayd.testing import run_gateway, wait_until

SITE = """
[gateway]
id = "test"
state_dir = "{var}"
shutdown_grace = "{grace}"

[drivers.c]
type = "counter"
plugin = "ext_plugins.counter"
interval = "5ms"
[drivers.c.devices.d1]
[drivers.c.devices.d1.points.n]

[connectors.slow]
type = "drainer"
plugin = "ext_plugins.drainer"
pace = "200ms"
{more}
"""

HANG = """
[connectors.stuck]
type = "drainer"
plugin = "ext_plugins.drainer"
hang = true
"""


async def test_connectors_drain_the_backlog_within_the_grace(tmp_path):
    from ext_plugins import drainer

    drainer.DRAINED.clear()
    async with run_gateway(tmp_path, SITE.format(var=tmp_path / "var", grace="30s", more="")) as gw:
        await wait_until(gw, lambda: gw.outbox.head > 50, what="a backlog for the slow connector")
    rec = drainer.DRAINED["slow"]
    assert rec["called"] and rec["done"] and rec["backlog_at_start"] > 0
    with Outbox(tmp_path / "var" / "outbox.db") as ob:
        # everything the recorder committed was sent (acked) during the grace
        assert ob.cursor("slow").position() == ob.committed_head == rec["head"]


async def test_a_connector_still_draining_at_the_end_of_the_grace_is_cancelled(tmp_path):
    from ext_plugins import drainer

    drainer.DRAINED.clear()
    async with run_gateway(tmp_path, SITE.format(var=tmp_path / "var", grace="500ms", more=HANG)) as gw:
        await wait_until(gw, lambda: gw.outbox.head > 50, what="a backlog")
    # the stuck one got drain time and was cancelled at the deadline; the other finished meanwhile
    assert drainer.DRAINED["stuck"] == {**drainer.DRAINED["stuck"], "called": True, "cancelled": True}
    assert drainer.DRAINED["slow"].get("done")
