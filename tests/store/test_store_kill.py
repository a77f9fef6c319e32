"""kill -9 while writing: every commit the writer reported survives, files stay intact."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import apsw

from gatewayd.store import HistoryStore, Outbox

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def read_lines(proc: subprocess.Popen, want: int, timeout: float) -> list[str]:
    """Read at least ``want`` lines from the child's stdout, within ``timeout``."""
    lines: list[str] = []
    buf = b""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    while len(lines) < want:
        left = deadline - time.monotonic()
        assert left > 0, f"child produced only {len(lines)} lines; stderr: {proc.stderr.read()!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"child exited early: {proc.wait()} {proc.stderr.read()!r}"
            buf += chunk
            *complete, buf = buf.split(b"\n")
            lines += [c.decode() for c in complete]
    return lines


def integrity(path: Path) -> list:
    conn = apsw.Connection(str(path))
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


def test_kill_9_during_writes_loses_nothing_committed(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "kill_writer.py"), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        lines = read_lines(proc, 200, timeout=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # lines already in the pipe were reported after their commit too
        lines += [line for line in proc.stdout.read().decode().split("\n") if line]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    last_ts = max(float(line[2:]) for line in lines if line.startswith("H "))
    last_seq = max(int(line[2:]) for line in lines if line.startswith("O "))
    assert integrity(tmp_path / "history.db") == [("ok",)]
    assert integrity(tmp_path / "outbox.db") == [("ok",)]

    with HistoryStore(tmp_path / "history.db") as history:
        for p in ("p0", "p19"):
            rows = history.query(p, end=last_ts, limit=1_000_000)
            # 10 samples per point per batch, ts 1e6, 1e6+1, ... without a gap up to last_ts
            assert [r["ts"] for r in rows] == [1_000_000.0 + i for i in range(int(last_ts - 1_000_000) + 1)]
    with Outbox(tmp_path / "outbox.db") as outbox:
        assert outbox.head >= last_seq
        everything = outbox.cursor("check", start="oldest").read(max_items=last_seq)
        assert [e.seq for e in everything] == list(range(1, last_seq + 1))
        assert all(e.payload == b'[1.5,"ok"]' * 3 for e in everything)


def run_and_kill(tmp_path, *args: str, lines: int = 200) -> list[str]:
    """Start kill_writer.py, let it report ``lines`` commits, kill -9 it; every line it printed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(HERE / "kill_writer.py"), str(tmp_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        got = read_lines(proc, lines, timeout=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        got += [line for line in proc.stdout.read().decode().split("\n") if line]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return got


def test_delivered_counts_entries_not_seq_distance_across_kill_9(tmp_path):
    """Issue 12.12: after kill -9 the next seqs start past the reservation (a gap of ~1,000,000
    seqs); a cursor that was behind at the kill must not count the gap as delivered (nor as
    dropped): delivered + dropped + backlog == appended, through two kills."""
    for _round in range(2):
        lines = run_and_kill(tmp_path, "cursor")
        assert any(line.startswith("A ") for line in lines)
        with Outbox(tmp_path / "outbox.db") as ob:
            assert ob.skipped is not None  # the unclean stop left a gap of seqs
            cur = ob.cursor("c")
            st = cur.status()
            assert st["backlog"] > 0 and st["acked"] < ob.skipped[0]  # behind at the kill: not moved
            ob.append_sync([(2e6, "value", "p0", b"[1]")] * 50)
            cur.ack_sync(ob.head)
            st = ob.status()
            c = st["cursors"]["c"]
            assert c["backlog"] == 0
            assert c["delivered"] + c["dropped"] == st["appended"], (c, st["appended"])
