"""gatewayd stores: APSW (SQLite, WAL) files with one writer thread each.

* :class:`StateStore` — ``state.db``: priority arrays, audit log, plugin
  key/value, discovery.
* :class:`HistoryStore` — ``history.db``: samples and current values.
* :class:`Outbox` — ``outbox.db``: the append-only log with one persisted
  cursor per connector.
* :class:`Database` — the shared plumbing (writer thread, read connections,
  migrations, checkpoints, online backup).

Everything committed is durable (WAL, synchronous=FULL).  Environment failures
(disk full, I/O errors) surface as :class:`StoreError` naming the file.
"""

from .db import BaseStore, Database, Migration, SchemaTooNew, StoreClosed, StoreError, StoreFullError
from .history import HistoryStore
from .outbox import Entry, Outbox, OutboxCursor
from .state import StateStore

__all__ = [
    "BaseStore",
    "Database",
    "Entry",
    "HistoryStore",
    "Migration",
    "Outbox",
    "OutboxCursor",
    "SchemaTooNew",
    "StateStore",
    "StoreClosed",
    "StoreError",
    "StoreFullError",
]
