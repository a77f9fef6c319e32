"""sd_notify datagrams, watchdog on a mock clock, journald native protocol, terminal format."""

import logging
import os
import socket
import struct

import pytest
import trio
import trio.testing

from gatewayd.systemd import HumanFormatter, JournalHandler, Notifier, run_watchdog


@pytest.fixture
def notify_sock(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    yield path, s
    s.close()


def test_notify_messages(notify_sock, monkeypatch):
    path, s = notify_sock
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier.from_env()
    n.ready(status="16 points")
    assert s.recv(4096) == b"READY=1\nSTATUS=16 points"
    n.reloading()
    lines = s.recv(4096).decode().splitlines()
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0
    n.stopping()
    assert s.recv(4096) == b"STOPPING=1"
    n.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1"
    n.status("ok")
    assert s.recv(4096) == b"STATUS=ok"
    n.close()


def test_abstract_socket_and_no_socket(monkeypatch):
    name = f"gatewayd-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    try:
        n = Notifier("@" + name)
        n.ready()
        assert s.recv(100) == b"READY=1"
        n.close()
    finally:
        s.close()
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier.from_env()
    n.ready()  # no-op, no error
    assert n.send("X=1") is False


def test_watchdog_interval_parsing():
    assert Notifier(None, env={"WATCHDOG_USEC": "30000000"}).watchdog_interval() == 15.0
    assert Notifier(None, env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == 15.0
    assert Notifier(None, env={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval() is None
    assert Notifier(None, env={}).watchdog_interval() is None


async def test_watchdog_pings_at_half_the_interval_on_a_mock_clock(autojump_clock):
    pings = []

    class N:
        def watchdog_interval(self):
            return 5.0

        def watchdog(self):
            pings.append(trio.current_time())

    async with trio.open_nursery() as n:
        await n.start(run_watchdog, N())
        await trio.sleep(22)
        n.cancel_scope.cancel()
    assert len(pings) == 5
    assert [round(b - a, 6) for a, b in zip(pings, pings[1:])] == [5.0] * 4


def parse_journal(data: bytes) -> dict:
    out, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()] = v.decode()
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", data[nl + 1: nl + 9])
            out[line.decode()] = data[nl + 9: nl + 9 + n].decode()
            i = nl + 9 + n + 1
    return out


def test_journal_native_protocol_fields(tmp_path):
    path = str(tmp_path / "journal.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    h = JournalHandler(path)
    lg = logging.getLogger("gatewayd.test.journal")
    lg.addHandler(h)
    lg.propagate = False
    try:
        lg.warning("device %s timed out", "meter-1", extra={"DRIVER": "mb1", "DEVICE": "meter-1", "lower": "x"})
        f = parse_journal(s.recv(65536))
        assert f["MESSAGE"] == "device meter-1 timed out"
        assert (f["PRIORITY"], f["DRIVER"], f["DEVICE"], f["SYSLOG_IDENTIFIER"]) == ("4", "mb1", "meter-1", "gatewayd")
        assert "lower" not in f and f["LOGGER"] == "gatewayd.test.journal" and f["CODE_FUNC"]
        try:
            raise ValueError("bad frame")
        except ValueError:
            lg.exception("two\nlines")
        f = parse_journal(s.recv(65536))
        assert f["PRIORITY"] == "3"
        assert f["MESSAGE"].startswith("two\nlines\nTraceback") and "ValueError: bad frame" in f["MESSAGE"]
    finally:
        lg.removeHandler(h)
        h.close()
        s.close()


def test_human_format():
    rec = logging.LogRecord("gatewayd.modbus", logging.INFO, __file__, 1, "polled %d", (3,), None)
    rec.DRIVER, rec.DEVICE = "mb1", "meter-1"
    line = HumanFormatter().format(rec)
    assert line.endswith(" INFO  gatewayd.modbus [mb1/meter-1] polled 3")


def test_ready_names_an_instance_that_failed_to_start(tmp_path):
    """READY comes once every instance started or failed; a failed one makes the STATUS text, the ready
    log line and gateway.status say degraded, by name; its recovery clears it."""
    import subprocess
    import sys
    import textwrap

    from gatewayd.testing import DaemonProcess, site_toml

    heal = tmp_path / "healed"
    cfg = tmp_path / "gatewayd.toml"
    cfg.write_text(site_toml(tmp_path, textwrap.dedent(f"""
        [drivers.good]
        type = "sim"
        [drivers.good.devices.ahu-1]
        model = "ahu"

        [drivers.bacnet-main]
        type = "fails_at_start"
        plugin = "ext_plugins.fails_at_start"
        heal_file = "{heal}"
        """)))
    env = {"PYTHONPATH": os.pathsep.join(sys.path)}
    with DaemonProcess(str(cfg), env=env) as d:
        msg = d.wait_for("READY=1")
        status = next(line for line in msg.splitlines() if line.startswith("STATUS="))
        assert status.startswith("STATUS=degraded: driver bacnet-main failed to start "
                                 "(OSError: [Errno 98] cannot bind 0.0.0.0:47808: Address already in use)"), status
        r = subprocess.run([sys.executable, "-m", "gatewayd.cli", "--socket", str(tmp_path / "var/gatewayd.sock"),
                            "--json", "status"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, **env})
        assert r.returncode == 0, r.stderr
        import json

        st = json.loads(r.stdout)
        assert st["ready"] is True
        assert st["degraded"] == [{"kind": "driver", "id": "bacnet-main", "state": "backoff",
                                   "error": "OSError: [Errno 98] cannot bind 0.0.0.0:47808: Address already in use"}]
        log = d.log()
        ready_line = next(line for line in log.splitlines() if " ready" in line and "gatewayd" in line)
        assert "DEGRADED" in ready_line and "driver bacnet-main failed to start" in ready_line, ready_line
        # the port comes free: at its next restart the driver starts, and STATUS says so
        heal.write_text("")
        d.messages.clear()
        msg = d.wait_for("STATUS=", timeout=20)
        while "degraded" in msg:
            d.messages.clear()
            msg = d.wait_for("STATUS=", timeout=20)
        assert "drivers" in msg
