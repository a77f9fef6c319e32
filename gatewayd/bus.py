"""The event bus: synchronous publish, bounded per-subscriber queues, no waiting.

Policy for slow consumers (the only two kinds there are):

* **durable** subscribers (the recorder, which feeds history.db and the
  outbox) get a large bound (default 500,000 events). Publishing never waits:
  drivers must never stall because a disk is slow. If a durable queue still
  overflows (the disk has been stalled for minutes), the oldest events are
  dropped, counted in ``dropped`` and logged at ERROR once per episode — that is
  data loss before commit and is reported as such.
* **live** subscribers (``points.watch`` clients, status watchers) get a small
  bound (default 1,000). When full, the oldest event is dropped and counted:
  a stalled RPC client sees a gap, never the other way round.

Connectors never subscribe to the bus for data they must not lose: they read
their own cursor of the durable outbox (see :mod:`gatewayd.store.outbox`).

Publishing is a plain function call from the trio thread (O(subscribers)); a
subscriber wakes once per burst and takes a whole batch (``get_batch``).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Callable, Iterable

import trio

from .events import Event

log = logging.getLogger("gatewayd.bus")

__all__ = ["Bus", "Subscription"]


class Subscription:
    """One subscriber's bounded queue. Use as an async iterator of batches or via :meth:`get_batch`."""

    def __init__(self, bus: "Bus", name: str, maxlen: int, durable: bool,
                 accept: Callable[[Event], bool] | None) -> None:
        self.bus = bus
        self.name = name
        self.durable = durable
        self.maxlen = maxlen
        self.accept = accept
        self._q: deque[Event] = deque()
        self._wakeup = trio.Event()
        self.dropped = 0
        self.delivered = 0
        self._overflowing = False
        self.closed = False

    def _put(self, ev: Event) -> None:
        if self.accept is not None and not self.accept(ev):
            return
        q = self._q
        if len(q) >= self.maxlen:
            q.popleft()
            self.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                (log.error if self.durable else log.warning)(
                    "subscriber %r is too slow: its queue of %d events is full, dropping oldest%s",
                    self.name, self.maxlen, " (data not yet recorded is lost)" if self.durable else "")
        q.append(ev)
        if not self._wakeup.is_set():
            self._wakeup.set()

    def _put_many(self, evs: list) -> None:
        if self.accept is not None:
            acc = self.accept
            evs = [ev for ev in evs if acc(ev)]
            if not evs:
                return
        q = self._q
        q.extend(evs)
        excess = len(q) - self.maxlen
        if excess > 0:
            for _ in range(excess):
                q.popleft()
            self.dropped += excess
            if not self._overflowing:
                self._overflowing = True
                (log.error if self.durable else log.warning)(
                    "subscriber %r is too slow: its queue of %d events is full, dropping oldest%s",
                    self.name, self.maxlen, " (data not yet recorded is lost)" if self.durable else "")
        if not self._wakeup.is_set():
            self._wakeup.set()

    def pending(self) -> int:
        return len(self._q)

    def get_nowait(self, max_items: int = 10_000) -> list[Event]:
        q = self._q
        n = min(len(q), max_items)
        out = [q.popleft() for _ in range(n)]
        if not q:
            self._wakeup = trio.Event()
            if self._overflowing:
                self._overflowing = False
                log.info("subscriber %r caught up (%d events dropped so far)", self.name, self.dropped)
        self.delivered += n
        return out

    async def get_batch(self, max_items: int = 10_000) -> list[Event]:
        """Wait until at least one event is queued, then return up to ``max_items``."""
        while not self._q:
            if self.closed:
                raise trio.EndOfChannel
            await self._wakeup.wait()
        return self.get_nowait(max_items)

    def close(self) -> None:
        """Unsubscribe; a waiting :meth:`get_batch` raises ``trio.EndOfChannel``."""
        self.closed = True
        self.bus._remove(self)
        self._wakeup.set()

    def __aiter__(self):
        return self

    async def __anext__(self) -> list[Event]:
        try:
            return await self.get_batch()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Bus:
    """Fan-out of events to subscribers. ``publish`` never blocks and never raises."""

    DURABLE_MAXLEN = 500_000
    LIVE_MAXLEN = 1_000

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self.published = 0

    def subscribe(self, name: str, *, durable: bool = False, maxlen: int | None = None,
                  accept: Callable[[Event], bool] | None = None) -> Subscription:
        """Add a subscriber. ``accept`` filters events before they are queued."""
        sub = Subscription(self, name, maxlen or (self.DURABLE_MAXLEN if durable else self.LIVE_MAXLEN),
                           durable, accept)
        self._subs.append(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        try:
            self._subs.remove(sub)
        except ValueError:
            pass

    def publish(self, ev: Event) -> None:
        self.published += 1
        for s in self._subs:
            s._put(ev)

    def publish_many(self, evs: Iterable[Event]) -> None:
        """Publish several events in order; same result as :meth:`publish` for each, cheaper."""
        evs = evs if isinstance(evs, list) else list(evs)
        if not evs:
            return
        self.published += len(evs)
        for s in self._subs:
            s._put_many(evs)

    def stats(self) -> list[dict]:
        return [{"name": s.name, "durable": s.durable, "pending": s.pending(), "maxlen": s.maxlen,
                 "delivered": s.delivered, "dropped": s.dropped} for s in self._subs]
