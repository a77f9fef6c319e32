"""JSON-RPC 2.0, sans-IO: bytes in, requests out; responses in, bytes out.

Nothing here does I/O or knows about trio, so every function can be fed
arbitrary input (the tests fuzz it). :mod:`gatewayd.rpc.server` is the thin
trio adapter around it.

Framing: one JSON text per line (``\\n``; a trailing ``\\r`` and blank lines
are tolerated). :class:`LineReader` splits a byte stream into lines and enforces
a cap on a line's size without ever buffering more than the cap plus one read.
A line over the cap is answered with a **-32600** error naming the cap (not
-32700: the bytes were never parsed) and the connection is then closed, since
the rest of an over-long line cannot be told apart from the next request.

Exact spec behaviour (https://www.jsonrpc.org/specification):

* a request object with an ``"id"`` member gets exactly one response echoing
  that id. Valid ids are strings, numbers (fractional ones too, although the
  spec says they SHOULD NOT be) and null; a request whose id is of another type
  (true, an object, an array) is an invalid request, answered with id null;
* a request object without ``"id"`` is a notification: it gets no response,
  not even when it fails;
* a batch (array) is answered with an array of the non-notification
  responses, and with nothing at all when every element was a notification;
  an empty array is one -32600 error (not an array) with id null;
* a text that is not JSON (``NaN``/``Infinity`` included: they are not JSON) is
  one -32700 error with id null, batch or not;
* an element that is not a valid request object (not an object, no
  ``"jsonrpc": "2.0"``, ``"method"`` not a string, ``"params"`` neither array
  nor object, unknown members) is a -32600 error, echoing the id when it could
  be read and null otherwise;
* method names beginning with ``rpc.`` are reserved (the registry refuses
  them, so calling one is -32601).

Encoding (:func:`encode`): JSON has no NaN or infinity, so non-finite floats
are sent as ``null`` (as JavaScript's ``JSON.stringify`` does); values JSON
cannot carry go through :func:`json_default` (datetime -> RFC 3339, ...).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import json
import math
import os
import uuid
from typing import Any

__all__ = [
    "RpcError", "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
    "PERMISSION_DENIED", "NOT_FOUND", "CONFLICT", "UNAVAILABLE", "LIMIT_EXCEEDED", "Request", "parse_message",
    "assemble",
    "error_response", "result_response", "notification", "encode", "encode_response", "json_default",
    "LineReader", "RequestTooLarge", "NEED_DATA", "EOF",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
PERMISSION_DENIED = -32001
NOT_FOUND = -32002
CONFLICT = -32003
UNAVAILABLE = -32004
LIMIT_EXCEEDED = -32005  # too many connections/watchers, a result page too large, a request too slow


class RpcError(Exception):
    """An error answered to the client as ``{"code": ..., "message": ..., "data": ...}``.

    Raise it from a method handler with one of the module's codes::

        raise RpcError(NOT_FOUND, f"unknown point {point!r}")

    ``data`` (any JSON value) is omitted from the response when it is None.
    The codes are also attributes of the class (``RpcError.NOT_FOUND``).
    """

    PARSE_ERROR = PARSE_ERROR
    INVALID_REQUEST = INVALID_REQUEST
    METHOD_NOT_FOUND = METHOD_NOT_FOUND
    INVALID_PARAMS = INVALID_PARAMS
    INTERNAL_ERROR = INTERNAL_ERROR
    PERMISSION_DENIED = PERMISSION_DENIED
    NOT_FOUND = NOT_FOUND
    CONFLICT = CONFLICT
    UNAVAILABLE = UNAVAILABLE
    LIMIT_EXCEEDED = LIMIT_EXCEEDED

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def __repr__(self) -> str:
        return f"RpcError({self.code}, {self.message!r}" + (f", {self.data!r})" if self.data is not None else ")")

    def to_dict(self) -> dict:
        """The response's ``"error"`` member."""
        d: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            d["data"] = self.data
        return d


class Request:
    """One valid request object: ``method``, ``params`` (list, dict or None), ``id``.

    ``has_id`` tells an id of null (a request, answered) from no id at all (a
    notification, never answered); ``is_notification`` is its negation.
    """

    __slots__ = ("method", "params", "id", "has_id")

    def __init__(self, method: str, params: Any, id: Any, has_id: bool) -> None:
        self.method, self.params, self.id, self.has_id = method, params, id, has_id

    @property
    def is_notification(self) -> bool:
        return not self.has_id

    def __repr__(self) -> str:
        rid = f", id={self.id!r}" if self.has_id else ""
        return f"Request({self.method!r}, params={self.params!r}{rid})"


