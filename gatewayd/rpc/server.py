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
* **Limits** (a local user must not be able to lock others out or stall the
  loop). At most ``max_connections`` connections at once, and
  ``max_connections_per_uid`` from one uid; root and the daemon's own uid have
  a pool of ``max_connections`` of their own (without the per-uid limit), so
  other users can never lock the admins out. A connection over a limit gets
  one -32005 error saying which limit, and is closed at once (its descriptor is freed; refusals are logged at
  most once a minute, with a count). A connection with no request in flight
  that sends nothing for ``idle_timeout``, or that started a request and did
  not finish it within ``request_timeout`` (slowloris), gets a -32005 error and
  is closed; a client that does not read its answers for ``request_timeout``
  is dropped. Method handlers do their heavy work off the trio thread.
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
import time
from typing import Any

import trio

from .auth import actor_name, peer_credentials, resolve_grants, resolve_role
from .protocol import (EOF, LIMIT_EXCEEDED, NEED_DATA, PERMISSION_DENIED, LineReader, RequestTooLarge, RpcError,
                       assemble, encode, encode_response, error_response, parse_message)
from .registry import Call

log = logging.getLogger("gatewayd.rpc")

__all__ = ["serve_unix", "SocketInUse", "ConnectionLimits"]

_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_RECEIVE_SIZE = 65536
_BACKLOG = 64
_QUEUED_LINES = 8
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_REFUSAL_SEND_TIMEOUT = 1.0
_REFUSAL_LOG_EVERY = 60.0


class ConnectionLimits:
    """Counts open control connections (all, and per uid) and says which limit a new one breaks.

    Root and the daemon's own uid ("privileged") are counted in a separate pool of the same size.
    """

    def __init__(self, max_connections: int = 64, max_per_uid: int = 16) -> None:
        if max_connections < 1 or max_per_uid < 1:
            raise ValueError("max_connections and max_connections_per_uid must be at least 1")
        self.max_connections = max_connections
        self.max_per_uid = max_per_uid
        self.total = {False: 0, True: 0}
        self.per_uid: dict[int, int] = {}
        self.refused = 0
        self._refused_unlogged = 0
        self._last_log: float | None = None

    @staticmethod
    def privileged(uid: int) -> bool:
        return uid == 0 or uid == os.geteuid()

    def refusal(self, uid: int) -> str | None:
        """Why a new connection of ``uid`` is refused, or None (then call :meth:`add`)."""
        if not self.privileged(uid) and self.per_uid.get(uid, 0) >= self.max_per_uid:
            return (f"too many control connections from uid {uid} ({self.max_per_uid} open; "
                    "[control] max_connections_per_uid): close some and try again")
        if self.total[self.privileged(uid)] >= self.max_connections:
            return (f"too many control connections ({self.max_connections} open; [control] max_connections): "
                    "try again later")
        return None

    def add(self, uid: int) -> None:
        self.total[self.privileged(uid)] += 1
        self.per_uid[uid] = self.per_uid.get(uid, 0) + 1

    def remove(self, uid: int) -> None:
        self.total[self.privileged(uid)] -= 1
        n = self.per_uid.get(uid, 0) - 1
        if n > 0:
            self.per_uid[uid] = n
        else:
            self.per_uid.pop(uid, None)

    def note_refused(self, uid: int, why: str) -> None:
        """Count a refusal; log it at most once a minute (with how many there were)."""
        self.refused += 1
        self._refused_unlogged += 1
        now = time.monotonic()
        if self._last_log is None or now - self._last_log >= _REFUSAL_LOG_EVERY:
            log.warning("control socket: refused %d connection(s) in the last %s; latest from uid %d: %s",
                        self._refused_unlogged, "minute" if self._last_log is not None else "moment", uid, why)
            self._refused_unlogged = 0
            self._last_log = now


class _Closing(RpcError):
    """Answered with id null, then the connection is closed (idle, half-sent request)."""

    def __init__(self, message: str) -> None:
        super().__init__(LIMIT_EXCEEDED, message)


class SocketInUse(RuntimeError):
    """Another process is listening on (or about to create) the control socket."""


