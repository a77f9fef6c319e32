"""Method table, roles, the per-call context, and dispatch of one request.

A handler is ``async def handler(call: Call, **params)`` (or with positional
params): ``registry.add("points.read", handler, role=Role.VIEWER)`` or the
decorator ``@registry.method("points.read")``. Params bind by position or by
name (see :mod:`gatewayd.rpc.binding`); a handler raises :class:`RpcError` for
an answer the client should see, and any other exception becomes a -32603
error carrying only a reference id: the exception text and traceback go to the
log under that reference, never to the client.
"""

from __future__ import annotations

import enum
import inspect
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio

from .binding import Binder
from .protocol import (INTERNAL_ERROR, INVALID_PARAMS, METHOD_NOT_FOUND, PERMISSION_DENIED, Request, RpcError,
                       error_response, notification, result_response)

log = logging.getLogger("gatewayd.rpc")

__all__ = ["Role", "Call", "MethodRegistry", "Method", "AUDIT", "GRANTS", "default_grants"]

_AUDIT_TIMEOUT = 10.0  # an audit store that hangs must not hold a shutdown forever


class Role(enum.IntEnum):
    """viewer reads; operator writes points, acks alarms, runs scans; admin changes configuration."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        """``"viewer"``, ``"operator"`` or ``"admin"``."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: "str | int | Role") -> "Role":
        """A Role from its name (any case) or number; ``ValueError`` otherwise."""
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(f"unknown role {value!r} (viewer, operator or admin)") from None
        return cls(value)


AUDIT = "audit"
#: every grant there is; admins hold them all
GRANTS = frozenset((AUDIT,))


def default_grants(role: Role | None) -> frozenset[str]:
    """Grants a role has without a ``[control]`` list saying otherwise: admin all, operator ``audit``."""
    if role is None:
        return frozenset()
    if role >= Role.ADMIN:
        return GRANTS
    return frozenset((AUDIT,)) if role >= Role.OPERATOR else frozenset()


class Call:
    """What a handler gets as its first argument: who calls, and its connection.

    ``role``, ``grants`` (permissions outside the role ladder, e.g.
    ``{"audit"}``: see :mod:`gatewayd.rpc.auth`), ``uid``, ``gid``, ``pid``
    (peer credentials), ``actor`` (``"uid:1000(alice)"``, used in the audit),
    ``method`` (the name called), ``request_id`` (None for a notification),
    ``mutating``.

    ``closed`` is a :class:`trio.Event` set when the client stops sending: it
    disconnected, or shut down its side of the socket. A streaming handler
    (``points.watch``) ends then. ``notify(method, params)`` sends a
    server-to-client notification on this connection and raises
    :class:`trio.ClosedResourceError` once the client has gone.

    ``cancel_scope`` is the :class:`trio.CancelScope` the handler runs in. The
    server cancels it when nobody can receive the result any more (the client
    hung up entirely, or writing to it failed), unless the method is mutating:
    a write is never cut half way because the client left. A handler may
    cancel it itself to end early; the result is then null.
    """

    def __init__(self, method: str, role: Role, uid: int, gid: int, pid: int, actor: str,
                 send: Callable[[dict], Awaitable[None]] | None = None, closed: trio.Event | None = None,
                 *, request_id: Any = None, grants: frozenset[str] | None = None) -> None:
        self.method = method
        self.role = Role(role)
        self.grants = frozenset(grants) if grants is not None else default_grants(self.role)
        self.uid, self.gid, self.pid = uid, gid, pid
        self.actor = actor
        self.request_id = request_id
        self.mutating = False
        self.closed = closed if closed is not None else trio.Event()
        self.cancel_scope = trio.CancelScope()
        self.notifications_sent = 0
        self._send = send
        self._abandoned = False

    @classmethod
    def local(cls, method: str = "", role: Role = Role.ADMIN, actor: str = "internal") -> "Call":
        """A Call for in-process use (tests, the daemon calling its own methods); ``notify`` raises."""
        return cls(method, role, os.geteuid(), os.getegid(), os.getpid(), actor)

    def __repr__(self) -> str:
        return f"<Call {self.method} by {self.actor} as {self.role.label}>"

    async def notify(self, method: str, params: Any = None) -> None:
        """Send ``{"jsonrpc": "2.0", "method": method, "params": params}`` to the client.

        Raises :class:`trio.ClosedResourceError` when the client has gone (or
        stopped sending), ``ValueError`` when ``params`` cannot be encoded.
        """
        if self._send is None:
            raise trio.ClosedResourceError("this call has no client connection to notify")
        if self.closed.is_set() or self._abandoned:
            raise trio.ClosedResourceError("the client has gone")
        await self._send(notification(method, params))
        self.notifications_sent += 1

    def _abandon(self) -> None:
        """Server side: nobody will receive this call's result; cancel it."""
        self._abandoned = True
        self.cancel_scope.cancel()


