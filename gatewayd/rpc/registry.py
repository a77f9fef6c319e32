"""Method table, roles, the per-call context, and dispatch of a parsed message."""

from __future__ import annotations

import enum
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import trio

from .protocol import (INTERNAL_ERROR, INVALID_PARAMS, METHOD_NOT_FOUND, PERMISSION_DENIED, Request, RpcError,
                       error_response, result_response)

log = logging.getLogger("gatewayd.rpc")

__all__ = ["Role", "Call", "MethodRegistry", "Method"]


class Role(enum.IntEnum):
    """viewer reads; operator writes points, acks, scans; admin changes configuration."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3


@dataclass
class Method:
    name: str
    func: Callable[..., Awaitable[Any]]
    role: Role
    mutating: bool
    doc: str
    signature: inspect.Signature


class Call:
    """What a handler gets as its first argument."""

    def __init__(self, method: str, role: Role, uid: int, gid: int, pid: int, actor: str,
                 send: Callable[[dict], Awaitable[None]] | None = None, closed: trio.Event | None = None) -> None:
        self.method = method
        self.role = role
        self.uid, self.gid, self.pid = uid, gid, pid
        self.actor = actor
        self._send = send
        self.closed = closed if closed is not None else trio.Event()

    async def notify(self, method: str, params: Any) -> None:
        """Send a server-to-client notification on this connection."""
        if self._send is None or self.closed.is_set():
            raise trio.ClosedResourceError("the client has gone")
        try:
            await self._send({"jsonrpc": "2.0", "method": method, "params": params})
        except (trio.BrokenResourceError, OSError):
            self.closed.set()
            raise trio.ClosedResourceError("the client has gone") from None


class MethodRegistry:
    """Namespaced methods (``points.list``) with the role each needs.

    ``audit`` (optional) is awaited as ``audit(actor, method, params, ok, error)``
    after every ``mutating=True`` call.
    """

    def __init__(self, audit: Callable[..., Awaitable[None]] | None = None) -> None:
        self.methods: dict[str, Method] = {}
        self.audit = audit
        self.add("gateway.methods", self._list_methods, role=Role.VIEWER)

    def add(self, name: str, func: Callable[..., Awaitable[Any]], *, role: Role = Role.VIEWER,
            mutating: bool = False, doc: str | None = None) -> None:
        if name.startswith("rpc."):
            raise ValueError("method names starting with 'rpc.' are reserved by JSON-RPC 2.0")
        if name in self.methods and name != "gateway.methods":
            raise ValueError(f"RPC method {name!r} is already registered")
        sig = inspect.signature(func)
        self.methods[name] = Method(name, func, Role(role), mutating,
                                    (doc or inspect.getdoc(func) or "").strip().split("\n")[0], sig)

    def method(self, name: str, *, role: Role = Role.VIEWER, mutating: bool = False):
        """Decorator form of :meth:`add`."""
        def deco(func):
            self.add(name, func, role=role, mutating=mutating)
            return func
        return deco

    async def _list_methods(self, call: Call) -> list[dict]:
        """Methods available to the caller's role."""
        return [{"name": m.name, "role": m.role.name.lower(), "mutating": m.mutating, "doc": m.doc}
                for m in sorted(self.methods.values(), key=lambda m: m.name) if m.role <= call.role]

    def _bind(self, m: Method, params: Any) -> inspect.BoundArguments:
        try:
            if params is None:
                return m.signature.bind(None)
            if isinstance(params, list):
                return m.signature.bind(None, *params)
            return m.signature.bind(None, **params)
        except TypeError as e:
            raise RpcError(INVALID_PARAMS, f"invalid params for {m.name}: {e}") from None

    async def dispatch(self, req: Request, call: Call) -> dict | None:
        """Run one request; returns the response dict (None for notifications)."""
        rid = req.id
        try:
            m = self.methods.get(req.method)
            if m is None:
                raise RpcError(METHOD_NOT_FOUND, f"method not found: {req.method}")
            if call.role < m.role:
                raise RpcError(PERMISSION_DENIED, f"permission denied: {req.method} needs role "
                               f"{m.role.name.lower()}, {call.actor} has {call.role.name.lower()}")
            bound = self._bind(m, req.params)
            call.method = req.method
            args = list(bound.args)
            args[0] = call
            try:
                result = await m.func(*args, **bound.kwargs)
            except RpcError as e:
                await self._audit(m, call, req.params, False, e.message)
                raise
            except TypeError as e:
                # a TypeError raised by a type check inside the handler is a bad parameter, not a crash
                log.warning("TypeError in %s (reported as invalid params)", m.name, exc_info=True)
                await self._audit(m, call, req.params, False, str(e))
                raise RpcError(INVALID_PARAMS, f"invalid params for {m.name}: {e}") from None
            except trio.Cancelled:
                raise
            except trio.ClosedResourceError:
                if call.closed.is_set():
                    return None  # a streaming call whose client left: nothing to answer
                raise
            except Exception as e:
                log.error("RPC method %s failed", m.name, exc_info=True)
                await self._audit(m, call, req.params, False, f"{type(e).__name__}: {e}")
                raise RpcError(INTERNAL_ERROR, f"internal error in {m.name}: {type(e).__name__}: {e}") from None
            await self._audit(m, call, req.params, True, None)
        except RpcError as e:
            return None if req.is_notification else error_response(e, rid)
        return None if req.is_notification else result_response(result, rid)

    async def _audit(self, m: Method, call: Call, params: Any, ok: bool, error: str | None) -> None:
        if not m.mutating or self.audit is None:
            return
        try:
            p = params if isinstance(params, dict) else {"params": params}
            await self.audit(call.actor, m.name, p, ok, error)
        except Exception:
            log.error("audit of %s failed", m.name, exc_info=True)
