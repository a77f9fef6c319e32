"""The daemon under the unit's seccomp sandbox (SystemCallFilter=, MemoryDenyWriteExecute=,
RestrictAddressFamilies=, RestrictNamespaces=, UMask=, NoNewPrivileges=), reproduced with
libseccomp by ``unit_sandbox.py`` since systemd is not PID 1 here.

A unit that passes ``systemd-analyze security`` can still stop the daemon from starting
(a blocked chown on the control socket did exactly that): these tests start it for real.
"""

import grp
import json
import os
import signal
import stat
import subprocess
import sys

import pytest

from gatewayd.rpc.client import RpcClient
from unit_sandbox import Notify, running, seccomp_unavailable, tail, unit_settings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
UNIT = os.environ.get("GATEWAYD_TEST_UNIT") or os.path.join(ROOT, "packaging", "systemd", "gatewayd.service")
SANDBOX = os.path.join(HERE, "unit_sandbox.py")


pytestmark = pytest.mark.skipif(seccomp_unavailable() is not None, reason=str(seccomp_unavailable()))


def sandboxed(cmd):
    return [sys.executable, SANDBOX, UNIT, "--", *cmd]


def test_daemon_starts_serves_reloads_and_stops_under_the_unit_filter(tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name
    (tmp_path / "gw.toml").write_text(f"""
[gateway]
id = "sandboxed"
state_dir = "{tmp_path}/state"
shutdown_grace = "2s"
[control]
socket = "{tmp_path}/run/control.sock"
socket_mode = "0660"
socket_group = "{group}"
[history]
flush_interval = "50ms"
[drivers.sim]
type = "sim"
[drivers.sim.devices.meter-1]
model = "meter"
""")
    (tmp_path / "run").mkdir()
    notify = Notify(str(tmp_path / "notify.sock"))
    log = str(tmp_path / "daemon.log")
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000", "PYTHONUNBUFFERED": "1"}
    env.pop("WATCHDOG_PID", None)
    cmd = sandboxed([sys.executable, "-m", "gatewayd", "run", "-c", str(tmp_path / "gw.toml")])
    with running(cmd, env, log, notify) as proc:
        notify.wait("READY=1", proc, log)
        with open(f"/proc/{proc.pid}/status") as fh:
            status = fh.read()
        assert "Seccomp:\t2" in status and "NoNewPrivs:\t1" in status  # really filtered
        sock = tmp_path / "run" / "control.sock"
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()  # chmod/chown despite UMask=0077
        with RpcClient(str(sock)) as c:
            assert c.call("gateway.status")
            assert c.call("points.list", {"device": "meter-1"})
            b = c.call("backup.run")  # the APSW online backup on the writer threads, under the filter
            assert set(b["files"]) == {"state", "history", "outbox"}
            assert stat.S_IMODE(os.stat(os.path.join(b["path"], "history.db")).st_mode) == 0o600  # UMask=0077
        notify.wait("WATCHDOG=1", proc, log)  # pings from the event loop at half WATCHDOG_USEC
        proc.send_signal(signal.SIGHUP)
        notify.wait("RELOADING=1", proc, log)
        notify.wait("READY=1", proc, log)
        # the unit's ExecReload= (gatewayctl over the socket, as the service user, in the sandbox)
        reload_cmd = unit_settings(UNIT)["ExecReload"][-1].split()
        assert reload_cmd[0] == "/usr/bin/gatewayctl"
        reload_cmd = sandboxed([sys.executable, "-m", "gatewayd.cli", *reload_cmd[1:]])
        env_ctl = {**os.environ, "GATEWAYD_SOCKET": str(sock)}
        r = subprocess.run(reload_cmd, env=env_ctl, capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, r.stdout + r.stderr
        cfg = tmp_path / "gw.toml"
        cfg.write_text(cfg.read_text() + "bogus = 1\n")  # a bad file: `systemctl reload` must fail, loudly
        r = subprocess.run(reload_cmd, env=env_ctl, capture_output=True, text=True, timeout=90)
        assert r.returncode != 0 and "unknown key 'bogus'" in r.stdout + r.stderr, r.stdout + r.stderr
        assert proc.poll() is None  # ... and change nothing
        proc.send_signal(signal.SIGTERM)
        notify.wait("STOPPING=1", proc, log)
        assert proc.wait(20) == 0, tail(log)
    text = tail(log, 1 << 20)
    assert "Operation not permitted" not in text and "Traceback" not in text, text[-4000:]


def test_plugins_and_their_libraries_import_under_memory_deny_write_execute():
    """cffi/ctypes callbacks need W+X memory and die under MemoryDenyWriteExecute=yes: import
    every first-party plugin and every optional dependency that is installed, and use the
    native module, inside the filter."""
    code = """
import importlib, importlib.metadata, json
mods = [ep.value for ep in importlib.metadata.entry_points(group="gatewayd.plugins")]
mods += ["pymodbus.client", "serial", "paho.mqtt.client", "bacpypes3", "asyncua", "cryptography.x509", "apsw",
         "trio", "gatewayd.daemon", "gatewayd.native"]
res = {}
for m in mods:
    try:
        importlib.import_module(m)
        res[m] = "ok"
    except ModuleNotFoundError as e:
        res[m] = "missing: " + str(e.name)
    except Exception as e:
        res[m] = "FAILED: %s: %s" % (type(e).__name__, e)
from gatewayd.native import crc
res["crc"] = hex(crc.crc16_modbus(b"123456789")) if hasattr(crc, "crc16_modbus") else "n/a"
print(json.dumps(res))
"""
    r = subprocess.run(sandboxed([sys.executable, "-c", code]), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    failed = {k: v for k, v in res.items() if v.startswith("FAILED")}
    assert not failed, failed
    assert res["gatewayd.daemon"] == "ok" and res["gatewayd.native"] == "ok"


def test_notify_reload_drop_in_is_only_for_newer_systemd():
    dropin = os.path.join(ROOT, "packaging", "systemd", "notify-reload.conf")  # not in a .d dir: 252 would merge it
    s = unit_settings(dropin)
    assert s["Type"] == ["notify-reload"] and s["ExecReload"] == [""]  # systemd signals, no second SIGHUP
    with open(os.path.join(ROOT, "packaging", "debian", "build-deb.sh")) as fh:
        assert '"${SYSTEMD_VERSION:-0}" -ge 253' in fh.read()
