"""The control socket: newline-delimited JSON-RPC 2.0 over AF_UNIX, on trio.

One task per connection; requests on a connection are handled in order (a
``points.watch`` call streams notifications until the client leaves). A request
line longer than ``max_request_bytes`` gets a -32600 error naming the cap and the
connection is closed: the stream cannot be resynchronised. A stale socket file
left by a crashed daemon is replaced; a live one (another gatewayd answers) is
refused.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket as _stdsocket
from typing import Any

import trio

from .auth import RoleMap, actor_name, peer_credentials
from .protocol import (INVALID_REQUEST, PERMISSION_DENIED, RpcError, encode, error_response, parse_message)
from .registry import Call

log = logging.getLogger("gatewayd.rpc")

__all__ = ["serve_unix", "SocketInUse"]


class SocketInUse(RuntimeError):
    """Another process is listening on the control socket."""


def _prepare_path(path: str) -> None:
    if not os.path.exists(path):
        return
    probe = _stdsocket.socket(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: nobody listens
        log.info("removed stale control socket %s", path)
        return
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
            return
        raise
    finally:
        probe.close()
    raise SocketInUse(f"another gatewayd is already listening on {path}")


async def serve_unix(path: str, registry: Any, role_map: RoleMap, *, mode: int = 0o660, group: str | None = None,
                     max_request_bytes: int = 1 << 20, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``path`` until cancelled; ``task_status.started()`` once listening."""
    _prepare_path(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        os.chmod(path, mode)  # explicit: the process umask (UMask=0077) must not decide
        if group:
            gid = grp.getgrnam(group).gr_gid
            if os.stat(path).st_gid != gid:  # usually already right (the service's own group): no chown needed
                os.chown(path, -1, gid)
        sock.listen(64)
        listener = trio.SocketListener(sock)
        task_status.started()
        log.debug("control socket listening on %s", path)
        async with trio.open_nursery() as n:
            while True:
                stream = await listener.accept()
                n.start_soon(_connection, stream, registry, role_map, max_request_bytes)
    finally:
        sock.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


async def _connection(stream: trio.SocketStream, registry: Any, role_map: RoleMap, cap: int) -> None:
    closed = trio.Event()
    send_lock = trio.Lock()

    async def send(obj: Any) -> None:
        async with send_lock:
            await stream.send_all(encode(obj))

    try:
        cred = peer_credentials(stream.socket)
        role = role_map.role_for(cred.uid, cred.gid)
        actor = actor_name(cred.uid)
        if role is None:
            await send(error_response(RpcError(PERMISSION_DENIED, f"permission denied: {actor} has no role on this "
                                                                  "gateway (see [control] in the configuration)")))
            return
        async with trio.open_nursery() as n:
            # the reader runs alongside the handlers, so EOF is noticed (``closed``)
            # even while a streaming call such as points.watch is running
            lines, incoming = trio.open_memory_channel(16)

            async def reader():
                buf = bytearray()
                async with lines:
                    while True:
                        data = await stream.receive_some(65536)
                        if not data:
                            break
                        buf += data
                        while True:
                            i = buf.find(b"\n")
                            if i < 0:
                                break
                            line = bytes(buf[:i])
                            del buf[: i + 1]
                            if line.strip():
                                await lines.send(line)
                        if len(buf) > cap:
                            await lines.send(None)  # oversize marker
                            return
                closed.set()

            n.start_soon(reader)
            async with incoming:
                async for line in incoming:
                    if line is None or len(line) > cap:
                        await send(error_response(RpcError(
                            INVALID_REQUEST, f"request larger than the limit of {cap} bytes; closing the connection")))
                        break
                    out = await _handle(line, registry, role, cred, actor, send, closed)
                    if out is not None:
                        await send(out)
            n.cancel_scope.cancel()
    except Exception as e:
        # one connection's trouble never reaches the listener: a client that left is normal,
        # anything else is logged
        if not _only_disconnects(e):
            log.error("control connection failed", exc_info=True)
    finally:
        closed.set()
        with trio.CancelScope(shield=True):
            await stream.aclose()


_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionResetError, BrokenPipeError)


def _only_disconnects(e: BaseException) -> bool:
    if isinstance(e, BaseExceptionGroup):
        return all(_only_disconnects(x) for x in e.exceptions)
    return isinstance(e, _GONE)


async def _handle(line: bytes, registry, role, cred, actor, send, closed) -> Any:
    items, is_batch = parse_message(line)
    out = []
    for it in items:
        if isinstance(it, dict):
            out.append(it)
            continue
        call = Call(it.method, role, cred.uid, cred.gid, cred.pid, actor, send, closed)
        resp = await registry.dispatch(it, call)
        if resp is not None:
            out.append(resp)
    if is_batch:
        return out or None
    return out[0] if out else None
