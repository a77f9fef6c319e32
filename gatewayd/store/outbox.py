"""``outbox.db``: the durable, append-only log every northbound connector reads.

The recorder appends entries in batched transactions; each connector instance
owns a named, persisted cursor.  A connector reads a batch from its cursor
(non-destructive), sends it upstream, and only after the upstream acknowledged
it calls :meth:`OutboxCursor.ack`: acking seq N acknowledges everything <= N.
After a reconnect or a restart it simply reads again from its last ack, so
delivery is at-least-once and nothing acknowledged upstream is ever re-sent
from a later position.

Storage.  An entry is ``(seq, ts, kind, key, payload)``.  Sequence numbers are
assigned here, contiguous and never reused (the head lives in a one-row
``meta`` table).  Entries are stored in **blocks**: one row per up to
``block_entries`` consecutive entries of one append (``first``/``last`` seq,
first and newest ts, accounted bytes, data).  The data is column-wise (ts
deltas in ms, interned kind and key ids, payload lengths, then the payloads)
and zlib-compressed.  Why blocks: a row per entry measured ~31 bytes on disk
for an 11-byte payload, i.e. ~75 bytes written per value once WAL and
checkpoint had each written it (over the 60-byte budget); a block brings a
recorder-style value (``[21.53,"ok"]``) to ~6 bytes on disk and ~19 bytes
written per value.  Blocks are immutable, so decoded blocks are cached for
readers.  Blocks are deleted only as a prefix (caps and compaction), so the
live entries are exactly ``tail..head`` and counts are arithmetic, never
``COUNT(*)``.

Caps and the drop policy.  On disk, ``max_bytes`` bounds the files: a
quarter of it (at least 32 KiB) is the WAL's share, kept by a smaller
auto-checkpoint interval and a TRUNCATE checkpoint after any commit that leaves
the -wal file larger; the rest bounds the database pages in use (page_count -
freelist_count), checked *before* each append with room for the new blocks, so
they reuse the freed pages and the file stays under it.  Measured
(``bench/stores.py``): a 256 KiB cap that is binding (a connector that never
acks) keeps the files at ~233 KiB; dropping and the frequent checkpoints cost
~169 bytes written per value instead of ~96 in 100-entry batches.  A memory
outbox counts the accounted size instead (compressed block bytes +
:data:`BLOCK_OVERHEAD` per block, a running total in ``meta``, also shown as
``bytes`` in :meth:`Outbox.status` next to ``disk_bytes``).  ``max_age``
bounds the age of the oldest entry (entry ts vs ``clock()``).  They are
enforced in the same transaction as each append and by
:meth:`Outbox.enforce_caps` (call it periodically so old entries age out when
nothing is appended).  The policy is **drop oldest**, by whole
blocks: the oldest blocks are deleted while the size is over ``max_bytes`` or
the block's newest entry is older than ``max_age`` (so no entry younger than
``max_age`` is dropped for age; an old entry behind a younger block waits for
that block).  Every cursor that had not acked a dropped entry has its
``dropped`` counter raised by the number it missed and its position moved past
them.  The first drop of an episode logs ONE warning on the logger
``gatewayd.outbox``; the episode ends (one info line with the count) at the
first cap check that drops nothing while the size is back under 90 % of
``max_bytes``.

Compaction: blocks acked by every cursor are deleted in bounded chunks (in the
ack transaction and by :meth:`Outbox.compact`).  With no cursor at all,
entries are kept (bounded by the caps) so a connector configured later can
start from ``"oldest"``.

Staging (latency without flash wear).  :meth:`Outbox.stage` gives entries their
seqs in memory and makes them visible to cursors at once (``read_after``,
``wait_for_data``); :meth:`Outbox.commit_staged` writes everything staged in
one transaction.  The recorder stages every batch of events as it arrives and
commits once per flush interval, so a connector sends a value within
milliseconds while the flash sees one commit per second.  A staged entry is
not durable: kill -9 before its commit loses it from the outbox (a connector
may already have sent it: at-least-once is kept, nothing committed is lost).
An ack beyond the committed head is persisted up to it at once and the rest
when the entries are committed.  :meth:`append` is stage + commit.  Seqs are
never reused: ``meta.reserved`` (persisted at open and with every staged
commit) bounds the seqs staged entries can take, and opening a file whose last
stop was unclean starts after it (cursors that had acknowledged everything
committed move past the gap).  Counters (a cursor's ``delivered`` and
``dropped``, ``ack``'s result) count stored entries, never seq distance, so a
gap is counted nowhere: for every cursor ``delivered + dropped + backlog``
equals the entries appended since it was created.

Durability: WAL + synchronous=FULL; an ``append`` or ``ack`` that returned
survives kill -9 and power loss.  ``memory=True`` keeps the whole outbox in
RAM instead: nothing is written to flash and **everything (entries, cursor
positions, counters) is lost on restart** — for boxes that must not write
flash, accepting loss of undelivered data on every restart or power cut.

Flash wear (measured by ``bench/stores.py`` on ext4, write_bytes from
/proc/self/io, WAL + checkpoint included): 1000-entry appends write ~19 bytes
per value (~6 on disk); draining (read + ack every 500, compaction included)
writes ~16 more.  Every commit costs ~6-7 KiB whatever its size (the block's
pages, the meta row, b-tree pages, each written to the WAL and again at
checkpoint), so 100-entry appends write ~96 bytes/value and 10-entry appends
~680: the recorder should append in batches of hundreds (seconds of data), not
per event.  1 KiB pages keep that per-commit cost small.  Acks write the cursor
row and delete fully acked blocks; freed pages are reused, so the file does not
grow while connectors keep up.

Threading: appends, acks and cap enforcement run on the store's writer thread;
``read``/``backlog``/``status`` are small inline reads of a WAL snapshot.  One
process owns an outbox file; ``wait_for_data`` only sees appends made through
this object.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from operator import attrgetter
import os
import sys
import threading
import time
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import apsw
import trio

from ._util import Interner
from .db import BaseStore, Database, Migration

__all__ = ["Entry", "Outbox", "OutboxCursor"]

_seq = attrgetter("seq")

log = logging.getLogger("gatewayd.outbox")

#: Bytes accounted per block (one row) on top of its compressed data for ``max_bytes``.
BLOCK_OVERHEAD = 40

#: A block is closed after this many payload bytes (before compression).
BLOCK_RAW_BYTES = 64 * 1024

#: zlib level for blocks: 1 is ~2.5x faster than 6 for ~20 % more bytes.
COMPRESS_LEVEL = 1

#: Decoded blocks kept per outbox (readers re-read the block their cursor is in).
CACHE_BLOCKS = 8

#: Estimated bytes of memory one staged entry holds besides its payload (the Entry tuple,
#: its seq and ts objects, the list slot): :attr:`Outbox.staged_bytes` counts with it.
ENTRY_MEMORY = 176

#: The least share of ``max_bytes`` given to the WAL (on disk).
WAL_MIN_BUDGET = 32 * 1024

#: Page size for new files: 1 KiB pages measured 19 vs 29 bytes written per value
#: (1000-entry appends) and 96 vs 155 (100-entry appends) against 4 KiB pages.
PAGE_SIZE = 1024


class Entry(NamedTuple):
    """One outbox entry as read by a connector."""

    seq: int
    ts: float
    kind: str
    key: str
    payload: bytes


_V1 = f"""
CREATE TABLE block(
    first INTEGER PRIMARY KEY,
    last INTEGER NOT NULL,
    ts_first INTEGER NOT NULL,
    ts_max INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    data BLOB NOT NULL
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
    block_overhead INTEGER NOT NULL
);
INSERT INTO meta(id, head, bytes, appended, dropped, block_overhead) VALUES (0, 0, 0, 0, 0, {BLOCK_OVERHEAD});
"""

MIGRATIONS: list[Migration] = [
    Migration(1, _V1, "block, entry_kind, entry_key, cursor, meta"),
    Migration(2, "ALTER TABLE meta ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0;",
              "meta.reserved: seqs that staged entries may have used (never reused after a crash)"),
]

#: Seqs reserved ahead of the committed head for staged entries (persisted): after an unclean
#: stop the next seq starts past them, so a seq a connector may have sent is never reused.
RESERVE_AHEAD = 1_000_000

_INSERT = "INSERT INTO block(first, last, ts_first, ts_max, bytes, data) VALUES(?, ?, ?, ?, ?, ?)"
_LITTLE = sys.byteorder == "little"


def _le(a: array) -> bytes:
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _unle(typecode: str, raw: bytes | memoryview) -> array:
    a = array(typecode)
    a.frombytes(raw)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        a.byteswap()
    return a


def _encode_block(ts_ms: list[int], kinds: list[int], keys: list[int], payloads: list[bytes]) -> bytes:
    """Column-wise block: ts deltas (i64), kinds (u16), keys (u32), lengths (u32), payloads; zlib."""
    base = ts_ms[0]
    raw = b"".join(
        (
            _le(array("q", [t - base for t in ts_ms])),
            _le(array("H", kinds)),
            _le(array("I", keys)),
            _le(array("I", [len(p) for p in payloads])),
            *payloads,
        )
    )
    return zlib.compress(raw, COMPRESS_LEVEL)


def _decode_block(first: int, last: int, ts_first: int, data: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """Inverse of :func:`_encode_block`: [(seq, ts_ms, kind_id, key_id, payload)]."""
    n = last - first + 1
    raw = memoryview(zlib.decompress(data))
    o1, o2, o3, o4 = 8 * n, 10 * n, 14 * n, 18 * n
    deltas = _unle("q", raw[:o1])
    kinds = _unle("H", raw[o1:o2])
    keys = _unle("I", raw[o2:o3])
    lengths = _unle("I", raw[o3:o4])
    out = []
    pos = o4
    for i in range(n):
        end = pos + lengths[i]
        out.append((first + i, ts_first + deltas[i], kinds[i], keys[i], bytes(raw[pos:end])))
        pos = end
    return out


def _tail(conn: apsw.Connection) -> int | None:
    """The seq of the oldest stored entry (None when empty)."""
    return conn.execute("SELECT min(first) FROM block").fetchall()[0][0]


def _head(conn: apsw.Connection) -> int:
    return conn.execute("SELECT head FROM meta").fetchall()[0][0]


def _stored_between(conn: apsw.Connection, after: int, upto: int) -> int:
    """How many entries are stored with ``after < seq <= upto``.

    Counting stored entries, not seq distance: seqs have gaps (an unclean stop skips the
    reserved seqs, staged entries dropped on a full disk keep theirs), and a gap was never
    delivered nor dropped.  Blocks hold at most 65535 entries, so the one holding ``after + 1``
    starts after ``after - 65535``: the primary key bounds the scan.
    """
    if upto <= after:
        return 0
    return conn.execute(
        "SELECT coalesce(sum(min(last, ?2) - max(first, ?1 + 1) + 1), 0) FROM block "
        "WHERE first > ?1 - 65536 AND first <= ?2 AND last > ?1",
        (after, upto),
    ).fetchall()[0][0]


def _delete_blocks(conn: apsw.Connection, cut: int, freed: int, n: int, *, dropped: bool) -> None:
    """Delete the blocks ending at or before ``cut`` (a prefix); as a drop, charge the cursors."""
    if dropped:  # each cursor behind ``cut`` missed the entries stored between its position and ``cut``
        behind = conn.execute("SELECT name, acked FROM cursor WHERE acked < ?", (cut,)).fetchall()
        for name, acked in behind:
            conn.execute("UPDATE cursor SET dropped = dropped + ?, acked = ? WHERE name = ?",
                         (_stored_between(conn, acked, cut), cut, name))
    conn.execute("DELETE FROM block WHERE last <= ?", (cut,))
    if dropped:
        conn.execute("UPDATE meta SET bytes = bytes - ?, dropped = dropped + ?", (freed, n))
    else:
        conn.execute("UPDATE meta SET bytes = bytes - ?", (freed,))


class Outbox(BaseStore):
    """The outbox store.  See the module docstring for semantics and durability.

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
