"""Delivery of the outbox to the broker: chunks, acknowledgements, encoding.

The :class:`Publisher` reads the connector's outbox cursor in *chunks*
(contiguous seq ranges, at most ``inflight_window`` entries not yet
acknowledged upstream), turns each chunk into messages, publishes them on the
current session and tracks which chunks the broker has acknowledged. Done
chunks advance the in-memory position in seq order; :meth:`Publisher.ack_loop`
persists it with ``cursor.ack()``.

It knows nothing about connections, commands or BEMCom: the connector hands
it a session per connection, and (in BEMCom mode) an encoder for values.
"""

from __future__ import annotations

import collections
import json
import time
from typing import Any, Callable

import trio

from .session import Session
from .topics import Filters, Template, dumps, rfc3339, value_body

__all__ = ["Publisher", "Message"]

#: one message to publish: (topic, payload, qos, retain)
Message = tuple[str, bytes, int, bool]

_loads = json.JSONDecoder().decode


class _Chunk:
    __slots__ = ("last", "n", "outstanding", "qos0_pending", "done")

    def __init__(self, last: int, n: int) -> None:
        self.last = last
        self.n = n
        self.outstanding = 0
        self.qos0_pending = False
        self.done = False


class Publisher:
    """Outbox cursor -> messages on a session, with the delivered position.

    ``settings`` are the connector's validated settings, ``templates`` its
    topic templates (by the keys of ``topics``), ``filters`` what it forwards,
    ``decode`` turns an outbox entry into an event dict. ``bemcom_encode``,
    when given, replaces the gatewayd encoding: it is called with each
    accepted event dict and the message list to append to, and returns
    whether it appended (``False`` counts the entry as filtered).
    """

    def __init__(self, settings: dict, templates: dict[str, Template], filters: Filters,
                 decode: Callable[[Any], dict],
                 bemcom_encode: Callable[[dict, list], bool] | None = None) -> None:
        self.s = settings
        self.t = templates
        self.filters = filters
        self.decode = decode
        self.bemcom_encode = bemcom_encode
        self.qos = settings["qos"]
        self.window = settings["inflight_window"]
        self.cursor: Any = None
        self.done = 0           # every entry <= done is acknowledged upstream (or filtered out)
        self.acked = 0          # ... and persisted in the outbox
        self.inflight = 0
        self.published = 0
        self.filtered = 0
        self._chunks: collections.deque[_Chunk] = collections.deque()
        self._mids: dict[int, _Chunk] = {}
        self._room = trio.Event()
        self._ack_wake = trio.Event()
        self._progress = trio.Event()  # set whenever done advances (drain waits on it)
        self._vtopics: dict[str, str] = {}
        self._vinfo: dict[str, tuple] = {}  # point -> (accepted, device, driver, unit): the value fast path

    def start(self, cursor: Any) -> None:
        """Take the outbox cursor; delivery starts after its persisted position."""
        self.cursor = cursor
        self.done = self.acked = cursor.position()

    def forget_points(self) -> None:
        """Drop the per-point caches (after a reload changed points' units, tags or devices)."""
        self._vinfo.clear()
        self._vtopics.clear()

    # ------------------------------------------------------------------ acknowledgements
    def reset_inflight(self) -> None:
        """The connection is gone: forget what was in flight (it is sent again after ``done``)."""
        self._chunks.clear()
        self._mids.clear()
        self.inflight = 0
        self._room.set()

    def on_publish(self, mid: int) -> None:
        """The broker acknowledged message ``mid`` (paho callback, trio thread)."""
        chunk = self._mids.pop(mid, None)
        if chunk is None:
            return  # a command response, the status message ...
        chunk.outstanding -= 1
        if chunk.outstanding == 0 and not chunk.qos0_pending:
            self._complete(chunk)

    def _qos0_written(self, chunk: _Chunk) -> None:
        chunk.qos0_pending = False
        if chunk.outstanding == 0:
            self._complete(chunk)

    def _complete(self, chunk: _Chunk) -> None:
        chunk.done = True
        chunks = self._chunks
        advanced = False
        while chunks and chunks[0].done:
            c = chunks.popleft()
            self.done = c.last
            self.inflight -= c.n
            advanced = True
        if advanced:
            self._ack_wake.set()
            self._room.set()
            self._progress.set()

    # ------------------------------------------------------------------ tasks
    async def run(self, session: Session) -> None:
        """Publish the outbox after ``done`` on ``session`` for as long as it lives."""
        sent = self.done
        window = self.window
        read_batch = self.s["read_batch"]
        cursor = self.cursor
        while True:
            room = window - self.inflight
            if room <= 0:
                self._room = trio.Event()
                await self._room.wait()
                continue
            entries = cursor.read_after(sent, max_items=min(room, read_batch))
            if not entries:
                await cursor.wait_for_data(sent)
                continue
            chunk = _Chunk(entries[-1].seq, len(entries))
            self._chunks.append(chunk)
            self.inflight += chunk.n
            sent = chunk.last
            mids = self._mids
            qos0 = False
            messages = self.encode(entries)
            for topic, payload, qos, retain in messages:
                mid = session.publish(topic, payload, qos, retain)
                if qos:
                    chunk.outstanding += 1
                    mids[mid] = chunk
                else:
                    qos0 = True
            self.published += len(messages)
            if qos0:
                chunk.qos0_pending = True
                session.when_drained(lambda c=chunk: self._qos0_written(c))
            elif chunk.outstanding == 0:
                self._complete(chunk)
            session.kick()
            await trio.lowlevel.checkpoint()

    async def wait_delivered(self) -> None:
        """Return once everything up to the outbox's head is acknowledged upstream."""
        cursor = self.cursor
        while self.done < cursor.outbox.head:
            self._progress = trio.Event()
            if self.done >= cursor.outbox.head:
                break
            await self._progress.wait()

    async def ack_loop(self) -> None:
        """Persist the delivered position when it advances, at most every ``ack_interval``."""
        interval = self.s["ack_interval"]
        while True:
            await self._ack_wake.wait()
            self._ack_wake = trio.Event()
            await self.persist()
            if interval:
                await trio.sleep(interval)

    async def persist(self) -> None:
        """Write the delivered position to the outbox (``cursor.ack``) if it moved."""
        done = self.done
        if done > self.acked and self.cursor is not None:
            await self.cursor.ack(done)
            self.acked = done

    # ------------------------------------------------------------------ encoding
    def encode(self, entries) -> list[Message]:
        """Messages for outbox ``entries`` (filtered entries are counted in ``filtered``)."""
        decode = self.decode
        accepts = self.filters.accepts
        out: list[Message] = []
        qos = self.qos
        seq_on = self.s["include_seq"]
        batch: dict[str, list[dict]] | None = {} if self.s["batch"] else None
        bem = self.bemcom_encode
        vinfo = self._vinfo
        retain = self.s["retain"]
        for e in entries:
            if e.kind == "value" and bem is None:
                # fast path: per-point facts cached, the payload parsed straight into the message body
                info = vinfo.get(e.key)
                if info is not None:
                    if not info[0]:
                        self.filtered += 1
                        continue
                    body = _loads(e.payload.decode())
                    ts = e.ts
                    b = {"value": body[0], "unit": info[3], "status": body[1], "ts": int(round(ts * 1000)),
                         "time": rfc3339(ts)}
                    if len(body) > 2 and body[2]:
                        b["flags"] = body[2]
                    if seq_on:
                        b["seq"] = e.seq
                    if batch is not None:
                        batch.setdefault(info[1], []).append((e.key, info[2], ts, b))
                    else:
                        out.append((self._value_topic(e.key, info[1], info[2]), dumps(b), qos, retain))
                    continue
                d = decode(e)
                vinfo[e.key] = (accepts(d), d.get("device") or e.key.split("/", 1)[0], d.get("driver"), d.get("unit"))
            else:
                d = decode(e)
            if not accepts(d):
                self.filtered += 1
                continue
            kind = d["kind"]
            if bem is not None:
                if not bem(d, out):
                    self.filtered += 1
                continue
            if kind == "value":
                pid = d["point"]
                device = d.get("device") or pid.split("/", 1)[0]
                if batch is not None:
                    batch.setdefault(device, []).append((pid, d.get("driver"), d["ts"], value_body(d, seq_on)))
                    continue
                out.append((self._value_topic(pid, device, d.get("driver")), dumps(value_body(d, seq_on)), qos, retain))
            else:
                out.append(self.event_message(d, seq_on))
        if batch:
            bmax = self.s["batch_max"]
            for device, ds in batch.items():
                for i in range(0, len(ds), bmax):
                    part = ds[i:i + bmax]
                    values = []
                    for pid, _drv, _ts, b in part:
                        b["point"] = pid.partition("/")[2]
                        values.append(b)
                    ts = max(x[2] for x in part)
                    driver = part[0][1]
                    body = {"device": device, "driver": driver, "ts": int(round(ts * 1000)),
                            "time": rfc3339(ts), "values": values}
                    out.append((self.t["batch"].render(device=device, driver=driver, event="values"),
                                dumps(body), qos, retain))
        return out

    def _value_topic(self, pid: str, device: str, driver: str | None) -> str:
        topic = self._vtopics.get(pid)
        if topic is None:
            topic = self._vtopics[pid] = self.t["value"].render(device=device, point=pid.partition("/")[2],
                                                                driver=driver, event="value")
        return topic

    def event_message(self, d: dict, seq_on: bool) -> Message:
        """The message of a non-value event ``d`` (topic by its kind, see README "Payloads")."""
        kind = d["kind"]
        ts = d.get("ts") or time.time()
        body = {k: v for k, v in d.items() if k not in ("kind", "seq", "ts", "tags")}
        body["event"] = kind
        body["ts"] = int(round(ts * 1000))
        body["time"] = rfc3339(ts)
        if seq_on:
            body["seq"] = d.get("seq")
        point = d.get("point") or ""
        dev = d.get("device") or (point.split("/", 1)[0] if point else None)
        name = point.partition("/")[2] if point else None
        retain = False
        if kind == "status":
            body["status"] = d.get("new")
            t = self.t["status"]
        elif kind in ("device_status", "device_down", "device_recovered"):
            if kind == "device_down":
                body["status"] = "down"
            elif kind == "device_recovered":
                body["status"] = "ok"
            t = self.t["device"]
            retain = self.s["retain_status"]
        elif kind.startswith("alarm"):
            t = self.t["alarm"]
        elif kind == "write":
            t = self.t["write"]
        else:
            t = self.t["event"]
        topic = t.render(device=dev, point=name, driver=d.get("driver"),
                         severity=d.get("severity") or d.get("priority") or "unknown",
                         event=d.get("name") if kind == "driver_event" else kind)
        return topic, dumps(body), self.qos, retain
