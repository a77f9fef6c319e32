"""Database plumbing: migrations, writer thread, errors, checkpoint, backup."""

from __future__ import annotations

import os
import subprocess
import threading

import apsw
import pytest
import trio
import trio.testing

from gatewayd.store import (
    Database,
    HistoryStore,
    Migration,
    Outbox,
    SchemaTooNew,
    StateStore,
    StoreClosed,
    StoreError,
    StoreFullError,
)

V1 = Migration(1, "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
V2 = Migration(2, "ALTER TABLE t ADD COLUMN n INTEGER NOT NULL DEFAULT 7; CREATE INDEX t_name ON t(name)")


def _v3(conn: apsw.Connection) -> None:
    conn.execute("UPDATE t SET n = n * 2")


V3 = Migration(3, _v3, "callable migration")


def user_version(path) -> int:
    conn = apsw.Connection(str(path))
    try:
        return conn.execute("PRAGMA user_version").fetchall()[0][0]
    finally:
        conn.close()


def test_v1_file_migrates_forward_and_keeps_data(tmp_path):
    path = tmp_path / "m.db"
    with Database(path, "m", [V1]) as db:
        assert db.schema_version == 1
        db.write_sync(lambda c: c.execute("INSERT INTO t(name) VALUES('a')"))
    assert user_version(path) == 1
    with Database(path, "m", [V1, V2, V3]) as db:
        assert db.schema_version == 3
        assert db.read_now(lambda c: c.execute("SELECT name, n FROM t").fetchall()) == [("a", 14)]
    assert user_version(path) == 3


def test_failed_migration_leaves_previous_version(tmp_path):
    path = tmp_path / "m.db"
    Database(path, "m", [V1]).close()

    def broken(conn):
        conn.execute("ALTER TABLE t ADD COLUMN x INTEGER")
        raise RuntimeError("half way")

    with pytest.raises(RuntimeError, match="half way"):
        Database(path, "m", [V1, Migration(2, broken)])
    assert user_version(path) == 1
    with Database(path, "m", [V1]) as db:  # the half-applied column was rolled back
        cols = db.read_now(lambda c: [r[1] for r in c.execute("PRAGMA table_info(t)")])
        assert cols == ["id", "name"]


def test_newer_file_is_refused_with_both_versions(tmp_path):
    path = tmp_path / "m.db"
    Database(path, "m", [V1, V2]).close()
    with pytest.raises(SchemaTooNew) as info:
        Database(path, "m", [V1])
    err = info.value
    assert str(path) in str(err) and "2" in str(err) and "(1)" in str(err)
    assert (err.file_version, err.known_version, err.path) == (2, 1, str(path))
    assert isinstance(err, StoreError)


@pytest.mark.parametrize("cls", [StateStore, HistoryStore, Outbox])
def test_each_store_is_at_latest_and_refuses_newer(tmp_path, cls):
    path = tmp_path / "s.db"
    store = cls(path)
    assert store.schema_version == store.db.latest_version >= 1
    store.close()
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA user_version={store.db.latest_version + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match=str(path)):
        cls(path)


def test_migrations_must_be_numbered(tmp_path):
    with pytest.raises(ValueError, match="numbered"):
        Database(tmp_path / "x.db", "x", [V2])


def test_pragmas_wal_full(tmp_path):
    with Database(tmp_path / "p.db", "p", [V1]) as db:
        mode, sync, fk = db.write_sync(
            lambda c: (
                c.execute("PRAGMA journal_mode").fetchall()[0][0],
                c.execute("PRAGMA synchronous").fetchall()[0][0],
                c.execute("PRAGMA foreign_keys").fetchall()[0][0],
            )
        )
        assert (mode, sync, fk) == ("wal", 2, 1)


async def test_write_runs_on_one_writer_thread_and_rolls_back(tmp_path):
    with Database(tmp_path / "w.db", "w", [V1]) as db:
        threads = set()

        def ins(conn, name):
            threads.add(threading.get_ident())
            conn.execute("INSERT INTO t(name) VALUES(?)", (name,))
            return conn.last_insert_rowid()

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(db.write, ins, f"n{i}")
        assert len(threads) == 1 and threading.get_ident() not in threads

        def bad(conn):
            conn.execute("INSERT INTO t(name) VALUES('rolled back')")
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):
            await db.write(bad)
        with pytest.raises(apsw.ConstraintError):  # bugs/bad input propagate unchanged
            await db.write(lambda c: c.execute("INSERT INTO t(name) VALUES(NULL)"))
        count = await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchall()[0][0])
        assert count == 20
        assert db.read_now(lambda c: c.execute("SELECT count(*) FROM t WHERE name='rolled back'").fetchall()) == [(0,)]


