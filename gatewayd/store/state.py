"""``state.db``: priority arrays, audit log, plugin key/value, discovery.

Small, rarely written, precious data.  Every mutating call is one write
transaction on the store's writer thread, committed with ``synchronous=FULL``
in WAL mode: when the ``await`` returns, the change survives ``kill -9`` and
power loss.  Reads (``load_priority_arrays``, ``list_audit``, ``kv_get``,
``discovery_list``, ...) are small indexed queries run inline on the calling
thread against a WAL snapshot.

Flash wear: each mutating call is one commit, i.e. a few pages (4 KiB each)
written to the WAL and later once more to the file at checkpoint; this store
sees a handful of writes per operator action or discovery scan, so wear is
negligible.  The audit log grows without bound unless :meth:`StateStore.prune_audit`
is called (the core decides the retention).

Values (priority values, kv values, audit details, discovery data) are stored
as compact JSON: anything ``json`` can encode round-trips with its type
(``True`` stays ``True``, ``1`` stays ``1``, ``1.0`` stays ``1.0``).
"""

from __future__ import annotations

import os
import time
from typing import Any

import apsw

from ._util import dumps, loads
from .db import BaseStore, Database, Migration

__all__ = ["DISCOVERY_STATUSES", "StateStore"]

#: Allowed discovery statuses.
DISCOVERY_STATUSES = ("discovered", "accepted", "ignored", "stale")

_V1 = """
CREATE TABLE priority(
    point TEXT NOT NULL,
    level INTEGER NOT NULL CHECK (level BETWEEN 1 AND 16),
    value TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (point, level)
) WITHOUT ROWID;

CREATE TABLE audit(
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    ok INTEGER NOT NULL
);
CREATE INDEX audit_ts ON audit(ts);

CREATE TABLE kv(
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;

CREATE TABLE discovery(
    driver TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('discovered', 'accepted', 'ignored', 'stale')),
    data TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (driver, key)
) WITHOUT ROWID;
"""

MIGRATIONS: list[Migration] = [Migration(1, _V1, "priority, audit, kv, discovery")]

# The largest code point: "prefix + _MAX_CHAR" sorts after every key with that prefix.
_MAX_CHAR = "\U0010ffff"


