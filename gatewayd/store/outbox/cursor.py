"""Cursors: a connector's persisted position in the outbox, and the reads and waits behind it.

:class:`OutboxCursor` is what a connector holds; :class:`CursorSide` is the
part of :class:`~gatewayd.store.outbox.Outbox` that creates, lists and removes
cursors, reads entries after a position (committed blocks, then staged
entries), computes a cursor's counters and wakes the cursors waiting for data.
Acking seq N acknowledges everything <= N; delivery is at-least-once.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import apsw
import trio

from .._util import Interner
from ..db import Database
from .blocks import CACHE_BLOCKS, Entry, _decode_block, _head, _stored_between, _tail

__all__ = ["CursorSide", "OutboxCursor"]

_seq = attrgetter("seq")


class CursorSide:
    """The cursor side of the outbox: cursors, reads and wake-ups (mixed into ``Outbox``).

    It relies on the log's state, set up by ``Outbox.__init__``: the attributes
    annotated below and the two methods declared for type checkers.
    """

    db: Database
    clock: Callable[[], float]
    compact_chunk: int
    _head: int
    _vhead: int
    _staged: list[Entry]
    _unstaged: list[tuple]
    _stage_thread: int | None
    _pending_acks: dict[str, int]
    _keys: Interner
    _kinds: Interner
    _cache: OrderedDict[int, list[Entry]]
    _cache_lock: threading.Lock
    _lock: threading.Lock
    _waiters: list[tuple[trio.Event, Any]]

    if TYPE_CHECKING:  # pragma: no cover - implemented by the log

        def _compact_txn(self, conn: apsw.Connection, limit: int) -> tuple[int, bool]: ...

        def _staged_between(self, after: int, upto: int) -> int: ...

        @property
        def head(self) -> int: ...

    # -- cursors -----------------------------------------------------------
    def _create_cursor_txn(self, conn: apsw.Connection, name: str, start: str) -> None:
        if start == "oldest":
            tail = _tail(conn)
            position = _head(conn) if tail is None else tail - 1
        else:
            position = _head(conn)
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
    def _block_entries(self, conn: apsw.Connection, first: int, last: int, ts_first: int, data: bytes) -> list[Entry]:
        """Decoded entries of one block; blocks never change, so they are cached."""
        with self._cache_lock:
            got = self._cache.get(first)
            if got is not None:
                self._cache.move_to_end(first)
                return got
        key_names, kind_names = self._keys.names, self._kinds.names
        out = []
        for seq, ts, kind, key, payload in _decode_block(first, last, ts_first, data):
            k = key_names.get(key)
            if k is None:
                k = self._keys.name(conn, key)
            kd = kind_names.get(kind)
            if kd is None:
                kd = self._kinds.name(conn, kind)
            out.append(Entry(seq, ts / 1000, kd, k, payload))
        with self._cache_lock:
            self._cache[first] = out
            while len(self._cache) > CACHE_BLOCKS:
                self._cache.popitem(last=False)
        return out

    def _read_txn(
        self, conn: apsw.Connection, name: str, after: int | None, max_items: int, max_bytes: int
    ) -> list[Entry]:
        if after is None:
            row = conn.execute("SELECT acked FROM cursor WHERE name=?", (name,)).fetchall()
            if not row:
                raise KeyError(f"outbox: no cursor {name!r}")
            after = max(row[0][0], self._pending_acks.get(name, 0))
        out: list[Entry] = []
        total = 0
        # (read before the disk head: an entry committed meanwhile is on disk). On the thread that stages
        # and commits, the list cannot change under us; a reader thread gets a snapshot.
        staged = self._staged if threading.get_ident() == self._stage_thread else list(self._staged)
        n_staged = len(staged)
        disk_head = _head(conn)
        blocks = conn.execute("SELECT first, last, ts_first, data FROM block WHERE last > ? ORDER BY first", (after,))
        try:
            for first, last, ts_first, data in blocks:
                for e in self._block_entries(conn, first, last, ts_first, data)[max(0, after - first + 1) :]:
                    total += len(e.payload)
                    if len(out) >= max_items or (total > max_bytes and out):
                        return out
                    out.append(e)
        finally:
            blocks.close()
        last = max(after, disk_head)
        # staged seqs ascend: start at the first one after ``last`` instead of scanning them all
        start = bisect_right(staged, last, 0, n_staged, key=_seq)
        for e in staged[start:min(n_staged, start + max_items - len(out))]:
            total += len(e.payload)
            if total > max_bytes and out:
                break
            out.append(e)
        return out

    def _cursor_row(self, conn: apsw.Connection, name: str, now: float) -> dict[str, Any]:
        row = conn.execute("SELECT acked, delivered, dropped FROM cursor WHERE name=?", (name,)).fetchall()
        if not row:
            raise KeyError(f"outbox: no cursor {name!r}")
        acked, delivered, dropped = row[0]
        pending = self._pending_acks.get(name, 0)
        disk_head = _head(conn)
        if pending > acked:  # acknowledged upstream, persisted when those staged entries are committed
            delivered += _stored_between(conn, acked, min(pending, disk_head)) + self._staged_between(
                max(acked, disk_head), pending)
            acked = pending
        head = max(disk_head, self._vhead)
        stored = conn.execute("SELECT coalesce(sum(last - max(first, ?) + 1), 0) FROM block WHERE last > ?",
                              (acked + 1, acked)).fetchall()[0][0]
        backlog = stored + sum(1 for e in list(self._staged) if e.seq > acked) + len(self._unstaged)
        oldest = None
        if head > acked:
            block = conn.execute(
                "SELECT first, last, ts_first, data FROM block WHERE last > ? ORDER BY first LIMIT 1", (acked,)
            ).fetchall()
            if block:
                first, last, ts_first, data = block[0]
                ts = ts_first / 1000 if first > acked else self._block_entries(conn, *block[0])[acked - first + 1].ts
                oldest = now - ts
            else:
                staged = [e for e in list(self._staged) if e.seq > acked]
                if staged:
                    oldest = now - staged[0].ts
        return {
            "acked": acked,
            "backlog": backlog,
            "oldest_age": oldest,
            "delivered": delivered,
            "dropped": dropped,
            "head": head,
        }

    def read_committed(self, after: int, max_items: int = 10_000) -> list[Entry]:
        """Committed entries with seq > ``after``, oldest first (no cursor; e.g. the recorder's replay)."""

        def q(conn: apsw.Connection) -> list[Entry]:
            head = _head(conn)
            return [e for e in self._read_txn(conn, "", after, max_items, 1 << 62) if e.seq <= head]

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
                if self._vhead > pos:
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

    def __init__(self, outbox: CursorSide, name: str) -> None:
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
        head = _head(conn)
        if seq > head:
            raise ValueError(f"outbox cursor {self.name}: cannot ack {seq}, head is {head}")
        if seq <= acked:
            return 0
        n = _stored_between(conn, acked, seq)
        conn.execute("UPDATE cursor SET acked = ?, delivered = delivered + ? WHERE name = ?", (seq, n, self.name))
        self.outbox._compact_txn(conn, self.outbox.compact_chunk)
        return n

    async def ack(self, seq: int) -> int:
        """Persist that everything up to ``seq`` was acknowledged upstream.

        Returns how many entries this newly acknowledged (0 if ``seq`` is at
        or behind the current position).  Durable when it returns.  Entries
        now acked by every cursor are compacted away in the same transaction
        (at most ``compact_chunk``).
        """
        ob = self.outbox
        if seq > ob._head:  # staged entries: durable up to the committed head now, the rest at their commit
            if seq > ob._vhead:
                raise ValueError(f"outbox cursor {self.name}: cannot ack {seq}, head is {ob._vhead}")
            before = self.position()
            ob._pending_acks[self.name] = max(seq, ob._pending_acks.get(self.name, 0))
            n = ob._staged_between(max(before, ob._head), seq)
            if ob._head > before:
                n += await ob.db.write(self._ack_txn, ob._head)
            return n
        return await ob.db.write(self._ack_txn, seq)

    def ack_sync(self, seq: int) -> int:
        """Blocking :meth:`ack`."""
        ob = self.outbox
        if seq > ob._head:
            if seq > ob._vhead:
                raise ValueError(f"outbox cursor {self.name}: cannot ack {seq}, head is {ob._vhead}")
            before = self.position()
            ob._pending_acks[self.name] = max(seq, ob._pending_acks.get(self.name, 0))
            n = ob._staged_between(max(before, ob._head), seq)
            if ob._head > before:
                n += ob.db.write_sync(self._ack_txn, ob._head)
            return n
        return ob.db.write_sync(self._ack_txn, seq)

    def position(self) -> int:
        """The last acknowledged seq (an ack of staged entries counts at once)."""
        rows = self.outbox.db.read_now(
            lambda c: c.execute("SELECT acked FROM cursor WHERE name=?", (self.name,)).fetchall()
        )
        if not rows:
            raise KeyError(f"outbox: no cursor {self.name!r}")
        return max(rows[0][0], self.outbox._pending_acks.get(self.name, 0))

    def status(self, now: float | None = None) -> dict[str, Any]:
        """``{"acked", "backlog", "oldest_age", "delivered", "dropped", "head"}`` in one snapshot."""
        when = self.outbox.clock() if now is None else now
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
