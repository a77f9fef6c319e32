"""Outbox: append/read/ack, persisted cursors, caps, compaction, memory mode, wake-ups."""

from __future__ import annotations

import logging
import os

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.store import Entry, Outbox
from gatewayd.store.outbox import BLOCK_RAW_BYTES


def entries(n: int, ts: float = 1000.0, key: str = "ahu1/t", size: int = 10, kind: str = "value"):
    return [(ts + i, kind, key, bytes([i % 256]) * size) for i in range(n)]


def same(n: int, ts: float = 1000.0):
    """Entries that encode to byte-identical blocks (for exact size arithmetic)."""
    return [(ts + i, "value", "ahu1/t", b"0123456789") for i in range(n)]


async def test_append_read_ack(tmp_path):
    with Outbox(tmp_path / "outbox.db") as ob:
        cur = ob.cursor("mqtt.main")
        assert await ob.append([]) == 0
        assert await ob.append([(1.2345678, "value", "ahu1/t", b'[21.5,"ok"]'), (2.0, "alarm", "dev1", b"{}")]) == 2
        assert ob.head == 2
        first = cur.read()
        assert first == [Entry(1, 1.235, "value", "ahu1/t", b'[21.5,"ok"]'), Entry(2, 2.0, "alarm", "dev1", b"{}")]
        assert cur.read() == first  # non-destructive until acked
        assert cur.backlog() == 2 and cur.position() == 0
        assert cur.read(max_items=1) == first[:1]
        assert cur.read(max_bytes=1) == first[:1]  # at least one entry
        assert cur.read_after(1) == first[1:]
        assert await cur.ack(1) == 1
        assert await cur.ack(1) == 0 and await cur.ack(0) == 0  # at/behind the position: no-op
        with pytest.raises(ValueError):
            await cur.ack(3)
        assert cur.read() == first[1:]
        assert (cur.backlog(), cur.delivered, cur.dropped) == (1, 1, 0)
        assert cur.oldest_age(now=12.0) == pytest.approx(10.0)
        assert await cur.read_async() == first[1:]
        assert await cur.ack(2) == 1
        assert cur.read() == [] and cur.oldest_age() is None and cur.backlog() == 0
        with pytest.raises(TypeError):
            await ob.append([(1.0, "value", "k", "not bytes")])
        assert ob.head == 2  # the failed append changed nothing


async def test_cursor_persists_across_reopen_and_seqs_are_never_reused(tmp_path):
    path = tmp_path / "outbox.db"
    with Outbox(path) as ob:
        cur = await ob.open_cursor("webhook.a")
        await ob.append(entries(10))
        await cur.ack(4)
    with Outbox(path) as ob:
        cur = ob.cursor("webhook.a")
        assert cur.position() == 4 and cur.delivered == 4
        assert [e.seq for e in cur.read()] == [5, 6, 7, 8, 9, 10]
        late = ob.cursor("late")  # a new cursor starts at the head...
        assert late.read() == []
        old = ob.cursor("old", start="oldest")  # ...or at the oldest entry still stored:
        # compaction deletes whole blocks, and 1..10 are one block, so 1..4 are still there
        assert [e.seq for e in old.read(max_items=2)] == [1, 2]
        await cur.ack(10)
        await late.ack(10)
        await old.ack(10)
        assert ob.status()["entries"] == 0
    with Outbox(path) as ob:
        assert await ob.append(entries(1)) == 11
        assert ob.cursor_names() == ["late", "old", "webhook.a"]
        with pytest.raises(ValueError):
            ob.cursor("x", start="middle")


async def test_compaction_waits_for_the_slowest_cursor(tmp_path):
    with Outbox(tmp_path / "outbox.db", compact_chunk=3, block_entries=1) as ob:
        fast, slow = ob.cursor("fast"), ob.cursor("slow")
        await ob.append(same(20))
        per_block = ob.status()["bytes"] // 20
        await fast.ack(20)
        assert ob.status()["entries"] == 20
        await slow.ack(10)  # compacts at most compact_chunk=3 blocks in the ack transaction
        assert ob.status()["tail"] == 4
        assert await ob.compact() == 7
        st = ob.status()
        assert (st["tail"], st["entries"], st["blocks"], st["bytes"]) == (11, 10, 10, 10 * per_block)
        assert await ob.remove_cursor("slow") is True
        assert await ob.remove_cursor("slow") is False
        assert await ob.compact() == 10
        assert ob.status()["entries"] == 0 and ob.status()["bytes"] == 0
        assert list(ob.status()["cursors"]) == ["fast"]


