"""APSW plumbing shared by every gatewayd store: one owner per connection.

A :class:`Database` is one SQLite file (or an in-memory database) with:

* **one writer thread** that creates, uses and closes the write connection.
  Every write is a job on that thread's queue and runs inside
  ``BEGIN IMMEDIATE`` / ``COMMIT``.  We chose a dedicated thread over
  ``trio.to_thread.run_sync`` with a ``CapacityLimiter(1)``: the connection then
  really has one owning thread (APSW raises ``ThreadingViolationError`` on
  concurrent use, and a pool thread per call makes ownership a convention
  rather than a fact), plain (non-trio) code and tests can submit the very same
  jobs with the ``*_sync`` methods, and a queued job costs one
  ``SimpleQueue.put`` plus one ``run_sync_soon`` wake-up (``bench/stores.py``
  prints the round-trip time of an empty write).
* **a reader thread** (started on first use) with its own read connection for
  big queries, so they never run on the trio thread;
* **an inline read connection** for small reads on the calling thread
  (:meth:`Database.read_now`), typically the trio thread.  WAL gives every read
  transaction a consistent snapshot while the writer keeps committing.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``, so the WAL is
fsynced at every commit: once :meth:`Database.write` has returned, the
transaction survives ``kill -9`` *and* power loss.  (``NORMAL`` would fsync only
at checkpoints and may lose the last commits on power loss, never on a process
crash; we want power-loss safety for committed data, so FULL it is.)

Flash wear: with WAL every page is written twice, once to the WAL at commit and
once to the database file at checkpoint.  Pages rewritten by several commits
between two checkpoints reach the database file once, so batching rows per
transaction and a not-too-small checkpoint interval both reduce wear.  The
auto-checkpoint runs on the writer thread at commit time (never on the trio
loop); :meth:`Database.checkpoint` runs a PASSIVE one explicitly.  Measured
(``bench/stores.py``): every commit costs a few KiB of writes whatever its size
(page-granular WAL frames and file-system blocks), so stores are written in
batches; the auto-checkpoint interval (1000 to 16000 pages) made no measurable
difference.
``temp_store=MEMORY`` keeps sort/temp b-trees off flash.

Errors: disk full (``SQLITE_FULL``) and I/O-level failures (I/O error, corrupt,
can't open, read-only, busy/locked, no memory) are re-raised as
:class:`StoreError` (or :class:`StoreFullError`) naming the file; the
transaction is rolled back and the database stays usable.  Any other exception
raised by the job (including APSW constraint/SQL errors, i.e. bugs or bad
input) reaches the caller unchanged, after the rollback.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import apsw
import outcome
import trio

__all__ = [
    "Database",
    "Migration",
    "SchemaTooNew",
    "StoreClosed",
    "StoreError",
    "StoreFullError",
]

log = logging.getLogger("gatewayd.store")

T = TypeVar("T")

#: After a checkpoint resets the WAL, SQLite truncates it to this size, so a
#: burst (or a long read holding a snapshot) does not leave a huge -wal file.
WAL_SIZE_LIMIT = 4 * 1024 * 1024

#: APSW errors that describe the environment (disk, file system, other
#: processes) rather than a bug: these become StoreError with the path.
_ENVIRONMENT_ERRORS: tuple[type[BaseException], ...] = (
    apsw.FullError,
    apsw.IOError,
    apsw.CorruptError,
    apsw.NotADBError,
    apsw.CantOpenError,
    apsw.ReadOnlyError,
    apsw.BusyError,
    apsw.LockedError,
    apsw.ProtocolError,
    apsw.NoMemError,
    apsw.PermissionsError,
)


class StoreError(Exception):
    """A store could not do its job because of the environment (disk, file).

    ``path`` is the database file (``":memory:"`` for memory databases); it is
    also part of the message.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StoreFullError(StoreError):
    """SQLITE_FULL: the disk (or the database's page limit) is full."""


class StoreClosed(StoreError):
    """The database was closed; no more jobs are accepted."""


class SchemaTooNew(StoreError):
    """The file's schema version is newer than this code knows (a downgrade)."""

    def __init__(self, path: str, file_version: int, known_version: int) -> None:
        super().__init__(
            f"{path}: schema version {file_version} is newer than the newest this "
            f"gatewayd knows ({known_version}); refusing to open it (was the "
            f"software downgraded? restore a backup or upgrade gatewayd)",
            path,
        )
        self.file_version = file_version
        self.known_version = known_version


