"""The socket file: permissions, stale sockets, a live daemon, cleanup."""

from __future__ import annotations

import grp
import os
import socket
import stat

import pytest
import trio
import trio.testing

from gatewayd.rpc import SocketInUse, serve_unix
from rpc_support import Probe, expect_silence, make_registry


def stale_socket(path: str) -> None:
    """What a daemon killed with -9 leaves: a socket file nobody listens on."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()


async def test_socket_mode_group_and_removal_on_exit(tmp_path, start_server, connect):
    other = next(g for g in grp.getgrall() if g.gr_gid != os.getgid())
    path = str(tmp_path / "ctl.sock")
    scope = await start_server(path, mode=0o640, group=other.gr_name)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == other.gr_gid
    assert sorted(os.listdir(tmp_path)) == ["ctl.sock", "ctl.sock.lock"]  # no temporary name left behind
    await expect_silence(await connect(path))
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()  # the server task has run its finally
    assert not os.path.exists(path)
    path2 = str(tmp_path / "default.sock")
    await start_server(path2, group=os.getgid())
    assert stat.S_IMODE(os.stat(path2).st_mode) == 0o660  # the default, whatever the umask


async def test_stale_socket_is_replaced(tmp_path, start_server, connect):
    path = str(tmp_path / "ctl.sock")
    stale_socket(path)
    old = os.stat(path).st_ino
    await start_server(path)
    assert os.stat(path).st_ino != old
    await expect_silence(await connect(path))


async def test_live_daemon_is_not_replaced(tmp_path, start_server, connect):
    path = str(tmp_path / "ctl.sock")
    await start_server(path)
    ino = os.stat(path).st_ino
    with pytest.raises(SocketInUse, match=f"another gatewayd is already listening on {path}"):
        await serve_unix(path, make_registry(Probe()), lambda cred: None)
    assert os.stat(path).st_ino == ino
    await expect_silence(await connect(path))  # the first one still serves


async def test_foreign_listener_is_not_replaced(tmp_path):
    # no lock file held (an older daemon, or another program): the probe finds it alive
    path = str(tmp_path / "ctl.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    try:
        with pytest.raises(SocketInUse, match="another gatewayd is already listening"):
            await serve_unix(path, make_registry(Probe()), lambda cred: None)
        assert os.path.exists(path)
    finally:
        listener.close()


async def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path):
    path = tmp_path / "ctl.sock"
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="exists and is not a socket"):
        await serve_unix(str(path), make_registry(Probe()), lambda cred: None)
    assert path.read_text() == "precious"


async def test_the_parent_directory_must_exist(tmp_path):
    path = str(tmp_path / "missing" / "ctl.sock")
    with pytest.raises(FileNotFoundError, match="directory of the control socket .* does not exist"):
        await serve_unix(path, make_registry(Probe()), lambda cred: None)
    assert not os.path.exists(tmp_path / "missing")


@pytest.mark.parametrize("kwargs,match", [
    ({"group": "surely-not-a-group"}, "no such group 'surely-not-a-group'"),
    ({"mode": 0o1777}, "socket mode"),
    ({"max_request_bytes": 10}, "max_request_bytes"),
])
async def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        await serve_unix(str(tmp_path / "ctl.sock"), make_registry(Probe()), lambda cred: None, **kwargs)
    assert not os.path.exists(tmp_path / "ctl.sock")


async def test_path_too_long(tmp_path):
    with pytest.raises(ValueError, match="control socket path too long"):
        await serve_unix(str(tmp_path / ("x" * 120)), make_registry(Probe()), lambda cred: None)


async def test_a_successor_socket_is_not_removed_on_exit(tmp_path, start_server):
    path = str(tmp_path / "ctl.sock")
    scope = await start_server(path)
    os.unlink(path)
    stale_socket(path)  # someone else's socket at the path now
    ino = os.stat(path).st_ino
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert os.stat(path).st_ino == ino


async def test_server_shutdown_closes_connections(tmp_path, start_server, connect, probe):
    path = str(tmp_path / "ctl.sock")
    scope = await start_server(path)
    raw = await connect(path)
    await raw.send('{"jsonrpc":"2.0","method":"slow","id":1}')
    with trio.fail_after(5):
        await probe.slow_started.wait()
    scope.cancel()
    assert await raw.recv() is None
    assert probe.slow_cancelled.is_set()