async def test_read_now_sees_committed_snapshot(tmp_path):
    with Database(tmp_path / "r.db", "r", [V1]) as db:
        await db.write(lambda c: c.execute("INSERT INTO t(name) VALUES('x')"))
        assert db.read_now(lambda c: c.execute("SELECT name FROM t").fetchall()) == [("x",)]
        # read_now from another thread goes to the reader thread, same answer
        got = await trio.to_thread.run_sync(db.read_now, lambda c: c.execute("SELECT name FROM t").fetchall())
        assert got == [("x",)]


async def test_cancel_withdraws_a_queued_write_but_waits_for_a_running_one(tmp_path):
    with Database(tmp_path / "c.db", "c", [V1]) as db:
        running, gate = threading.Event(), threading.Event()

        def blocker(conn):
            conn.execute("INSERT INTO t(name) VALUES('running')")
            running.set()
            gate.wait(10)

        running_scope, queued_scope = trio.CancelScope(), trio.CancelScope()
        finished = []

        async def first():
            with running_scope:
                await db.write(blocker)
                finished.append("first")
                await trio.lowlevel.checkpoint()  # the pending cancel is delivered here
                finished.append("never")

        async def second():
            with queued_scope:
                await db.write(lambda c: c.execute("INSERT INTO t(name) VALUES('withdrawn')"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.to_thread.run_sync(running.wait, 10)
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()  # second is queued behind blocker
            queued_scope.cancel()
            running_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert queued_scope.cancelled_caught and finished == []  # withdrawn at once; first still waits
            gate.set()
        assert running_scope.cancelled_caught and finished == ["first"]
        await db.write(lambda c: None)  # the queue has drained
        assert db.read_now(lambda c: c.execute("SELECT name FROM t").fetchall()) == [("running",)]


def test_disk_full_is_store_error_and_recovers(tmp_path):
    # Simulated with PRAGMA max_page_count on the writer connection: SQLite then
    # returns SQLITE_FULL exactly as on a full file system.
    path = tmp_path / "full.db"
    with Database(path, "full", [V1]) as db:
        pages = db.write_sync(lambda c: c.execute("PRAGMA page_count").fetchall()[0][0])
        db.write_sync(lambda c: c.execute(f"PRAGMA max_page_count={pages + 2}").fetchall())
        big = "x" * 20000
        with pytest.raises(StoreFullError) as info:
            db.write_sync(lambda c: c.execute("INSERT INTO t(name) VALUES(?)", (big,)))
        assert str(path) in str(info.value) and info.value.path == str(path)
        assert isinstance(info.value, StoreError)
        # still usable: small writes fit, and after "space frees" big ones too
        db.write_sync(lambda c: c.execute("INSERT INTO t(name) VALUES('small')"))
        db.write_sync(lambda c: c.execute("PRAGMA max_page_count=1000000").fetchall())
        db.write_sync(lambda c: c.execute("INSERT INTO t(name) VALUES(?)", (big,)))
        assert db.read_now(lambda c: c.execute("SELECT count(*) FROM t").fetchall()) == [(2,)]


async def test_disk_full_async_path(tmp_path):
    path = tmp_path / "full.db"
    with Database(path, "full", [V1]) as db:
        await db.write(lambda c: c.execute("PRAGMA max_page_count=3").fetchall())
        with pytest.raises(StoreError, match="disk full"):
            await db.write(lambda c: c.execute("INSERT INTO t(name) VALUES(?)", ("y" * 50000,)))


def test_unopenable_file_is_store_error(tmp_path):
    bad = tmp_path / "not-a-dir" / "x.db"
    with pytest.raises(StoreError, match="not-a-dir"):
        Database(bad, "bad", [V1])
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="garbage.db"):
        Database(garbage, "bad", [V1])


async def test_checkpoint_and_backup_while_writing(tmp_path):
    with Database(tmp_path / "b.db", "b", [V1]) as db:
        await db.write(lambda c: c.executemany("INSERT INTO t(name) VALUES(?)", [(f"r{i}" * 50,) for i in range(2000)]))
        frames, done = await db.checkpoint()
        assert frames == done

        async def keep_writing():
            for i in range(50):
                await db.write(lambda c, i=i: c.execute("INSERT INTO t(name) VALUES(?)", (f"late{i}",)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_writing)
            await db.backup_to(tmp_path / "copy.db")
        copy = apsw.Connection(str(tmp_path / "copy.db"))
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        n = copy.execute("SELECT count(*) FROM t").fetchall()[0][0]
        assert 2000 <= n <= 2050
        assert copy.execute("PRAGMA user_version").fetchall() == [(1,)]
        copy.close()
        assert not (tmp_path / "copy.db.tmp").exists()
        db.backup_to_sync(tmp_path / "copy2.db")
        assert user_version(tmp_path / "copy2.db") == 1


async def test_close_is_idempotent_and_refuses_later_jobs(tmp_path):
    db = Database(tmp_path / "x.db", "x", [V1])
    db.read_now(lambda c: None)
    await db.read(lambda c: None)
    db.close()
    db.close()
    with pytest.raises(StoreClosed):
        await db.write(lambda c: None)
    with pytest.raises(StoreClosed):
        db.read_now(lambda c: None)
    assert not any(t.name.startswith("x-") for t in threading.enumerate())


async def test_memory_database(tmp_path):
    with Database(None, "mem", [V1, V2], memory=True) as db:
        assert db.path == ":memory:" and db.schema_version == 2
        await db.write(lambda c: c.execute("INSERT INTO t(name) VALUES('m')"))
        assert db.read_now(lambda c: c.execute("SELECT name, n FROM t").fetchall()) == [("m", 7)]
        assert await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchall()) == [(1,)]
        assert await db.checkpoint() == (0, 0)
        await db.backup_to(tmp_path / "mem-copy.db")
    assert user_version(tmp_path / "mem-copy.db") == 2


def test_job_calling_back_into_the_writer_fails_instead_of_deadlocking(tmp_path):
    with Database(tmp_path / "d.db", "d", [V1]) as db:
        with pytest.raises(RuntimeError, match="deadlock"):
            db.write_sync(lambda c: db.write_sync(lambda c2: None))


@pytest.fixture
def tiny_fs(tmp_path):
    """A 512 KiB tmpfs mounted in tmp_path (root only): a real ENOSPC."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_disk_full_on_a_tiny_filesystem(tiny_fs):
    filler = tiny_fs / "filler"
    path = tiny_fs / "history.db"
    with HistoryStore(path) as history:
        history.append_sync([("p", 1.0, 1.0, "ok")])
        filler.write_bytes(b"\0" * (300 * 1024))
        with pytest.raises(StoreFullError) as info:
            for i in range(1000):  # bounded: 512 KiB cannot hold 1000 batches
                history.append_sync([(f"p{j}", 10.0 + i, float(j), "ok") for j in range(1000)])
        assert str(path) in str(info.value)
        filler.unlink()  # space frees: the same store keeps working
        history.append_sync([("p", 2.0, 2.0, "ok")])
        assert [r["value"] for r in history.query("p")] == [1.0, 2.0]
    assert integrity_ok(path)


def integrity_ok(path) -> bool:
    conn = apsw.Connection(str(path))
    try:
        return conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
