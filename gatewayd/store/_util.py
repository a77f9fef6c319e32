"""Small helpers shared by the stores (private)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import apsw

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_decoder = json.JSONDecoder()


def dumps(value: object) -> str:
    """Compact JSON text (no spaces; NaN/Infinity allowed as in Python's json)."""
    return _encoder.encode(value)


def loads(text: str) -> object:
    """Inverse of :func:`dumps`."""
    return _decoder.decode(text)


class Interner:
    """Maps names (point keys, status words, outbox keys) to small integer ids.

    The table is ``<table>(id INTEGER PRIMARY KEY, <column> TEXT NOT NULL UNIQUE)``.
    Small integers are stored in 0-2 bytes instead of a repeated string: that is
    most of what keeps a sample row compact.  New names are inserted inside the
    caller's write transaction and collected in ``pending``; the caller merges
    them with :meth:`commit` only after the transaction committed, so a rolled
    back id never reaches the cache.
    """

    def __init__(self, table: str, first_id: int = 1, column: str = "name") -> None:
        self.table = table
        self.column = column
        self.first_id = first_id
        self.ids: dict[str, int] = {}
        self.names: dict[int, str] = {}

    def load(self, conn: apsw.Connection) -> None:
        """(Re)load the whole mapping."""
        for ident, name in conn.execute(f"SELECT id, {self.column} FROM {self.table}"):
            self.ids[name] = ident
            self.names[ident] = name

    def id_in_txn(self, conn: apsw.Connection, name: str, pending: dict[str, int]) -> int:
        """The id of ``name``, inserting it if new (inside a write transaction)."""
        ident = self.ids.get(name)
        if ident is None:
            ident = pending.get(name)
            if ident is None:
                row = conn.execute(f"SELECT id FROM {self.table} WHERE {self.column}=?", (name,)).fetchall()
                if row:
                    ident = row[0][0]
                else:
                    ident = conn.execute(
                        f"INSERT INTO {self.table}(id, {self.column}) VALUES("
                        f"(SELECT coalesce(max(id) + 1, ?) FROM {self.table}), ?) RETURNING id",
                        (self.first_id, name),
                    ).fetchall()[0][0]
                pending[name] = ident
        return ident

    def ids_in_txn(self, conn: apsw.Connection, names: Iterable[str], pending: dict[str, int]) -> None:
        """Make sure every name in ``names`` has an id (in ``ids`` or ``pending``)."""
        ids = self.ids
        for name in names:
            if name not in ids and name not in pending:
                self.id_in_txn(conn, name, pending)

    def commit(self, pending: dict[str, int]) -> None:
        """Merge ids created by a transaction that committed."""
        for name, ident in pending.items():
            self.ids[name] = ident
            self.names[ident] = name

    def lookup(self, conn: apsw.Connection, name: str) -> int | None:
        """The id of an existing ``name`` (None if unknown), for readers."""
        ident = self.ids.get(name)
        if ident is None:
            row = conn.execute(f"SELECT id FROM {self.table} WHERE {self.column}=?", (name,)).fetchall()
            ident = row[0][0] if row else None
        return ident

    def name(self, conn: apsw.Connection, ident: int) -> str:
        """The name of ``ident``; reloads the table once on a miss."""
        name = self.names.get(ident)
        if name is None:
            self.load(conn)
            name = self.names[ident]
        return name