class StateStore(BaseStore):
    """The ``state.db`` store.  ``path=None`` with ``memory=True`` for tests."""

    def __init__(self, path: str | os.PathLike[str] | None, *, memory: bool = False) -> None:
        self.db = Database(path, "state", MIGRATIONS, memory=memory)

    # -- priority arrays ---------------------------------------------------
    def load_priority_arrays(self) -> dict[str, dict[int, Any]]:
        """Every persisted priority array: ``{point_id: {level: value}}``.

        Only occupied levels appear; a point with no command has no entry.
        """

        def q(conn: apsw.Connection) -> dict[str, dict[int, Any]]:
            out: dict[str, dict[int, Any]] = {}
            for point, level, value in conn.execute("SELECT point, level, value FROM priority ORDER BY point, level"):
                out.setdefault(point, {})[level] = loads(value)
            return out

        return self.db.read_now(q)

    async def set_priority(self, point_id: str, level: int, value: Any) -> None:
        """Persist the command at ``level`` (1..16) of ``point_id``'s array.

        ``value=None`` relinquishes that level (deletes the slot).
        """
        if not 1 <= level <= 16:
            raise ValueError(f"priority level must be 1..16, got {level}")

        def w(conn: apsw.Connection) -> None:
            if value is None:
                conn.execute("DELETE FROM priority WHERE point=? AND level=?", (point_id, level))
            else:
                conn.execute(
                    "INSERT INTO priority(point, level, value, ts) VALUES(?, ?, ?, ?) "
                    "ON CONFLICT(point, level) DO UPDATE SET value=excluded.value, ts=excluded.ts",
                    (point_id, level, dumps(value), time.time()),
                )

        await self.db.write(w)

    # -- audit -------------------------------------------------------------
    async def audit(
        self,
        actor: str,
        action: str,
        target: str,
        detail: dict[str, Any] | None = None,
        ok: bool = True,
        *,
        ts: float | None = None,
    ) -> int:
        """Append one audit entry (committed when this returns); returns its id."""
        row = (time.time() if ts is None else ts, actor, action, target, dumps(detail or {}), int(bool(ok)))

        def w(conn: apsw.Connection) -> int:
            conn.execute("INSERT INTO audit(ts, actor, action, target, detail, ok) VALUES(?, ?, ?, ?, ?, ?)", row)
            return conn.last_insert_rowid()

        return await self.db.write(w)

    def list_audit(
        self,
        since: float | None = None,
        until: float | None = None,
        actor: str | None = None,
        action: str | None = None,
        target_glob: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Audit entries, newest first.

        ``since``/``until`` bound ``ts`` (inclusive); ``actor`` and ``action``
        match exactly; ``target_glob`` is a case-sensitive shell-style pattern
        (SQLite GLOB: ``*``, ``?``, ``[...]``).  Each entry is a dict with id,
        ts, actor, action, target, detail (dict) and ok (bool).
        """
        where, params = [], []
        for clause, value in (
            ("ts >= ?", since),
            ("ts <= ?", until),
            ("actor = ?", actor),
            ("action = ?", action),
            ("target GLOB ?", target_glob),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = "SELECT id, ts, actor, action, target, detail, ok FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, id DESC LIMIT ?"
        params.append(limit)

        def q(conn: apsw.Connection) -> list[dict[str, Any]]:
            return [
                {"id": i, "ts": ts, "actor": a, "action": ac, "target": t, "detail": loads(d), "ok": bool(ok)}
                for i, ts, a, ac, t, d, ok in conn.execute(sql, params)
            ]

        return self.db.read_now(q)

    async def prune_audit(self, older_than_ts: float, *, chunk: int = 5000) -> int:
        """Delete audit entries with ``ts < older_than_ts``, ``chunk`` rows per transaction."""
        total = 0
        while True:
            n = await self.db.write(_delete_chunk, "audit", older_than_ts, chunk)
            total += n
            if n < chunk:
                return total

    # -- plugin key/value --------------------------------------------------
    async def kv_set(self, ns: str, key: str, value: Any) -> None:
        """Store a JSON-encodable ``value`` under (``ns``, ``key``)."""
        text = dumps(value)

        def w(conn: apsw.Connection) -> None:
            conn.execute(
                "INSERT INTO kv(ns, key, value) VALUES(?, ?, ?) "
                "ON CONFLICT(ns, key) DO UPDATE SET value=excluded.value",
                (ns, key, text),
            )

        await self.db.write(w)

    def kv_get(self, ns: str, key: str, default: Any = None) -> Any:
        """The value under (``ns``, ``key``), or ``default``."""
        rows = self.db.read_now(
            lambda conn: conn.execute("SELECT value FROM kv WHERE ns=? AND key=?", (ns, key)).fetchall()
        )
        return loads(rows[0][0]) if rows else default

    def kv_items(self, ns: str, prefix: str = "") -> list[tuple[str, Any]]:
        """``(key, value)`` pairs of ``ns`` whose key starts with ``prefix``, sorted by key.

        ``dict(store.kv_items(ns))`` gives a mapping.
        """
        rows = self.db.read_now(
            lambda conn: conn.execute(
                "SELECT key, value FROM kv WHERE ns=? AND key >= ? AND key < ? ORDER BY key",
                (ns, prefix, prefix + _MAX_CHAR),
            ).fetchall()
        )
        return [(k, loads(v)) for k, v in rows]

    async def kv_delete(self, ns: str, key: str | None = None) -> int:
        """Delete one key, or the whole namespace when ``key`` is None; returns rows deleted."""

        def w(conn: apsw.Connection) -> int:
            if key is None:
                conn.execute("DELETE FROM kv WHERE ns=?", (ns,))
            else:
                conn.execute("DELETE FROM kv WHERE ns=? AND key=?", (ns, key))
            return conn.changes()

        return await self.db.write(w)

    # -- discovery ---------------------------------------------------------
    async def discovery_upsert(self, driver: str, key: str, data: Any, *, ts: float | None = None) -> str:
        """Record that a scan of ``driver`` saw ``key``; returns the resulting status.

        New rows start as ``discovered``.  A re-scan replaces ``data`` and
        ``last_seen`` but keeps an ``accepted`` or ``ignored`` decision; a
        ``stale`` row seen again becomes ``discovered``.
        """
        now = time.time() if ts is None else ts
        text = dumps(data)

        def w(conn: apsw.Connection) -> str:
            return conn.execute(
                "INSERT INTO discovery(driver, key, status, data, first_seen, last_seen) "
                "VALUES(?, ?, 'discovered', ?, ?, ?) "
                "ON CONFLICT(driver, key) DO UPDATE SET data=excluded.data, last_seen=excluded.last_seen, "
                "status=CASE WHEN status='stale' THEN 'discovered' ELSE status END "
                "RETURNING status",
                (driver, key, text, now, now),
            ).fetchall()[0][0]

        return await self.db.write(w)

    async def discovery_set_status(self, driver: str, key: str, status: str) -> None:
        """Set the status (discovered, accepted, ignored, stale) of a known row.

        Raises KeyError if (driver, key) was never discovered.
        """
        if status not in DISCOVERY_STATUSES:
            raise ValueError(f"discovery status must be one of {DISCOVERY_STATUSES}, got {status!r}")

        def w(conn: apsw.Connection) -> None:
            conn.execute("UPDATE discovery SET status=? WHERE driver=? AND key=?", (status, driver, key))
            if conn.changes() == 0:
                raise KeyError(f"discovery: no entry {driver}/{key}")

        await self.db.write(w)

    async def discovery_mark_stale(self, driver: str, seen_before: float) -> int:
        """After a full scan: undecided rows of ``driver`` not seen since ``seen_before`` become stale.

        Accepted and ignored rows keep their decision (their ``last_seen`` shows
        the age).  Returns the number of rows marked.
        """

        def w(conn: apsw.Connection) -> int:
            conn.execute(
                "UPDATE discovery SET status='stale' WHERE driver=? AND status='discovered' AND last_seen < ?",
                (driver, seen_before),
            )
            return conn.changes()

        return await self.db.write(w)

    def discovery_list(self, driver: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Discovery rows (optionally of one driver / one status), by driver then key."""
        where, params = [], []
        if driver is not None:
            where.append("driver = ?")
            params.append(driver)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = "SELECT driver, key, status, data, first_seen, last_seen FROM discovery"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY driver, key"

        def q(conn: apsw.Connection) -> list[dict[str, Any]]:
            return [
                {"driver": d, "key": k, "status": s, "data": loads(data), "first_seen": f, "last_seen": last}
                for d, k, s, data, f, last in conn.execute(sql, params)
            ]

        return self.db.read_now(q)


def _delete_chunk(conn: apsw.Connection, table: str, older_than_ts: float, chunk: int) -> int:
    conn.execute(
        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE ts < ? ORDER BY ts LIMIT ?)",
        (older_than_ts, chunk),
    )
    return conn.changes()
