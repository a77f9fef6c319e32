"""Polling in the ``bacnet`` driver: finding each device, the per-device loop, and reading
with ReadPropertyMultiple batches (shrunk on segmentation aborts) or ReadProperty."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from .config import norm_objid
from .device import flags_of
from .reading import Batch, ObjectRead, plan_batches
from .stack import BacnetError

if TYPE_CHECKING:
    from .device import _Dev

class PollingMixin:
    """Device loop and reads; part of :class:`~.driver.BacnetDriver`."""

    def _objects(self, d: _Dev) -> dict[str, ObjectRead]:
        objs: dict[str, ObjectRead] = {}
        for p in d.cfg.points.values():
            if not p.enabled:
                continue
            b = p.binding
            oid = norm_objid(b["object"])
            o = objs.get(oid)
            if o is None:
                o = objs[oid] = ObjectRead(oid)
            o.add(p.id, b["property"], b.get("index"))
        return objs

    async def _resolve(self, d: _Dev, health) -> None:
        """Find the device (ranged Who-Is when no address) and learn its max APDU/segmentation."""
        stack = self.stacks[d.network]
        timeout = self.config.settings["who_is_timeout"]
        while True:
            d.resolved = trio.Event() if not d.resolved.is_set() else d.resolved
            if d.max_apdu is not None and d.segmentation is not None and d.address:
                return
            try:
                with trio.move_on_after(timeout):
                    await self.aio.run(stack.who_is, d.instance, d.instance, d.address)
                    await d.resolved.wait()
            except BacnetError as e:
                self.log.debug("Who-Is for %s failed: %s", d.id, e)
            if d.address and (d.max_apdu is None or d.segmentation is None):
                # no I-Am (some devices only answer broadcasts): ask the device object
                try:
                    res = await self._rpm_or_rp(d, [(f"device,{d.instance}",
                                                     ["max-apdu-length-accepted", "segmentation-supported"])])
                    for _o, prop, _i, v, err in res:
                        if err is None and prop == "max-apdu-length-accepted" and d.max_apdu is None:
                            d.max_apdu = int(v)
                        if err is None and prop == "segmentation-supported" and d.segmentation is None:
                            d.segmentation = {"segmented-both": "both", "segmented-transmit": "transmit",
                                              "segmented-receive": "receive"}.get(v, "none")
                    d.max_apdu = d.max_apdu or 480
                    d.segmentation = d.segmentation or "none"
                    return
                except BacnetError as e:
                    delay = health.failure(f"{e.kind}: {e.reason}")
                    self._count_error(e)
            else:
                if d.address:
                    return
                delay = health.failure(f"no I-Am from device {d.instance} on network {d.network}")
            await trio.sleep(delay)

    async def _device_loop(self, d: _Dev) -> None:
        health = self.sink.health(d.id)
        d.objects = self._objects(d)
        await self._resolve(d, health)
        self._show(d)
        cov_wanted = {oid: o for oid, o in d.objects.items() if self._cov_mode(d, o) != "off"}
        async with trio.open_nursery() as n:
            if cov_wanted:
                n.start_soon(self._cov_loop, d, cov_wanted)
            next_t = trio.current_time()
            while True:
                objs = self._poll_set(d)
                delay = None
                if objs:
                    try:
                        await self._poll(d, objs)
                        health.success()
                        d.missed = 0
                    except BacnetError as e:
                        self._count_error(e)
                        delay = health.failure(f"{e.kind}: {e.reason}")
                        self.ctx.device_log(d.id).debug("poll failed (%s), retry in %.1fs", e, delay)
                d.cycles += 1
                self._bump()
                if delay is not None:
                    await trio.sleep(min(delay, max(d.s["poll_interval"], 2.0)))
                    next_t = trio.current_time()
                    continue
                next_t += d.s["poll_interval"]
                now = trio.current_time()
                if next_t < now:
                    next_t = now + d.s["poll_interval"]
                await trio.sleep_until(next_t)

    def _count_error(self, e: BacnetError) -> None:
        self.stats["errors"] += 1
        if e.kind == "timeout":
            self.stats["timeouts"] += 1

    def _seg_can_send(self, d: _Dev) -> bool:
        return d.segmentation in ("both", "transmit")

    async def _poll(self, d: _Dev, objs: list[ObjectRead]) -> None:
        ts = self.sink.now()
        if d.read_mode == "rp":
            await self._poll_rp(d, objs, ts)
            return
        batches = plan_batches(objs, d.max_apdu or 480, self._seg_can_send(d), d.batch_cap,
                               max_segments=d.s["rpm_segments"])
        queue = list(batches)
        while queue:
            b = queue.pop(0)
            try:
                res = await self._rpm(d, b.specs())
            except BacnetError as e:
                if e.kind == "reject" and e.reason == "unrecognized-service" or \
                        e.kind == "error" and e.reason in ("service-request-denied", "unrecognized-service"):
                    self.ctx.device_log(d.id).warning("device refused ReadPropertyMultiple (%s): using "
                                                      "ReadProperty from now on", e.reason)
                    d.read_mode = "rp"
                    await self._learn(d, read_mode="rp")
                    await self._poll_rp(d, [o for bb in [b] + queue for o in bb.objects], ts)
                    return
                if e.kind == "abort" and e.reason in ("segmentation-not-supported", "apdu-too-long",
                                                      "buffer-overflow") and len(b.objects) > 1:
                    cap = max(1, len(b.objects) // 2)
                    self.ctx.device_log(d.id).warning("device answered %s to %d objects: batches of %d from now "
                                                      "on", e.reason, len(b.objects), cap)
                    d.batch_cap = min(d.batch_cap, cap)
                    await self._learn(d, batch_cap=d.batch_cap)
                    half = len(b.objects) // 2
                    queue[:0] = [Batch(b.objects[:half]), Batch(b.objects[half:])]
                    continue
                if e.kind in ("error", "reject", "abort") and len(b.objects) > 1:
                    # e.g. a whole-request error for one unknown object: read the members one by one
                    queue[:0] = [Batch([o]) for o in b.objects]
                    continue
                if e.kind in ("error", "reject", "abort"):
                    for pid in b.objects[0].point_ids():
                        self.sink.fault(pid, str(e))
                    continue
                raise
            self._deliver(d, res, ts)

    async def _rpm(self, d: _Dev, specs) -> list:
        stack = self.stacks[d.network]
        d.requests += 1
        self.stats["requests"] += 1
        return await self.aio.run(stack.read_multiple, d.address, specs)

    async def _rpm_or_rp(self, d: _Dev, specs) -> list:
        if d.read_mode != "rp":
            try:
                return await self._rpm(d, specs)
            except BacnetError as e:
                if e.kind == "timeout" or e.kind == "transport":
                    raise
        out = []
        stack = self.stacks[d.network]
        for oid, props in specs:
            for p in props:
                prop, idx = (p if isinstance(p, (tuple, list)) else (p, None))
                d.requests += 1
                self.stats["requests"] += 1
                try:
                    out.append((oid, prop, idx, await self.aio.run(stack.read, d.address, oid, prop, idx), None))
                except BacnetError as e:
                    if e.kind in ("timeout", "transport"):
                        raise
                    out.append((oid, prop, idx, None, f"{e.error_class or e.kind}/{e.reason}"))
        return out

    async def _poll_rp(self, d: _Dev, objs: list[ObjectRead], ts) -> None:
        stack = self.stacks[d.network]
        res = []
        for o in objs:
            for prop, idx in o.props():
                d.requests += 1
                self.stats["requests"] += 1
                try:
                    v = await self.aio.run(stack.read, d.address, o.oid, prop, idx)
                    res.append((o.oid, prop, idx, v, None))
                except BacnetError as e:
                    if e.kind in ("timeout", "transport"):
                        raise
                    res.append((o.oid, prop, idx, None, f"{e.error_class or e.kind}/{e.reason}"))
        self._deliver(d, res, ts)

    def _deliver(self, d: _Dev, res: list, ts) -> None:
        self.stats["properties"] += len(res)
        by_obj: dict[str, dict] = {}
        for oid, prop, idx, value, err in res:
            by_obj.setdefault(oid, {})[(prop, idx)] = (value, err)
        n = 0
        for oid, props in by_obj.items():
            o = d.objects.get(oid)
            if o is None:
                continue
            n += self._apply(o, props, ts)
        d.values += n
        self.stats["values"] += n

    def _apply(self, o: ObjectRead, props: dict, ts) -> int:
        """Deliver one object's properties to its points; returns values delivered."""
        sf = props.get(("status-flags", None))
        flags = flags_of(sf[0]) if sf and sf[1] is None else ()
        status = "remote-fault" if "fault" in flags else None
        n = 0
        for pid, prop, idx in o.points:
            got = props.get((prop, idx))
            if got is None:
                continue
            value, err = got
            if err is not None:
                self.sink.fault(pid, f"device answered {err}")
                continue
            if isinstance(value, list) and idx is None and prop != "present-value":
                value = str(value)
            self.sink.update(pid, value, ts=ts, flags=flags if prop == "present-value" else (), status=status)
            n += 1
        return n

    @staticmethod
    def _poll_set(d: _Dev) -> list[ObjectRead]:
        """What a poll cycle reads: everything but the present-values an active subscription covers."""
        out = []
        for oid, o in d.objects.items():
            if d.subs.get(oid, {}).get("state") != "active":
                out.append(o)
                continue
            rest = [pt for pt in o.points if not (pt[1] == "present-value" and pt[2] is None)]
            if rest:
                out.append(ObjectRead(oid, rest))
        return out
