"""The recorder: the one durable consumer of the bus.

It takes events off its bus subscription in batches (one wake-up per burst),
and once per ``[history] flush_interval`` (or ``batch_size`` events) writes

* history samples (points with ``history = "cov"``: every reported value and
  status change; ``"interval"`` points are sampled every ``[history] interval``),
* outbox entries — every event — but only while at least one connector is
  configured: an outbox nobody reads would only wear the flash,

each as one transaction per store. Outbox entries are *staged* as soon as their
events arrive (:meth:`gatewayd.store.Outbox.stage`: visible to connectors at
once, so a value reaches MQTT within milliseconds) and committed with the
history batch: latency does not cost flash writes. Current values are saved every
``current_save_interval`` and at shutdown, so a restart shows the last known
values (as status ``unknown`` until refreshed). Retention runs hourly.

Outbox entry format (``kind``, ``key``, ``payload``)::

    value   key = point id   payload = JSON [value, status] or [value, status, [flags]]
    other   key = point or device id, payload = JSON of the event's fields

:func:`decode_entry` turns an entry back into an event dict, adding unit, tags,
device and driver from the live point table.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import trio

from .events import Event, StatusChanged, ValueChanged, event_to_dict

if TYPE_CHECKING:  # pragma: no cover
    from .daemon import Gateway

log = logging.getLogger("gatewayd.recorder")

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str).encode
_loads = json.JSONDecoder().decode


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


#: statuses are a closed set of plain words: safe to put in JSON without escaping
_STATUS_JSON = {s: f',"{s}"]'.encode() for s in ("ok", "stale", "fault", "down", "disabled", "unknown",
                                                  "remote-fault", "remote-down", "remote-stale")}
_float_repr = float.__repr__
_int_repr = int.__repr__
_isfinite = math.isfinite


def encode_event(ev: Event) -> tuple[float, str, str, bytes]:
    """(ts, kind, key, payload) for the outbox."""
    if type(ev) is ValueChanged:
        if not ev.flags:  # the common case, written without the JSON encoder (same bytes, ~4x faster)
            tail = _STATUS_JSON.get(ev.status)
            v = ev.value
            tv = type(v)
            if tail is not None:
                if tv is float and _isfinite(v):
                    return ev.ts, "value", ev.point, b"[" + _float_repr(v).encode() + tail
                if tv is int:
                    return ev.ts, "value", ev.point, b"[" + _int_repr(v).encode() + tail
        body = [_jsonable(ev.value), ev.status]
        if ev.flags:
            body.append(list(ev.flags))
        return ev.ts, "value", ev.point, _dumps(body).encode()
    d = event_to_dict(ev)
    kind = d.pop("kind")
    d.pop("ts", None)
    key = d.get("point") or d.get("device") or d.get("driver") or ""
    return ev.ts, kind, key, _dumps(d).encode()


def decode_entry(gw: "Gateway | None", entry) -> dict:
    """Outbox entry -> event dict (``kind``, ``seq``, ``ts`` and the event's fields)."""
    seq, ts, kind, key, payload = entry[0], entry[1], entry[2], entry[3], entry[4]
    body = _loads(payload.decode())  # (str in: json.loads on bytes first sniffs the encoding)
    if kind == "value":
        d = {"kind": "value", "seq": seq, "ts": ts, "point": key, "value": body[0], "status": body[1],
             "flags": body[2] if len(body) > 2 else []}
        p = gw.points.points.get(key) if gw is not None else None
        if p is not None:
            d.update(device=p.cfg.device, driver=p.cfg.driver, unit=p.unit, tags=list(p.cfg.tags))
        else:
            d.update(device=key.split("/", 1)[0], driver=None, unit=None, tags=[])
        return d
    body.update(kind=kind, seq=seq, ts=ts)
    return body


class Recorder:
    """Writes bus events to history.db and outbox.db in batched transactions."""

    def __init__(self, gw: "Gateway") -> None:
        self.gw = gw
        self.sub = gw.bus.subscribe("recorder", durable=True)
        self.configure(gw.config)
        self.samples_written = 0
        self.entries_written = 0
        self.batches = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self._pending: list[Event] = []
        self._retry_h: list = []
        self._retry_o: list = []
        self._failing: set[str] = set()
        self.retry_dropped = 0
        self._dirty_current: set[str] = set()
        self._idle = trio.Event()
        self._idle.set()
        self._gather: trio.CancelScope | None = None

    def configure(self, config) -> None:
        self.hcfg = config.history
        self.outbox_on = any(c.enabled for c in config.connectors.values())

    def stats(self) -> dict:
        return {"samples_written": self.samples_written, "outbox_entries_written": self.entries_written,
                "batches": self.batches, "pending": self.sub.pending() + len(self._pending),
                "write_errors": self.write_errors, "last_error": self.last_error,
                "held_for_retry": len(self._retry_h) + len(self._retry_o)
                + (self.gw.outbox.staged if self.gw.outbox is not None and self._failing else 0),
                "retry_dropped": self.retry_dropped,
                "dropped_before_recording": self.sub.dropped, "outbox_enabled": self.outbox_on}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as n:
            n.start_soon(self._interval_loop)
            n.start_soon(self._current_loop)
            n.start_soon(self._retention_loop)
            n.start_soon(self._caps_loop)
            task_status.started()
            while True:
                batch = await self.sub.get_batch(self.hcfg.batch_size)
                self._idle = trio.Event()
                self._stage(batch)
                # gather a flush interval's worth (or a full batch) into one transaction per store;
                # the outbox entries are visible to connectors meanwhile (staged)
                with trio.move_on_after(self.hcfg.flush_interval) as self._gather:
                    while len(batch) < self.hcfg.batch_size:
                        more = await self.sub.get_batch(self.hcfg.batch_size - len(batch))
                        self._stage(more)
                        batch.extend(more)
                await self._write(batch, staged=True)
                if not self.sub.pending():
                    self._idle.set()

    def _stage(self, events: list[Event]) -> None:
        if self.outbox_on and events:
            try:
                self.gw.outbox.stage([encode_event(ev) for ev in events])
            except Exception as e:  # an unencodable event must not stop the recorder
                self._failed("outbox", e, len(events))

    async def _write(self, events: list[Event], staged: bool = False) -> None:
        samples = []
        hist_on = self.hcfg.enabled
        dirty = self._dirty_current
        for ev in events:
            t = type(ev)
            if t is ValueChanged:
                dirty.add(ev.point)
                if hist_on:
                    p = self.gw.points.points.get(ev.point)
                    if p is not None and p.cfg.history == "cov":
                        samples.append((ev.point, ev.ts, _jsonable(ev.value), ev.status))
            elif t is StatusChanged and hist_on:
                p = self.gw.points.points.get(ev.point)
                if p is not None and p.cfg.history == "cov" and ev.new != "ok":
                    samples.append((ev.point, ev.ts, _jsonable(p.value), ev.new))
        if self.outbox_on and not staged:
            self._stage(events)
        await self._store(samples, [], commit=True)

    #: rows kept in memory per store while it cannot be written (disk full, I/O error)
    RETRY_MAX = 500_000

    async def _store(self, samples: list, entries: list, commit: bool = False) -> None:
        # A failing store (disk full, I/O error) is reported, its rows are kept and
        # retried with the next batch (bounded by RETRY_MAX, oldest dropped and counted
        # beyond it); the daemon stays up and the other store keeps working. Staged outbox
        # entries stay staged (and visible) until a commit succeeds.
        samples = self._retry_h + samples
        entries = self._retry_o + entries
        self._retry_h, self._retry_o = [], []
        if commit and self.gw.outbox is not None and self.gw.outbox.staged:
            ob = self.gw.outbox
            n = ob.staged
            try:
                await ob.commit_staged()
                self.entries_written += n
                self._recovered("outbox")
            except Exception as e:
                self._failed("outbox", e, n)
                self.retry_dropped += ob.drop_staged(self.RETRY_MAX)
        if samples:
            try:
                await self.gw.history.append(samples)
                self.samples_written += len(samples)
                self._recovered("history")
            except Exception as e:
                self._failed("history", e, len(samples))
                self._retry_h = self._keep(samples)
        if entries:
            try:
                await self.gw.outbox.append(entries)
                self.entries_written += len(entries)
                self._recovered("outbox")
            except Exception as e:
                self._failed("outbox", e, len(entries))
                self._retry_o = self._keep(entries)
        self.batches += 1

    def _keep(self, rows: list) -> list:
        if len(rows) > self.RETRY_MAX:
            self.retry_dropped += len(rows) - self.RETRY_MAX
            rows = rows[-self.RETRY_MAX:]
        return rows

    def _recovered(self, what: str) -> None:
        if what in self._failing:
            self._failing.discard(what)
            log.warning("%s store writable again; held rows written", what)

    def _failed(self, what: str, e: Exception, n: int) -> None:
        self.write_errors += 1
        self._failing.add(what)
        msg = f"{type(e).__name__}: {e}"
        if msg != self.last_error:
            log.error("could not write %d %s rows (kept in memory, retrying): %s", n, what, msg)
        self.last_error = msg

    async def drain(self) -> None:
        """Write everything the bus still holds (shutdown)."""
        if self._gather is not None:
            self._gather.cancel()  # write the batch being gathered now, not at the end of the flush interval
        while self.sub.pending():
            await self._write(self.sub.get_nowait(self.hcfg.batch_size))
        await self._idle.wait()
        if self._retry_h or self._retry_o or (self.gw.outbox is not None and self.gw.outbox.staged):
            await self._store([], [], commit=True)

    async def final_flush(self) -> None:
        await self._save_current()

    async def _interval_loop(self) -> None:
        while True:
            await trio.sleep(self.hcfg.interval)
            if not self.hcfg.enabled:
                continue
            now = time.time()
            samples = [(p.cfg.id, now, _jsonable(p.value), p.status) for p in self.gw.points.points.values()
                       if p.cfg.history == "interval" and p.value is not None]
            if samples:
                await self._store(samples, [])

    async def _save_current(self) -> None:
        if not self._dirty_current:
            return
        pts = self.gw.points.points
        rows = []
        for pid in self._dirty_current:
            p = pts.get(pid)
            if p is not None and p.ts is not None:
                rows.append((pid, p.ts, _jsonable(p.value), p.status))
        self._dirty_current = set()
        if rows:
            try:
                await self.gw.history.save_current(rows)
            except Exception as e:
                self._failed("current value", e, len(rows))

    async def _current_loop(self) -> None:
        while True:
            await trio.sleep(self.hcfg.current_save_interval)
            await self._save_current()

    async def _retention_loop(self) -> None:
        await trio.sleep(60)
        while True:
            try:
                await self.gw.history.prune(time.time() - self.hcfg.retention)
            except Exception as e:
                self._failed("retention", e, 0)
            await trio.sleep(3600)

    async def _caps_loop(self) -> None:
        while True:
            await trio.sleep(10)
            if self.outbox_on:
                try:
                    await self.gw.outbox.enforce_caps()
                except Exception as e:
                    self._failed("outbox caps", e, 0)
