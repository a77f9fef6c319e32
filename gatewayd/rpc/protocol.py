"""JSON-RPC 2.0, sans-IO: one input line in, zero or one output line out.

Exact spec behaviour (https://www.jsonrpc.org/specification):

* a request with an ``"id"`` member (any JSON value, null included) gets a
  response echoing that id; one without ``"id"`` is a notification and gets no
  response, not even on error;
* a batch (array) returns an array of the non-notification responses, nothing
  if all were notifications; ``[]`` is one -32600 error with id null;
* parse error -32700 (id null), invalid request -32600, method not found
  -32601, invalid params -32602 (the message names the parameter), internal
  error -32603 (no traceback to the client; it is logged);
* ``rpc.*`` names are reserved.

Application errors: -32001 permission denied, -32002 not found, -32003
conflict, -32004 unavailable. Non-finite floats are sent as ``null``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from typing import Any

__all__ = ["RpcError", "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
           "PERMISSION_DENIED", "NOT_FOUND", "CONFLICT", "UNAVAILABLE", "Request", "parse_message",
           "error_response", "result_response", "encode", "notification"]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
PERMISSION_DENIED = -32001
NOT_FOUND = -32002
CONFLICT = -32003
UNAVAILABLE = -32004

_NO_ID = object()


class RpcError(Exception):
    """An error answered to the client as ``{"code": ..., "message": ..., "data": ...}``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_dict(self) -> dict:
        d = {"code": self.code, "message": self.message}
        if self.data is not None:
            d["data"] = self.data
        return d


class Request:
    """One call from a message: method, params (list/dict/None), id (``is_notification`` if absent)."""

    __slots__ = ("method", "params", "id", "has_id")

    def __init__(self, method: str, params: Any, id: Any, has_id: bool) -> None:
        self.method, self.params, self.id, self.has_id = method, params, id, has_id

    @property
    def is_notification(self) -> bool:
        return not self.has_id


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _default(o: Any) -> Any:
    if isinstance(o, (_dt.datetime, _dt.date)):
        return o.isoformat()
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=str)
    if isinstance(o, bytes):
        return o.hex()
    return str(o)


def encode(obj: Any) -> bytes:
    """One JSON line (with the trailing newline)."""
    try:
        s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default)
    except ValueError:
        s = json.dumps(_clean(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default)
    return s.encode() + b"\n"


def error_response(err: RpcError, id: Any = None) -> dict:
    return {"jsonrpc": "2.0", "error": err.to_dict(), "id": id}


def result_response(result: Any, id: Any) -> dict:
    return {"jsonrpc": "2.0", "result": result, "id": id}


def notification(method: str, params: Any) -> dict:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def _check(obj: Any) -> Request | dict:
    """A Request, or an error response dict for an invalid request object."""
    if not isinstance(obj, dict):
        return error_response(RpcError(INVALID_REQUEST, "invalid request: expected a JSON object"))
    has_id = "id" in obj
    rid = obj.get("id")
    id_ok = rid is None or isinstance(rid, (str, int, float)) and not isinstance(rid, bool)
    reply_id = rid if (has_id and id_ok) else None
    if has_id and not id_ok:
        return error_response(RpcError(INVALID_REQUEST, "invalid request: id must be a string, number or null"))
    if obj.get("jsonrpc") != "2.0":
        return error_response(RpcError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be exactly "2.0"'), reply_id)
    method = obj.get("method")
    if not isinstance(method, str):
        return error_response(RpcError(INVALID_REQUEST, 'invalid request: "method" must be a string'), reply_id)
    params = obj.get("params")
    if "params" in obj and not isinstance(params, (list, dict)):
        return error_response(RpcError(INVALID_REQUEST, 'invalid request: "params" must be an array or an object'),
                              reply_id)
    extra = set(obj) - {"jsonrpc", "method", "params", "id"}
    if extra:
        return error_response(RpcError(INVALID_REQUEST, f"invalid request: unknown member(s) {sorted(extra)}"),
                              reply_id)
    return Request(method, params, rid, has_id)


def parse_message(line: bytes | str) -> tuple[list[Request | dict], bool]:
    """Parse one line into ``(items, is_batch)``; items are Requests or ready error responses.

    A parse error or an empty batch yields one error response (``is_batch`` False).
    """
    try:
        if isinstance(line, bytes):
            line = line.decode("utf-8")
        obj = json.loads(line)
    except (UnicodeDecodeError, ValueError) as e:
        return [error_response(RpcError(PARSE_ERROR, f"parse error: {e}"))], False
    if isinstance(obj, list):
        if not obj:
            return [error_response(RpcError(INVALID_REQUEST, "invalid request: empty batch"))], False
        return [_check(o) for o in obj], True
    return [_check(obj)], False
