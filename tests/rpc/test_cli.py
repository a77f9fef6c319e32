"""gatewayctl as people use it: a real process against a running gateway's control socket."""

from __future__ import annotations

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
