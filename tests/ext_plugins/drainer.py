"""A connector outside gatewayd that uses the shutdown grace (``Connector.drain``).

While running it sends (acks) one entry per ``pace``, so a backlog builds up.
``drain()`` sends everything up to the outbox head and records what it saw in
``DRAINED[connector_id]``; with ``hang = true`` it never finishes, so the daemon
must cancel it when the grace is over (recorded as ``cancelled``).
"""

import trio

from gatewayd.plugin import Bool, Connector, Duration, Key, Schema, hookimpl

DRAINED: dict[str, dict] = {}


class Drainer(Connector):
    settings_schema = Schema({"pace": Key(Duration(min=0.001), 0.05), "hang": Key(Bool(), False)})

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        self.cur = await self.ctx.open_cursor()
        task_status.started()
        while True:
            await self.cur.wait_for_data()
            batch = self.cur.read(1)
            if batch:
                await self.cur.ack(batch[-1].seq)
            await trio.sleep(self.config.settings["pace"])

    async def drain(self):
        rec = DRAINED.setdefault(self.config.id, {})
        rec.update(called=True, backlog_at_start=self.cur.backlog(), head=self.ctx.gateway.outbox.head)
        try:
            if self.config.settings["hang"]:
                await trio.sleep_forever()
            while self.cur.position() < self.ctx.gateway.outbox.head:
                batch = self.cur.read(100)
                await self.cur.ack(batch[-1].seq)
            rec["done"] = True
        except trio.Cancelled:
            rec["cancelled"] = True
            raise


@hookimpl
def gatewayd_register(registry):
    registry.add_connector("drainer", Drainer)