@dataclass
class Method:
    """One registered method."""

    name: str
    func: Callable[..., Awaitable[Any]]
    role: Role
    mutating: bool
    doc: str
    binder: Binder = field(repr=False)
    grant: str | None = None

    @property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.func)

    def describe(self) -> dict:
        """``{"name", "role", "mutating", "params", "doc"}`` (+ ``"grant"`` when one is needed)
        as ``gateway.methods`` lists it."""
        d = {"name": self.name, "role": self.role.label, "mutating": self.mutating,
             "params": self.binder.usage(), "doc": self.doc}
        if self.grant:
            d["grant"] = self.grant
        return d

    def allowed(self, role: Role, grants: frozenset[str] = frozenset()) -> bool:
        """May a caller with ``role`` and ``grants`` call it?"""
        return role >= self.role and (self.grant is None or self.grant in grants)


_CLIENT_GONE = (trio.ClosedResourceError, trio.BrokenResourceError)


def _leaf(e: BaseException) -> BaseException:
    """The one exception inside (nested) groups of one, else ``e`` itself."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


def _only(e: BaseException, types: tuple[type[BaseException], ...]) -> bool:
    if isinstance(e, BaseExceptionGroup):
        return all(_only(x, types) for x in e.exceptions)
    return isinstance(e, types)


class MethodRegistry:
    """Namespaced methods (``points.list``) with the role each needs.

    ``audit`` (optional) is awaited as ``audit(actor, method, params, ok, error)``
    after every call of a ``mutating=True`` method, whatever its outcome
    (refused for the role, bad params, failed, cancelled, done). ``params`` is a
    dict: the params by name, positional ones under their parameter names
    (when they could not be bound: the object as sent, or ``{"params": [...]}``).
    ``error`` is None or the error message. A failing audit is logged and does
    not change the answer.

    ``gateway.methods`` is built in: the methods the caller's role may call.
    """

    def __init__(self, audit: Callable[..., Awaitable[None]] | None = None) -> None:
        self.methods: dict[str, Method] = {}
        self.audit = audit
        self.add("gateway.methods", self._list_methods, role=Role.VIEWER)

    def __contains__(self, name: object) -> bool:
        return name in self.methods

    def add(self, name: str, func: Callable[..., Awaitable[Any]], *, role: Role = Role.VIEWER,
            mutating: bool = False, doc: str | None = None, grant: str | None = None) -> Method:
        """Register ``func`` as method ``name`` callable by ``role`` and above.

        ``grant`` (e.g. ``"audit"``): the caller needs that grant as well
        (``[control] audit``; admins hold every grant).

        ``ValueError`` for a name that is empty, reserved (``rpc.*``) or taken;
        ``TypeError`` for a handler that is not an ``async def`` taking the
        Call first. ``doc`` defaults to the first line of the docstring.
        """
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"invalid RPC method name {name!r}")
        if name.startswith("rpc."):
            raise ValueError(f"{name!r}: method names starting with 'rpc.' are reserved by JSON-RPC 2.0")
        if name in self.methods and name != "gateway.methods":
            raise ValueError(f"RPC method {name!r} is already registered")
        target = inspect.unwrap(func)
        if not (inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(target)
                or inspect.iscoroutinefunction(getattr(func, "__call__", None))):
            raise TypeError(f"handler of RPC method {name!r} must be an async function")
        binder = Binder(name, func)
        text = doc if doc is not None else (inspect.getdoc(func) or "")
        m = Method(name, func, Role(role), bool(mutating), text.strip().split("\n")[0], binder, grant)
        self.methods[name] = m
        return m

    def method(self, name: str, *, role: Role = Role.VIEWER, mutating: bool = False, doc: str | None = None,
               grant: str | None = None):
        """Decorator form of :meth:`add`::

            @registry.method("points.write", role=Role.OPERATOR, mutating=True)
            async def write(call, point: str, value, priority: int = 8): ...
        """
        def deco(func):
            self.add(name, func, role=role, mutating=mutating, doc=doc, grant=grant)
            return func
        return deco

    def describe(self, role: Role, grants: frozenset[str] | None = None) -> list[dict]:
        """The methods ``role`` (with ``grants``; None: the role's default grants) may call, by name."""
        if grants is None:
            grants = default_grants(role)
        return [m.describe() for m in sorted(self.methods.values(), key=lambda m: m.name)
                if m.allowed(role, grants)]

    async def _list_methods(self, call: Call) -> list[dict]:
        """Methods you may call: name, role, mutating, params, doc."""
        return self.describe(call.role, call.grants)

    async def dispatch(self, req: Request, call: Call) -> dict | None:
        """Run one request for ``call``; the response dict, or None.

        None for a notification, and for a call abandoned because its client
        left. Never raises except :class:`trio.Cancelled`.
        """
        start = time.monotonic()
        try:
            result = await self._run(req, call)
        except RpcError as e:
            log.debug("%s by %s: error %s (%.1f ms)", req.method, call.actor, e.code, 1e3 * (time.monotonic() - start))
            return None if req.is_notification else error_response(e, req.id)
        if result is _GONE:
            return None
        log.debug("%s by %s: ok (%.1f ms)", req.method, call.actor, 1e3 * (time.monotonic() - start))
        return None if req.is_notification else result_response(result, req.id)

    async def _run(self, req: Request, call: Call) -> Any:
        call.method = req.method
        call.request_id = req.id
        m = self.methods.get(req.method)
        if m is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {req.method}")
        call.mutating = m.mutating
        raw = req.params if isinstance(req.params, dict) else {"params": req.params} if req.params else {}
        if call.role < m.role:
            err = RpcError(PERMISSION_DENIED, f"permission denied: {req.method} needs role {m.role.label}, "
                                              f"{call.actor} has {call.role.label}")
            await self._audit(m, call, raw, err.message)
            raise err
        if m.grant is not None and m.grant not in call.grants:
            err = RpcError(PERMISSION_DENIED, f"permission denied: {req.method} needs the {m.grant} role "
                                              f"([control] {m.grant}); {call.actor} ({call.role.label}) "
                                              "does not have it")
            await self._audit(m, call, raw, err.message)
            raise err
        try:
            args, kwargs, named = m.binder.bind(req.params)
        except RpcError as e:
            await self._audit(m, call, raw, e.message)
            raise
        outcome: str | None = "cancelled"
        result: Any = None
        try:
            with call.cancel_scope:
                result = await m.func(call, *args, **kwargs)
            if call.cancel_scope.cancelled_caught and call._abandoned:
                outcome = "cancelled: the client left"
                return _GONE
            outcome = None
            return result
        except BaseException as exc:  # noqa: B902 - sorted out below, Cancelled re-raised
            e = _leaf(exc)
            if isinstance(exc, trio.Cancelled) or _only(exc, (trio.Cancelled,)):
                raise
            if isinstance(e, RpcError):
                outcome = e.message
                raise e from None
            if _only(exc, _CLIENT_GONE) and (call.closed.is_set() or call._abandoned):
                outcome = "ended: the client left"
                return _GONE
            if isinstance(e, TypeError) and not isinstance(exc, BaseExceptionGroup):
                # a type check inside the handler: a bad parameter rather than a crash
                log.warning("TypeError in %s (answered as invalid params)", m.name, exc_info=True)
                outcome = str(e)
                raise RpcError(INVALID_PARAMS, f"invalid params for {m.name}: {e}") from None
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit, or a group holding one
            ref = secrets.token_hex(4)
            log.error("RPC method %s failed (called by %s; reference %s)", m.name, call.actor, ref, exc_info=exc)
            outcome = f"internal error {type(e).__name__} (reference {ref})"
            # no exception text to the client: it may hold paths, values or internals; the log has it
            raise RpcError(INTERNAL_ERROR, f"internal error in {m.name} (reference {ref}: the daemon's log "
                                           "has the details)") from None
        finally:
            if m.mutating:
                await self._audit(m, call, named, outcome)

    async def _audit(self, m: Method, call: Call, params: dict, error: str | None) -> None:
        if not m.mutating or self.audit is None:
            return
        with trio.CancelScope(shield=True) as cs:
            cs.deadline = trio.current_time() + _AUDIT_TIMEOUT
            try:
                await self.audit(call.actor, m.name, params, error is None, error)
            except Exception:
                log.error("audit of %s by %s failed", m.name, call.actor, exc_info=True)
        if cs.cancelled_caught:
            log.error("audit of %s by %s took longer than %ss; given up", m.name, call.actor, _AUDIT_TIMEOUT)


_GONE = object()