def error_response(err: RpcError, id: Any = None) -> dict:
    """``{"jsonrpc": "2.0", "error": {...}, "id": id}``."""
    return {"jsonrpc": "2.0", "error": err.to_dict(), "id": id}


def result_response(result: Any, id: Any) -> dict:
    """``{"jsonrpc": "2.0", "result": result, "id": id}``."""
    return {"jsonrpc": "2.0", "result": result, "id": id}


def notification(method: str, params: Any = None) -> dict:
    """A server-to-client notification (``params`` omitted when None)."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    return msg


# ---------------------------------------------------------------- parsing

_MEMBERS = frozenset(("jsonrpc", "method", "params", "id"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check(obj: Any) -> Request | dict:
    """A :class:`Request`, or the error response for an invalid request object."""
    if not isinstance(obj, dict):
        return error_response(RpcError(INVALID_REQUEST, "invalid request: expected a JSON object"))
    has_id = "id" in obj
    rid = obj.get("id")
    if has_id and not (rid is None or isinstance(rid, (str, int, float)) and not isinstance(rid, bool)):
        return error_response(RpcError(INVALID_REQUEST, "invalid request: id must be a string, number or null"))
    if obj.get("jsonrpc") != "2.0":
        return error_response(RpcError(INVALID_REQUEST, 'invalid request: "jsonrpc" must be exactly "2.0"'), rid)
    method = obj.get("method")
    if not isinstance(method, str):
        return error_response(RpcError(INVALID_REQUEST, 'invalid request: "method" must be a string'), rid)
    params = obj.get("params")
    if "params" in obj and not isinstance(params, (list, dict)):
        return error_response(RpcError(INVALID_REQUEST, 'invalid request: "params" must be an array or an object'),
                              rid)
    extra = obj.keys() - _MEMBERS
    if extra:
        return error_response(RpcError(INVALID_REQUEST, f"invalid request: unknown member(s) {sorted(extra)}"), rid)
    return Request(method, params, rid, has_id)


def parse_message(line: bytes | str) -> tuple[list[Request | dict], bool]:
    """Parse one line into ``(items, is_batch)``.

    Each item is a :class:`Request` to dispatch or an error response (a dict)
    ready to send, in the order of the batch. A parse error or an empty batch
    yields one error response and ``is_batch`` False. Never raises.
    """
    try:
        text = line.decode("utf-8") if isinstance(line, (bytes, bytearray)) else line
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        msg = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        return [error_response(RpcError(PARSE_ERROR, f"parse error: {msg}"))], False
    if isinstance(obj, list):
        if not obj:
            return [error_response(RpcError(INVALID_REQUEST, "invalid request: empty batch"))], False
        return [_check(o) for o in obj], True
    return [_check(obj)], False


def assemble(responses: list[dict | None], is_batch: bool) -> dict | list | None:
    """What to send for one parsed message: None for no response at all.

    ``responses`` holds one entry per item of :func:`parse_message`, None for
    notifications (and for calls whose client has gone).
    """
    out = [r for r in responses if r is not None]
    if is_batch:
        return out or None
    return out[0] if out else None


# ---------------------------------------------------------------- framing

class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
EOF = _Sentinel("EOF")


class RequestTooLarge(RpcError):
    """A line longer than the cap: answered, then the connection is closed."""

    def __init__(self, cap: int) -> None:
        super().__init__(INVALID_REQUEST, f"request larger than the limit of {cap} bytes; closing the connection")
        self.cap = cap


class LineReader:
    """Splits a byte stream into lines, h11-style: ``receive_data`` / ``next_line``.

    ``receive_data(b"")`` marks the end of the input. ``next_line()`` returns
    the next non-blank line (without its ``\\n``), :data:`NEED_DATA`, or
    :data:`EOF` once the input has ended; an unterminated last line is still
    returned at the end of input. A line longer than ``max_line`` bytes raises
    :class:`RequestTooLarge` as soon as it is known to be too long (the reader
    stays broken after that). Each byte is scanned once; the buffer never
    holds more than ``max_line`` plus the last chunk received.
    """

    def __init__(self, max_line: int) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline
        self._eof = False
        self._error: RequestTooLarge | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the peer; ``b""`` means the peer will send no more."""
        if self._eof:
            raise RuntimeError("receive_data after the end of input")
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_line(self) -> bytes | _Sentinel:
        """The next complete line, :data:`NEED_DATA` or :data:`EOF`."""
        while True:
            if self._error is not None:
                raise self._error
            i = self._buf.find(b"\n", self._scanned)
            if i < 0:
                self._scanned = len(self._buf)
                if len(self._buf) > self.max_line:
                    self._error = RequestTooLarge(self.max_line)
                    continue
                if not self._eof:
                    return NEED_DATA
                if not self._buf:
                    return EOF
                line, i = bytes(self._buf), len(self._buf)
            else:
                line = bytes(self._buf[:i])
            del self._buf[: i + 1]
            self._scanned = 0
            if len(line) > self.max_line:
                self._error = RequestTooLarge(self.max_line)
                continue
            if line.strip():
                return line


