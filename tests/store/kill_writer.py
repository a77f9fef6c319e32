"""Child process for test_store_kill.py: writes until killed, reporting each commit.

Usage: python kill_writer.py DIR [cursor].  Appends history batches and outbox
batches in a loop; after each commit *returned* prints ``H <last ts>`` or
``O <last seq>`` and flushes.  With ``cursor``, a cursor ``c`` acknowledges
all but the last half batch after each outbox append (a connector that lags a
little) and ``A <seq>`` is printed after each ack.  Stops by itself after 60 s
or 20,000 batches.
"""

from __future__ import annotations

import sys
import time

from gatewayd.store import HistoryStore, Outbox

BATCH = 200
POINTS = 20


def main(directory: str, with_cursor: bool = False) -> None:
    history = HistoryStore(f"{directory}/history.db")
    outbox = Outbox(f"{directory}/outbox.db")
    cursor = outbox.cursor("c") if with_cursor else None
    deadline = time.monotonic() + 60
    ts = 1_000_000.0
    for _ in range(10_000):
        if time.monotonic() > deadline:
            break
        samples = []
        for i in range(BATCH):
            samples.append((f"p{i % POINTS}", ts + i // POINTS, float(i), "ok"))
        history.append_sync(samples)
        print(f"H {ts + (BATCH - 1) // POINTS}", flush=True)
        ts += BATCH // POINTS
        seq = outbox.append_sync([(ts, "value", f"p{i % POINTS}", b'[1.5,"ok"]' * 3) for i in range(BATCH)])
        print(f"O {seq}", flush=True)
        if cursor is not None:
            cursor.ack_sync(seq - BATCH // 2)
            print(f"A {seq - BATCH // 2}", flush=True)
    history.close()
    outbox.close()


if __name__ == "__main__":
    main(sys.argv[1], len(sys.argv) > 2 and sys.argv[2] == "cursor")
