"""What devices teach the ``bacnet`` driver (ReadProperty fallback, smaller RPM batches, the
object count), kept in state.db across restarts and forgotten when the configuration changes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .device import _Dev

class LearnedMixin:
    """Learned device behaviour; part of :class:`~.driver.BacnetDriver`."""

    def _load_learned(self, d: _Dev) -> None:
        learned = self.ctx.kv_get(f"learned/{d.id}", {}) or {}
        if d.s["read_mode"] == "auto" and learned.get("read_mode") == "rp":
            d.read_mode = "rp"
        if learned.get("batch_cap"):
            d.batch_cap = min(d.batch_cap, int(learned["batch_cap"]))
        if learned.get("object_count") is not None:
            d.object_count = int(learned["object_count"])
        self._show(d)

    def config_digest(self) -> str:
        """A digest of this driver's whole configuration (settings, devices, points)."""
        text = json.dumps(dataclasses.asdict(self.config), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    async def _forget_if_reconfigured(self) -> None:
        """At start: when the configuration differs from the one the devices were learned under
        (a reload restarted us for a changed device, address, accepted device or any other key),
        forget everything learned; a plain daemon or crash restart keeps it."""
        digest = self.config_digest()
        stored = self.ctx.kv_get("learned_config")
        if stored == digest:
            return
        keys = [k for k, _v in self.ctx.kv_items("learned/")]
        if stored is not None and keys:
            self.log.info("configuration changed: forgetting what %s taught us (read mode, RPM batch cap, "
                          "object count)", ", ".join(k.split("/", 1)[1] for k in keys))
        for k in keys:
            await self.ctx.kv_delete(k)
        await self.ctx.kv_set("learned_config", digest)

    async def clear_learned(self, device_id: str) -> dict:
        """Forget what a device taught us (ReadProperty fallback, smaller RPM batches): the next
        cycles try ReadPropertyMultiple at the configured size again and learn afresh."""
        d = self.device(device_id)
        before = {"read_mode": d.read_mode, "batch_cap": d.batch_cap}
        d.read_mode = d.s["read_mode"]
        d.batch_cap = d.s["rpm_max_objects"]
        learned = dict(self.ctx.kv_get(f"learned/{d.id}", {}) or {})
        learned.pop("read_mode", None)
        learned.pop("batch_cap", None)
        await self.ctx.kv_set(f"learned/{d.id}", learned)
        self._show(d)
        return {"device": d.id, "forgotten": before}

    async def reloaded(self) -> None:
        """A reload that kept this instance (config unchanged) forgets learned read modes and batch caps."""
        for d in self.devs.values():
            if d.read_mode != d.s["read_mode"] or d.batch_cap != d.s["rpm_max_objects"]:
                self.log.info("reload: forgetting what %s taught us (%s, batch cap %d)", d.id, d.read_mode,
                              d.batch_cap)
                await self.clear_learned(d.id)

    async def _learn(self, d: _Dev, **fields) -> None:
        learned = dict(self.ctx.kv_get(f"learned/{d.id}", {}) or {})
        learned.update(fields)
        await self.ctx.kv_set(f"learned/{d.id}", learned)
        self._show(d)

    def _show(self, d: _Dev) -> None:
        try:
            self.sink.device_info(d.id, bacnet={
                "network": d.network, "device_instance": d.instance, "address": d.address,
                "max_apdu": d.max_apdu, "segmentation": d.segmentation, "read_mode": d.read_mode,
                "batch_cap": d.batch_cap,
                "cov": {o: s["state"] for o, s in d.subs.items()}})
        except Exception:  # the point table may not know the device (disabled driver)
            pass
