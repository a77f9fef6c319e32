"""The synchronous client gatewayctl uses: results, errors, streams, and the messages people see.

The client blocks, so each use runs in a worker thread while the server runs
in the test's trio loop.
"""

from __future__ import annotations

import errno
import grp
import os
import socket

import pytest
import trio

from gatewayd.rpc import AccessDenied, DaemonNotRunning, Role, RpcClient, RpcRemoteError, connect_error


async def in_thread(fn):
    with trio.fail_after(10):
        return await trio.to_thread.run_sync(fn)


async def test_call_results_and_errors(server):
    def go():
        with RpcClient(server) as c:
            out = [c.call("subtract", [42, 23]), c.call("subtract", {"minuend": 1, "subtrahend": 2}),
                   c.call("get_data"), c.call("echo", ("a",))]
            c.notify("update", [1, 2])
            with pytest.raises(RpcRemoteError) as e:
                c.call("fail")
            out.append((e.value.code, e.value.message, e.value.data))
            with pytest.raises(RpcRemoteError) as e:
                c.call("admin_only")
            out.append((e.value.code, e.value.message.split(":")[0]))
            with pytest.raises(TypeError, match="params must be"):
                c.call("echo", "not a container")
            return out
    assert await in_thread(go) == [19, -1, ["hello", 5], "a", (-32002, "no such thing", {"what": "x"}),
                                   (-32001, "permission denied")]


async def test_notifications_of_a_watch(server, probe):
    def go():
        with RpcClient(server) as c:
            it = c.notifications("watch", {"limit": 2})
            got = [next(it)["params"], next(it)["params"]]
            with pytest.raises(StopIteration) as stop:
                next(it)
            return got, stop.value.value
    assert await in_thread(go) == ([{"n": 0}, {"n": 1}], {"ticks": 2})


async def test_leaving_a_watch_ends_it(server, probe):
    def go():
        c = RpcClient(server, timeout=None)
        it = c.stream("watch")
        got = [next(it)["params"]["n"] for _ in range(3)]
        c.close()
        return got
    assert await in_thread(go) == [0, 1, 2]
    with trio.fail_after(5):
        await probe.watch_ended.wait()
    assert probe.watch_saw_closed is True


async def test_not_running(tmp_path):
    path = str(tmp_path / "ctl.sock")
    with pytest.raises(DaemonNotRunning) as e:
        RpcClient(path)
    assert str(e.value) == (f"gatewayd is not running: no control socket at {path} (start it with "
                            "`systemctl start gatewayd` or `make run`, or pass --socket)")
    with pytest.raises(DaemonNotRunning, match="no control socket at"):
        RpcClient(str(tmp_path / "no-such-dir" / "ctl.sock"))


async def test_stale_socket(tmp_path):
    path = str(tmp_path / "ctl.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    with pytest.raises(DaemonNotRunning) as e:
        RpcClient(path)
    assert str(e.value) == (f"gatewayd is not running: the socket {path} exists but nobody is listening "
                            "(stale socket from a crashed daemon?)")


async def test_not_a_socket(tmp_path):
    path = tmp_path / "ctl.sock"
    path.write_text("")
    with pytest.raises(DaemonNotRunning, match="is not a socket"):
        RpcClient(str(path))


async def test_permission_denied_message(tmp_path):
    # As root, connect() never fails with EACCES (chmod 000 does not stop root),
    # so the errno mapping is checked directly, on a real socket file whose
    # group the message must name.
    path = str(tmp_path / "ctl.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    group = next(g for g in grp.getgrall() if g.gr_gid != os.getgid())
    os.chown(path, -1, group.gr_gid)
    os.chmod(path, 0)
    e = connect_error(path, PermissionError(errno.EACCES, "Permission denied"))
    assert isinstance(e, AccessDenied)
    assert str(e) == (f"permission denied on {path}: your user needs to be in group {group.gr_name} "
                      f"(`sudo usermod -aG {group.gr_name} $USER`, then log in again)")


def test_other_connect_errors_are_explained(tmp_path):
    path = str(tmp_path / "x.sock")
    assert "backlog is full" in str(connect_error(path, BlockingIOError(errno.EAGAIN, "busy")))
    assert "in time" in str(connect_error(path, TimeoutError("timed out")))
    assert str(connect_error(path, OSError("AF_UNIX path too long"))) == \
        f"cannot connect to {path}: AF_UNIX path too long"


async def test_refused_connection_is_a_clear_remote_error(server, probe):
    probe.role = None

    def go():
        with RpcClient(server) as c:
            with pytest.raises(RpcRemoteError) as e:
                c.call("get_data")
            return e.value.code, e.value.message
    code, message = await in_thread(go)
    assert code == -32001 and "has no role on this gateway" in message


async def test_timeout_says_so(server, probe):
    def go():
        with RpcClient(server, timeout=0.3) as c:
            with pytest.raises(DaemonNotRunning, match=r"gatewayd did not answer within 0.3 s"):
                c.call("slow")
    await in_thread(go)
    probe.release.set()


async def test_daemon_going_away_mid_call(tmp_path, start_server, probe):
    path = str(tmp_path / "ctl.sock")
    scope = await start_server(path)
    probe.role = Role.ADMIN

    def go():
        with RpcClient(path) as c:
            with pytest.raises(DaemonNotRunning, match="closed the connection"):
                c.call("slow")

    async with trio.open_nursery() as n:
        n.start_soon(in_thread, go)
        with trio.fail_after(5):
            await probe.slow_started.wait()
        scope.cancel()


def test_refusal_read_even_when_sending_fails(tmp_path):
    # the daemon refuses (no role) and closes before the client writes: the
    # write fails with EPIPE, and the client still reports what the daemon said
    path = str(tmp_path / "ctl.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    try:
        c = RpcClient(path, timeout=5)
        peer, _ = listener.accept()
        peer.sendall(b'{"jsonrpc":"2.0","error":{"code":-32001,"message":"permission denied: nope"},"id":null}\n')
        peer.close()
        with pytest.raises(RpcRemoteError, match="permission denied: nope"):
            c.call("get_data")
        c.close()
        # and with nothing said at all
        c = RpcClient(path, timeout=5)
        listener.accept()[0].close()
        with pytest.raises(DaemonNotRunning, match="closed the connection"):
            c.call("get_data")
        c.close()
    finally:
        listener.close()