@dataclass(frozen=True)
class Migration:
    """One forward schema step to ``version``.

    ``apply`` is SQL text (run with ``Connection.execute``, several statements
    allowed) or a callable ``apply(conn)``.  Each migration runs in its own
    transaction together with the ``user_version`` bump, so a crash leaves the
    file at the previous or the next version, never in between.
    """

    version: int
    apply: str | Callable[[apsw.Connection], None]
    description: str = ""


def _wrap_error(exc: BaseException, path: str, name: str) -> BaseException:
    """Translate environment errors into StoreError; leave the rest alone."""
    if isinstance(exc, StoreError) or not isinstance(exc, _ENVIRONMENT_ERRORS):
        return exc
    cls = StoreFullError if isinstance(exc, apsw.FullError) else StoreError
    what = "disk full" if cls is StoreFullError else type(exc).__name__
    err = cls(f"{name} store {path}: {what}: {exc}", path)
    err.__cause__ = exc
    return err


def _rollback(conn: apsw.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except apsw.Error:  # pragma: no cover - nothing more we can do here
            log.exception("rollback failed")


def _run_write(conn: apsw.Connection, fn: Callable[..., T], args: tuple) -> T:
    """Run ``fn(conn, *args)`` in BEGIN IMMEDIATE/COMMIT, rolling back on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return result


def _run_read(conn: apsw.Connection, fn: Callable[..., T], args: tuple) -> T:
    """Run ``fn(conn, *args)`` in one read transaction (one WAL snapshot)."""
    conn.execute("BEGIN")
    try:
        return fn(conn, *args)
    finally:
        _rollback(conn)


# Job states, guarded by _Job.lock.
_QUEUED, _RUNNING, _CANCELLED, _DONE = range(4)


class _Job:
    __slots__ = ("fn", "args", "lock", "state", "result", "notify")

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self.fn = fn
        self.args = args
        self.lock = threading.Lock()
        self.state = _QUEUED
        self.result: outcome.Outcome | None = None
        self.notify: Callable[[outcome.Outcome], None] | None = None

    def claim(self) -> bool:
        with self.lock:
            if self.state == _CANCELLED:
                return False
            self.state = _RUNNING
            return True

    def cancel(self) -> bool:
        """Withdraw a job that has not started; False once it runs."""
        with self.lock:
            if self.state == _QUEUED:
                self.state = _CANCELLED
                return True
            return False


class _Worker:
    """A thread that owns one connection and runs jobs on it, in order."""

    def __init__(self, name: str, opener: Callable[[], apsw.Connection], wrap) -> None:
        self._opener = opener
        self._wrap = wrap
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._closed = False
        self._lock = threading.Lock()
        self.conn: apsw.Connection | None = None
        self._thread.start()

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def _main(self) -> None:
        try:
            self.conn = self._opener()
            open_error = None
        except BaseException as exc:  # reported to every job
            open_error = exc
        while True:
            job = self._queue.get()
            if job is None:
                break
            if not job.claim():
                continue
            if open_error is not None:
                result: outcome.Outcome = outcome.Error(open_error)
            else:
                try:
                    result = outcome.Value(job.fn(self.conn, *job.args))
                except BaseException as exc:
                    result = outcome.Error(self._wrap(exc))
            with job.lock:
                job.state = _DONE
                job.result = result
                notify = job.notify
            if notify is not None:
                notify(result)
        if self.conn is not None:
            try:
                self.conn.close()
            except apsw.Error:  # pragma: no cover
                log.exception("closing %s failed", self._thread.name)

    def _put(self, job: _Job) -> None:
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError(f"{self._thread.name}: a job may not wait for another job (deadlock)")
        with self._lock:
            if self._closed:
                raise StoreClosed(f"{self._thread.name}: database is closed")
            self._queue.put(job)

    def run_sync(self, fn: Callable[..., T], args: tuple) -> T:
        job = _Job(fn, args)
        done = threading.Event()
        job.notify = lambda _result: done.set()
        self._put(job)
        done.wait()
        assert job.result is not None
        return job.result.unwrap()

    async def run(self, fn: Callable[..., T], args: tuple) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()
        job = _Job(fn, args)

        def notify(result: outcome.Outcome) -> None:
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:  # pragma: no cover - trio went away
                pass

        job.notify = notify
        self._put(job)

        def abort(_raise_cancel) -> trio.lowlevel.Abort:
            # A queued job is withdrawn; a running one is waited for, so the
            # caller never loses track of a transaction that may have committed.
            return trio.lowlevel.Abort.SUCCEEDED if job.cancel() else trio.lowlevel.Abort.FAILED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        if threading.get_ident() != self._thread.ident:
            self._thread.join()


class Database:
    """One SQLite database with a single writer thread.  See the module docstring.

    ``path`` is the file (``None`` with ``memory=True``).  ``name`` names the
    store in thread names and error messages.  ``migrations`` must have versions
    1, 2, 3, ... in order; opening applies the missing ones and raises
    :class:`SchemaTooNew` when the file is newer than the last one.

    ``memory=True`` keeps the database in RAM (lost when the process stops).
    A memory database has a single connection: the writer thread owns it and
    reads are queued on that thread too.

    ``wal_max_bytes`` bounds the -wal file: a commit that leaves it larger is
    followed by a TRUNCATE checkpoint on the writer thread (the outbox uses it
    to keep its files under ``max_bytes``).

    Opening starts the writer thread and waits for it to open the file and
    migrate (about a millisecond for an up-to-date file); the reader thread and
    the inline read connection are created on first use.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        name: str,
        migrations: Sequence[Migration],
        *,
        memory: bool = False,
        page_size: int | None = None,
        autocheckpoint: int = 1000,
        busy_timeout_ms: int = 5000,
        wal_max_bytes: int | None = None,
    ) -> None:
        if memory:
            path = None
        elif path is None:
            raise ValueError(f"{name}: a path is required unless memory=True")
        self.name = name
        self.memory = memory
        self.path = ":memory:" if memory else os.fspath(path)  # type: ignore[arg-type]
        self._migrations = tuple(migrations)
        for i, m in enumerate(self._migrations, start=1):
            if m.version != i:
                raise ValueError(f"{name}: migrations must be numbered 1..N in order, got {m.version} at {i}")
        self.latest_version = len(self._migrations)
        self._page_size = page_size
        self._autocheckpoint = autocheckpoint
        self._busy_timeout_ms = busy_timeout_ms
        self._wal_max_bytes = wal_max_bytes
        self._inline: apsw.Connection | None = None
        self._inline_owner: int | None = None
        self._reader: _Worker | None = None
        self._reader_lock = threading.Lock()
        self._closed = False
        self.schema_version = 0
        self._writer = _Worker(f"{name}-writer", self._open_writer, self._wrap)
        try:
            self.schema_version = self._writer.run_sync(self._migrate, ())
        except BaseException:
            self._writer.close()
            raise

    # -- plumbing ---------------------------------------------------------
    def _wrap(self, exc: BaseException) -> BaseException:
        return _wrap_error(exc, self.path, self.name)

    def _connect(self) -> apsw.Connection:
        try:
            conn = apsw.Connection(self.path)
            conn.set_busy_timeout(self._busy_timeout_ms)
        except BaseException as exc:
            self._reraise(exc)
        return conn

    def _reraise(self, exc: BaseException):
        wrapped = self._wrap(exc)
        if wrapped is exc:
            raise exc
        raise wrapped from exc

    def _open_writer(self) -> apsw.Connection:
        conn = self._connect()
        try:
            if self._page_size:
                conn.execute(f"PRAGMA page_size={int(self._page_size)}")
            if not self.memory:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
                if mode.lower() != "wal":
                    raise StoreError(f"{self.name} store {self.path}: cannot enable WAL (got {mode})", self.path)
            conn.execute(
                "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY; "
                f"PRAGMA journal_size_limit={min(self._wal_max_bytes or WAL_SIZE_LIMIT, WAL_SIZE_LIMIT)}"
            )
            conn.wal_autocheckpoint(self._autocheckpoint)
        except BaseException as exc:
            conn.close()
            self._reraise(exc)
        return conn

    def _open_reader(self) -> apsw.Connection:
        conn = self._connect()
        try:
            conn.execute("PRAGMA query_only=1; PRAGMA temp_store=MEMORY; PRAGMA foreign_keys=ON")
        except BaseException as exc:
            conn.close()
            self._reraise(exc)
        return conn

    def _migrate(self, conn: apsw.Connection) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchall()[0][0]
        finally:
            conn.execute("COMMIT")
        if version > self.latest_version:
            raise SchemaTooNew(self.path, version, self.latest_version)
        for m in self._migrations[version:]:

            def step(c: apsw.Connection, m: Migration = m) -> None:
                # Re-check inside the transaction: another process may have migrated.
                if c.execute("PRAGMA user_version").fetchall()[0][0] >= m.version:
                    return
                if callable(m.apply):
                    m.apply(c)
                else:
                    c.execute(m.apply)
                c.execute(f"PRAGMA user_version={m.version}")

            _run_write(conn, step, ())
            log.info("%s store %s: migrated to schema version %d %s", self.name, self.path, m.version, m.description)
        return self.latest_version

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"{self.name} store {self.path}: database is closed", self.path)

    def _reader_worker(self) -> _Worker:
        with self._reader_lock:
            self._check_open()
            if self._reader is None:
                self._reader = _Worker(f"{self.name}-reader", self._open_reader, self._wrap)
            return self._reader

    def _memory_read(self, conn: apsw.Connection, fn: Callable[..., T], args: tuple) -> T:
        return fn(conn, *args)

    # -- writes -----------------------------------------------------------
    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in a write transaction on the writer thread.

        Returns ``fn``'s result after COMMIT returned (the data is then durable).
        If ``fn`` or the commit raises, the transaction is rolled back and the
        exception is raised here (environment errors as :class:`StoreError`).
        Cancellation withdraws a job that has not started; a job already
        running is waited for, so a cancelled caller never leaves a write in an
        unknown state.  ``fn`` runs on another thread: it must not touch trio
        objects, and it must not call back into this Database.
        """
        return await self._writer.run(self._write_job, (fn, args))

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking :meth:`write` for plain threads and tests (blocks the caller)."""
        return self._writer.run_sync(self._write_job, (fn, args))

    def _write_job(self, conn: apsw.Connection, fn: Callable[..., T], args: tuple) -> T:
        result = _run_write(conn, fn, args)
        if self._wal_max_bytes is not None and not self.memory:
            self._wal_guard(conn)
        return result

    def _wal_guard(self, conn: apsw.Connection) -> None:
        """Keep the -wal file under ``wal_max_bytes``: past it, a TRUNCATE checkpoint (after the
        commit, on the writer thread). A checkpoint a reader holds up is retried after the next
        commit; the commit itself has succeeded either way."""
        try:
            size = os.path.getsize(self.path + "-wal")
        except OSError:
            return
        if size <= self._wal_max_bytes:  # type: ignore[operator]
            return
        try:
            conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        except apsw.Error as exc:  # busy reader, or the disk: the data is committed, try again later
            log.debug("%s store %s: WAL checkpoint after commit failed: %s", self.name, self.path, exc)

    async def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int]:
        """Checkpoint the WAL on the writer thread; returns (wal frames, checkpointed).

        PASSIVE never waits for readers.  ``mode`` may also be FULL, RESTART or
        TRUNCATE.  A no-op ``(0, 0)`` for memory databases.
        """
        return await self._writer.run(self._checkpoint, (mode,))

    def checkpoint_sync(self, mode: str = "PASSIVE") -> tuple[int, int]:
        """Blocking :meth:`checkpoint`."""
        return self._writer.run_sync(self._checkpoint, (mode,))

    def _checkpoint(self, conn: apsw.Connection, mode: str) -> tuple[int, int]:
        if self.memory:
            return (0, 0)
        modes = {
            "PASSIVE": apsw.SQLITE_CHECKPOINT_PASSIVE,
            "FULL": apsw.SQLITE_CHECKPOINT_FULL,
            "RESTART": apsw.SQLITE_CHECKPOINT_RESTART,
            "TRUNCATE": apsw.SQLITE_CHECKPOINT_TRUNCATE,
        }
        return tuple(conn.wal_checkpoint(mode=modes[mode.upper()]))  # type: ignore[return-value]

    def disk_bytes(self) -> int:
        """Bytes the database uses on disk: the file and its -wal (0 for memory databases)."""
        if self.memory:
            return 0
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return total

    # -- reads ------------------------------------------------------------
    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one read transaction on the reader thread.

        For big queries: the trio loop keeps running meanwhile.  ``fn`` must
        return materialized results (lists, not live cursors).
        """
        if self.memory:
            return await self._writer.run(self._memory_read, (fn, args))
        return await self._reader_worker().run(_run_read, (fn, args))

    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking :meth:`read`."""
        if self.memory:
            return self._writer.run_sync(self._memory_read, (fn, args))
        return self._reader_worker().run_sync(_run_read, (fn, args))

    def read_now(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a small read ``fn(conn, *args)`` right here, on the calling thread.

        Uses a read connection owned by the first thread that calls this
        (normally the trio thread); it reads a consistent WAL snapshot and never
        waits for the writer.  Calls from any other thread are sent to the
        reader thread instead.  Keep it to small, indexed queries (microseconds):
        it blocks whatever thread calls it.  On a memory database (one
        connection) the read is queued on the writer thread and this call waits
        for it, behind any queued writes (which are fast without fsync).
        """
        self._check_open()
        if self.memory:
            return self._writer.run_sync(self._memory_read, (fn, args))
        me = threading.get_ident()
        if self._inline is None:
            self._inline = self._open_reader()
            self._inline_owner = me
        elif self._inline_owner != me:
            return self.read_sync(fn, *args)
        try:
            return _run_read(self._inline, fn, args)
        except BaseException as exc:
            self._reraise(exc)

    # -- backup -----------------------------------------------------------
    async def backup_to(self, path: str | os.PathLike[str], *, pages_per_step: int = 256) -> None:
        """Copy the database to ``path`` with SQLite's online backup API.

        Runs on the writer thread in steps of ``pages_per_step`` pages, letting
        other writes run between steps; because those writes go through the
        same connection SQLite keeps the copy consistent without restarting.
        The copy is written to ``path + ".tmp"``, fsynced and renamed over
        ``path`` when complete, so ``path`` is always a whole database.
        """
        dest = os.fspath(path)
        state = await self._writer.run(self._backup_begin, (dest,))
        try:
            while not await self._writer.run(self._backup_step, (state, pages_per_step)):
                await trio.lowlevel.checkpoint()
        finally:
            await self._writer.run(self._backup_end, (state,))

    def backup_to_sync(self, path: str | os.PathLike[str], *, pages_per_step: int = 256) -> None:
        """Blocking :meth:`backup_to`."""
        dest = os.fspath(path)
        state = self._writer.run_sync(self._backup_begin, (dest,))
        try:
            while not self._writer.run_sync(self._backup_step, (state, pages_per_step)):
                pass
        finally:
            self._writer.run_sync(self._backup_end, (state,))

    def _backup_begin(self, conn: apsw.Connection, dest: str) -> dict:
        tmp = dest + ".tmp"
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(tmp + suffix)
            except FileNotFoundError:
                pass
        target = apsw.Connection(tmp)
        target.execute("PRAGMA synchronous=FULL")
        backup = target.backup("main", conn, "main")
        return {"dest": dest, "tmp": tmp, "target": target, "backup": backup, "done": False}

    def _backup_step(self, _conn: apsw.Connection, state: dict, pages: int) -> bool:
        state["done"] = state["backup"].step(pages)
        return state["done"]

    def _backup_end(self, _conn: apsw.Connection, state: dict) -> None:
        state["backup"].close()
        state["target"].close()
        if state["done"]:
            fd = os.open(state["tmp"], os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(state["tmp"], state["dest"])
        else:
            os.unlink(state["tmp"])

    # -- lifetime ---------------------------------------------------------
    def close(self) -> None:
        """Close every connection, each on the thread that owns it.

        Jobs already queued run first.  The writer closes last, so SQLite's
        final checkpoint (and WAL removal) happens on the writer thread.  The
        inline read connection is closed here; call ``close`` from the thread
        that used :meth:`read_now` (the trio thread).  Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
        self._writer.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Database {self.name} {self.path} v{self.schema_version}>"


class BaseStore:
    """Shared face of the stores: owns one :class:`Database` as ``self.db``."""

    db: Database

    @property
    def schema_version(self) -> int:
        """The schema version of the open file (the latest this code knows)."""
        return self.db.schema_version

    @property
    def path(self) -> str:
        """The database file (``":memory:"`` for memory stores)."""
        return self.db.path

    async def checkpoint(self) -> tuple[int, int]:
        """PASSIVE WAL checkpoint on the writer thread (see :meth:`Database.checkpoint`)."""
        return await self.db.checkpoint()

    async def backup_to(self, path: str | os.PathLike[str]) -> None:
        """Online, consistent copy of this store to ``path`` (see :meth:`Database.backup_to`)."""
        await self.db.backup_to(path)

    def close(self) -> None:
        """Close the store's connections (see :meth:`Database.close`)."""
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