async def test_blocks_split_and_read_across_boundaries(tmp_path):
    with Outbox(tmp_path / "outbox.db", block_entries=7) as ob:
        cur = ob.cursor("c")
        batch = [
            (1000.0 + i / 1000, ("value", "event")[i % 2], f"k{i % 5}", f"payload {i}".encode()) for i in range(50)
        ]
        await ob.append(batch)
        assert ob.status()["blocks"] == 8  # 7 * 7 + 1
        want = [(i + 1, round(1000.0 + i / 1000, 3), k, key, p) for i, (_, k, key, p) in enumerate(batch)]
        assert [tuple(e) for e in cur.read(max_items=100)] == want
        assert [e.seq for e in cur.read_after(5, max_items=10)] == list(range(6, 16))
        assert [e.seq for e in cur.read_after(48)] == [49, 50]
        assert cur.read_after(50) == []
        await cur.ack(9)  # mid-block
        assert cur.read(max_items=3)[0].seq == 10 and cur.oldest_age(now=1001.0) == pytest.approx(1 - 0.009)
        assert ob.status()["tail"] == 8  # block 1..7 went, 8..14 stays
        big = [(2000.0, "value", "big", b"x" * (BLOCK_RAW_BYTES // 2 + 1)) for _ in range(5)]
        await ob.append(big)
        assert ob.status()["blocks"] == 7 + 3  # a block closes after BLOCK_RAW_BYTES of payload
        assert [len(e.payload) for e in cur.read_after(50)] == [BLOCK_RAW_BYTES // 2 + 1] * 5


async def test_no_cursor_keeps_entries(tmp_path):
    with Outbox(tmp_path / "outbox.db") as ob:
        await ob.append(entries(5))
        assert await ob.compact() == 0
        assert [e.seq for e in ob.cursor("new", start="oldest").read()] == [1, 2, 3, 4, 5]


async def test_max_bytes_drops_oldest_counts_and_logs_once_per_episode(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gatewayd.outbox")
    # the accounted-bytes arithmetic of a memory outbox (on disk the cap counts the files: below)
    with Outbox(None, memory=True, block_entries=10) as ob:
        behind, ahead = ob.cursor("behind"), ob.cursor("ahead")
        for k in range(10):
            await ob.append(same(10, ts=1000.0 + 10 * k))
        per_block = ob.status()["bytes"] // 10
        assert ob.status()["bytes"] == 10 * per_block
        ob.max_bytes = 10 * per_block  # full to the byte
        assert not ob.dropping
        await ahead.ack(95)
        for k in range(5):  # 5 blocks of overflow, one episode
            await ob.append(same(10, ts=2000.0 + 10 * k))
        st = ob.status()
        assert (st["bytes"], st["entries"], st["blocks"], st["head"], st["dropped"]) == (
            10 * per_block,
            100,
            10,
            150,
            50,
        )
        assert ob.dropping
        assert st["cursors"]["behind"]["dropped"] == 50 and st["cursors"]["behind"]["acked"] == 50
        assert st["cursors"]["ahead"]["dropped"] == 0 and st["cursors"]["ahead"]["acked"] == 95
        assert st["cursors"]["behind"]["backlog"] == 100
        assert behind.read(max_items=1)[0].seq == 51
        assert behind.read_after(3, max_items=1)[0].seq == 51  # pipelined window skips dropped entries
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "max_bytes" in warnings[0].getMessage()
        assert ":memory:" in warnings[0].getMessage()
        # the connector catches up: compaction frees space, the next check ends the episode
        await behind.ack(150)
        await ahead.ack(150)
        assert await ob.enforce_caps() == 0
        assert not ob.dropping
        infos = [r for r in caplog.records if r.levelno == logging.INFO]
        assert len(infos) == 1 and "50 entries were dropped" in infos[0].getMessage()
        # a second episode logs again, once
        for _ in range(12):
            await ob.append(same(10))
        assert ob.status()["dropped"] == 70
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


async def test_max_age_drops_old_entries(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gatewayd.outbox")
    now = [1000.0]
    with Outbox(tmp_path / "outbox.db", max_age=60, drop_chunk=7, block_entries=1, clock=lambda: now[0]) as ob:
        cur = ob.cursor("c")
        await ob.append(entries(30, ts=1000.0))  # ts 1000..1029
        assert await ob.enforce_caps() == 0 and cur.backlog() == 30
        now[0] = 2000.0  # all 30 are now older than 60 s
        await ob.append(entries(5, ts=1990.0))  # 1990..1994, young
        assert ob.status()["dropped"] == 7  # bounded by drop_chunk per append transaction
        assert cur.oldest_age() == pytest.approx(2000.0 - 1007.0)
        assert await ob.enforce_caps() == 23  # the rest, in chunks
        assert cur.dropped == 30 and cur.backlog() == 5
        assert [e.seq for e in cur.read()] == [31, 32, 33, 34, 35]
        assert await ob.enforce_caps(now=2052.5) == 3  # 1990, 1991, 1992 < 2052.5 - 60
        assert cur.dropped == 33 and cur.backlog() == 2
        assert await ob.enforce_caps(now=2052.5) == 0
        assert not ob.dropping
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "max_age" in warnings[0].getMessage()  # one episode, one warning
        infos = [r for r in caplog.records if r.levelno == logging.INFO]
        assert len(infos) == 1 and "33 entries were dropped" in infos[0].getMessage()
        assert ob.status(now=2053.0)["cursors"]["c"]["oldest_age"] == pytest.approx(60.0)


async def test_max_age_keeps_a_block_with_any_young_entry(tmp_path):
    now = [2000.0]
    with Outbox(tmp_path / "outbox.db", max_age=60, block_entries=10, clock=lambda: now[0]) as ob:
        cur = ob.cursor("c")
        await ob.append([(1935.0 + i, "value", "k", b"v") for i in range(20)])  # blocks 1935..1944, 1945..1954
        assert ob.status()["dropped"] == 0  # 1935 is too old, but its block holds 1940..1944
        assert await ob.enforce_caps() == 0
        now[0] = 2004.5
        assert await ob.enforce_caps() == 10  # 1935..1944 all older than 1944.5
        assert cur.dropped == 10 and [e.seq for e in cur.read()][:1] == [11]


async def test_memory_mode_writes_no_file_and_forgets(tmp_path):
    before = set(os.listdir(tmp_path))
    with Outbox(None, memory=True, max_bytes=10_000) as ob:
        cur = ob.cursor("m")
        await ob.append(entries(5))
        assert [e.seq for e in cur.read()] == [1, 2, 3, 4, 5]
        await cur.ack(3)
        st = ob.status()
        assert st["memory"] is True and st["cursors"]["m"]["backlog"] == 2
    assert set(os.listdir(tmp_path)) == before
    with Outbox(None, memory=True) as ob:
        assert ob.head == 0 and ob.cursor_names() == []


async def test_wait_for_data_wakes_on_append(tmp_path):
    with Outbox(tmp_path / "outbox.db") as ob:
        cur = ob.cursor("c")
        woke = []

        async def waiter():
            await cur.wait_for_data()
            woke.append(ob.head)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            await ob.append(entries(3))
        assert woke == [3]
        await cur.wait_for_data()  # data already there: returns at once
        await cur.ack(3)
        with trio.move_on_after(0.05) as scope:  # nothing new: it really sleeps
            await cur.wait_for_data()
        assert scope.cancelled_caught
        await cur.wait_for_data(after_seq=2)  # pipelining: something after 2 exists
        assert ob._waiters == []


async def test_wait_for_data_woken_by_append_from_another_thread(tmp_path):
    with Outbox(tmp_path / "outbox.db") as ob:
        cur = ob.cursor("c")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cur.wait_for_data)
            await trio.testing.wait_all_tasks_blocked()
            await trio.to_thread.run_sync(ob.append_sync, entries(1))
        assert cur.backlog() == 1


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(
                st.floats(min_value=0, max_value=4e9, allow_nan=False),
                st.sampled_from(["value", "event", "alarm"]),
                st.text(min_size=0, max_size=12),
                st.binary(max_size=64),
            ),
            max_size=30,
        ),
        max_size=5,
    ),
    block_entries=st.integers(1, 9),
    read_size=st.integers(1, 40),
)
def test_block_round_trip_property(batches, block_entries, read_size):
    with Outbox(None, memory=True, block_entries=block_entries) as ob:
        cur = ob.cursor("c")
        want = []
        for batch in batches:
            ob.append_sync(batch)
            want += batch
        got = []
        while True:
            chunk = cur.read(max_items=read_size)
            if not chunk:
                break
            got += chunk
            cur.ack_sync(chunk[-1].seq)
        assert [e.seq for e in got] == list(range(1, len(want) + 1))
        assert [(e.kind, e.key, e.payload) for e in got] == [(k, key, p) for _, k, key, p in want]
        assert [e.ts for e in got] == [round(ts * 1000) / 1000 for ts, *_ in want]
        assert ob.status()["entries"] == 0 and ob.status()["bytes"] == 0


async def test_staged_entries_are_visible_at_once_and_committed_with_their_seqs(tmp_path):
    def persisted(ob):
        return ob.db.read_now(lambda c: c.execute("SELECT acked FROM cursor WHERE name='c'").fetchall())[0][0]

    with Outbox(tmp_path / "outbox.db") as ob:
        cur = await ob.open_cursor("c")
        await ob.append(entries(2))
        assert ob.stage(entries(3, ts=2000.0)) == 5
        assert (ob.head, ob.committed_head, ob.staged) == (5, 2, 3)
        got = cur.read_after(0)
        assert [e.seq for e in got] == [1, 2, 3, 4, 5] and got[2].ts == 2000.0
        with trio.fail_after(5):
            await cur.wait_for_data(4)  # a stage wakes waiters: no commit needed
        # acking staged entries: durable up to the committed head now, the rest at the commit
        assert await cur.ack(4) == 4
        assert (cur.position(), cur.backlog(), cur.delivered, persisted(ob)) == (4, 1, 4, 2)
        assert [e.seq for e in cur.read()] == [5]
        assert await ob.commit_staged() == 5
        assert (ob.staged, ob.committed_head, persisted(ob)) == (0, 5, 4)
        assert cur.read() == got[4:]  # from disk now: same seq, same entry
        ob.stage(entries(1))
        assert await ob.append(entries(1)) == 7 and ob.staged == 0  # append after staged keeps seq order
        assert ob.status()["entries"] == 5  # block 1..2 (acked) compacted away; 3..7 stored


async def test_an_unclean_stop_never_reuses_a_seq_that_may_have_been_sent(tmp_path):
    path = tmp_path / "outbox.db"
    ob = Outbox(path)
    done, slow = await ob.open_cursor("done"), await ob.open_cursor("slow")
    await ob.append(entries(3))
    await done.ack(3)
    ob.stage(entries(5))  # seqs 4..8: visible (a connector may have sent them), never committed
    assert [e.seq for e in done.read()] == [4, 5, 6, 7, 8]
    ob.db.close()  # kill -9: no commit, no clean close
    with Outbox(path) as ob:
        first, last = ob.skipped
        assert first == 4 and last == ob.head and last >= 8
        assert ob.cursor("done").position() == last and ob.cursor("done").backlog() == 0
        s = ob.cursor("slow")
        assert s.position() == 0 and s.backlog() == 3  # the 3 committed entries, not the skipped seqs
        assert await ob.append(entries(2)) == last + 2
        assert [e.seq for e in s.read()] == [1, 2, 3, last + 1, last + 2] and s.backlog() == 5
        assert ob.status()["entries"] == 5
    with Outbox(path) as ob:  # that stop was clean: nothing skipped
        assert ob.skipped is None and ob.head == last + 2


async def test_memory_outbox_stages_and_commits(tmp_path):
    with Outbox(None, memory=True) as ob:
        cur = ob.cursor("c")
        ob.stage(entries(3))
        assert [e.seq for e in cur.read()] == [1, 2, 3]
        await cur.ack(2)
        assert await ob.commit_staged() == 3 and cur.position() == 2 and cur.backlog() == 1


def _on_disk(path) -> int:
    return sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))


async def test_max_bytes_counts_the_files_on_disk_wal_included(tmp_path):
    """Issue 12.13: with a 256 KiB cap the files reached 1.44 MB (WAL 1.05 MB). The cap is what is
    on disk (database + WAL), kept by checkpointing: the files stay near it, however much is appended."""
    import random

    cap = 256 * 1024
    path = tmp_path / "outbox.db"
    rnd = random.Random(7)
    with Outbox(path, max_bytes=cap) as ob:
        ob.cursor("never-acks")
        biggest = 0
        for i in range(150):  # ~15 MB of poorly compressible payloads through a 256 KiB outbox
            await ob.append([(1000.0 + i, "value", f"p{j % 50}", rnd.randbytes(100)) for j in range(1000)])
            biggest = max(biggest, _on_disk(path))
        st = ob.status()
        assert st["dropped"] > 0 and st["entries"] > 0  # the oldest were dropped, the newest kept
        assert biggest <= cap * 1.1, f"{biggest} bytes on disk for a {cap} cap"
