"""The control socket: newline-delimited JSON-RPC 2.0 over AF_UNIX, on trio.

The thin I/O edge around :mod:`gatewayd.rpc.protocol`:

* **The socket file.** Created with ``mode`` (0660) and ``group`` already set:
  it is bound under a temporary name, chmod/chown-ed, listening, and only then
  renamed into place, so nobody ever sees it with other permissions. The parent
  directory must exist. A socket file nobody listens on (a crashed daemon's)
  is replaced; one with a live daemon behind it is not (:class:`SocketInUse`),
  and neither is a path that is not a socket. ``PATH.lock`` (an ``flock``)
  keeps two daemons starting at once from both replacing it. The file is
  removed on exit, unless another daemon has replaced it meanwhile.
* **Connections.** Each runs in its own task: a slow call on one never holds
  up another. The peer's credentials give its role (no role: one -32001 error,
  then the connection is closed). Requests on one connection are handled in
  order; a streaming call (``points.watch``) sends notifications while it runs
  and later requests wait for it.
* **Input.** Read incrementally; a line over ``max_request_bytes`` gets a
  -32600 error naming the limit, then the connection is closed (the stream
  cannot be resynchronised). Requests already received before it are answered
  first.
* **The client leaving.** When it stops sending (EOF), ``call.closed`` is set
  and ``call.notify`` raises: a streaming call ends and answers, and requests
  already received are still answered (``printf '...' | socat`` works). When
  it has hung up entirely, or a write fails (EPIPE/ECONNRESET: handled
  quietly), non-mutating calls still running or queued are abandoned (their
  cancel scope is cancelled, nothing is answered); mutating ones complete, and
  are audited, since the write was asked for.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import secrets
import select
import stat
from typing import Any

import trio

from .auth import actor_name, peer_credentials, resolve_role
from .protocol import (EOF, NEED_DATA, PERMISSION_DENIED, LineReader, RequestTooLarge, RpcError, assemble, encode,
                       encode_response, error_response, parse_message)
from .registry import Call

log = logging.getLogger("gatewayd.rpc")

__all__ = ["serve_unix", "SocketInUse"]

_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_RECEIVE_SIZE = 65536
_BACKLOG = 64
_QUEUED_LINES = 8
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class SocketInUse(RuntimeError):
    """Another process is listening on (or about to create) the control socket."""


async def serve_unix(path: str, registry: Any, role_map: Any, *, mode: int = 0o660, group: str | int | None = None,
                     max_request_bytes: int = 1 << 20, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``registry`` on the Unix socket ``path`` until cancelled.

    ``registry`` is a :class:`~gatewayd.rpc.registry.MethodRegistry` (or
    anything with its ``dispatch``). ``role_map`` is a
    :class:`~gatewayd.rpc.auth.RoleMap`, or a callable ``(PeerCred) -> Role |
    None`` (see :func:`~gatewayd.rpc.auth.resolve_role`). ``group`` is a group
    name or gid for the socket file (None: the process's). Calls
    ``task_status.started()`` once connections are accepted.

    Raises, before listening: :class:`SocketInUse` (another gatewayd is
    running), ``FileNotFoundError`` (no parent directory), ``FileExistsError``
    (the path is not a socket), ``ValueError`` (bad arguments, unknown group,
    path too long).
    """
    path = os.fspath(path)
    if not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(f"socket mode must be 0..0o777, not {mode!r}")
    if max_request_bytes < 64:
        raise ValueError(f"max_request_bytes must be at least 64, not {max_request_bytes}")
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ValueError(f"control socket path too long ({len(os.fsencode(path))} bytes, the limit is "
                         f"{_SUN_PATH_MAX}): {path}")
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise FileNotFoundError(errno.ENOENT, f"directory of the control socket {path} does not exist "
                                "(RuntimeDirectory= in the systemd unit creates /run/gatewayd)", parent)
    gid = _group_id(group)
    lock_fd = _lock(path)
    try:
        await _check_existing(path)
        sock = await _bind(path, mode, gid)
        st = os.stat(path)
        ours = (st.st_dev, st.st_ino)
        try:
            listener = trio.SocketListener(sock)
            task_status.started()
            log.info("control socket listening on %s (mode %04o, gid %d)", path, mode, st.st_gid)
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as e:
                        if e.errno not in _RESOURCE_ERRNOS:
                            raise
                        log.error("control socket: cannot accept a connection: %s; retrying", e.strerror)
                        await trio.sleep(0.1)
                        continue
                    nursery.start_soon(_Connection(stream, registry, role_map, max_request_bytes).run)
        finally:
            sock.close()
            _remove_if_ours(path, ours)
    finally:
        os.close(lock_fd)


def _group_id(group: str | int | None) -> int | None:
    if group is None or isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"[control] socket_group: no such group {group!r}") from None


def _lock(path: str) -> int:
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SocketInUse(f"another gatewayd is already listening on {path} (or starting: it holds {path}.lock)") \
            from None
    except BaseException:
        os.close(fd)
        raise
    return fd


