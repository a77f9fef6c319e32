"""Issue 11.6: a full disk under the state dir, 500 points every 100 ms.

The state dir is a real tmpfs (root here), filled with a filler file until ENOSPC and
freed again. What the recorder holds in memory for stores it cannot write is bounded
in bytes (``[history] max_held_bytes``); drops are counted per store, logged at ERROR
and shown in ``gateway.status``; ``held_for_retry`` is what is really held; the recovery
message says what was written and what was lost; ``last_error`` is cleared.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess

import pytest

from gatewayd.testing import rpc, run_gateway, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB tmpfs mounted at tmp_path/var (root only): a real ENOSPC for the state dir."""
    mnt = tmp_path / "var"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path) -> None:
    """Write ``path`` until the file system is full."""
    with open(path, "wb") as fh:
        chunk = b"\0" * 65536
        while True:
            try:
                fh.write(chunk)
                fh.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
                return


def site(extra: str = "") -> str:
    return f"""
[history]
flush_interval = "200ms"
{extra}

[drivers.sim]
type = "sim"
interval = "100ms"
[drivers.sim.devices.m]
model = "meter"
generate = 500

[connectors.up]
type = "collector"
plugin = "ext_plugins.collector"
"""


async def test_full_disk_recovery_is_reported_truthfully(small_fs, caplog):
    caplog.set_level(logging.INFO)
    async with run_gateway(small_fs.parent, site()) as gw:
        await wait_until(gw, lambda: gw.recorder.samples_written > 1000, timeout=20, what="samples")
        filler = small_fs / "filler"
        fill(filler)
        await wait_until(gw, lambda: gw.recorder.stats()["held_for_retry"] > 5000, timeout=20,
                         what="rows held while the disk is full")
        st = (await rpc(gw, "gateway.status"))["recorder"]
        assert "full" in st["last_error"].lower()
        filler.unlink()
        written = gw.recorder.samples_written
        await wait_until(gw, lambda: gw.recorder.stats()["held_for_retry"] == 0
                         and gw.recorder.samples_written > written, timeout=20, what="recovery")
        st = (await rpc(gw, "gateway.status"))["recorder"]
        assert st["last_error"] is None, st
        assert not st["failing"] and st["dropped_total"] == 0
    recovered = [r.getMessage() for r in caplog.records if "writable again" in r.getMessage()]
    assert recovered and all("none lost" in m for m in recovered), recovered


async def test_memory_held_is_bounded_in_bytes_and_drops_are_counted(small_fs, caplog):
    caplog.set_level(logging.INFO)
    cap = 1024 * 1024
    async with run_gateway(small_fs.parent, site('max_held_bytes = "1MiB"')) as gw:
        await wait_until(gw, lambda: gw.recorder.samples_written > 1000, timeout=20, what="samples")
        filler = small_fs / "filler"
        fill(filler)
        await wait_until(gw, lambda: gw.recorder.stats()["dropped_total"] > 5000, timeout=30,
                         what="drops beyond max_held_bytes")
        st = (await rpc(gw, "gateway.status"))["recorder"]
        assert st["max_held_bytes"] == cap and 0 < st["held_bytes"] <= cap
        assert st["held_for_retry"] > 0 and st["failing"]
        dropped = st["dropped"]["history"] + st["dropped"]["outbox"]
        assert dropped == st["dropped_total"] > 0
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "dropped (lost)" in r.getMessage()]
        assert errors  # logged at ERROR, once per episode and store
        assert len(errors) <= 2
        filler.unlink()
        await wait_until(gw, lambda: not gw.recorder.stats()["failing"], timeout=20, what="recovery")
        st = (await rpc(gw, "gateway.status"))["recorder"]
        assert st["last_error"] is None and st["held_for_retry"] == 0 and st["held_bytes"] < cap
        total = st["dropped"]["history"] + st["dropped"]["outbox"]
    # the recovery lines say how many rows each store lost, and they add up to the counters
    lines = [r.getMessage() for r in caplog.records if "writable again" in r.getMessage()]
    said = sum(int(m.split("; ")[1].split()[0]) for m in lines if "were dropped while it failed" in m)
    assert said == total, lines


async def test_only_the_failing_store_gives_up_rows(tmp_path):
    """history.db cannot grow (max_page_count), the outbox works: past max_held_bytes the oldest held
    samples are dropped and counted; the working outbox loses nothing."""
    async with run_gateway(tmp_path, site('max_held_bytes = "200KiB"')) as gw:
        await wait_until(gw, lambda: gw.recorder.samples_written > 1000, timeout=20, what="samples")
        db = gw.history.db
        pages = await db.write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await db.write(lambda c: c.execute(f"PRAGMA max_page_count={pages}").fetchall())
        await wait_until(gw, lambda: gw.recorder.stats()["dropped"]["history"] > 2000, timeout=30,
                         what="history drops")
        st = gw.recorder.stats()
        assert st["failing"] == ["history"] and st["dropped"]["outbox"] == 0
        assert st["held_samples"] * 150 <= 200 * 1024
        head = gw.outbox.committed_head
        await wait_until(gw, lambda: gw.outbox.committed_head > head, timeout=10, what="outbox commits go on")
        await db.write(lambda c: c.execute("PRAGMA max_page_count=1073741823").fetchall())
        await wait_until(gw, lambda: not gw.recorder.stats()["failing"], timeout=20, what="recovery")
        assert gw.recorder.stats()["last_error"] is None
