"""Driver type ``fails_at_start``: its ``run()`` raises before reporting started, every time (like a
BACnet driver whose UDP port is taken), until the file named by ``heal_file`` exists."""

import os

import trio

from gatewayd.plugin import Driver, Key, Schema, Str, hookimpl


class FailsAtStart(Driver):
    settings_schema = Schema({"heal_file": Key(Str(), None)})

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        heal = self.config.settings["heal_file"]
        if heal is None or not os.path.exists(heal):
            raise OSError(98, "cannot bind 0.0.0.0:47808: Address already in use")
        task_status.started()
        await trio.sleep_forever()

    async def write(self, point, value):
        return value


@hookimpl
def gatewayd_register(registry):
    registry.add_driver("fails_at_start", FailsAtStart)
