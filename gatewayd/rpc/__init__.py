"""The control socket: JSON-RPC 2.0 over a Unix socket, roles by peer credentials."""

from .auth import PeerCred, RoleMap, actor_name, peer_credentials
from .protocol import (CONFLICT, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, NOT_FOUND,
                       PARSE_ERROR, PERMISSION_DENIED, UNAVAILABLE, RpcError)
from .registry import Call, MethodRegistry, Role
from .server import SocketInUse, serve_unix

__all__ = ["RpcError", "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
           "PERMISSION_DENIED", "NOT_FOUND", "CONFLICT", "UNAVAILABLE", "Role", "Call", "MethodRegistry",
           "RoleMap", "PeerCred", "peer_credentials", "actor_name", "serve_unix", "SocketInUse"]
