"""Issue 11.1: a kill -9 between the outbox commit and the history commit of one batch.

A real ``gatewayd run`` process records counter points (outbox on: a connector is
configured). The test holds history.db's write lock from another process, so the
daemon's history commit waits while its outbox commit goes through; then kill -9.
Before the fix, history.db never got those values although outbox.db (and so the
broker) had them. Now the next start rebuilds them from the outbox entries after
history.db's replay marker: every value in outbox.db is in history.db.
"""

from __future__ import annotations

import json
import os
import time

import apsw
import pytest

from gatewayd.testing import DaemonProcess, site_toml

pytestmark = pytest.mark.slow

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SITE = """
[history]
flush_interval = "100ms"

[drivers.c]
type = "counter"
plugin = "ext_plugins.counter"
interval = "20ms"
[drivers.c.devices.d1]
[drivers.c.devices.d1.points.a]
[drivers.c.devices.d1.points.b]
step = 2

[connectors.up]
type = "collector"
plugin = "ext_plugins.collector"
fail = true
"""


def _outbox_head(path: str) -> int:
    c = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return c.execute("SELECT head FROM meta").fetchall()[0][0]
    except apsw.SQLError:  # not created yet
        return 0
    finally:
        c.close()


def _wait(pred, timeout: float, what: str, d: DaemonProcess) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}; log:\n{d.log()[-3000:]}"
        time.sleep(0.02)  # polling another process's committed files: no event to await


def test_kill_9_between_outbox_and_history_commits_loses_no_value(tmp_path):
    path = tmp_path / "gatewayd.toml"
    path.write_text(site_toml(tmp_path, SITE))
    var = tmp_path / "var"
    hist, outb = str(var / "history.db"), str(var / "outbox.db")
    env = {"PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    with DaemonProcess(str(path), env=env) as d:
        d.wait_ready()
        _wait(lambda: _outbox_head(outb) > 20, 20, "outbox commits", d)
        blocker = apsw.Connection(hist)
        blocker.set_busy_timeout(10_000)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # history.db's write lock: the daemon's next history commit waits
            head = _outbox_head(outb)
            _wait(lambda: _outbox_head(outb) > head, 10, "an outbox commit while history is locked", d)
            d.kill()
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
    # the restarted daemon repairs history before anything else; then a clean stop
    with DaemonProcess(str(path), env=env) as d:
        d.wait_ready()
        assert d.stop() == 0, d.log()
        log = d.log()
    h = apsw.Connection(hist)
    try:
        pid = dict(h.execute("SELECT point_key, id FROM point"))
        in_history = {(p, v) for p, v in h.execute("SELECT point, value FROM sample")}
    finally:
        h.close()
    from gatewayd.store import Outbox

    with Outbox(outb) as ob:
        entries = ob.read_committed(0, 1_000_000)
    values = [(pid.get(e.key), json.loads(e.payload)[0]) for e in entries if e.kind == "value"]
    assert values, "no value in the outbox"
    missing = [v for v in values if v not in in_history]
    assert not missing, f"{len(missing)} of {len(values)} outbox values are not in history.db, e.g. {missing[:5]}"
    assert "samples rebuilt from the outbox" in log, log[-3000:]
