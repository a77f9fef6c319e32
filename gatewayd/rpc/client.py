"""A small synchronous JSON-RPC client for ``gatewayctl`` and scripts (plain sockets, no trio)."""

from __future__ import annotations

import errno
import grp
import itertools
import json
import os
import socket
from typing import Any, Iterator

__all__ = ["RpcClient", "RpcRemoteError", "DaemonNotRunning", "AccessDenied", "connect_error"]


class RpcRemoteError(Exception):
    """The daemon answered with an error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class DaemonNotRunning(Exception):
    """Nobody answers on the control socket."""


class AccessDenied(Exception):
    """The socket file exists but we may not connect to it."""


def connect_error(path: str, err: OSError) -> Exception:
    """Turn a connect() failure into a message an operator can act on."""
    if err.errno == errno.ENOENT:
        return DaemonNotRunning(f"gatewayd is not running: no control socket at {path} "
                                "(start it with `systemctl start gatewayd` or `make run`, or pass --socket)")
    if err.errno == errno.ECONNREFUSED:
        return DaemonNotRunning(f"gatewayd is not running: {path} exists but nobody is listening "
                                "(stale socket from a crashed daemon?)")
    if err.errno in (errno.EACCES, errno.EPERM):
        try:
            group = grp.getgrgid(os.stat(path).st_gid).gr_name
        except (KeyError, OSError):
            group = "gatewayd"
        return AccessDenied(f"permission denied on {path}: your user needs to be in group {group} "
                            f"(`sudo usermod -aG {group} $USER`, then log in again)")
    return DaemonNotRunning(f"cannot connect to {path}: {err.strerror}")


class RpcClient:
    """``RpcClient(path).call("points.list", {"device": "ahu-1"})``."""

    def __init__(self, path: str, timeout: float | None = 10.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise connect_error(path, e) from None
        self._buf = b""
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RpcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, obj: Any) -> None:
        self.sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def _recv(self) -> Any:
        while b"\n" not in self._buf:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise DaemonNotRunning(f"gatewayd did not answer within {self.sock.gettimeout()}s on {self.path}") \
                    from None
            if not data:
                raise DaemonNotRunning("gatewayd closed the connection (stopping, or the request was refused)")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def call(self, method: str, params: Any = None) -> Any:
        """Call and return the result; raise :class:`RpcRemoteError` on an error response."""
        rid = next(self._ids)
        msg = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            msg["params"] = params
        self._send(msg)
        while True:
            resp = self._recv()
            if isinstance(resp, dict) and "id" in resp and resp.get("id") in (rid, None) and "method" not in resp:
                if "error" in resp:
                    e = resp["error"]
                    raise RpcRemoteError(e.get("code"), e.get("message"), e.get("data"))
                return resp.get("result")

    def stream(self, method: str, params: Any = None) -> Iterator[dict]:
        """Start a streaming call (``points.watch``) and yield its notifications."""
        rid = next(self._ids)
        self._send({"jsonrpc": "2.0", "method": method, "params": params or {}, "id": rid})
        while True:
            msg = self._recv()
            if "method" in msg:
                yield msg
            elif msg.get("id") == rid:
                if "error" in msg:
                    e = msg["error"]
                    raise RpcRemoteError(e.get("code"), e.get("message"), e.get("data"))
                return

    notifications = stream
