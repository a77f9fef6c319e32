"""Time synchronization in the ``bacnet`` driver: on request and periodically (``time_sync``)."""

from __future__ import annotations

import trio

from .stack import BacnetError

class TimeSyncMixin:
    """(UTC)TimeSynchronization; part of :class:`~.driver.BacnetDriver`."""

    async def time_sync(self, device_ids: list[str] | None = None, utc: bool = True) -> dict:
        """Send (UTC)TimeSynchronization to the given devices (all when ``None``); per device
        ``{"ok": True, "utc"|"local": sent}`` or ``{"ok": False, "error": ...}``."""
        out = {}
        for d in self.devs.values():
            if device_ids is not None and d.id not in device_ids:
                continue
            if not d.address or not d.cfg.enabled:
                out[d.id] = {"ok": False, "error": "not found yet"}
                continue
            try:
                sent = await self.aio.run(self.stacks[d.network].time_sync, d.address, utc)
                out[d.id] = {"ok": True, "utc" if utc else "local": sent}
            except BacnetError as e:
                out[d.id] = {"ok": False, "error": str(e)}
        return out

    async def _time_sync_loop(self) -> None:
        while True:
            utc = self.config.settings["time_sync_utc"]
            res = await self.time_sync(utc=utc)
            self.stats["time_syncs"] += 1
            self.log.info("time synchronization (%s) sent to %d device(s)", "UTC" if utc else "local time",
                          sum(1 for r in res.values() if r["ok"]))
            self._bump()
            await trio.sleep(self.config.settings["time_sync_interval"])
