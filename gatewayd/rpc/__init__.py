"""The control socket: JSON-RPC 2.0 over a Unix socket, roles by peer credentials.

* :mod:`.protocol` — sans-IO JSON-RPC 2.0: parsing, framing, responses, encoding;
* :mod:`.registry` — :class:`Role`, :class:`MethodRegistry`, the per-call :class:`Call`;
* :mod:`.auth` — ``SO_PEERCRED`` and :class:`RoleMap` (the ``[control]`` lists);
* :mod:`.server` — :func:`serve_unix`, the trio adapter;
* :mod:`.client` — :class:`RpcClient`, the synchronous client ``gatewayctl`` uses.
"""

from .auth import PeerCred, RoleMap, actor_name, groups_of, peer_credentials, resolve_grants, resolve_role
from .client import AccessDenied, DaemonNotRunning, RpcClient, RpcRemoteError, connect_error
from .protocol import (CONFLICT, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, LIMIT_EXCEEDED, METHOD_NOT_FOUND,
                       NOT_FOUND, PARSE_ERROR, PERMISSION_DENIED, UNAVAILABLE, RpcError)
from .registry import AUDIT, Call, Method, MethodRegistry, Role
from .server import SocketInUse, serve_unix

__all__ = [
    # protocol
    "RpcError", "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
    "PERMISSION_DENIED", "NOT_FOUND", "CONFLICT", "UNAVAILABLE", "LIMIT_EXCEEDED",
    # registry
    "Role", "Call", "Method", "MethodRegistry", "AUDIT",
    # auth
    "RoleMap", "PeerCred", "peer_credentials", "actor_name", "groups_of", "resolve_role", "resolve_grants",
    # server
    "serve_unix", "SocketInUse",
    # client
    "RpcClient", "RpcRemoteError", "DaemonNotRunning", "AccessDenied", "connect_error",
]
