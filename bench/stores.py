"""Store benchmarks: prints figures (never asserts on time).

    python bench/stores.py [--quick] [--dir DIR]

Bytes written come from ``write_bytes`` in /proc/self/io (bytes this process
caused to be sent to the storage layer, counted per 4 KiB page-cache page as
it is dirtied; all threads, so it includes the writer thread and the WAL
checkpoints).  Every figure ends with a TRUNCATE checkpoint so the second write
of each page (WAL -> database file) is counted too.  The directory must be on
a real disk file system (tmpfs counts nothing): the default is a temporary
directory under the current directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import apsw
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatewayd.store import HistoryStore, Outbox, StateStore  # noqa: E402


def write_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def fmt(n: float) -> str:
    return f"{n:,.0f}"


def bench_open(d: Path) -> None:
    t = time.perf_counter()
    s = StateStore(d / "state.db")
    new = time.perf_counter() - t
    s.close()
    t = time.perf_counter()
    s = StateStore(d / "state.db")
    again = time.perf_counter() - t
    s.close()
    print(f"open state.db: new file {new * 1000:.1f} ms, existing {again * 1000:.2f} ms")


def bench_roundtrip(d: Path) -> None:
    async def main() -> None:
        with StateStore(d / "rt.db") as s:
            n = 2000
            t = time.perf_counter()
            for _ in range(n):
                await s.db.read(lambda c: None)
            rd = (time.perf_counter() - t) / n
            t = time.perf_counter()
            for _ in range(200):
                await s.db.write(lambda c: None)
            wr = (time.perf_counter() - t) / 200
            t = time.perf_counter()
            for i in range(200):
                await s.kv_set("bench", "k", i)
            row = (time.perf_counter() - t) / 200
            t = time.perf_counter()
            for _ in range(n):
                s.db.read_now(lambda c: None)
            inline = (time.perf_counter() - t) / n
        print(
            f"round trip from trio: read on reader thread {rd * 1e6:.0f} us, "
            f"empty write job {wr * 1e6:.0f} us, one-row commit (WAL fsync) {row * 1e6:.0f} us, "
            f"read_now {inline * 1e6:.1f} us"
        )

    trio.run(main)


def bench_history(d: Path, points: int, seconds: int) -> None:
    with HistoryStore(d / "history.db") as h:
        batch = 1000
        total = points * seconds
        t0 = 1_700_000_000.0
        w0 = write_bytes()
        t = time.perf_counter()
        buf = []
        for i in range(total):
            buf.append((f"site/dev{i % points // 10}/p{i % points}", t0 + i // points, 20.0 + (i % 97) / 10, "ok"))
            if len(buf) == batch:
                h.append_sync(buf)
                buf = []
        if buf:
            h.append_sync(buf)
        dt = time.perf_counter() - t
        h.db.checkpoint_sync("TRUNCATE")
        wb = write_bytes() - w0
        size = os.path.getsize(d / "history.db")
        print(
            f"history append: {fmt(total)} samples of {points} points in {batch}-row batches: "
            f"{fmt(total / dt)} samples/s, {wb / total:.1f} bytes written/sample, "
            f"file {size / total:.1f} bytes/sample"
        )
        key = "site/dev0/p7"
        for label, kw in (
            ("raw", {"limit": 1_000_000}),
            ("downsample 60 s", {"downsample": 60, "limit": 100_000}),
            ("downsample 900 s", {"downsample": 900, "limit": 100_000}),
        ):
            t = time.perf_counter()
            rows = h.query(key, start=t0, end=t0 + 86400, **kw)
            q = time.perf_counter() - t
            print(
                f"history query one point over {seconds / 3600:.0f} h of 1 Hz data ({points} points stored), "
                f"{label}: {q * 1000:.1f} ms, {len(rows)} rows"
            )

        async def one_async() -> float:
            t = time.perf_counter()
            await h.query_async(key, start=t0, end=t0 + 86400, downsample=60, limit=100_000)
            return time.perf_counter() - t

        print(f"history query_async (reader thread), downsample 60 s: {trio.run(one_async) * 1000:.1f} ms")


def bench_key_order(d: Path, points: int, rows: int) -> None:
    """The two candidate key orders side by side, raw APSW with the store's pragmas."""
    for name, ddl, order in (
        (
            "(ts, point)",
            "CREATE TABLE s(ts REAL, point INT, value, flags INT, PRIMARY KEY(ts, point)) WITHOUT ROWID",
            0,
        ),
        (
            "(point, ts)",
            "CREATE TABLE s(ts REAL, point INT, value, flags INT, PRIMARY KEY(point, ts)) WITHOUT ROWID",
            1,
        ),
    ):
        path = d / f"keyorder{order}.db"
        c = apsw.Connection(str(path))
        c.execute("PRAGMA page_size=1024; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL")
        c.execute(ddl)
        data = [(1_700_000_000.0 + i // points, i % points, 20.0 + i % 7, 0) for i in range(rows)]
        w0 = write_bytes()
        t = time.perf_counter()
        for i in range(0, rows, 1000):
            c.execute("BEGIN IMMEDIATE")
            c.executemany("INSERT INTO s VALUES(?, ?, ?, ?)", data[i : i + 1000])
            c.execute("COMMIT")
        dt = time.perf_counter() - t
        c.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        wb = write_bytes() - w0
        t = time.perf_counter()
        n = len(c.execute("SELECT ts, value FROM s WHERE point = 7 ORDER BY ts").fetchall())
        q = time.perf_counter() - t
        c.close()
        print(
            f"key order {name}: {points} points, {fmt(rows / dt)} rows/s, {wb / rows:.0f} bytes written/row, "
            f"one-point query {q * 1000:.1f} ms ({n} rows of {fmt(rows)})"
        )


def bench_outbox(d: Path, n: int) -> None:
    import random

    rnd = random.Random(1)
    payloads = [f'[{20 + rnd.random() * 10:.2f},"ok"]'.encode() for _ in range(997)]  # recorder-style values
    with Outbox(d / "outbox.db") as ob:
        batch = 1000
        w0 = write_bytes()
        t = time.perf_counter()
        ts = 1_700_000_000.0
        for i in range(0, n, batch):
            ob.append_sync(
                [
                    (ts + (i + j) / 100, "value", f"site/dev{j % 10}/p{j % 100}", payloads[(i + j) % 997])
                    for j in range(batch)
                ]
            )
        dt = time.perf_counter() - t
        ob.db.checkpoint_sync("TRUNCATE")
        wb = write_bytes() - w0
        size = os.path.getsize(d / "outbox.db")
        print(
            f'outbox append: {fmt(n)} values (~12-byte payloads like [21.53,"ok"]) in {batch}-entry batches: '
            f"{fmt(n / dt)} values/s, {wb / n:.1f} bytes written/value, file {size / n:.1f} bytes/value"
        )
        cur = ob.cursor("bench", start="oldest")
        w0 = write_bytes()
        t = time.perf_counter()
        got = 0
        while True:
            entries = cur.read(max_items=500)
            if not entries:
                break
            got += len(entries)
            cur.ack_sync(entries[-1].seq)
        dt = time.perf_counter() - t
        ob.db.checkpoint_sync("TRUNCATE")
        wb = write_bytes() - w0
        print(
            f"outbox drain: {fmt(got)} entries read+acked in batches of 500 (with compaction): "
            f"{fmt(got / dt)} values/s ({dt:.2f} s), {wb / max(got, 1):.1f} bytes written/value"
        )

        async def drain_async(m: int) -> float:
            await ob.append([(ts, "value", "k", payloads[j % 997]) for j in range(m)])
            t = time.perf_counter()
            while True:
                entries = cur.read(max_items=500)
                if not entries:
                    break
                await cur.ack(entries[-1].seq)
            return m / (time.perf_counter() - t)

        print(
            "outbox drain from trio (read_now + await ack), 200,000 entries: "
            f"{fmt(trio.run(drain_async, 200_000))} values/s"
        )

    for batch, n_small in ((10, 20_000), (100, 100_000)):
        with Outbox(d / f"outbox-small{batch}.db") as ob:
            w0 = write_bytes()
            t = time.perf_counter()
            for i in range(0, n_small, batch):
                ob.append_sync([(ts + (i + j) / 100, "value", f"p{j}", payloads[(i + j) % 997]) for j in range(batch)])
            dt = time.perf_counter() - t
            ob.db.checkpoint_sync("TRUNCATE")
            wb = write_bytes() - w0
        print(
            f"outbox append in {batch}-entry batches (small recorder flushes): {fmt(n_small / dt)} values/s, "
            f"{wb / n_small:.1f} bytes written/value"
        )

    # a binding size cap (a connector that never acks): the files stay near max_bytes, WAL included
    cap = 256 * 1024
    with Outbox(d / "outbox-capped.db", max_bytes=cap) as ob:
        ob.cursor("never-acks")
        biggest = 0
        n_cap = 200_000
        w0 = write_bytes()
        t = time.perf_counter()
        for i in range(0, n_cap, 100):
            ob.append_sync([(ts + (i + j) / 100, "value", f"p{j}", payloads[(i + j) % 997]) for j in range(100)])
            biggest = max(biggest, ob.db.disk_bytes())
        dt = time.perf_counter() - t
        wb = write_bytes() - w0
        st = ob.status()
    print(
        f"outbox at a binding {cap // 1024} KiB cap, 100-entry batches: {fmt(n_cap / dt)} values/s, "
        f"{wb / n_cap:.1f} bytes written/value, largest files (db + WAL) {biggest / 1024:.0f} KiB, "
        f"{fmt(st['entries'])} entries kept, {fmt(st['dropped'])} dropped"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data sets")
    ap.add_argument("--dir", help="where to put the files (a real disk, not tmpfs)")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="bench-stores-", dir=args.dir or "."))
    try:
        print(f"apsw {apsw.apsw_version()}, SQLite {apsw.sqlite_lib_version()}, files in {d}")
        bench_open(d)
        bench_roundtrip(d)
        bench_key_order(d, 100, 100_000 if args.quick else 360_000)
        bench_history(d, 10, 3600 if args.quick else 86400)
        bench_outbox(d, 100_000 if args.quick else 1_000_000)
    finally:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
