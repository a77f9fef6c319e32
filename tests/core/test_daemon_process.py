"""gatewayd as a real process: sd_notify protocol, signals, kill -9 during history writes, gatewayctl."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import apsw
import pytest

from gatewayd.testing import DaemonProcess, site_toml

pytestmark = pytest.mark.slow


def write_site(tmp_path, body):
    p = tmp_path / "gatewayd.toml"
    p.write_text(site_toml(tmp_path, textwrap.dedent(body)))
    return str(p)


def ctl(tmp_path, *args, check=True):
    r = subprocess.run([sys.executable, "-c", "import sys; from gatewayd.cli import gatewayctl_main; "
                        "sys.exit(gatewayctl_main())", "--socket", str(tmp_path / "var/gatewayd.sock"), *args],
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


SIM = """
[history]
flush_interval = "100ms"
[drivers.sim]
type = "sim"
interval = "50ms"
[drivers.sim.devices.m]
model = "meter"
generate = 200
"""


def test_notify_ready_reload_stopping_and_watchdog(tmp_path):
    path = write_site(tmp_path, SIM)
    with DaemonProcess(path, env={"WATCHDOG_USEC": "400000"}) as d:
        msg = d.wait_for("READY=1")
        assert "STATUS=" in msg
        d.wait_for("WATCHDOG=1", timeout=5)
        d.messages.clear()
        d.signal(signal.SIGHUP)
        m = d.wait_for("RELOADING=1")
        assert "MONOTONIC_USEC=" in m
        d.wait_for("READY=1")
        d.messages.clear()
        d.signal(signal.SIGTERM)
        d.wait_for("STOPPING=1")
        assert d.proc.wait(30) == 0
        assert "stopped" in d.log()


def test_kill_9_during_history_writes_loses_nothing_committed(tmp_path):
    path = write_site(tmp_path, SIM)
    hist = str(tmp_path / "var" / "history.db")
    with DaemonProcess(path) as d:
        d.wait_ready()
        # read what is committed (another connection sees only committed rows)
        seen = 0
        for _ in range(200):
            if os.path.exists(hist):
                c = apsw.Connection(hist, flags=apsw.SQLITE_OPEN_READONLY)
                try:
                    seen = c.execute("select count(*) from sample").fetchone()[0]
                except apsw.SQLError:
                    seen = 0
                c.close()
            if seen > 2000:
                break
            time.sleep(0.05)  # polling another process's committed rows: no event to await
        assert seen > 2000, d.log()
        d.kill()
    c = apsw.Connection(hist)
    assert c.execute("pragma integrity_check").fetchone()[0] == "ok"
    after = c.execute("select count(*) from sample").fetchone()[0]
    c.close()
    assert after >= seen
    # and the daemon starts again on the same files
    with DaemonProcess(path) as d:
        d.wait_ready()
        assert d.stop() == 0


def test_gatewayctl_against_a_running_daemon(tmp_path):
    path = write_site(tmp_path, """
        [drivers.sim]
        type = "sim"
        interval = "50ms"
        [drivers.sim.devices.ahu-1]
        model = "ahu"
        """)
    with DaemonProcess(path) as d:
        d.wait_ready()
        out = ctl(tmp_path, "points", "list", "--device", "ahu-1").stdout
        assert out.splitlines()[0].split()[:4] == ["ID", "VALUE", "UNIT", "STATUS"]
        assert "ahu-1/supply_temp_sp" in out
        r = ctl(tmp_path, "--json", "points", "write", "ahu-1/supply_temp_sp", "16.5", "--priority", "8")
        assert json.loads(r.stdout)["effective"] == 16.5
        out = ctl(tmp_path, "points", "priority-array", "ahu-1/supply_temp_sp").stdout
        assert "effective: 16.5 (level 8)" in out
        r = ctl(tmp_path, "points", "write", "ahu-1/supply_temp", "1", check=False)
        assert r.returncode == 1 and "not writable" in r.stderr
        r = ctl(tmp_path, "sim", "fail", "--device", "nope", check=False)
        assert r.returncode == 1 and "no simulated device 'nope'" in r.stderr
        out = ctl(tmp_path, "audit", "list").stdout
        assert "points.write" in out
    r = ctl(tmp_path, "status", check=False)
    assert r.returncode == 3 and "not running" in r.stderr


def test_broken_config_refuses_to_start_with_exit_2(tmp_path):
    path = write_site(tmp_path, "[drivers.x]\ntype = \"sim\"\nbogus = 1\n")
    r = subprocess.run([sys.executable, "-m", "gatewayd", "run", "-c", path], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert "unknown key 'bogus' in [drivers.x]" in r.stderr
