"""``history.db``: time series samples and the last known value of every point.

Layout.  Samples live in ``sample(ts, point, value, flags)``, a WITHOUT ROWID
table clustered on **(ts, point)**.  ``point`` is a small integer from the
``point`` table (``point_key TEXT UNIQUE``), cached in memory; ``flags`` packs
the interned status word and a bool marker (``status_id * 2 + is_bool``), so a
float sample is about 29 bytes on disk.  ``value`` has no declared type: ints,
floats, strings and NULL are stored as they are (bools as 0/1 plus the marker;
NaN becomes NULL, as everywhere in SQLite).  Two samples of one point with the
same ts: the later append wins.

Why (ts, point) and not (point, ts): samples arrive in time order across many
points, so with (ts, point) every batch appends at the right edge of the
b-tree and touches only a few pages, whatever the number of points.  With
(point, ts) a batch touches one leaf page per point in it.  Measured here
(1000-row batches, WAL, synchronous=FULL, 4 KiB pages, bytes written from
/proc/self/io incl. checkpoint; ``bench/stores.py`` repeats the 100-point
case with the 1 KiB pages used now: 72 vs 725 bytes/row):

====================  ============  ==================  =====================
points per batch      (ts, point)   (point, ts)         rowid + (point,ts) idx
====================  ============  ==================  =====================
10                    85 B/sample   231 B/sample        276 B/sample
100                   85 B/sample   1215 B/sample       1154 B/sample
1000                  88 B/sample   6766 B/sample       5767 B/sample
====================  ============  ==================  =====================

Flash wear decides it: (ts, point) writes 14-77x less.  The price is paid by
per-point queries, which scan every sample in the time range and filter on the
point in C: about 20 million rows/s here, i.e. ~20 ms for one point over an
hour of 100 points at 1 Hz, ~0.4 s over a day of them.  Use :meth:`HistoryStore.query_async`
(reader thread) for long ranges; ``bench/stores.py`` prints the figure.  If
long-range per-point queries on big sites become hot, the next step is a
periodic compaction of old samples into per-point chunks, not a different key.

Outbox marker: ``outbox_mark`` (one row) holds the outbox seq up to which
every event's samples are in this file; the recorder sets it in the same
transaction as each batch's samples (see :mod:`gatewayd.recorder`).

Durability: ``append`` and ``save_current`` commit one transaction per call
(WAL, synchronous=FULL): a returned ``await`` survives kill -9 and power loss.
Flash wear: ~73 bytes written per sample in 1000-row batches (a sample row is
~29 bytes on disk; WAL and the later checkpoint each write it, plus a few
partly filled pages rewritten per commit), more per sample for smaller batches
since every commit costs a few KiB; the recorder should batch (a few seconds
or up to 1000 samples per ``append``).  Samples are kept as rows, not
compressed blocks like the outbox, because they are queried by point and time
range and pruned by age.  Retention:
:meth:`HistoryStore.prune` deletes by age in bounded chunks; freed pages are
reused, the file does not shrink.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import apsw

from ._util import Interner
from .db import BaseStore, Database, Migration

__all__ = ["HistoryStore", "Sample"]

#: One sample: (point_id, ts epoch seconds, value, status).
Sample = tuple[str, float, Any, str]

_V1 = """
CREATE TABLE point(id INTEGER PRIMARY KEY, point_key TEXT NOT NULL UNIQUE);
CREATE TABLE status(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
INSERT INTO status(id, name) VALUES (0, 'ok'), (1, 'stale'), (2, 'fault'), (3, 'down'),
    (4, 'disabled'), (5, 'unknown');
CREATE TABLE sample(
    ts REAL NOT NULL,
    point INTEGER NOT NULL,
    value,
    flags INTEGER NOT NULL,
    PRIMARY KEY (ts, point)
) WITHOUT ROWID;
CREATE TABLE current(
    point INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    value,
    flags INTEGER NOT NULL
);
"""

MIGRATIONS: list[Migration] = [
    Migration(1, _V1, "point, status, sample, current"),
    Migration(2, "CREATE TABLE outbox_mark(id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL);",
              "outbox_mark: the outbox seq whose events are all in history (the recorder's replay marker)"),
]

#: Page size for new files: smaller pages mean less rewritten per commit
#: (measured 72 B/sample at 1 KiB vs 85 at 4 KiB for 1000-row batches).
PAGE_SIZE = 1024

_INSERT_SAMPLE = "INSERT OR REPLACE INTO sample(ts, point, value, flags) VALUES(?, ?, ?, ?)"
_UPSERT_CURRENT = (
    "INSERT INTO current(ts, point, value, flags) VALUES(?, ?, ?, ?) "
    "ON CONFLICT(point) DO UPDATE SET ts=excluded.ts, value=excluded.value, flags=excluded.flags "
    "WHERE excluded.ts >= current.ts"
)


class HistoryStore(BaseStore):
    """The ``history.db`` store.  ``path=None`` with ``memory=True`` for tests."""

    def __init__(self, path: str | os.PathLike[str] | None, *, memory: bool = False) -> None:
        self._points = Interner("point", 1, "point_key")
        self._status = Interner("status", 0)
        self.db = Database(path, "history", MIGRATIONS, memory=memory, page_size=PAGE_SIZE)
        self.db.read_now(self._load_interned)

    def _load_interned(self, conn: apsw.Connection) -> None:
        self._points.load(conn)
        self._status.load(conn)

    # -- encoding ----------------------------------------------------------
    def _rows(self, conn: apsw.Connection, samples: Iterable[Sample], pp: dict, ps: dict) -> list[tuple]:
        points, statuses = self._points, self._status
        pids, sids = points.ids, statuses.ids
        rows = []
        for point_id, ts, value, status in samples:
            pid = pids.get(point_id)
            if pid is None:
                pid = points.id_in_txn(conn, point_id, pp)
            sid = sids.get(status)
            if sid is None:
                sid = statuses.id_in_txn(conn, status, ps)
            if value.__class__ is bool:
                rows.append((float(ts), pid, int(value), sid * 2 + 1))
            elif value is None or isinstance(value, (int, float, str)):
                rows.append((float(ts), pid, value, sid * 2))
            else:
                raise TypeError(
                    f"history value for {point_id} must be float/int/bool/str/None, got {type(value).__name__}"
                )
        return rows

    def _decode(self, conn: apsw.Connection, value: Any, flags: int) -> tuple[Any, str]:
        status = self._status.names.get(flags >> 1)
        if status is None:
            status = self._status.name(conn, flags >> 1)
        return (bool(value) if flags & 1 and value is not None else value), status

    def _write_rows(self, conn: apsw.Connection, sql: str, samples: Sequence[Sample]) -> tuple[int, dict, dict]:
        pp: dict[str, int] = {}
        ps: dict[str, int] = {}
        rows = self._rows(conn, samples, pp, ps)
        conn.executemany(sql, rows)
        return len(rows), pp, ps

    def _merge(self, result: tuple[int, dict, dict]) -> int:
        n, pp, ps = result
        self._points.commit(pp)
        self._status.commit(ps)
        return n

    def _append_txn(self, conn: apsw.Connection, samples: Sequence[Sample], outbox_seq: int | None
                    ) -> tuple[int, dict, dict]:
        result = self._write_rows(conn, _INSERT_SAMPLE, samples) if samples else (0, {}, {})
        if outbox_seq is not None:
            conn.execute("INSERT INTO outbox_mark(id, seq) VALUES(0, ?) ON CONFLICT(id) DO UPDATE SET seq=excluded.seq",
                         (outbox_seq,))
        return result

    # -- samples -----------------------------------------------------------
    async def append(self, samples: Sequence[Sample], *, outbox_seq: int | None = None) -> int:
        """Append samples ``(point_id, ts, value, status)`` in one transaction.

        Returns the number appended once committed (durable).  Unknown point
        ids and status words are registered in the same transaction.  Interval
        vs change-of-value is the recorder's business: every sample given is
        stored.  ``outbox_seq`` sets the replay marker (:meth:`outbox_mark`) in
        the same transaction.
        """
        if not samples and outbox_seq is None:
            return 0
        return self._merge(await self.db.write(self._append_txn, samples, outbox_seq))

    def append_sync(self, samples: Sequence[Sample], *, outbox_seq: int | None = None) -> int:
        """Blocking :meth:`append` (plain threads, tests, the kill -9 helper)."""
        if not samples and outbox_seq is None:
            return 0
        return self._merge(self.db.write_sync(self._append_txn, samples, outbox_seq))

    def outbox_mark(self) -> int | None:
        """The recorder's replay marker: every event up to this outbox seq has its samples here.

        The recorder commits a batch to the outbox first and then its samples here with
        the batch's last seq; after a kill between the two commits it rebuilds the missing
        samples from the outbox entries after the marker.  None until first set.
        """
        rows = self.db.read_now(lambda c: c.execute("SELECT seq FROM outbox_mark").fetchall())
        return rows[0][0] if rows else None

    def query(
        self,
        point_id: str,
        start: float | None = None,
        end: float | None = None,
        limit: int = 1000,
        downsample: float | None = None,
        order: str = "asc",
    ) -> list[dict[str, Any]]:
        """Samples of ``point_id`` with ``start <= ts <= end`` (inline read).

        Without ``downsample``: up to ``limit`` dicts ``{ts, value, status}`` in
        ``order`` ("asc" or "desc") of ts.  With ``downsample=B`` seconds:
        numeric samples (int, float, bool; strings and None are skipped) are
        grouped in buckets ``[k*B, (k+1)*B)`` and each bucket is a dict
        ``{ts (bucket start), min, max, avg, count, last, last_ts}``; ``limit``
        counts buckets.  This runs on the calling thread: use
        :meth:`query_async` for ranges longer than a few thousand samples.
        """
        return self.db.read_now(self._query, point_id, start, end, limit, downsample, order)

    async def query_async(
        self,
        point_id: str,
        start: float | None = None,
        end: float | None = None,
        limit: int = 1000,
        downsample: float | None = None,
        order: str = "asc",
    ) -> list[dict[str, Any]]:
        """:meth:`query` on the reader thread (for big ranges; the loop keeps running)."""
        return await self.db.read(self._query, point_id, start, end, limit, downsample, order)

    def _query(
        self,
        conn: apsw.Connection,
        point_id: str,
        start: float | None,
        end: float | None,
        limit: int,
        downsample: float | None,
        order: str,
    ) -> list[dict[str, Any]]:
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
        pid = self._points.lookup(conn, point_id)
        if pid is None:
            return []
        lo = -math.inf if start is None else float(start)
        hi = math.inf if end is None else float(end)
        direction = "ASC" if order == "asc" else "DESC"
        if downsample is None:
            sql = (
                "SELECT ts, value, flags FROM sample WHERE ts >= ? AND ts <= ? AND point = ? "
                f"ORDER BY ts {direction} LIMIT ?"
            )
            out = []
            for ts, value, flags in conn.execute(sql, (lo, hi, pid, limit)):
                value, status = self._decode(conn, value, flags)
                out.append({"ts": ts, "value": value, "status": status})
            return out
        if not downsample > 0:
            raise ValueError(f"downsample must be a positive number of seconds, got {downsample!r}")
        downsample = float(downsample)
        sql = (
            "SELECT b, mn, mx, av, n, last_ts, "
            "(SELECT value FROM sample s WHERE s.ts = g.last_ts AND s.point = ?1) "
            "FROM (SELECT CAST(ts / ?2 AS INTEGER) AS b, min(value) AS mn, max(value) AS mx, "
            "avg(value) AS av, count(*) AS n, max(ts) AS last_ts FROM sample "
            "WHERE ts >= ?3 AND ts <= ?4 AND point = ?1 AND typeof(value) IN ('integer', 'real') "
            f"GROUP BY b) AS g ORDER BY b {direction} LIMIT ?5"
        )
        return [
            {"ts": b * downsample, "min": mn, "max": mx, "avg": av, "count": n, "last": last, "last_ts": last_ts}
            for b, mn, mx, av, n, last_ts, last in conn.execute(sql, (pid, float(downsample), lo, hi, limit))
        ]

    async def prune(self, older_than_ts: float, *, chunk: int = 10000) -> int:
        """Delete samples with ``ts < older_than_ts`` (retention by age).

        Works in transactions of about ``chunk`` rows so other writes are never
        held up for long; returns the number of samples deleted.
        """
        total = 0
        while True:
            n, more = await self.db.write(_prune_chunk, older_than_ts, chunk)
            total += n
            if not more:
                return total

    # -- current values ----------------------------------------------------
    async def save_current(self, rows: Sequence[Sample]) -> int:
        """Upsert the last known value of points: rows ``(point_id, ts, value, status)``.

        A row older than the stored one for its point is ignored.  One
        transaction; returns the number of rows given.
        """
        if not rows:
            return 0
        return self._merge(await self.db.write(self._write_rows, _UPSERT_CURRENT, rows))

    def load_current(self) -> dict[str, tuple[float, Any, str]]:
        """Every saved current value: ``{point_id: (ts, value, status)}``."""

        def q(conn: apsw.Connection) -> dict[str, tuple[float, Any, str]]:
            out = {}
            for pid, ts, value, flags in conn.execute("SELECT point, ts, value, flags FROM current"):
                value, status = self._decode(conn, value, flags)
                out[self._points.name(conn, pid)] = (ts, value, status)
            return out

        return self.db.read_now(q)

    def point_ids(self) -> list[str]:
        """Every point id that ever had a sample or a current value, sorted."""
        return self.db.read_now(
            lambda conn: [k for (k,) in conn.execute("SELECT point_key FROM point ORDER BY point_key")]
        )


def _prune_chunk(conn: apsw.Connection, older_than_ts: float, chunk: int) -> tuple[int, bool]:
    row = conn.execute(
        "SELECT ts FROM sample WHERE ts < ? ORDER BY ts LIMIT 1 OFFSET ?", (older_than_ts, chunk)
    ).fetchall()
    cut = row[0][0] if row else older_than_ts
    conn.execute("DELETE FROM sample WHERE ts < ?", (cut,))
    n = conn.changes()
    if n == 0 and row:
        # The first `chunk` rows all share one ts: take that instant whole.
        conn.execute("DELETE FROM sample WHERE ts = ?", (cut,))
        n = conn.changes()
    return n, bool(row)
