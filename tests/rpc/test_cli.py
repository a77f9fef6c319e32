"""gatewayctl as people use it: a real process against a running gateway's control socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import trio

from gatewayd.testing import rpc, run_gateway

SITE = """
[drivers.c]
type = "counter"
plugin = "ext_plugins.counter"
interval = "50ms"
[drivers.c.devices.d1]

[drivers.c.devices.d1.points.n]

# a device the driver never polls (dead): the written string stays as it is
[drivers.c.devices.d2]
dead = true
[drivers.c.devices.d2.points.label]
kind = "string"
writable = true
"""

CTL = [sys.executable, "-c", "import sys; from gatewayd.cli import gatewayctl_main; sys.exit(gatewayctl_main())"]


def _ctl(*args: str, socket: str | None = None, stdin: str | None = None, env: dict | None = None,
         shell_pipe: str | None = None) -> subprocess.CompletedProcess:
    cmd = list(CTL) + (["--socket", socket] if socket else []) + list(args)
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    if shell_pipe:
        line = " ".join(_quote(c) for c in cmd) + " | " + shell_pipe
        return subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, timeout=60, env=full_env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, input=stdin, env=full_env)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


async def ctl(*args: str, **kw) -> subprocess.CompletedProcess:
    return await trio.to_thread.run_sync(lambda: _ctl(*args, **kw))


async def test_points_list_escapes_control_characters_of_string_values(tmp_path):
    async with run_gateway(tmp_path, SITE) as gw:
        nasty = "ok\x1b[2J\rgone\nnext\tcol\x07\x7f\u0085end"
        await rpc(gw, "points.write", {"point": "d2/label", "value": nasty})
        r = await ctl("points", "list", socket=gw.config.control.socket)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        # one header + one line per point: a newline in a value never breaks the table
        assert len(lines) == 3, r.stdout
        row = next(line for line in lines if line.startswith("d2/label"))
        for ch in ("\x1b", "\r", "\t", "\x07", "\x7f", "\u0085"):
            assert ch not in r.stdout
        assert r"ok\x1b[2J\rgone\nnext\tcol\x07\x7f\x85end" in row
        # --json keeps the value exact
        r = await ctl("--json", "points", "read", "d2/label", socket=gw.config.control.socket)
        assert '"ok\\u001b[2J\\rgone\\nnext\\tcol\\u0007\\u007f\\u0085end"' in r.stdout


SIM_SITE = """
[drivers.sim]
type = "sim"
interval = "1s"
[drivers.sim.devices.big]
model = "generic"
generate = 3000
"""


async def test_plugin_help_is_local_and_never_calls_the_method(tmp_path):
    async with run_gateway(tmp_path, SIM_SITE) as gw:
        sock = gw.config.control.socket
        r = await ctl("sim", "--help", socket=sock)
        assert r.returncode == 0, r.stderr
        assert "sim fail --device DEVICE [--on ON] [--driver DRIVER]" in r.stdout
        assert "Make a simulated device fail" in r.stdout
        r = await ctl("sim", "fail", "--help", socket=sock)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("usage: gatewayctl sim fail --device DEVICE [--on ON] [--driver DRIVER]")
        r = await ctl("sim", "fail", "-h", socket=sock)
        assert r.returncode == 0 and "usage: gatewayctl sim fail" in r.stdout
        # nothing was called, nothing audited
        assert [e for e in await rpc(gw, "audit.list", {}) if e["action"] == "sim.fail"] == []
        assert not any(getattr(d, "failing", None) for d in gw.points.devices.values())
    # without a daemon, help still answers (from what gatewayctl knows)
    r = await ctl("sim", "--help", socket=str(tmp_path / "nobody-home.sock"))
    assert r.returncode == 0 and "gatewayctl sim" in r.stdout and "not running" in r.stdout


async def test_unknown_command_suggests_and_exits_2(tmp_path):
    async with run_gateway(tmp_path, SIM_SITE) as gw:
        sock = gw.config.control.socket
        r = await ctl("pionts", "list", socket=sock)
        assert r.returncode == 2
        assert "gatewayctl: unknown command 'pionts list'; did you mean 'points list'?" in r.stderr
        r = await ctl("pionts", socket=sock)
        assert r.returncode == 2 and "did you mean 'points'?" in r.stderr
        r = await ctl("sim", "fial", "--device", "x", socket=sock)
        assert r.returncode == 2 and "did you mean 'sim fail'?" in r.stderr
        assert [e for e in await rpc(gw, "audit.list", {}) if e["action"].startswith("sim.")] == []


async def test_global_flags_after_the_command(tmp_path):
    async with run_gateway(tmp_path, SIM_SITE) as gw:
        sock = gw.config.control.socket
        r = await ctl("status", "--json", socket=sock)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["ready"] is True
        r = await ctl("points", "read", "big/p0000", "--json", "--timeout", "20", "-s", sock)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)[0]["id"] == "big/p0000"
        r = await ctl("sim", "fail", "--device", "big", "--on", "false", "--json", socket=sock)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"device": "big", "failing": False}


async def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    async with run_gateway(tmp_path, SIM_SITE) as gw:
        r = await ctl("points", "list", socket=gw.config.control.socket, shell_pipe="head -1")
        assert r.returncode == 0
        assert r.stdout.startswith("ID") and len(r.stdout.splitlines()) == 1
        assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


async def test_plugin_namespace_without_its_driver_says_so(tmp_path):
    async with run_gateway(tmp_path, SIM_SITE) as gw:
        r = await ctl("modbus", "read-registers", "--device", "meter-1", "--address", "0", "--count", "4",
                      socket=gw.config.control.socket)
        assert r.returncode == 1
        assert "no Modbus driver is configured on this gateway" in r.stderr, r.stderr
        assert "method not found" not in r.stderr


def test_backup_restore_says_which_configuration_it_uses(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GATEWAYD_CONFIG"}
    r = subprocess.run(CTL + ["backup", "restore", str(tmp_path)], capture_output=True, text=True, timeout=60,
                       env={**env, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 2
    assert ("gatewayctl: using the configuration /etc/gatewayd/gatewayd.toml (the default; "
            "-c PATH or $GATEWAYD_CONFIG for another)") in r.stderr, r.stderr
