"""Child process for test_store_kill.py: writes until killed, reporting each commit.

Usage: python kill_writer.py DIR.  Appends history batches and outbox batches in
a loop; after each commit *returned* prints ``H <last ts>`` or ``O <last seq>``
and flushes.  Stops by itself after 60 s or 20,000 batches.
"""

from __future__ import annotations

import sys
import time

from gatewayd.store import HistoryStore, Outbox

BATCH = 200
POINTS = 20


def main(directory: str) -> None:
    history = HistoryStore(f"{directory}/history.db")
    outbox = Outbox(f"{directory}/outbox.db")
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
    history.close()
    outbox.close()


if __name__ == "__main__":
    main(sys.argv[1])