async def _check_existing(path: str) -> None:
    """Return if ``path`` is free or a stale socket; raise if something lives there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket; not replacing it", path)
    probe = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        with trio.move_on_after(2):
            await probe.connect(path)
            raise SocketInUse(f"another gatewayd is already listening on {path}")
        raise SocketInUse(f"{path}: a process has it open but does not accept connections; not replacing it")
    except (ConnectionRefusedError, FileNotFoundError):
        log.warning("replacing stale control socket %s (left by a daemon that did not stop cleanly)", path)
    except BlockingIOError:
        raise SocketInUse(f"another gatewayd is already listening on {path} (its backlog is full)") from None
    finally:
        probe.close()


async def _bind(path: str, mode: int, gid: int | None) -> trio.socket.SocketType:
    """A listening socket at ``path`` with ``mode``/``gid`` from the start (bind + chmod + rename)."""
    parent = os.path.dirname(path)
    tmp = os.path.join(parent, f".gatewayd-{secrets.token_hex(4)}.sock")
    direct = len(os.fsencode(tmp)) > _SUN_PATH_MAX  # no room for a temporary name: bind in place
    if direct:
        tmp = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(tmp)
        try:
            os.chmod(tmp, mode)  # explicit: the process umask (UMask=0077) must not decide
            if gid is not None and os.stat(tmp).st_gid != gid:  # usually already right: no chown needed
                os.chown(tmp, -1, gid)
            sock.listen(_BACKLOG)
            if not direct:
                os.rename(tmp, path)  # atomically replaces a stale socket
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_if_ours(path: str, ours: tuple[int, int]) -> None:
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == ours:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("could not remove the control socket %s: %s", path, e)


def _hung_up(sock: Any) -> bool:
    """True when the peer has closed its socket entirely (not just its sending side)."""
    try:
        p = select.poll()
        p.register(sock.fileno(), select.POLLIN)
        return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in p.poll(0))
    except (OSError, ValueError):
        return True


_DISCONNECTS = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionResetError, BrokenPipeError)


def _only_disconnects(e: BaseException) -> bool:
    if isinstance(e, BaseExceptionGroup):
        return all(_only_disconnects(x) for x in e.exceptions)
    return isinstance(e, _DISCONNECTS)


class _Connection:
    """One client: a reader task feeding lines to the in-order request loop."""

    def __init__(self, stream: trio.SocketStream, registry: Any, role_map: Any, cap: int) -> None:
        self.stream = stream
        self.registry = registry
        self.role_map = role_map
        self.cap = cap
        self.closed = trio.Event()   # the client sends no more
        self.gone = False            # nothing can be sent to it any more
        self.current: Call | None = None
        self.send_lock = trio.Lock()
        self.label = "control connection"

    async def run(self) -> None:
        try:
            cred = peer_credentials(self.stream.socket)
            # NSS lookups (getpwuid, getgrouplist) may block: keep them off the trio thread
            role, actor = await trio.to_thread.run_sync(lambda: (resolve_role(self.role_map, cred),
                                                                 actor_name(cred.uid)))
            self.label = f"control connection of {actor} (pid {cred.pid})"
            if role is None:
                log.warning("refused %s: no role for it in [control]", self.label)
                await self._send_response(error_response(RpcError(
                    PERMISSION_DENIED, f"permission denied: {actor} has no role on this gateway "
                                       "(see admin/operator/viewer in [control])")))
                return
            log.debug("%s: role %s", self.label, role.label)
            async with trio.open_nursery() as nursery:
                send_lines, lines = trio.open_memory_channel(_QUEUED_LINES)
                nursery.start_soon(self._reader, send_lines)
                async with lines:
                    async for line in lines:
                        if isinstance(line, RequestTooLarge):
                            log.warning("%s: %s", self.label, line.message)
                            await self._send_response(error_response(line))
                            break
                        await self._handle(line, role, cred, actor)
                nursery.cancel_scope.cancel()
        except Exception as e:
            # one connection's trouble never reaches the listener: a client that left is normal
            if _only_disconnects(e):
                log.debug("%s: client gone", self.label)
            else:
                log.error("%s failed", self.label, exc_info=True)
        finally:
            self._client_gone()
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _reader(self, out: trio.MemorySendChannel) -> None:
        reader = LineReader(self.cap)
        async with out:
            try:
                while True:
                    try:
                        line = reader.next_line()
                    except RequestTooLarge as e:
                        await out.send(e)
                        return
                    if line is NEED_DATA:
                        data = await self.stream.receive_some(_RECEIVE_SIZE)
                        reader.receive_data(data)
                        if not data:
                            self._client_done()
                        continue
                    if line is EOF:
                        return
                    await out.send(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self._client_gone()

    def _client_done(self) -> None:
        """EOF: no more requests (``closed``); if the peer hung up entirely, it is gone too."""
        self.closed.set()
        if _hung_up(self.stream.socket):
            self._client_gone()

    def _client_gone(self) -> None:
        self.closed.set()
        if not self.gone:
            self.gone = True
            call = self.current
            if call is not None and not call.mutating:
                call._abandon()

    async def _write(self, data: bytes) -> None:
        if self.gone:
            raise trio.ClosedResourceError("the client has gone")
        async with self.send_lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._client_gone()
                raise trio.ClosedResourceError("the client has gone") from None
            except trio.Cancelled:
                self.gone = True  # a cancelled send_all may have written part of a line: write nothing more
                raise

    async def _send_notification(self, msg: dict) -> None:
        await self._write(encode(msg))

    async def _send_response(self, resp: Any) -> None:
        try:
            await self._write(encode_response(resp))
        except trio.ClosedResourceError:
            pass

    async def _handle(self, line: bytes, role, cred, actor: str) -> None:
        items, is_batch = parse_message(line)
        responses: list[dict | None] = []
        for item in items:
            if isinstance(item, dict):
                responses.append(item)
                continue
            if self.gone and not self._mutating(item.method):
                continue  # nobody will see it, and it changes nothing
            call = Call(item.method, role, cred.uid, cred.gid, cred.pid, actor, self._send_notification,
                        self.closed, request_id=item.id)
            self.current = call
            try:
                responses.append(await self.registry.dispatch(item, call))
            finally:
                self.current = None
        out = assemble(responses, is_batch)
        if out is not None and not self.gone:
            await self._send_response(out)

    def _mutating(self, name: str) -> bool:
        m = getattr(self.registry, "methods", {}).get(name)
        return bool(getattr(m, "mutating", False))
