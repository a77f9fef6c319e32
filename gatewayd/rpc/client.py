"""A small synchronous JSON-RPC client for ``gatewayctl`` and scripts (plain sockets, no trio).

::

    with RpcClient("/run/gatewayd/control.sock") as c:
        points = c.call("points.list", {"device": "ahu-1"})
        for note in c.notifications("points.watch", {"glob": "ahu-1/*"}):
            print(note["params"])

Failures an operator can act on come as exceptions with a message saying
what to do: :class:`DaemonNotRunning` (no socket, a stale one, no answer),
:class:`AccessDenied` (the socket's permissions keep us out); an error
answered by the daemon is :class:`RpcRemoteError` (``code``, ``message``,
``data``; -32001 when our role is too low).
"""

from __future__ import annotations

import errno
import grp
import itertools
import json
import os
import socket
import stat
from typing import Any, Iterator

__all__ = ["RpcClient", "RpcRemoteError", "DaemonNotRunning", "AccessDenied", "connect_error"]


class RpcRemoteError(Exception):
    """The daemon answered with an error: ``code``, ``message``, ``data``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def __repr__(self) -> str:
        return f"RpcRemoteError({self.code}, {self.message!r})"


class DaemonNotRunning(Exception):
    """Nobody answers on the control socket (none there, a stale one, no answer, connection lost)."""


class AccessDenied(Exception):
    """The socket file exists but its permissions do not let us connect."""


def _group_of(path: str) -> str:
    """Name of the group owning the socket (or, when it cannot be read, its directory)."""
    for p in (path, os.path.dirname(os.path.abspath(path))):
        try:
            return grp.getgrgid(os.stat(p).st_gid).gr_name
        except (KeyError, OSError):
            continue
    return "gatewayd"


def connect_error(path: str, err: OSError) -> Exception:
    """Turn a ``connect()`` failure on ``path`` into an exception an operator can act on."""
    code = err.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return DaemonNotRunning(f"gatewayd is not running: no control socket at {path} "
                                "(start it with `systemctl start gatewayd` or `make run`, or pass --socket)")
    if code == errno.ECONNREFUSED:
        try:
            is_sock = stat.S_ISSOCK(os.stat(path).st_mode)
        except OSError:
            is_sock = True
        if not is_sock:
            return DaemonNotRunning(f"{path} is not a socket: is --socket (or [control] socket) right?")
        return DaemonNotRunning(f"gatewayd is not running: the socket {path} exists but nobody is listening "
                                "(stale socket from a crashed daemon?)")
    if code in (errno.EACCES, errno.EPERM):
        group = _group_of(path)
        return AccessDenied(f"permission denied on {path}: your user needs to be in group {group} "
                            f"(`sudo usermod -aG {group} $USER`, then log in again)")
    if code in (errno.EAGAIN, errno.EWOULDBLOCK):
        return DaemonNotRunning(f"gatewayd is not accepting connections on {path} (too busy: its backlog is full)")
    if isinstance(err, TimeoutError) or code == errno.ETIMEDOUT:
        return DaemonNotRunning(f"gatewayd did not accept the connection on {path} in time")
    reason = err.strerror or (err.args[0] if err.args else type(err).__name__)
    return DaemonNotRunning(f"cannot connect to {path}: {reason}")


class RpcClient:
    """A connection to the control socket at ``path``.

    ``timeout`` (seconds, None for none) bounds the connection and each wait
    for the daemon's answer. Raises :class:`DaemonNotRunning` or
    :class:`AccessDenied` when it cannot connect.
    """

    def __init__(self, path: str, timeout: float | None = 10.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._buf = b""
        self._ids = itertools.count(1)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError as e:
            self.sock.close()
            raise connect_error(self.path, e) from None

    def close(self) -> None:
        """Close the connection (a running ``points.watch`` ends)."""
        self.sock.close()

    def __enter__(self) -> "RpcClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ wire

    def _send(self, obj: dict) -> None:
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise DaemonNotRunning(f"gatewayd does not read requests on {self.path} (timed out)") from None
        except OSError as e:
            # the daemon closed first; it may have said why (refused for no role)
            self._raise_pending_error()
            raise DaemonNotRunning(f"gatewayd closed the connection ({e.strerror or e})") from None

    def _raise_pending_error(self) -> None:
        try:
            msg = self._recv()
        except (DaemonNotRunning, OSError):
            return
        if isinstance(msg, dict) and isinstance(msg.get("error"), dict):
            raise _remote(msg["error"])

    def _recv(self) -> Any:
        while b"\n" not in self._buf:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise DaemonNotRunning(f"gatewayd did not answer within {self.timeout} s on {self.path}") from None
            except OSError as e:
                if not self._buf:
                    raise DaemonNotRunning(f"gatewayd closed the connection ({e.strerror or e})") from None
                data = b""
            if not data:
                if self._buf.strip():
                    self._buf += b"\n"  # an unterminated last message
                    break
                raise DaemonNotRunning("gatewayd closed the connection (stopping, or the request was refused)")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            raise DaemonNotRunning(f"{self.path} answered something that is not JSON: {line[:80]!r}") from None

    def _request(self, method: str, params: Any) -> int:
        if params is not None and not isinstance(params, (dict, list, tuple)):
            raise TypeError(f"params must be a dict, a list or None, not {type(params).__name__}")
        rid = next(self._ids)
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            msg["params"] = list(params) if isinstance(params, tuple) else params
        self._send(msg)
        return rid

    @staticmethod
    def _is_ours(msg: Any, rid: int) -> bool:
        # id null: an error about the request as a whole (refused connection, too large)
        return isinstance(msg, dict) and "method" not in msg and msg.get("id", rid) in (rid, None)

    # ------------------------------------------------------------ API

    def call(self, method: str, params: Any = None) -> Any:
        """Call ``method`` and return its result; :class:`RpcRemoteError` on an error answer.

        Notifications arriving meanwhile are skipped.
        """
        rid = self._request(method, params)
        while True:
            msg = self._recv()
            if self._is_ours(msg, rid):
                return _result(msg)

    def notify(self, method: str, params: Any = None) -> None:
        """Send a notification: no answer, not even an error."""
        if params is not None and not isinstance(params, (dict, list)):
            raise TypeError(f"params must be a dict, a list or None, not {type(params).__name__}")
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self._send(msg)

    def notifications(self, method: str, params: Any = None) -> Iterator[dict]:
        """Start a streaming call (``points.watch``) and yield its notifications.

        Each is the whole message (``{"jsonrpc", "method", "params"}``). The
        iterator ends when the call answers (its result is the generator's
        return value) and raises :class:`RpcRemoteError` if it answers an error.
        Pass ``timeout=None`` to the client for a watch that may stay quiet.
        """
        rid = self._request(method, params if params is not None else {})
        while True:
            msg = self._recv()
            if isinstance(msg, dict) and "method" in msg:
                yield msg
            elif self._is_ours(msg, rid):
                return _result(msg)

    stream = notifications


def _remote(err: dict) -> RpcRemoteError:
    return RpcRemoteError(err.get("code"), err.get("message"), err.get("data"))


def _result(msg: dict) -> Any:
    if "error" in msg:
        err = msg["error"]
        raise _remote(err if isinstance(err, dict) else {"code": None, "message": str(err)})
    if "result" not in msg:
        raise DaemonNotRunning(f"gatewayd sent a response with neither result nor error: {msg!r}")
    return msg["result"]
