"""Binding JSON-RPC params (by position or by name) to a handler's signature.

Pure and synchronous. A handler is ``async def handler(call, a, b=1, *, c)``:
its first parameter receives the :class:`~gatewayd.rpc.registry.Call`, the
others are the method's params. Plain annotations are checked against the JSON
value (``int``, ``float``, ``str``, ``bool``, ``list``, ``dict``, ``None``,
unions and ``Optional`` of those, ``list[...]``/``dict[...]`` by their origin);
anything else (``Any``, classes, unknown names) is not checked. String
annotations (``from __future__ import annotations``) are read, never evaluated.
An integral float (``3.0``) is accepted for ``int`` and passed as ``3``, and an
integer for ``str`` (passed as its decimal string: ``gatewayctl`` sends
``--device 12`` as a number); a boolean is never a number.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from typing import Any, Callable

from .protocol import INVALID_PARAMS, RpcError

__all__ = ["Binder", "json_type"]

_NoneType = type(None)
_P = inspect.Parameter
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "an object", _NoneType: "null"}
_NAMES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict, "None": _NoneType,
          "NoneType": _NoneType, "List": list, "Dict": dict, "typing.List": list, "typing.Dict": dict}


_JSON_TYPES = ((_NoneType, "null"), (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
               (list, "array"), (dict, "object"))


def json_type(v: Any) -> str:
    """The JSON name of a decoded value's type (``"integer"``, ``"array"``, ...)."""
    return next((name for t, name in _JSON_TYPES if isinstance(v, t)), type(v).__name__)


