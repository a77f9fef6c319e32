"""COV in the ``bacnet`` driver: SubscribeCOV / SubscribeCOVProperty, renewal at ``cov_renew``
of the lifetime, silence detection (polling meanwhile) and incoming notifications."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import trio

from .device import _objects_n
from .reading import ObjectRead
from .stack import BacnetError

if TYPE_CHECKING:
    from .device import _Dev

class CovMixin:
    """COV subscriptions; part of :class:`~.driver.BacnetDriver`."""

    def _cov_mode(self, d: _Dev, o: ObjectRead) -> str:
        """How an object's present-value is subscribed (its other properties are always polled)."""
        modes = {self._point(pid).binding.get("cov") or d.s["cov"]
                 for pid, prop, idx in o.points if prop == "present-value" and idx is None}
        return modes.pop() if len(modes) == 1 else "off"

    def _point(self, pid: str):
        dev, name = pid.split("/", 1)
        return self.config.devices[dev].points[name]

    def _cov_increment(self, o: ObjectRead) -> float | None:
        for pid, _prop, _idx in o.points:
            inc = self._point(pid).binding.get("cov_increment")
            if inc is not None:
                return inc
        return None

    async def _subscribe(self, d: _Dev, oid: str, sub: dict, lifetime: int | None) -> None:
        stack = self.stacks[d.network]
        d.requests += 1
        self.stats["requests"] += 1
        await self.aio.run(partial(stack.subscribe, d.address, d.pid, oid, d.s["cov_confirmed"], lifetime,
                                   "present-value" if sub["mode"] == "property" else None, sub.get("increment")))

    async def _cov_loop(self, d: _Dev, wanted: dict[str, ObjectRead]) -> None:
        """Subscribe, renew at ``cov_renew`` x lifetime, watch for silence; poll what is not covered."""
        s = self.config.settings
        lifetime = int(d.s["cov_lifetime"])
        log = self.ctx.device_log(d.id)
        for oid, o in wanted.items():
            d.subs[oid] = {"mode": self._cov_mode(d, o), "state": "new", "increment": self._cov_increment(o),
                           "last": None, "subscribed": None, "notifications": 0, "renewals": 0}
        while True:
            t0 = trio.current_time()
            for oid, sub in d.subs.items():
                # the device may notify before its ack reaches us: expect the notification first
                sub["awaiting"] = True
                try:
                    await self._subscribe(d, oid, sub, lifetime)
                    if sub["state"] in ("active", "pending"):
                        sub["renewals"] += 1
                    sub["subscribed"] = trio.current_time()
                    if sub["state"] != "active":
                        sub["state"] = "pending" if sub["awaiting"] else "active"
                except (BacnetError, TypeError, ValueError) as e:
                    sub["awaiting"] = False
                    if not isinstance(e, BacnetError):  # could not even encode the request: poll it
                        log.error("cannot subscribe to %s: %s", oid, e)
                        sub["state"] = "refused"
                    elif e.kind in ("timeout", "transport"):
                        if sub["state"] == "active":
                            sub["state"] = "failed"
                        log.debug("subscribing %s failed: %s", oid, e)
                    else:
                        if sub["state"] != "refused":
                            log.warning("device refused COV on %s (%s): polling it", oid, e)
                        sub["state"] = "refused"
            self._show(d)
            # silence check: every (re)subscription must bring a notification
            with trio.move_on_after(s["cov_silence"]):
                while any(sub.get("awaiting") and sub["state"] in ("pending", "active") for sub in d.subs.values()):
                    await d.cov_event.wait()
            went_silent = []
            for oid, sub in d.subs.items():
                if sub.get("awaiting") and sub["state"] in ("pending", "active"):
                    if not sub.get("silent"):
                        went_silent.append(oid)
                    sub["state"] = "silent"
                    sub["silent"] = True
                sub["awaiting"] = False
            if went_silent:  # once per device and round, only for objects not already known silent
                log.warning("no COV notification within %gs of subscribing for %s: polling %s (%s)",
                            s["cov_silence"], _objects_n(len(went_silent)),
                            "it" if len(went_silent) == 1 else "them", ", ".join(went_silent))
            d.cov_rounds += 1
            self._show(d)
            self._bump()
            await trio.sleep_until(t0 + lifetime * s["cov_renew"])

    def _on_cov(self, net, address, pid, oid, values, confirmed):
        self.stats["cov_notifications"] += 1
        d = self.by_pid.get((net, pid))
        if d is None:
            return
        sub = d.subs.get(oid)
        o = d.objects.get(oid)
        if o is None or sub is None:
            return
        sub["notifications"] += 1
        sub["last"] = trio.current_time()
        sub["awaiting"] = False
        d.cov_event.set()
        d.cov_event = trio.Event()
        if sub.get("silent"):  # silent before, whatever a renewal made of its state meanwhile
            sub["silent"] = False
            d.cov_resumed.append(oid)
            if len(d.cov_resumed) == 1 and self._nursery is not None:
                self._nursery.start_soon(self._report_resumed, d)
        if sub["state"] in ("pending", "silent", "failed"):
            sub["state"] = "active"
            self._show(d)
        props = {(k, None): (v, None) for k, v in values.items()}
        n = self._apply(o, props, self.sink.now())
        d.values += n
        self.stats["values"] += n
        self._bump()

    async def _report_resumed(self, d: _Dev) -> None:
        """One log line per device when silent COV subscriptions come back: wait until every silent
        object has notified again, or ``cov_silence`` has passed, then log how many resumed."""
        with trio.move_on_after(self.config.settings["cov_silence"]):
            while any(sub.get("silent") for sub in d.subs.values()):
                await d.cov_event.wait()
        resumed, d.cov_resumed = d.cov_resumed, []
        still = sum(1 for sub in d.subs.values() if sub.get("silent"))
        self.ctx.device_log(d.id).info("COV notifications resumed for %s (of %d subscribed)%s",
                                       _objects_n(len(resumed)), len(d.subs),
                                       f"; {still} still silent, polled" if still else "")
        d.cov_resumed_reports += 1
        self._bump()

    async def _cancel_all_subscriptions(self) -> None:
        for d in self.devs.values():
            for oid, sub in d.subs.items():
                if sub["state"] in ("active", "pending", "silent"):
                    try:
                        await self._subscribe(d, oid, sub, None)
                        sub["state"] = "cancelled"
                    except BacnetError:
                        pass
