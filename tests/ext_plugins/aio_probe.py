"""A driver outside gatewayd that awaits a real asyncio library call through the core's bridge.

It connects with ``asyncio.open_connection`` to ``host:port`` and waits for a
line; the line (as float) becomes the value of every point. The test cancels it
mid-read by stopping the gateway and checks the asyncio side was cancelled.
"""

import asyncio

import trio

from gatewayd.plugin import Driver, Int, Key, Schema, Str, hookimpl

EVENTS: list[str] = []


async def _read_line(host: str, port: int) -> bytes:
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
        EVENTS.append("connected")
        return await reader.readline()
    except asyncio.CancelledError:
        EVENTS.append("asyncio-cancelled")
        raise
    finally:
        if writer is not None:
            writer.close()
        EVENTS.append("closed")


class AioProbe(Driver):
    settings_schema = Schema({"host": Key(Str(), "127.0.0.1"), "port": Key(Int(min=1, max=65535), None)})

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        aio = await self.ctx.asyncio()
        task_status.started()
        s = self.config.settings
        while True:
            line = await aio.run(_read_line, s["host"], s["port"])
            for dev in self.config.devices.values():
                for p in dev.points.values():
                    self.sink.update(p.id, float(line))


@hookimpl
def gatewayd_register(registry):
    registry.add_driver("aio_probe", AioProbe)
