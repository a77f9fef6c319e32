"""Control-plane limits (issue 11.9): another local user cannot lock root out of the control socket,
nor stall the loop, with idle connections, watchers, half-sent requests or a huge audit query."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest
import trio

from gatewayd.rpc.client import RpcRemoteError
from gatewayd.testing import DaemonProcess, rpc, run_gateway, site_toml, wait_until
from rpc_support import Hostile, public_dir

SITE = """
[control]
socket = "{sock}"
socket_mode = "0666"
{extra}

[drivers.c]
type = "counter"
plugin = "ext_plugins.counter"
interval = "50ms"
[drivers.c.devices.d1]
[drivers.c.devices.d1.points.n]
"""


@pytest.fixture
def sockdir():
    d = public_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_300_idle_connections_from_another_user_do_not_lock_root_out(tmp_path, sockdir):
    sock = f"{sockdir}/ctl.sock"
    path = tmp_path / "gatewayd.toml"
    path.write_text(site_toml(tmp_path, textwrap.dedent(SITE.format(sock=sock, extra=""))))
    with DaemonProcess(str(path), env={"PYTHONPATH": os.pathsep.join(sys.path)}) as d:
        d.wait_ready()
        # a small descriptor budget, as on a box with LimitNOFILE unset: 300 connections would exhaust it
        resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (128, 128))
        hostile = Hostile(sock, idle=300, wait_idle=0.3)
        try:
            opened = hostile.opened["opened"]["idle"]
            assert opened + len(hostile.opened["failed"]) == 300
            r = subprocess.run([sys.executable, "-m", "gatewayd.cli", "--socket", sock, "status"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert "ready" in r.stdout
            got = hostile.report()["idle"]
        finally:
            hostile.close()
        refused = [g for g in got if '"code":-32005' in g and "max_connections_per_uid" in g]
        assert len(refused) == opened - 16
        assert all(g.endswith("<EOF>") for g in refused)  # closed at once: no descriptor held
        assert "too many control connections from uid 65534 (16 open; [control] max_connections_per_uid)" \
            in refused[0]
        # refusals are logged at most once a minute, with a count
        log = d.log()
        assert 1 <= log.count("control socket: refused") <= 2 and "cannot accept" not in log


async def test_a_hostile_viewer_cannot_stall_points_read(tmp_path, sockdir):
    sock = f"{sockdir}/ctl.sock"
    extra = 'max_watchers = 8\nrequest_timeout = "500ms"\nidle_timeout = "1s"'
    async with run_gateway(tmp_path, SITE.format(sock=sock, extra=extra)) as gw:
        # a huge audit query: refused outright
        with pytest.raises(RpcRemoteError, match=r"limit must be an integer 1\.\.1000"):
            await rpc(gw, "audit.list", {"limit": 10_000_000})
        # a slow audit query (held inside the store call until released) runs off the trio thread
        entered, release = threading.Event(), threading.Event()
        real = gw.state.list_audit

        def slow_list_audit(**kw):
            entered.set()
            release.wait(10)
            return real(**kw)

        gw.state.list_audit = slow_list_audit
        audit_done = trio.Event()
        async with trio.open_nursery() as n:
            async def audit():
                await rpc(gw, "audit.list", {"target": "nothing*"})
                audit_done.set()
            n.start_soon(audit)
            assert await trio.to_thread.run_sync(entered.wait, 10)
            hostile = await trio.to_thread.run_sync(lambda: Hostile(sock, watch=5, partial=1, idle=1))
            try:
                # answered while the audit query and the hostile connections are outstanding
                r = await rpc(gw, "points.read", {"points": "d1/n"})
                assert r["id"] == "d1/n" and not audit_done.is_set()
                got = await trio.to_thread.run_sync(hostile.report)
            finally:
                release.set()
                hostile.close()
        assert audit_done.is_set()
        watches = got["watch"]
        assert sum('"method":"points.changed"' in g for g in watches) == 2  # a quarter of max_watchers
        refused = [g for g in watches if '"code":-32005' in g]
        assert len(refused) == 3 and "too many points.watch streams of uid:65534(nobody) (2 open" in refused[0]
        (partial,) = got["partial"]
        assert "request not completed within 0.5 s ([control] request_timeout)" in partial and partial.endswith("<EOF>")
        (idle,) = got["idle"]
        assert "no request for 1 s ([control] idle_timeout)" in idle and idle.endswith("<EOF>")
        # the watch streams ended with their connections: the count is back to zero
        from gatewayd.api import _shared

        await wait_until(gw, lambda: _shared(gw).watching() == 0, what="watch streams counted down")


@pytest.mark.slow
def test_out_of_descriptors_is_logged_once_a_minute_and_recovers(tmp_path, sockdir):
    import socket
    import time

    sock = f"{sockdir}/ctl.sock"
    path = tmp_path / "gatewayd.toml"
    path.write_text(site_toml(tmp_path, textwrap.dedent(SITE.format(sock=sock, extra=""))))
    with DaemonProcess(str(path), env={"PYTHONPATH": os.pathsep.join(sys.path)}) as d:
        d.wait_ready()
        n = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
        soft, hard = resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (n + 2, hard))
        held = []
        try:
            for _ in range(12):  # more than the daemon can accept: the rest wait in the backlog
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                held.append(s)
            deadline = time.monotonic() + 30
            while "control socket: cannot accept" not in d.log():
                assert time.monotonic() < deadline, d.log()
                held[0].settimeout(0.2)
                try:
                    held[0].recv(1)  # waits a little without sleeping blindly; nothing is sent to it
                except socket.timeout:
                    pass
        finally:
            for s in held:
                s.close()
        resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
        r = subprocess.run([sys.executable, "-m", "gatewayd.cli", "--socket", sock, "status"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert d.log().count("control socket: cannot accept") == 1
