"""The recorder: the one durable consumer of the bus.

It takes events off its bus subscription in batches (one wake-up per burst),
and once per ``[history] flush_interval`` (or ``batch_size`` events) writes

* history samples (points with ``history = "cov"``: every reported value and
  status change; ``"interval"`` points are sampled every ``[history] interval``),
* outbox entries — every event — but only while at least one connector is
  configured: an outbox nobody reads would only wear the flash.

Outbox entries are *staged* as soon as their events arrive
(:meth:`gatewayd.store.Outbox.stage`: visible to connectors at once, so a value
reaches MQTT within milliseconds) and committed with the history batch: latency
does not cost flash writes. Current values are saved every
``current_save_interval`` and at shutdown, so a restart shows the last known
values (as status ``unknown`` until refreshed). Retention runs hourly.

One batch, one unit (outbox first, then history with a replay marker).
SQLite cannot commit two WAL databases atomically (an ATTACHed transaction is
atomic per file only in WAL mode), so a batch is committed to outbox.db first
and then to history.db together with ``outbox_mark`` = the outbox seq up to
which history has every event's samples. A kill -9 between the two commits
leaves outbox entries after the marker; at the next start, before any
connector runs, the recorder rebuilds their samples from those entries and
moves the marker (one log line says how many). Compaction never deletes
entries after the marker, so they are there to rebuild from. Staged entries
that were never committed may have reached a connector (at-least-once,
documented in :mod:`gatewayd.store.outbox`) but are in neither file: a kill
loses at most one flush interval that way, never a split batch.

Priority and shutdown. The recorder takes whatever the bus holds when it is
behind (up to :attr:`Recorder.CATCH_UP_MAX` events per transaction), so a
connector catching up (reading and sending on the same trio loop) slows it
down but cannot make it fall further and further behind. At a stop, after the
drivers stopped, :meth:`Recorder.drain` commits every event already accepted,
however long it takes (``shutdown_grace`` bounds connectors, not this).

Failing stores (disk full, I/O error): rows are held in memory and retried
with the next batch; what is held is bounded in bytes by ``[history]
max_held_bytes`` (samples held for history.db plus staged outbox entries);
beyond it the oldest held rows are dropped, counted per store in
``gateway.status`` (``recorder.dropped``) and logged at ERROR once per episode.
When a store is writable again one line says how many held rows were written
and how many were lost; ``last_error`` is cleared once every store works.

The outbox entry format (:func:`encode_event`, and :func:`decode_entry` which
turns an entry back into an event dict) is in :mod:`gatewayd.store.outbox.events`,
beside the outbox; both are importable from here too.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from .events import Event, StatusChanged, ValueChanged

# the outbox entry format lives beside the outbox; re-exported here for existing callers
from .store.outbox.events import decode_entry, encode_event  # noqa: F401
from .store.outbox.events import jsonable as _jsonable

if TYPE_CHECKING:  # pragma: no cover
    from .plugin import GatewayAPI

log = logging.getLogger("gatewayd.recorder")

#: Estimated memory held by one sample waiting for history.db (tuple, ts, value, list slot).
SAMPLE_MEMORY = 150


class Recorder:
    """Writes bus events to history.db and outbox.db in batched transactions (see the module docstring)."""

    #: Most events taken into one transaction while behind (catching up, draining at a stop).
    CATCH_UP_MAX = 50_000
    #: Without samples to write, the replay marker is still moved after this many outbox entries.
    MARK_EVERY = 20_000

    def __init__(self, gw: "GatewayAPI") -> None:
        self.gw = gw
        self.sub = gw.bus.subscribe("recorder", durable=True)
        self.configure(gw.config)
        self.samples_written = 0
        self.entries_written = 0
        self.batches = 0
        self.write_errors = 0
        self.last_error: str | None = None
        self._batch: list[Event] = []  # taken off the bus (and staged), not yet committed
        self._held: list = []  # samples whose history commit failed, retried with the next batch
        self._failing: dict[str, str] = {}  # what -> its last error
        #: rows dropped (lost) per store: oldest held rows beyond max_held_bytes, or unwritable at stop
        self.dropped: dict[str, int] = {"history": 0, "outbox": 0}
        self._episode: dict[str, int] = {}  # what -> rows dropped in the current failure episode
        self._dirty_current: set[str] = set()
        self._lock = trio.Lock()  # one commit at a time (batches, interval samples, drain)
        self._main = trio.CancelScope()
        self._loop_done = trio.Event()
        self._gather: trio.CancelScope | None = None
        self._mark: int | None = None  # the outbox seq history.db has every sample up to

    def configure(self, config) -> None:
        """Apply ``[history]`` and the connector list (at start and after a reload)."""
        self.hcfg = config.history
        self.outbox_on = any(c.enabled for c in config.connectors.values())

    @property
    def _marking(self) -> bool:
        ob = self.gw.outbox
        return bool(self.hcfg.enabled and self.outbox_on and ob is not None and not ob.db.memory
                    and self.gw.history is not None)

    def stats(self) -> dict:
        """``recorder`` in ``gateway.status``: counters, what is held in memory, what was lost."""
        ob = self.gw.outbox
        staged = ob.staged if ob is not None else 0
        held_bytes = len(self._held) * SAMPLE_MEMORY + (ob.staged_bytes if ob is not None else 0)
        return {"samples_written": self.samples_written, "outbox_entries_written": self.entries_written,
                "batches": self.batches, "pending": self.sub.pending() + len(self._batch),
                "write_errors": self.write_errors, "last_error": self.last_error,
                "failing": sorted(self._failing),
                "held_for_retry": len(self._held) + (staged if "outbox" in self._failing else 0),
                "held_samples": len(self._held), "staged_outbox_entries": staged,
                "held_bytes": held_bytes, "max_held_bytes": self.hcfg.max_held_bytes,
                "dropped": dict(self.dropped, before_recording=self.sub.dropped),
                "dropped_total": self.dropped["history"] + self.dropped["outbox"] + self.sub.dropped,
                "retry_dropped": self.dropped["history"] + self.dropped["outbox"],
                "dropped_before_recording": self.sub.dropped, "outbox_enabled": self.outbox_on,
                "outbox_mark": self._mark,
                "outbox_disk_bytes": ob.db.disk_bytes() if ob is not None else None}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Replay what a kill left unrecorded, then record until :meth:`drain` stops the loop."""
        async with trio.open_nursery() as n:
            await self._replay()
            n.start_soon(self._interval_loop)
            n.start_soon(self._current_loop)
            n.start_soon(self._retention_loop)
            n.start_soon(self._caps_loop)
            task_status.started()
            try:
                with self._main:
                    while True:
                        await self._take(await self.sub.get_batch(self.hcfg.batch_size))
                        # gather a flush interval's worth (or a full batch) into one transaction per store;
                        # the outbox entries are visible to connectors meanwhile (staged)
                        with trio.move_on_after(self.hcfg.flush_interval) as self._gather:
                            while len(self._batch) < self.hcfg.batch_size:
                                await self._take(await self.sub.get_batch(self.hcfg.batch_size - len(self._batch)))
                        if self.sub.pending():  # behind: take what is queued into the same transaction
                            await self._take(self.sub.get_nowait(self.CATCH_UP_MAX - len(self._batch)))
                        batch, self._batch = self._batch, []
                        with trio.CancelScope(shield=True):  # a started batch is always written whole
                            await self._write(batch)
            finally:
                self._loop_done.set()
            await trio.sleep_forever()  # (the other loops run until the gateway cancels the core)

    async def _take(self, events: list[Event]) -> None:
        self._stage(events)
        self._batch.extend(events)
        if self._failing:  # staged entries count against max_held_bytes as soon as they are held
            self._enforce_held_cap()
        await trio.lowlevel.checkpoint()

    def _stage(self, events: list[Event]) -> None:
        if self.outbox_on and events:
            try:
                rows = [encode_event(ev) for ev in events]
            except Exception:  # an unencodable event must not stop the recorder, nor cost its neighbours
                rows = []
                for ev in events:
                    try:
                        rows.append(encode_event(ev))
                    except Exception as e:
                        self._lost("outbox", 1, f"(an event that cannot be encoded: {type(e).__name__}: {e}: "
                                                f"{ev!r})")
            self.gw.outbox.stage(rows)

    def _samples(self, events: list[Event]) -> list:
        samples = []
        hist_on = self.hcfg.enabled
        dirty = self._dirty_current
        points = self.gw.points.points
        for ev in events:
            t = type(ev)
            if t is ValueChanged:
                dirty.add(ev.point)
                if hist_on:
                    p = points.get(ev.point)
                    if p is not None and p.cfg.history == "cov":
                        samples.append((ev.point, ev.ts, _jsonable(ev.value), ev.status))
            elif t is StatusChanged and hist_on:
                p = points.get(ev.point)
                if p is not None and p.cfg.history == "cov" and ev.new != "ok":
                    samples.append((ev.point, ev.ts, _jsonable(p.value), ev.new))
        return samples

    async def _write(self, events: list[Event]) -> None:
        """Commit one batch of (already staged) events: outbox first, then history with the marker."""
        await self._commit(self._samples(events))

    async def _commit(self, samples: list, *, batch: bool = True) -> None:
        async with self._lock:
            ob = self.gw.outbox
            if self._held:
                samples = self._held + samples
                self._held = []
            if batch and ob is not None and ob.staged:
                n = ob.staged
                try:
                    await ob.commit_staged()
                    self.entries_written += n
                    self._recovered("outbox", n)
                except Exception as e:
                    self._failed("outbox", e, n)
            mark = None
            if batch and self._marking:
                head = ob.committed_head
                if head != self._mark and (samples or self._mark is None or head - self._mark >= self.MARK_EVERY):
                    mark = head
            if samples or mark is not None:
                try:
                    await self.gw.history.append(samples, outbox_seq=mark)
                    self.samples_written += len(samples)
                    if mark is not None:
                        self._mark = ob.keep_after = mark
                    self._recovered("history", len(samples))
                except Exception as e:
                    self._failed("history", e, len(samples))
                    self._held = samples
            self._enforce_held_cap()
            self.batches += 1

    def _enforce_held_cap(self) -> None:
        """Drop the oldest held rows while more than ``max_held_bytes`` is held.

        Held: samples waiting for history.db, and staged outbox entries. Only a failing
        store's rows are dropped (a working outbox commits its staged entries with the next
        batch); of two failing stores the one holding more gives up its oldest rows first.
        """
        cap = self.hcfg.max_held_bytes
        ob = self.gw.outbox
        ob_bytes = ob.staged_bytes if ob is not None else 0
        h_bytes = len(self._held) * SAMPLE_MEMORY
        if h_bytes + ob_bytes <= cap:
            return
        ob_failing = ob is not None and "outbox" in self._failing

        def drop_history(target: int) -> None:
            n = min(len(self._held), -(-(len(self._held) * SAMPLE_MEMORY - max(0, target)) // SAMPLE_MEMORY))
            if n > 0:
                del self._held[:n]
                self._lost("history", n)

        if self._held and (h_bytes >= ob_bytes or not ob_failing):
            drop_history(cap - ob_bytes)
        h_bytes = len(self._held) * SAMPLE_MEMORY
        if ob_failing and h_bytes + ob.staged_bytes > cap:
            self._lost("outbox", ob.drop_staged_bytes(max(0, cap - h_bytes)))
            if self._held and h_bytes + ob.staged_bytes > cap:
                drop_history(cap - ob.staged_bytes)

    def _lost(self, what: str, n: int, why: str = "") -> None:
        """Count ``n`` rows of ``what`` as dropped; ERROR once per failure episode (or each time, with ``why``)."""
        if n <= 0:
            return
        self.dropped[what] += n
        if why:
            log.error("%s store: %d rows dropped (lost) %s; counted in gateway.status recorder.dropped", what, n, why)
            return
        first = what not in self._episode
        self._episode[what] = self._episode.get(what, 0) + n
        if first:
            log.error("%s store: %d rows dropped (lost) because %d bytes (max_held_bytes) are held in memory while "
                      "the store cannot be written: the oldest held rows go first; counted in gateway.status "
                      "recorder.dropped; logged once until the store is writable again",
                      what, n, self.hcfg.max_held_bytes)

    def _recovered(self, what: str, n: int) -> None:
        if what not in self._failing:
            return
        del self._failing[what]
        lost = self._episode.pop(what, 0)
        if lost:
            log.error("%s store writable again: %d rows written; %d rows were dropped while it failed",
                      what, n, lost)
        else:
            log.warning("%s store writable again: %d rows written, none lost", what, n)
        if not self._failing:
            self.last_error = None

    def _failed(self, what: str, e: Exception, n: int) -> None:
        self.write_errors += 1
        msg = f"{what}: {type(e).__name__}: {e}"
        if self._failing.get(what) != msg:
            log.error("could not write %d %s rows (held in memory and retried, up to max_held_bytes=%d): %s",
                      n, what, self.hcfg.max_held_bytes, f"{type(e).__name__}: {e}")
        self._failing[what] = msg
        self.last_error = msg

    async def drain(self) -> None:
        """Commit every event accepted so far (shutdown, after the drivers stopped).

        Not bounded by a deadline: it takes what the stores need. What cannot be written
        (a store still failing after a last attempt) is counted as dropped and logged at ERROR.
        """
        self._main.cancel()  # the loop ends at its next wait; a batch being written is finished first
        await self._loop_done.wait()
        while True:
            events, self._batch = self._batch, []
            more = self.sub.get_nowait(self.CATCH_UP_MAX)
            self._stage(more)
            events += more
            ob = self.gw.outbox
            if not events and not self._held and not (ob is not None and ob.staged):
                break
            failing = set(self._failing)
            await self._write(events)
            if not self.sub.pending() and failing & set(self._failing):
                break  # a store still fails: what it holds cannot be written
        ob = self.gw.outbox
        if self._held:
            n, self._held = len(self._held), []
            self._lost("history", n, f"at shutdown ({self._failing.get('history')})")
        if ob is not None and ob.staged and "outbox" in self._failing:
            self._lost("outbox", ob.drop_staged(0), f"at shutdown ({self._failing.get('outbox')})")
        total = self.dropped["history"] + self.dropped["outbox"] + self.sub.dropped
        (log.error if total else log.info)(
            "recorder stopped: every accepted event is committed unless counted here: %d samples and %d outbox "
            "entries written, %d rows dropped (history %d, outbox %d, before recording %d)",
            self.samples_written, self.entries_written, total, self.dropped["history"], self.dropped["outbox"],
            self.sub.dropped)

    async def final_flush(self) -> None:
        """Save the current values (the last step of a stop)."""
        await self._save_current()

    async def _replay(self) -> None:
        """Rebuild the samples of outbox entries history.db lacks (kill -9 between the two commits)."""
        if not self._marking:
            return
        ob, history = self.gw.outbox, self.gw.history
        try:
            mark = history.outbox_mark()
            head = ob.committed_head
            if mark is None or mark > head:  # first start with a marker, or the outbox was reset
                await history.append([], outbox_seq=head)
                self._mark = ob.keep_after = head
                return
            self._mark = ob.keep_after = mark
            if mark == head:
                return
            points = self.gw.points.points
            last: dict[str, Any] = {}
            samples = []
            after = mark
            while True:
                entries = ob.read_committed(after, 10_000)
                if not entries:
                    break
                after = entries[-1].seq
                for e in entries:
                    if e.kind not in ("value", "status"):
                        continue
                    d = decode_entry(None, e)
                    pid = d.get("point")
                    p = points.get(pid)
                    if p is None or p.cfg.history != "cov":
                        continue
                    if e.kind == "value":
                        last[pid] = d["value"]
                        samples.append((pid, e.ts, d["value"], d["status"]))
                    elif d.get("new") != "ok":
                        samples.append((pid, e.ts, last.get(pid, _jsonable(p.value)), d["new"]))
            await history.append(samples, outbox_seq=head)
            self._mark = ob.keep_after = head
            log.warning("history.db lacked the samples of outbox entries %d..%d (the last stop was unclean "
                        "between the two commits of a batch): %d samples rebuilt from the outbox",
                        mark + 1, head, len(samples))
        except Exception as e:  # a store problem at start must not stop the gateway: reported, retried later
            self._failed("history", e, 0)

    async def _interval_loop(self) -> None:
        while True:
            await trio.sleep(self.hcfg.interval)
            if not self.hcfg.enabled:
                continue
            now = time.time()
            samples = [(p.cfg.id, now, _jsonable(p.value), p.status) for p in self.gw.points.points.values()
                       if p.cfg.history == "interval" and p.value is not None]
            if samples:
                await self._commit(samples, batch=False)

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
                self._recovered("current value", len(rows))
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
                n = await self.gw.history.prune(time.time() - self.hcfg.retention)
                self._recovered("retention", n)
            except Exception as e:
                self._failed("retention", e, 0)
            await trio.sleep(3600)

    async def _caps_loop(self) -> None:
        while True:
            await trio.sleep(10)
            if self.outbox_on:
                try:
                    n = await self.gw.outbox.enforce_caps()
                    self._recovered("outbox caps", n)
                except Exception as e:
                    self._failed("outbox caps", e, 0)
