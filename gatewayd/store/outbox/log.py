"""The outbox log: append, stage and commit, the caps (drop oldest) and compaction.

:class:`Outbox` is the store; its cursor side (cursors, reads, wake-ups) is
:class:`~gatewayd.store.outbox.cursor.CursorSide` and its on-disk format is in
:mod:`gatewayd.store.outbox.blocks`.  Semantics, caps and durability are
described in the :mod:`gatewayd.store.outbox` docstring.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import apsw
import trio

from .._util import Interner
from ..db import BaseStore, Database
from .blocks import (BLOCK_OVERHEAD, BLOCK_RAW_BYTES, MIGRATIONS, PAGE_SIZE, Entry, _delete_blocks, _encode_block,
                     _head, _INSERT, _tail)
from .cursor import CursorSide, OutboxCursor

__all__ = ["ENTRY_MEMORY", "RESERVE_AHEAD", "WAL_MIN_BUDGET", "Outbox"]

_seq = attrgetter("seq")

log = logging.getLogger("gatewayd.outbox")

#: Estimated bytes of memory one staged entry holds besides its payload (the Entry tuple,
#: its seq and ts objects, the list slot): :attr:`Outbox.staged_bytes` counts with it.
ENTRY_MEMORY = 176

#: The least share of ``max_bytes`` given to the WAL (on disk).
WAL_MIN_BUDGET = 32 * 1024

#: Seqs reserved ahead of the committed head for staged entries (persisted): after an unclean
#: stop the next seq starts past them, so a seq a connector may have sent is never reused.
RESERVE_AHEAD = 1_000_000


class Outbox(CursorSide, BaseStore):
    """The outbox store.  See the :mod:`gatewayd.store.outbox` docstring for semantics and durability.

    ``path`` is the file (``None`` with ``memory=True``); ``max_age`` (seconds)
    and ``max_bytes`` are the caps (``None``: unbounded).  ``block_entries``
    is the most entries stored per block (one row); ``compact_chunk`` and
    ``drop_chunk`` bound the blocks deleted per transaction.  ``clock`` gives
    "now" in epoch seconds for ``max_age`` and ``oldest_age`` (tests pass a
    fake one).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        memory: bool = False,
        max_age: float | None = None,
        max_bytes: int | None = None,
        block_entries: int = 1024,
        compact_chunk: int = 64,
        drop_chunk: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_age is not None and not max_age > 0:
            raise ValueError(f"max_age must be > 0 seconds or None, got {max_age!r}")
        if max_bytes is not None and not max_bytes > 0:
            raise ValueError(f"max_bytes must be > 0 or None, got {max_bytes!r}")
        if not 1 <= block_entries <= 65535:
            raise ValueError(f"block_entries must be 1..65535, got {block_entries!r}")
        self.max_age = max_age
        self.block_entries = block_entries
        self.compact_chunk = compact_chunk
        self.drop_chunk = drop_chunk
        self.clock = clock
        self._keys = Interner("entry_key", 1)
        self._kinds = Interner("entry_kind", 0)
        self._waiters: list[tuple[trio.Event, Any]] = []
        self._lock = threading.Lock()
        self._episode: dict[str, Any] | None = None
        self._cache: OrderedDict[int, list[Entry]] = OrderedDict()
        self._cache_lock = threading.Lock()
        # On disk, max_bytes bounds the files (database + WAL): a quarter is the WAL's share (kept by
        # checkpointing after commits), the rest bounds the pages in use in the database file.
        self.db = None  # type: ignore[assignment]
        self._memory = memory
        self.max_bytes = max_bytes
        wal_budget = self._wal_budget if not memory else None
        self.db = Database(path, "outbox", MIGRATIONS, memory=memory, page_size=PAGE_SIZE,
                           autocheckpoint=1000 if wal_budget is None
                           else max(8, min(1000, wal_budget // PAGE_SIZE // 2)),
                           wal_max_bytes=wal_budget)
        self._head = self.db.read_now(self._load)
        self._staged: list[Entry] = []  # visible, not yet committed; seqs _head+1 .. _vhead (gaps: dropped)
        self._unstaged: list[tuple] = []  # beyond the reservation: committed (and seen) at the next commit
        #: ``(first, last)`` seqs skipped at open because the last stop was unclean, else None
        self.skipped: tuple[int, int] | None = None
        self._reserved = self._head if memory else self.db.write_sync(self._open_txn, RESERVE_AHEAD)
        self._head = self.db.read_now(_head)
        self._vhead = self._head
        self._pending_acks: dict[str, int] = {}  # cursor name -> acked seq beyond the committed head
        self._commit_lock = trio.Lock()
        self.staged_dropped = 0
        self._stage_thread: int | None = None
        self._staged_bytes = 0
        #: compaction never deletes entries after this seq (None: no limit). The recorder sets it
        #: to the seq up to which history.db has the samples, so it can rebuild them after a kill.
        self.keep_after: int | None = None

    @property
    def max_bytes(self) -> int | None:
        """The size cap (see the module docstring); settable on a live outbox."""
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int | None) -> None:
        self._max_bytes = value
        memory = self._memory
        self._data_budget = value
        wal_budget = None
        if value is not None and not memory:
            wal_budget = max(WAL_MIN_BUDGET, value // 4)
            self._data_budget = max(value - wal_budget, value // 2)
        self._wal_budget = wal_budget
        if getattr(self, "db", None) is not None:
            self.db._wal_max_bytes = wal_budget

    def _open_txn(self, conn: apsw.Connection, ahead: int) -> int:
        head, reserved = conn.execute("SELECT head, reserved FROM meta").fetchall()[0]
        if reserved > head:  # the last stop was unclean: staged entries may have been sent with these seqs
            log.info("outbox %s: the last stop was unclean (or dropped uncommitted entries); new entries start "
                     "after seq %d (seqs %d..%d may have been sent uncommitted and are never reused)", self.path, reserved, head + 1, reserved)
            conn.execute("UPDATE cursor SET acked = ? WHERE acked >= ?", (reserved, head))
            self.skipped = (head + 1, reserved)
            head = reserved
        conn.execute("UPDATE meta SET head = ?, reserved = ?", (head, head + ahead))
        return head + ahead

    def close(self) -> None:
        """Close the store; a clean close releases the seq reservation (nothing staged is pending)."""
        if not self.db.memory and not self._staged and not self._unstaged and not self.db._closed:
            try:
                # seqs of staged entries dropped on a full disk (drop_staged) may have been sent: keep them
                vhead = self._vhead
                self.db.write_sync(lambda c: c.execute("UPDATE meta SET reserved = max(head, ?)", (vhead,)))
            except Exception as e:  # a full disk must not stop the shutdown; the next open skips the seqs
                log.warning("outbox %s: could not release the seq reservation at close: %s", self.path, e)
        super().close()

    def _load(self, conn: apsw.Connection) -> int:
        self._keys.load(conn)
        self._kinds.load(conn)
        return _head(conn)

    @property
    def head(self) -> int:
        """The seq of the newest entry ever appended or staged (0 before the first)."""
        return self._vhead

    @property
    def committed_head(self) -> int:
        """The seq of the newest committed (durable) entry."""
        return self._head

    @property
    def staged(self) -> int:
        """Entries staged (or held beyond the reservation) and not yet committed."""
        return len(self._staged) + len(self._unstaged)

    @property
    def staged_bytes(self) -> int:
        """Estimated memory held by staged entries (payloads + :data:`ENTRY_MEMORY` each)."""
        return self._staged_bytes

    # -- append ------------------------------------------------------------
    def _append_txn(self, conn: apsw.Connection, entries: Sequence[tuple], now: float,
                    first_seq: int | None = None) -> tuple:
        pk: dict[str, int] = {}
        pkind: dict[str, int] = {}
        keys, kinds = self._keys, self._kinds
        key_ids, kind_ids = keys.ids, kinds.ids
        head = _head(conn)
        if first_seq is not None:  # staged entries keep the seqs readers already saw (a gap: dropped ones)
            if first_seq <= head:
                raise ValueError(f"outbox: staged seq {first_seq} is not after the head {head}")
            head = first_seq - 1
        seq = head
        size = 0
        rows = []
        ts_l: list[int] = []
        kind_l: list[int] = []
        key_l: list[int] = []
        pay_l: list[bytes] = []
        raw = 0

        def flush() -> None:
            nonlocal size
            data = _encode_block(ts_l, kind_l, key_l, pay_l)
            accounted = len(data) + BLOCK_OVERHEAD
            size += accounted
            rows.append((seq - len(ts_l) + 1, seq, ts_l[0], max(ts_l), accounted, data))
            ts_l.clear(), kind_l.clear(), key_l.clear(), pay_l.clear()

        for ts, kind, key, payload in entries:
            k = key_ids.get(key)
            if k is None:
                k = keys.id_in_txn(conn, key, pk)
            kd = kind_ids.get(kind)
            if kd is None:
                kd = kinds.id_in_txn(conn, kind, pkind)
                if kd > 0xFFFF:
                    raise ValueError("outbox: more than 65536 distinct kinds")
            if payload.__class__ is not bytes:
                if not isinstance(payload, (bytes, bytearray, memoryview)):
                    raise TypeError(f"outbox payload must be bytes, got {type(payload).__name__}")
                payload = bytes(payload)
            seq += 1
            ts_l.append(round(ts * 1000))
            kind_l.append(kd)
            key_l.append(k)
            pay_l.append(payload)
            raw += len(payload)
            if len(ts_l) >= self.block_entries or raw >= BLOCK_RAW_BYTES:
                flush()
                raw = 0
        if ts_l:
            flush()
        # caps first, keeping room for the new blocks: on disk they then reuse the freed pages
        # instead of growing the file past max_bytes
        dropped, reason, _more, size_now = self._enforce_txn(conn, now, self.drop_chunk, size)
        conn.executemany(_INSERT, rows)
        n = seq - head
        conn.execute("UPDATE meta SET head = ?, bytes = bytes + ?, appended = appended + ?", (seq, size, n))
        if first_seq is not None and not self.db.memory:
            conn.execute("UPDATE meta SET reserved = max(reserved, ?)", (seq + RESERVE_AHEAD,))
        return seq, pk, pkind, dropped, reason, size_now + size

    def _appended(self, result: tuple) -> int:
        seq, pk, pkind, dropped, reason, size_now = result
        self._keys.commit(pk)
        self._kinds.commit(pkind)
        if seq > self._head:
            self._head = seq
        if self._head > self._vhead:
            self._vhead = self._head
        self._episode_update(dropped, reason, size_now)
        self._notify()
        return seq

    def stage(self, entries: Sequence[tuple[float, str, str, bytes]]) -> int:
        """Make ``(ts, kind, key, payload)`` entries visible to cursors now, durable at the
        next :meth:`commit_staged`; returns the seq of the last one. Never blocks."""
        if not entries:
            return self._vhead
        self._stage_thread = threading.get_ident()
        seq = self._vhead
        room = self._reserved - seq if not self.db.memory else len(entries)
        if self._unstaged or room < len(entries):  # beyond the reservation: visible at the next commit
            cut = max(0, room) if not self._unstaged else 0
            self._unstaged.extend(entries[cut:])
            self._staged_bytes += sum(ENTRY_MEMORY + len(e[3]) for e in entries[cut:])
            entries = entries[:cut]
        out = self._staged
        size = 0
        for ts, kind, key, payload in entries:
            if payload.__class__ is not bytes:
                if not isinstance(payload, (bytes, bytearray, memoryview)):
                    raise TypeError(f"outbox payload must be bytes, got {type(payload).__name__}")
                payload = bytes(payload)
            seq += 1
            size += len(payload)
            out.append(Entry(seq, round(ts * 1000) / 1000, kind, key, payload))
        self._staged_bytes += size + ENTRY_MEMORY * len(entries)
        self._vhead = seq
        self._notify()
        return seq

    def _staged_between(self, after: int, upto: int) -> int:
        """How many staged entries have ``after < seq <= upto`` (staged seqs ascend, with gaps)."""
        if upto <= after:
            return 0
        staged = self._staged if threading.get_ident() == self._stage_thread else list(self._staged)
        return bisect_right(staged, upto, key=_seq) - bisect_right(staged, after, key=_seq)

    def drop_staged(self, keep: int) -> int:
        """Drop the oldest staged entries beyond ``keep`` (commits keep failing: disk full);
        their seqs are never reused. Returns how many were dropped."""
        n = self.staged - keep
        if n <= 0:
            return 0
        k = min(n, len(self._staged))
        self._staged_bytes -= sum(ENTRY_MEMORY + len(e.payload) for e in self._staged[:k])
        self._staged_bytes -= sum(ENTRY_MEMORY + len(e[3]) for e in self._unstaged[: n - k])
        del self._staged[:k]
        del self._unstaged[: n - k]
        self.staged_dropped += n
        return n

    def drop_staged_bytes(self, max_bytes: int) -> int:
        """Drop the oldest staged entries until :attr:`staged_bytes` <= ``max_bytes``; returns how many."""
        if self._staged_bytes <= max_bytes:
            return 0
        excess = self._staged_bytes - max_bytes
        n = 0
        for e in self._staged:
            if excess <= 0:
                break
            excess -= ENTRY_MEMORY + len(e.payload)
            n += 1
        if excess > 0:
            for e in self._unstaged:
                if excess <= 0:
                    break
                excess -= ENTRY_MEMORY + len(e[3])
                n += 1
        return self.drop_staged(self.staged - n)

    def _commit_rows(self) -> tuple[int, int, list, int]:
        staged, unstaged = self._staged, self._unstaged
        first = staged[0].seq if staged else self._vhead + 1
        rows = [(e.ts, e.kind, e.key, e.payload) for e in staged]
        rows += unstaged
        return len(staged), len(unstaged), rows, first

    def _committed(self, ns: int, nu: int, result: tuple) -> None:
        self._staged_bytes -= sum(ENTRY_MEMORY + len(e.payload) for e in self._staged[:ns])
        self._staged_bytes -= sum(ENTRY_MEMORY + len(e[3]) for e in self._unstaged[:nu])
        del self._staged[:ns]  # (entries staged meanwhile stay)
        del self._unstaged[:nu]
        self._appended(result)
        self._reserved = max(self._reserved, self._head + RESERVE_AHEAD)

    async def commit_staged(self) -> int:
        """Write every staged entry in one transaction; returns the committed head.

        On failure (disk full, I/O error) the entries stay staged and the error is raised.
        """
        async with self._commit_lock:
            if not self.staged:
                return self._head
            ns, nu, rows, first = self._commit_rows()
            result = await self.db.write(self._append_txn, rows, self.clock(), first)
            self._committed(ns, nu, result)
            await self._flush_pending_acks()
            return self._head

    def commit_staged_sync(self) -> int:
        """Blocking :meth:`commit_staged` (plain threads, tests)."""
        if not self.staged:
            return self._head
        ns, nu, rows, first = self._commit_rows()
        result = self.db.write_sync(self._append_txn, rows, self.clock(), first)
        self._committed(ns, nu, result)
        for name, seq in list(self._pending_acks.items()):
            self.db.write_sync(OutboxCursor(self, name)._ack_txn, min(seq, self._head))
            if seq <= self._head:
                self._pending_acks.pop(name, None)
        return self._head

    async def _flush_pending_acks(self) -> None:
        for name, seq in list(self._pending_acks.items()):
            await self.db.write(OutboxCursor(self, name)._ack_txn, min(seq, self._head))
            if seq <= self._head:
                self._pending_acks.pop(name, None)

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
        if self.staged or self._vhead != self._head:
            self.stage(entries)  # after what is staged, in seq order
            return await self.commit_staged()
        result = self._appended(await self.db.write(self._append_txn, entries, self.clock()))
        self._vhead = max(self._vhead, self._head)
        return result

    def append_sync(self, entries: Sequence[tuple[float, str, str, bytes]]) -> int:
        """Blocking :meth:`append` (plain threads, tests, the kill -9 helper)."""
        if not entries:
            return self._head
        if self.staged or self._vhead != self._head:
            self.stage(entries)
            return self.commit_staged_sync()
        result = self._appended(self.db.write_sync(self._append_txn, entries, self.clock()))
        self._vhead = max(self._vhead, self._head)
        return result

    # -- caps and compaction -------------------------------------------------
    def _enforce_txn(self, conn: apsw.Connection, now: float, limit: int, reserve: int = 0
                     ) -> tuple[int, str, bool, int]:
        """Drop the oldest blocks beyond the caps, at most ``limit`` blocks.

        On disk the size is the database pages in use (the WAL has its own share of
        ``max_bytes``); in memory it is the accounted bytes. ``reserve`` is added to it:
        the bytes about to be appended in this transaction. Returns (entries dropped,
        reason, more to drop, size after without the reserve).
        """
        budget = self._data_budget
        if budget is not None and not self.db.memory:
            pages, free, page_size = (conn.execute(f"PRAGMA {p}").fetchall()[0][0]
                                      for p in ("page_count", "freelist_count", "page_size"))
            size = (pages - free) * page_size + reserve
        else:
            size = conn.execute("SELECT bytes FROM meta").fetchall()[0][0] + reserve
        if self.max_age is None and (budget is None or size <= budget):
            return 0, "", False, size - reserve
        cutoff = None if self.max_age is None else round((now - self.max_age) * 1000)
        reasons: set[str] = set()
        freed = n = 0
        cut = None
        more = False
        rows = conn.execute("SELECT first, last, ts_max, bytes FROM block ORDER BY first LIMIT ?", (limit + 1,))
        try:
            for i, (first, last, ts_max, nbytes) in enumerate(rows):
                too_big = budget is not None and size - freed > budget
                too_old = cutoff is not None and ts_max < cutoff
                if not (too_big or too_old):
                    break
                if i == limit:
                    more = True
                    break
                reasons.add("max_bytes" if too_big else "max_age")
                freed += nbytes
                n += last - first + 1
                cut = last
        finally:
            rows.close()
        if cut is None:
            return 0, "", False, size - reserve
        _delete_blocks(conn, cut, freed, n, dropped=True)
        return n, "+".join(sorted(reasons)), more, size - freed - reserve

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
            elif self._episode is not None and (self._data_budget is None or size <= 0.9 * self._data_budget):
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
            when = self.clock() if now is None else now
            n, reason, more, size = await self.db.write(self._enforce_txn, when, self.drop_chunk)
            self._episode_update(n, reason, size)
            total += n
            if not more:
                return total

    def enforce_caps_sync(self, now: float | None = None) -> int:
        """Blocking :meth:`enforce_caps`."""
        total = 0
        while True:
            when = self.clock() if now is None else now
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
        if upto is None:
            return 0, False
        if self.keep_after is not None:
            upto = min(upto, self.keep_after)
        rows = conn.execute(
            "SELECT last - first + 1, last, bytes FROM block WHERE last <= ? ORDER BY first LIMIT ?", (upto, limit + 1)
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        if not rows:
            return 0, False
        n = sum(r[0] for r in rows)
        _delete_blocks(conn, rows[-1][1], sum(r[2] for r in rows), n, dropped=False)
        return n, more

    async def compact(self) -> int:
        """Delete every entry acked by all cursors, in bounded transactions; returns the count."""
        total = 0
        while True:
            n, more = await self.db.write(self._compact_txn, self.compact_chunk)
            total += n
            if not more:
                return total

    # -- status --------------------------------------------------------------
    def status(self, now: float | None = None) -> dict[str, Any]:
        """Counters for ``gatewayctl``: the log and, per cursor, its position.

        ``{"head", "tail", "entries", "bytes", "blocks", "max_bytes", "max_age",
        "appended", "dropped", "dropping", "memory", "cursors": {name: {"acked",
        "backlog", "oldest_age", "delivered", "dropped", "head"}}}``.
        """
        when = self.clock() if now is None else now

        def q(conn: apsw.Connection) -> dict[str, Any]:
            head, size, appended, dropped = conn.execute("SELECT head, bytes, appended, dropped FROM meta").fetchall()[
                0
            ]
            tail = _tail(conn)
            blocks = conn.execute("SELECT count(*) FROM block").fetchall()[0][0]
            names = [n for (n,) in conn.execute("SELECT name FROM cursor ORDER BY name")]
            return {
                "head": head,
                "tail": tail,
                "entries": conn.execute("SELECT coalesce(sum(last - first + 1), 0) FROM block").fetchall()[0][0],
                "bytes": size,
                "disk_bytes": self.db.disk_bytes(),
                "blocks": blocks,
                "max_bytes": self.max_bytes,
                "max_age": self.max_age,
                "appended": appended,
                "dropped": dropped,
                "dropping": self.dropping,
                "memory": self.db.memory,
                "cursors": {n: self._cursor_row(conn, n, when) for n in names},
            }

        return self.db.read_now(q)

