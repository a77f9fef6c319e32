"""A connector outside gatewayd: reads its outbox cursor and acks, like a real northbound link.

Delivered event dicts are kept in ``DELIVERED[connector_id]``. With ``fail = true``
it never acks (an "upstream down" connector), so its backlog grows.
"""

import trio

from gatewayd.plugin import Bool, Connector, Key, Schema, hookimpl

DELIVERED: dict[str, list] = {}


class Collector(Connector):
    settings_schema = Schema({"fail": Key(Bool(), False)})

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        cur = self.ctx.cursor
        out = DELIVERED.setdefault(self.config.id, [])
        task_status.started()
        while True:
            await cur.wait_for_data()
            if self.config.settings["fail"]:
                await trio.sleep_forever()
            batch = cur.read(500)
            if batch:
                out.extend(self.ctx.decode(e) for e in batch)
                await cur.ack(batch[-1].seq)

    def status(self):
        return {"connection": "up" if not self.config.settings["fail"] else "down"}


@hookimpl
def gatewayd_register(registry):
    registry.add_connector("collector", Collector)