# ---------------------------------------------------------------- encoding

def _rfc3339(d: _dt.datetime) -> str:
    if d.tzinfo is None or d.utcoffset() is None:
        try:
            d = d.astimezone()  # naive: local time, as Python's own conversions take it
        except (OverflowError, OSError, ValueError):
            return d.isoformat()
    s = d.isoformat()
    return s[:-6] + "Z" if s.endswith("+00:00") else s


def json_default(o: Any) -> Any:
    """The ``default=`` hook of :func:`encode`: JSON stand-ins for other values.

    datetime -> RFC 3339 string (naive values are taken as local time; UTC is
    written ``Z``), date/time -> ISO 8601, timedelta -> seconds, Decimal ->
    number (null if not finite), Enum -> its value, bytes -> hex string,
    set -> sorted array, dataclass -> object, UUID/path -> string; anything else
    -> ``str(o)``.
    """
    if isinstance(o, _dt.datetime):
        return _rfc3339(o)
    if isinstance(o, (_dt.date, _dt.time)):
        return o.isoformat()
    if isinstance(o, _dt.timedelta):
        return o.total_seconds()
    if isinstance(o, decimal.Decimal):
        return float(o) if o.is_finite() else None
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, (bytes, bytearray, memoryview)):
        return bytes(o).hex()
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=repr)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    if isinstance(o, os.PathLike):
        return os.fsdecode(o)
    if isinstance(o, uuid.UUID):
        return str(o)
    return str(o)


_MAX_DEPTH = 200


def _key(k: Any) -> str:
    """An object key as ``json`` writes it (``1`` -> ``"1"``, ``True`` -> ``"true"``), else ``str``."""
    if isinstance(k, str):
        return k
    if k is None or isinstance(k, (bool, int)):
        return json.dumps(k)
    if isinstance(k, float):
        return repr(k)
    d = json_default(k)
    return d if isinstance(d, str) else str(k)


def _normalize(obj: Any, depth: int = 0) -> Any:
    """Slow path of :func:`encode`: plain JSON types only, non-finite floats as None."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"value nested deeper than {_MAX_DEPTH} levels (or circular)")
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_key(k): _normalize(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normalize(v, depth + 1) for v in obj]
    return _normalize(json_default(obj), depth + 1)


def _dumps(obj: Any, ascii_only: bool) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=ascii_only, allow_nan=False, default=json_default)


def encode(obj: Any) -> bytes:
    """One JSON text as UTF-8 plus ``\\n``.

    Non-finite floats become null; other values go through
    :func:`json_default`. Strings holding lone surrogates are escaped.
    Raises ``ValueError`` for values nested deeper than 200 levels (circular
    ones included).
    """
    try:
        s = _dumps(obj, False)
    except (ValueError, TypeError, RecursionError):
        s = _dumps(_normalize(obj), False)
    try:
        return s.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # lone surrogates ("\ud800" in the input): keep them as escapes
        return _dumps(json.loads(s), True).encode("ascii") + b"\n"


def encode_response(resp: dict | list) -> bytes:
    """:func:`encode` for a response (or batch), never raising.

    A response whose result cannot be encoded is replaced by a -32603 error
    with the same id.
    """
    try:
        return encode(resp)
    except ValueError as e:
        if isinstance(resp, list):
            return b"[" + b",".join(encode_response(r)[:-1] for r in resp) + b"]\n"
        rid = resp.get("id")
        return encode(error_response(RpcError(INTERNAL_ERROR, f"internal error: response not encodable: {e}"),
                                     rid if isinstance(rid, (str, int, float)) else None))