async def serve_unix(path: str, registry: Any, role_map: Any, *, mode: int = 0o660, group: str | int | None = None,
                     max_request_bytes: int = 1 << 20, max_connections: int = 64, max_connections_per_uid: int = 16,
                     max_watchers: int | None = None, idle_timeout: float = 300.0, request_timeout: float = 10.0,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``registry`` on the Unix socket ``path`` until cancelled.

    ``registry`` is a :class:`~gatewayd.rpc.registry.MethodRegistry` (or
    anything with its ``dispatch``). ``role_map`` is a
    :class:`~gatewayd.rpc.auth.RoleMap`, or a callable ``(PeerCred) -> Role |
    None`` (see :func:`~gatewayd.rpc.auth.resolve_role`). ``group`` is a group
    name or gid for the socket file (None: the process's). Calls
    ``task_status.started()`` once connections are accepted.
    ``max_connections``, ``max_connections_per_uid``, ``idle_timeout`` and
    ``request_timeout`` are the limits described in the module docstring
    (``max_watchers`` is enforced by the method itself and ignored here).

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
    if idle_timeout <= 0 or request_timeout <= 0:
        raise ValueError("idle_timeout and request_timeout must be > 0")
    limits = ConnectionLimits(max_connections, max_connections_per_uid)
    timeouts = (idle_timeout, request_timeout)
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
            accept_errors, last_accept_log = 0, None
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as e:
                        if e.errno not in _RESOURCE_ERRNOS:
                            raise
                        # out of descriptors/memory: retry, but log once a minute, not ten times a second
                        accept_errors += 1
                        now = time.monotonic()
                        if last_accept_log is None or now - last_accept_log >= _REFUSAL_LOG_EVERY:
                            log.error("control socket: cannot accept connections: %s (%d time(s) since the last "
                                      "report); retrying", e.strerror, accept_errors)
                            accept_errors, last_accept_log = 0, now
                        await trio.sleep(0.1)
                        continue
                    try:
                        uid = peer_credentials(stream.socket).uid
                    except OSError:  # the peer is already gone
                        await stream.aclose()
                        continue
                    why = limits.refusal(uid)
                    if why is not None:
                        limits.note_refused(uid, why)
                        nursery.start_soon(_refuse, stream, why)
                        continue
                    limits.add(uid)
                    conn = _Connection(stream, registry, role_map, max_request_bytes, timeouts)
                    nursery.start_soon(_run_counted, conn, limits, uid)
        finally:
            sock.close()
            _remove_if_ours(path, ours)
    finally:
        os.close(lock_fd)


async def _refuse(stream: trio.SocketStream, why: str) -> None:
    """One -32005 error (id null), then close; a peer that does not read cannot hold us."""
    try:
        with trio.move_on_after(_REFUSAL_SEND_TIMEOUT):
            await stream.send_all(encode_response(error_response(RpcError(LIMIT_EXCEEDED, why))))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _run_counted(conn: "_Connection", limits: ConnectionLimits, uid: int) -> None:
    try:
        await conn.run()
    finally:
        limits.remove(uid)


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

    def __init__(self, stream: trio.SocketStream, registry: Any, role_map: Any, cap: int,
                 timeouts: tuple[float, float] = (300.0, 10.0)) -> None:
        self.stream = stream
        self.idle_timeout, self.request_timeout = timeouts
        self.last_activity = trio.current_time()
        self.queued = 0  # lines received and not yet handled
        self.registry = registry
        self.role_map = role_map
        self.cap = cap
        self.closed = trio.Event()   # the client sends no more
        self.gone = False            # nothing can be sent to it any more
        self.current: Call | None = None
        self.grants: frozenset[str] = frozenset()
        self.send_lock = trio.Lock()
        self.label = "control connection"

    async def run(self) -> None:
        try:
            cred = peer_credentials(self.stream.socket)
            # NSS lookups (getpwuid, getgrouplist) may block: keep them off the trio thread
            def who():
                role = resolve_role(self.role_map, cred)
                return role, resolve_grants(self.role_map, cred, role), actor_name(cred.uid)

            role, self.grants, actor = await trio.to_thread.run_sync(who)
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
                        if isinstance(line, RpcError):  # too large, idle, half-sent: answer, then close
                            log_ = log.warning if isinstance(line, RequestTooLarge) else log.info
                            log_("%s: %s", self.label, line.message)
                            await self._send_response(error_response(line))
                            break
                        try:
                            await self._handle(line, role, cred, actor)
                        finally:
                            self.queued -= 1
                            self.last_activity = trio.current_time()
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

    def _deadline(self, partial_since: float | None) -> tuple[float, str | None]:
        """When the wait for more input ends, and the reason to close then (None: look again)."""
        if partial_since is not None:
            return partial_since + self.request_timeout, (
                f"request not completed within {self.request_timeout:g} s ([control] request_timeout); "
                "closing the connection")
        if self.current is not None or self.queued:
            return trio.current_time() + self.idle_timeout, None  # busy: not idle
        return self.last_activity + self.idle_timeout, (
            f"no request for {self.idle_timeout:g} s ([control] idle_timeout); closing the idle connection")

    async def _reader(self, out: trio.MemorySendChannel) -> None:
        reader = LineReader(self.cap)
        partial_since: float | None = None
        async with out:
            try:
                while True:
                    try:
                        line = reader.next_line()
                    except RequestTooLarge as e:
                        await out.send(e)
                        return
                    if line is NEED_DATA:
                        if reader.buffered and partial_since is None:
                            partial_since = trio.current_time()
                        deadline, why = self._deadline(partial_since)
                        with trio.move_on_at(deadline):
                            data = await self.stream.receive_some(_RECEIVE_SIZE)
                            self.last_activity = trio.current_time()
                            reader.receive_data(data)
                            if not data:
                                self._client_done()
                            continue
                        if why is not None and (partial_since is not None or not (self.current or self.queued)):
                            await out.send(_Closing(why))
                            return
                        continue
                    if line is EOF:
                        return
                    partial_since = None
                    self.queued += 1
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
                with trio.fail_after(max(self.request_timeout, 1.0)):
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._client_gone()
                raise trio.ClosedResourceError("the client has gone") from None
            except trio.TooSlowError:
                log.info("%s: does not read its answers (nothing taken for %g s); dropping it", self.label,
                         max(self.request_timeout, 1.0))
                self._client_gone()
                raise trio.ClosedResourceError("the client does not read its answers") from None
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
                        self.closed, request_id=item.id, grants=self.grants)
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