def _split_top(s: str, sep: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _types_of_str(s: str) -> tuple[type, ...] | None:
    s = s.strip()
    m = re.fullmatch(r"(?:typing\.)?(Optional|Union)\[(.*)\]", s)
    if m:
        parts = [m.group(2), "None"] if m.group(1) == "Optional" else _split_top(m.group(2), ",")
    else:
        parts = _split_top(s, "|")
        if len(parts) == 1:
            name = s.split("[", 1)[0].strip()
            return (_NAMES[name],) if name in _NAMES else None
    out: list[type] = []
    for part in parts:
        t = _types_of_str(part)
        if t is None:
            return None
        out.extend(t)
    return tuple(out)


def _types_of(ann: Any) -> tuple[type, ...] | None:
    """The JSON-checkable types an annotation allows, or None for "don't check"."""
    if ann is _P.empty or ann is Any or ann is object:
        return None
    if isinstance(ann, str):
        return _types_of_str(ann)
    if ann is None or ann is _NoneType:
        return (_NoneType,)
    origin = typing.get_origin(ann)
    if origin is typing.Union or origin is types.UnionType:
        out: list[type] = []
        for a in typing.get_args(ann):
            t = _types_of(a)
            if t is None:
                return None
            out.extend(t)
        return tuple(out)
    if origin is not None:
        ann = origin
    return (ann,) if ann in _EXPECTED else None


def _conform(value: Any, allowed: tuple[type, ...]) -> tuple[bool, Any]:
    """``(ok, value)``: exact matches first, then the two lenient conversions."""
    is_bool = isinstance(value, bool)
    for t in allowed:
        if t is bool or t is _NoneType or t is str or t is list or t is dict:
            if isinstance(value, t):
                return True, value
        elif is_bool:
            continue
        elif t is int and isinstance(value, int) or t is float and isinstance(value, (int, float)):
            return True, value
    if not is_bool:
        if int in allowed and isinstance(value, float) and value.is_integer():
            return True, int(value)
        if str in allowed and isinstance(value, int):
            return True, str(value)  # gatewayctl sends `--device 12` as a number
    return False, value


def _expected(allowed: tuple[type, ...]) -> str:
    names = list(dict.fromkeys(_EXPECTED[t] for t in allowed))
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


class Binder:
    """The params of one handler: ``bind(params) -> (args, kwargs, named)``.

    Built once per method at registration; raises ``TypeError`` there when the
    handler cannot take a Call as its first positional parameter.
    """

    def __init__(self, method: str, func: Callable[..., Any]) -> None:
        self.method = method
        sig = inspect.signature(func)
        ps = list(sig.parameters.values())
        if not ps or ps[0].kind not in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD):
            raise TypeError(f"handler of RPC method {method!r} must take the Call as its first positional parameter")
        rest = ps[1:]
        self.call_name = ps[0].name
        self.params = rest
        self.positional = [p for p in rest if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)]
        self.by_name = {p.name: p for p in rest if p.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)}
        self.positional_only = {p.name for p in rest if p.kind is _P.POSITIONAL_ONLY}
        self.var_positional = next((p for p in rest if p.kind is _P.VAR_POSITIONAL), None)
        self.var_keyword = next((p for p in rest if p.kind is _P.VAR_KEYWORD), None)
        self.checks = {p.name: t for p in rest if (t := _types_of(p.annotation)) is not None}

    def usage(self) -> str:
        """``"point value [priority]"``: params in order, optional ones in brackets."""
        out = []
        for p in self.params:
            if p.kind is _P.VAR_POSITIONAL:
                out.append(f"[{p.name}...]")
            elif p.kind is _P.VAR_KEYWORD:
                out.append(f"[{p.name}=...]")
            else:
                out.append(p.name if p.default is _P.empty else f"[{p.name}]")
        return " ".join(out)

    def _fail(self, detail: str) -> RpcError:
        return RpcError(INVALID_PARAMS, f"invalid params for {self.method}: {detail}")

    def _check(self, name: str, value: Any, *, element: bool = False) -> Any:
        allowed = self.checks.get(name)
        if allowed is None:
            return value
        ok, value2 = _conform(value, allowed)
        if not ok:
            what = f"each of {name!r}" if element else f"parameter {name!r}"
            raise self._fail(f"{what} must be {_expected(allowed)}, got {json_type(value)}")
        return value2

    def bind(self, params: list | dict | None) -> tuple[list, dict, dict]:
        """Match ``params`` to the signature.

        Returns the positional args and keyword args to call the handler with
        (after the Call), and a by-name view of everything given (for the
        audit). Raises :class:`RpcError` -32602 naming the offending parameter.
        """
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        named: dict[str, Any] = {}
        given: set[str] = set()
        if isinstance(params, list):
            n = len(self.positional)
            if len(params) > n and self.var_positional is None:
                names = ", ".join(p.name for p in self.positional)
                if n == 0:
                    kw = ", ".join(self.by_name)
                    raise self._fail(f"takes no positional parameters, got {len(params)}"
                                     + (f" (pass {kw} by name)" if kw else ""))
                raise self._fail(f"too many positional parameters: takes at most {n} ({names}), got {len(params)}")
            for p, v in zip(self.positional, params):
                v = self._check(p.name, v)
                args.append(v)
                named[p.name] = v
                given.add(p.name)
            if len(params) > n:
                vp = self.var_positional
                assert vp is not None
                extra = [self._check(vp.name, v, element=True) for v in params[n:]]
                args.extend(extra)
                named[vp.name] = extra
        elif isinstance(params, dict):
            for k, v in params.items():
                p = self.by_name.get(k)
                if p is None:
                    if k in self.positional_only:
                        raise self._fail(f"parameter {k!r} can only be passed by position")
                    if self.var_keyword is None or k == self.call_name or k in {x.name for x in self.params}:
                        accepted = ", ".join(self.by_name)
                        raise self._fail(f"unexpected parameter {k!r}"
                                         + (f" (accepted: {accepted})" if accepted else " (takes no parameters)"))
                    v = self._check(self.var_keyword.name, v, element=True)
                else:
                    v = self._check(k, v)
                    given.add(k)
                kwargs[k] = v
                named[k] = v
        missing = [p.name for p in self.params
                   if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)
                   and p.default is _P.empty and p.name not in given]
        if len(missing) == 1:
            raise self._fail(f"missing a required argument: {missing[0]!r}")
        if missing:
            raise self._fail("missing required arguments: " + ", ".join(repr(m) for m in missing))
        return args, kwargs, named
