"""``outbox.db``: the durable, append-only log every northbound connector reads.

The recorder appends entries in batched transactions; each connector instance
owns a named, persisted cursor.  A connector reads a batch from its cursor
(non-destructive), sends it upstream, and only after the upstream acknowledged
it calls :meth:`OutboxCursor.ack`: acking seq N acknowledges everything <= N.
After a reconnect or a restart it simply reads again from its last ack, so
delivery is at-least-once and nothing acknowledged upstream is ever re-sent
from a later position.

Sequence numbers are assigned here, contiguous and never reused (the head is
kept in a one-row ``meta`` table, not taken from ``max(rowid)``).  Entries are
only ever deleted as a prefix (caps and compaction), so the live entries are
exactly ``tail..head`` and counts are arithmetic, never ``COUNT(*)``.

Caps and the drop policy.  ``max_bytes`` bounds the accounted size (payload
bytes + :data:`ENTRY_OVERHEAD` per entry, a running total in ``meta``, roughly
the on-disk size) and ``max_age`` bounds the age of the oldest entry (entry ts
vs now).  They are enforced in the same transaction as each append and by
:meth:`Outbox.enforce_caps` (call it periodically so old entries age out when
nothing is appended).  The policy is **drop oldest**: the oldest prefix is
deleted until both caps hold; every cursor that had not acked a dropped entry
has its ``dropped`` counter raised by the number it missed and its position
moved past them.  The first drop of an episode logs ONE warning on the logger
``gatewayd.outbox``; the episode ends (one info line with the count) at the
first cap check that drops nothing while the size is back under 90 % of
``max_bytes``.  Age is checked on the prefix: an entry with an old ts behind a
younger one waits until the entries before it go.

Compaction: entries acked by every cursor are deleted in bounded chunks (in
the ack transaction and by :meth:`Outbox.compact`).  With no cursor at all,
entries are kept (bounded by the caps) so a connector configured later can
start from ``"oldest"``.

Durability: WAL + synchronous=FULL; an ``append`` or ``ack`` that returned
survives kill -9 and power loss.  ``memory=True`` keeps the whole outbox in
RAM instead: nothing is written to flash and **everything (entries, cursor
positions, counters) is lost on restart** — for boxes that must not write
flash, accepting loss of undelivered data on every restart or power cut.

Flash wear: an entry is a ~20-byte row plus its payload (``seq`` is the rowid,
``ts`` integer milliseconds, ``kind`` and ``key`` interned small integers), in
1 KiB pages; WAL writes each row twice (WAL, then checkpoint).
``bench/stores.py`` prints bytes written per appended value; keep payloads
compact (a few bytes of JSON or a packed struct) and append in batches.

Threading: appends, acks and cap enforcement run on the store's writer thread;
``read``/``backlog``/``status`` are small inline reads of a WAL snapshot.  One
process owns an outbox file; ``wait_for_data`` only sees appends made through
this object.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import apsw
import trio

from ._util import Interner
from .db import BaseStore, Database, Migration

__all__ = ["ENTRY_OVERHEAD", "Entry", "Outbox", "OutboxCursor"]

log = logging.getLogger("gatewayd.outbox")

#: Bytes accounted per entry on top of its payload for ``max_bytes``.
ENTRY_OVERHEAD = 20

#: Page size for new files (rows are small and appended; see the module docstring).
PAGE_SIZE = 1024


class Entry(NamedTuple):
    """One outbox entry as read by a connector."""

    seq: int
    ts: float
    kind: str
    key: str
    payload: bytes


_V1 = f"""
CREATE TABLE entry(
    seq INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    key INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE entry_kind(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE entry_key(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE cursor(
    name TEXT PRIMARY KEY,
    acked INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE meta(
    id INTEGER PRIMARY KEY CHECK (id = 0),
    head INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    appended INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    entry_overhead INTEGER NOT NULL
);
INSERT INTO meta(id, head, bytes, appended, dropped, entry_overhead) VALUES (0, 0, 0, 0, 0, {ENTRY_OVERHEAD});
"""

MIGRATIONS: list[Migration] = [Migration(1, _V1, "entry, entry_kind, entry_key, cursor, meta")]

_INSERT = "INSERT INTO entry(seq, ts, kind, key, payload) VALUES(?, ?, ?, ?, ?)"
_SELECT_AFTER = "SELECT seq, ts, kind, key, payload FROM entry WHERE seq > ? ORDER BY seq LIMIT ?"


def _tail(conn: apsw.Connection) -> int | None:
    return conn.execute("SELECT min(seq) FROM entry").fetchall()[0][0]


def _size(conn: apsw.Connection, first: int, last: int) -> int:
    return conn.execute(
        "SELECT coalesce(sum(length(payload)), 0) + count(*) * ? FROM entry WHERE seq BETWEEN ? AND ?",
        (ENTRY_OVERHEAD, first, last),
    ).fetchall()[0][0]


def _delete_prefix(conn: apsw.Connection, tail: int, cut: int, *, dropped: bool) -> int:
    """Delete entries tail..cut; as a drop, charge the cursors that missed them."""
    freed = _size(conn, tail, cut)
    conn.execute("DELETE FROM entry WHERE seq <= ?", (cut,))
    n = cut - tail + 1
    if dropped:
        conn.execute("UPDATE cursor SET dropped = dropped + (? - acked), acked = ? WHERE acked < ?", (cut, cut, cut))
        conn.execute("UPDATE meta SET bytes = bytes - ?, dropped = dropped + ?", (freed, n))
    else:
        conn.execute("UPDATE meta SET bytes = bytes - ?", (freed,))
    return n


class Outbox(BaseStore):
    """The outbox store.  See the module docstring for semantics and durability.

    ``path`` is the file (``None`` with ``memory=True``); ``max_age`` (seconds)
    and ``max_bytes`` are the caps (``None``: unbounded).  ``compact_chunk``
    and ``drop_chunk`` bound the rows deleted per transaction.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        memory: bool = False,
        max_age: float | None = None,
        max_bytes: int | None = None,
        compact_chunk: int = 5000,
        drop_chunk: int = 20000,
    ) -> None:
        if max_age is not None and not max_age > 0:
            raise ValueError(f"max_age must be > 0 seconds or None, got {max_age!r}")
        if max_bytes is not None and not max_bytes > 0:
            raise ValueError(f"max_bytes must be > 0 or None, got {max_bytes!r}")
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.compact_chunk = compact_chunk
        self.drop_chunk = drop_chunk
        self._keys = Interner("entry_key", 1)
        self._kinds = Interner("entry_kind", 0)
        self._waiters: list[tuple[trio.Event, Any]] = []
        self._lock = threading.Lock()
        self._episode: dict[str, Any] | None = None
        self.db = Database(path, "outbox", MIGRATIONS, memory=memory, page_size=PAGE_SIZE)
        self._head = self.db.read_now(self._load)

    def _load(self, conn: apsw.Connection) -> int:
        self._keys.load(conn)
        self._kinds.load(conn)
        return conn.execute("SELECT head FROM meta").fetchall()[0][0]

    @property
    def head(self) -> int:
        """The seq of the newest entry ever appended (0 before the first)."""
        return self._head

    # -- append ------------------------------------------------------------
    def _append_txn(self, conn: apsw.Connection, entries: Sequence[tuple], now: float) -> tuple:
        pk: dict[str, int] = {}
        pkind: dict[str, int] = {}
        keys, kinds = self._keys, self._kinds
        key_ids, kind_ids = keys.ids, kinds.ids
        head = conn.execute("SELECT head FROM meta").fetchall()[0][0]
        seq = head
        size = 0
        rows = []
        for ts, kind, key, payload in entries:
            seq += 1
            k = key_ids.get(key)
            if k is None:
                k = keys.id_in_txn(conn, key, pk)
            kd = kind_ids.get(kind)
            if kd is None:
                kd = kinds.id_in_txn(conn, kind, pkind)
            if not isinstance(payload, bytes):
                if not isinstance(payload, (bytearray, memoryview)):
                    raise TypeError(f"outbox payload must be bytes, got {type(payload).__name__}")
                payload = bytes(payload)
            size += len(payload)
            rows.append((seq, round(ts * 1000), kd, k, payload))
        conn.executemany(_INSERT, rows)
        n = len(rows)
        conn.execute(
            "UPDATE meta SET head = ?, bytes = bytes + ?, appended = appended + ?",
            (seq, size + n * ENTRY_OVERHEAD, n),
        )
        dropped, reason, _more, size_now = self._enforce_txn(conn, now, self.drop_chunk)
        return seq, pk, pkind, dropped, reason, size_now

    def _appended(self, result: tuple) -> int:
        seq, pk, pkind, dropped, reason, size_now = result
        self._keys.commit(pk)
        self._kinds.commit(pkind)
        if seq > self._head:
            self._head = seq
        self._episode_update(dropped, reason, size_now)
        self._notify()
        return seq

    async def append(self, entries: Sequence[tuple[float, str, str, bytes]]) -> int:
        """Append ``(ts, kind, key, payload)`` entries in one transaction.

        ``ts`` is epoch seconds (stored to the millisecond), ``kind`` a short
        word (e.g. "value", "event"), ``key`` e.g. a point or device id, and
        ``payload`` bytes.  Returns the seq of the last entry (the head) once
        committed; caps are enforced in the same transaction.  Wakes every
        :meth:`OutboxCursor.wait_for_data` waiter.
        """
        if not entries:
            return self._head
        return self._appended(await self.db.write(self._append_txn, entries, time.time()))

    def append_sync(self, entries: Sequence[tuple[float, str, str, bytes]]) -> int:
        """Blocking :meth:`append` (plain threads, tests, the kill -9 helper)."""
        if not entries:
            return self._head
        return self._appended(self.db.write_sync(self._append_txn, entries, time.time()))

    # -- caps and compaction -------------------------------------------------
    def _enforce_txn(self, conn: apsw.Connection, now: float, limit: int) -> tuple[int, str, bool, int]:
        """Drop the oldest prefix beyond the caps, at most ``limit`` entries.

        Returns (dropped, reason, more_to_drop, accounted bytes after).
        """
        size = conn.execute("SELECT bytes FROM meta").fetchall()[0][0]
        if self.max_age is None and (self.max_bytes is None or size <= self.max_bytes):
            return 0, "", False, size
        tail = _tail(conn)
        if tail is None:
            return 0, "", False, size
        last = conn.execute("SELECT head FROM meta").fetchall()[0][0]
        bound = min(last, tail + limit - 1)
        cut = tail - 1
        reasons = []
        if self.max_age is not None:
            cutoff = round((now - self.max_age) * 1000)
            if conn.execute("SELECT ts FROM entry WHERE seq = ?", (tail,)).fetchall()[0][0] < cutoff:
                young = conn.execute(
                    "SELECT min(seq) FROM entry WHERE seq BETWEEN ? AND ? AND ts >= ?", (tail, bound, cutoff)
                ).fetchall()[0][0]
                cut = bound if young is None else young - 1
                reasons.append("max_age")
        if self.max_bytes is not None:
            excess = size - self.max_bytes
            if cut >= tail:
                excess -= _size(conn, tail, cut)
            if excess > 0:
                reasons.append("max_bytes")
                rows = conn.execute(
                    "SELECT seq, length(payload) FROM entry WHERE seq > ? AND seq <= ? ORDER BY seq", (cut, bound)
                )
                try:
                    for seq, length in rows:
                        cut = seq
                        excess -= length + ENTRY_OVERHEAD
                        if excess <= 0:
                            break
                finally:
                    rows.close()
        if cut < tail:
            return 0, "", False, size
        n = _delete_prefix(conn, tail, cut, dropped=True)
        size = conn.execute("SELECT bytes FROM meta").fetchall()[0][0]
        more = cut == bound and cut < last
        return n, "+".join(reasons), more, size

    def _episode_update(self, dropped: int, reason: str, size: int) -> None:
        with self._lock:
            if dropped:
                if self._episode is None:
                    self._episode = {"since": time.time(), "dropped": 0}
                    log.warning(
                        "outbox %s: %s cap reached (max_age=%s s, max_bytes=%s): dropping the oldest "
                        "entries; connectors behind lose them (counted per cursor as 'dropped'). "
                        "Logged once until the outbox is back under its caps.",
                        self.path,
                        reason,
                        self.max_age,
                        self.max_bytes,
                    )
                self._episode["dropped"] += dropped
            elif self._episode is not None and (self.max_bytes is None or size <= 0.9 * self.max_bytes):
                log.info(
                    "outbox %s: back under its caps; %d entries were dropped in %.0f s",
                    self.path,
                    self._episode["dropped"],
                    time.time() - self._episode["since"],
                )
                self._episode = None

    async def enforce_caps(self, now: float | None = None) -> int:
        """Apply ``max_age``/``max_bytes`` now (bounded transactions); returns entries dropped.

        Call it periodically (e.g. every few seconds): appends enforce the caps
        too, but nothing ages out while nothing is appended.
        """
        total = 0
        while True:
            when = time.time() if now is None else now
            n, reason, more, size = await self.db.write(self._enforce_txn, when, self.drop_chunk)
            self._episode_update(n, reason, size)
            total += n
            if not more:
                return total

    def enforce_caps_sync(self, now: float | None = None) -> int:
        """Blocking :meth:`enforce_caps`."""
        total = 0
        while True:
            when = time.time() if now is None else now
            n, reason, more, size = self.db.write_sync(self._enforce_txn, when, self.drop_chunk)
            self._episode_update(n, reason, size)
            total += n
            if not more:
                return total

    @property
    def dropping(self) -> bool:
        """True while a drop episode is going on (caps exceeded)."""
        return self._episode is not None

    def _compact_txn(self, conn: apsw.Connection, limit: int) -> tuple[int, bool]:
        upto = conn.execute("SELECT min(acked) FROM cursor").fetchall()[0][0]
        tail = _tail(conn)
        if upto is None or tail is None or upto < tail:
            return 0, False
        cut = min(upto, tail + limit - 1)
        return _delete_prefix(conn, tail, cut, dropped=False), cut < upto

    async def compact(self) -> int:
        """Delete every entry acked by all cursors, in bounded transactions; returns the count."""
        total = 0
        while True:
            n, more = await self.db.write(self._compact_txn, self.compact_chunk)
            total += n
            if not more:
                return total

    # -- cursors -----------------------------------------------------------
    def _create_cursor_txn(self, conn: apsw.Connection, name: str, start: str) -> None:
        if start == "oldest":
            tail = _tail(conn)
            position = conn.execute("SELECT head FROM meta").fetchall()[0][0] if tail is None else tail - 1
        else:
            position = conn.execute("SELECT head FROM meta").fetchall()[0][0]
        conn.execute(
            "INSERT INTO cursor(name, acked, created) VALUES(?, ?, ?) ON CONFLICT(name) DO NOTHING",
            (name, position, time.time()),
        )

    def _cursor_exists(self, name: str) -> bool:
        return bool(self.db.read_now(lambda c: c.execute("SELECT 1 FROM cursor WHERE name=?", (name,)).fetchall()))

    def cursor(self, name: str, start: str = "head") -> OutboxCursor:
        """The persisted cursor ``name`` (one per connector instance).

        A new cursor starts at the current head (it sees entries appended from
        now on) or, with ``start="oldest"``, before the oldest entry still
        stored.  An existing cursor keeps its position.  Creating one is a
        (blocking) write: use :meth:`open_cursor` from trio code.
        """
        if start not in ("head", "oldest"):
            raise ValueError(f"start must be 'head' or 'oldest', got {start!r}")
        if not self._cursor_exists(name):
            self.db.write_sync(self._create_cursor_txn, name, start)
        return OutboxCursor(self, name)

    async def open_cursor(self, name: str, start: str = "head") -> OutboxCursor:
        """:meth:`cursor` without blocking the trio loop on the create."""
        if start not in ("head", "oldest"):
            raise ValueError(f"start must be 'head' or 'oldest', got {start!r}")
        if not self._cursor_exists(name):
            await self.db.write(self._create_cursor_txn, name, start)
        return OutboxCursor(self, name)

    async def remove_cursor(self, name: str) -> bool:
        """Forget cursor ``name`` (a connector removed from the config); True if it existed.

        Entries only it held back become eligible for compaction.
        """

        def w(conn: apsw.Connection) -> bool:
            conn.execute("DELETE FROM cursor WHERE name=?", (name,))
            return conn.changes() > 0

        return await self.db.write(w)

    def cursor_names(self) -> list[str]:
        """Names of all persisted cursors, sorted."""
        return self.db.read_now(lambda c: [n for (n,) in c.execute("SELECT name FROM cursor ORDER BY name")])

    # -- reads -------------------------------------------------------------
    def _entries(self, conn: apsw.Connection, rows: Any, max_bytes: int) -> list[Entry]:
        key_names, kind_names = self._keys.names, self._kinds.names
        out: list[Entry] = []
        total = 0
        for seq, ts, kind, key, payload in rows:
            total += len(payload)
            if total > max_bytes and out:
                break
            k = key_names.get(key)
            if k is None:
                k = self._keys.name(conn, key)
            kd = kind_names.get(kind)
            if kd is None:
                kd = self._kinds.name(conn, kind)
            out.append(Entry(seq, ts / 1000, kd, k, payload))
        return out

    def _read_txn(
        self, conn: apsw.Connection, name: str, after: int | None, max_items: int, max_bytes: int
    ) -> list[Entry]:
        if after is None:
            row = conn.execute("SELECT acked FROM cursor WHERE name=?", (name,)).fetchall()
            if not row:
                raise KeyError(f"outbox: no cursor {name!r}")
            after = row[0][0]
        return self._entries(conn, conn.execute(_SELECT_AFTER, (after, max_items)), max_bytes)

    def _cursor_row(self, conn: apsw.Connection, name: str, now: float) -> dict[str, Any]:
        row = conn.execute("SELECT acked, delivered, dropped FROM cursor WHERE name=?", (name,)).fetchall()
        if not row:
            raise KeyError(f"outbox: no cursor {name!r}")
        acked, delivered, dropped = row[0]
        head = conn.execute("SELECT head FROM meta").fetchall()[0][0]
        first = conn.execute("SELECT ts FROM entry WHERE seq = ?", (acked + 1,)).fetchall()
        return {
            "acked": acked,
            "backlog": max(0, head - acked),
            "oldest_age": (now - first[0][0] / 1000) if first else None,
            "delivered": delivered,
            "dropped": dropped,
            "head": head,
        }

    def status(self, now: float | None = None) -> dict[str, Any]:
        """Counters for ``gatewayctl``: the log and, per cursor, its position.

        ``{"head", "tail", "entries", "bytes", "max_bytes", "max_age",
        "appended", "dropped", "dropping", "memory", "cursors": {name: {"acked",
        "backlog", "oldest_age", "delivered", "dropped", "head"}}}``.
        """
        when = time.time() if now is None else now

        def q(conn: apsw.Connection) -> dict[str, Any]:
            head, size, appended, dropped = conn.execute("SELECT head, bytes, appended, dropped FROM meta").fetchall()[0]
            tail = _tail(conn)
            names = [n for (n,) in conn.execute("SELECT name FROM cursor ORDER BY name")]
            return {
                "head": head,
                "tail": tail,
                "entries": 0 if tail is None else head - tail + 1,
                "bytes": size,
                "max_bytes": self.max_bytes,
                "max_age": self.max_age,
                "appended": appended,
                "dropped": dropped,
                "dropping": self.dropping,
                "memory": self.db.memory,
                "cursors": {n: self._cursor_row(conn, n, when) for n in names},
            }

        return self.db.read_now(q)

    # -- wake-ups ----------------------------------------------------------
    def _notify(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for event, token in waiters:
            try:
                token.run_sync_soon(event.set)
            except trio.RunFinishedError:  # pragma: no cover - that trio run is over
                pass

    async def _wait_beyond(self, position: int | None, cursor: OutboxCursor) -> None:
        token = trio.lowlevel.current_trio_token()
        while True:
            event = trio.Event()
            waiter = (event, token)
            with self._lock:
                self._waiters.append(waiter)
            try:
                pos = cursor.position() if position is None else position
                if self._head > pos:
                    await trio.lowlevel.checkpoint()
                    return
                await event.wait()
            finally:
                with self._lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)


class OutboxCursor:
    """A connector's position in an :class:`Outbox` (get one with :meth:`Outbox.cursor`).

    One connector instance owns one cursor name; two live objects acking the
    same name would interleave their positions.
    """

    def __init__(self, outbox: Outbox, name: str) -> None:
        self.outbox = outbox
        self.name = name

    def __repr__(self) -> str:
        return f"<OutboxCursor {self.name} at {self.position()} of {self.outbox.head}>"

    def read(self, max_items: int = 500, max_bytes: int = 1 << 20) -> list[Entry]:
        """Entries after the last acknowledged seq, oldest first (non-destructive).

        At most ``max_items`` entries and about ``max_bytes`` of payload (at
        least one entry when any is available).  Reading again without an ack
        returns the same entries: that is how a connector resends after a
        reconnect.
        """
        return self.outbox.db.read_now(self.outbox._read_txn, self.name, None, max_items, max_bytes)

    def read_after(self, seq: int, max_items: int = 500, max_bytes: int = 1 << 20) -> list[Entry]:
        """Like :meth:`read` but after ``seq`` (the last entry in flight), for pipelining.

        Entries already dropped by a cap are skipped: the result starts at the
        oldest stored entry after ``seq``.
        """
        return self.outbox.db.read_now(self.outbox._read_txn, self.name, seq, max_items, max_bytes)

    async def read_async(self, max_items: int = 500, max_bytes: int = 1 << 20) -> list[Entry]:
        """:meth:`read` on the reader thread (for very large batches)."""
        return await self.outbox.db.read(self.outbox._read_txn, self.name, None, max_items, max_bytes)

    def _ack_txn(self, conn: apsw.Connection, seq: int) -> int:
        row = conn.execute("SELECT acked FROM cursor WHERE name=?", (self.name,)).fetchall()
        if not row:
            raise KeyError(f"outbox: no cursor {self.name!r}")
        acked = row[0][0]
        head = conn.execute("SELECT head FROM meta").fetchall()[0][0]
        if seq > head:
            raise ValueError(f"outbox cursor {self.name}: cannot ack {seq}, head is {head}")
        if seq <= acked:
            return 0
        conn.execute("UPDATE cursor SET acked = ?, delivered = delivered + ? WHERE name = ?", (seq, seq - acked, self.name))
        self.outbox._compact_txn(conn, self.outbox.compact_chunk)
        return seq - acked

    async def ack(self, seq: int) -> int:
        """Persist that everything up to ``seq`` was acknowledged upstream.

        Returns how many entries this newly acknowledged (0 if ``seq`` is at
        or behind the current position).  Durable when it returns.  Entries
        now acked by every cursor are compacted away in the same transaction
        (at most ``compact_chunk``).
        """
        return await self.outbox.db.write(self._ack_txn, seq)

    def ack_sync(self, seq: int) -> int:
        """Blocking :meth:`ack`."""
        return self.outbox.db.write_sync(self._ack_txn, seq)

    def position(self) -> int:
        """The last acknowledged seq."""
        rows = self.outbox.db.read_now(
            lambda c: c.execute("SELECT acked FROM cursor WHERE name=?", (self.name,)).fetchall()
        )
        if not rows:
            raise KeyError(f"outbox: no cursor {self.name!r}")
        return rows[0][0]

    def status(self, now: float | None = None) -> dict[str, Any]:
        """``{"acked", "backlog", "oldest_age", "delivered", "dropped", "head"}`` in one snapshot."""
        when = time.time() if now is None else now
        return self.outbox.db.read_now(self.outbox._cursor_row, self.name, when)

    def backlog(self) -> int:
        """Entries appended and not yet acknowledged by this cursor."""
        return self.status()["backlog"]

    def oldest_age(self, now: float | None = None) -> float | None:
        """Seconds since the ts of the oldest unacknowledged entry (None when caught up)."""
        return self.status(now)["oldest_age"]

    @property
    def delivered(self) -> int:
        """Entries this cursor acknowledged, over its lifetime."""
        return self.status()["delivered"]

    @property
    def dropped(self) -> int:
        """Entries dropped by a cap before this cursor acknowledged them."""
        return self.status()["dropped"]

    async def wait_for_data(self, after_seq: int | None = None) -> None:
        """Return once an entry newer than ``after_seq`` exists (default: the ack position).

        Immediate if there already is one; otherwise sleeps until the next
        :meth:`Outbox.append` commits (a trio.Event, no polling).
        """
        await self.outbox._wait_beyond(after_seq, self)
