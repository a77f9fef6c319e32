"""The method table without a socket: registration, binding, dispatch, audit, gateway.methods."""

from __future__ import annotations

import logging
import typing

import pytest
import trio

from gatewayd.rpc import Call, MethodRegistry, Role, RpcError
from gatewayd.rpc.binding import Binder, _types_of
from gatewayd.rpc.protocol import Request


def req(method, params=None, id=1, has_id=True):
    return Request(method, params, id, has_id)


async def dispatch(reg, method, params=None, role=Role.ADMIN, **kw):
    return await reg.dispatch(req(method, params, **kw), Call.local(role=role, actor="uid:1(tester)"))


# ---------------------------------------------------------------- registration

def test_add_refuses_bad_methods():
    reg = MethodRegistry()

    async def ok(call):
        pass

    with pytest.raises(ValueError, match="reserved by JSON-RPC 2.0"):
        reg.add("rpc.discover", ok)
    with pytest.raises(ValueError, match="invalid RPC method name"):
        reg.add("", ok)
    reg.add("a.b", ok)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a.b", ok)
    with pytest.raises(TypeError, match="must be an async function"):
        reg.add("sync", lambda call: None)

    async def no_call(*, x):
        pass

    with pytest.raises(TypeError, match="must take the Call as its first positional parameter"):
        reg.add("no.call", no_call)
    assert "a.b" in reg and "sync" not in reg


async def test_decorator_doc_and_gateway_methods():
    reg = MethodRegistry()

    @reg.method("points.list")
    async def points_list(call, glob: str | None = None):
        """List points.

        More words that gateway.methods does not show.
        """
        return []

    @reg.method("config.reload", role=Role.ADMIN, mutating=True, doc="Reload the configuration")
    async def reload(call):
        return {}

    assert points_list.__name__ == "points_list"  # the decorator returns the function
    viewer = (await dispatch(reg, "gateway.methods", role=Role.VIEWER))["result"]
    assert viewer == [
        {"name": "gateway.methods", "role": "viewer", "mutating": False, "params": "",
         "doc": "Methods you may call: name, role, mutating, params, doc."},
        {"name": "points.list", "role": "viewer", "mutating": False, "params": "[glob]", "doc": "List points."}]
    admin = (await dispatch(reg, "gateway.methods", role=Role.ADMIN))["result"]
    assert [m["name"] for m in admin] == ["config.reload", "gateway.methods", "points.list"]
    assert admin[0]["doc"] == "Reload the configuration" and admin[0]["mutating"] is True


def test_role():
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert Role.parse("Operator") is Role.OPERATOR and Role.parse(3) is Role.ADMIN and Role.ADMIN.label == "admin"
    with pytest.raises(ValueError, match="unknown role 'root'"):
        Role.parse("root")


# ---------------------------------------------------------------- binding

async def _h(call, a: int, b: str = "x", *rest: float, c: bool | None = None, **more):
    pass


async def _po(call, a, /, b=2):
    pass


async def _kw(call, *, point: str):
    pass


@pytest.mark.parametrize("func,params,expected", [
    (_h, [1], ([1], {}, {"a": 1})),
    (_h, [1.0, 2, 3.5, 4], ([1, "2", 3.5, 4], {}, {"a": 1, "b": "2", "rest": [3.5, 4]})),
    (_h, {"a": 1, "c": None, "zzz": [1]}, ([], {"a": 1, "c": None, "zzz": [1]}, {"a": 1, "c": None, "zzz": [1]})),
    (_po, [1], ([1], {}, {"a": 1})),
    (_kw, {"point": "p"}, ([], {"point": "p"}, {"point": "p"})),
    (_kw, {"point": 12}, ([], {"point": "12"}, {"point": "12"})),  # gatewayctl's --point 12
])
def test_bind(func, params, expected):
    assert Binder("m", func).bind(params) == expected


@pytest.mark.parametrize("func,params,message", [
    (_h, None, "missing a required argument: 'a'"),
    (_h, ["x"], "parameter 'a' must be an integer, got string"),
    (_h, [1.5], "parameter 'a' must be an integer, got number"),
    (_h, [True], "parameter 'a' must be an integer, got boolean"),
    (_h, [1, "b", "r"], "each of 'rest' must be a number, got string"),
    (_h, {"a": 1, "c": "yes"}, "parameter 'c' must be true or false or null, got string"),
    (_h, {"a": 1, "rest": [1]}, "unexpected parameter 'rest' (accepted: a, b, c)"),
    (_po, {"a": 1}, "parameter 'a' can only be passed by position"),
    (_po, [1, 2, 3], "too many positional parameters: takes at most 2 (a, b), got 3"),
    (_kw, ["p"], "takes no positional parameters, got 1 (pass point by name)"),
    (_kw, {}, "missing a required argument: 'point'"),
])
def test_bind_errors_name_the_parameter(func, params, message):
    with pytest.raises(RpcError) as e:
        Binder("m", func).bind(params)
    assert e.value.code == -32602 and e.value.message == "invalid params for m: " + message


@pytest.mark.parametrize("ann,types", [
    (int, (int,)), (float, (float,)), (typing.Optional[str], (str, type(None))), (list[str], (list,)),
    (dict | None, (dict, type(None))), (typing.Any, None), (object, None), (typing.Literal["a"], None),
    ("int", (int,)), ("str | None", (str, type(None))), ("Optional[list[int]]", (list, type(None))),
    ("typing.Union[int, str]", (int, str)), ("dict[str, Any]", (dict,)), ("Any", None), ("Point", None),
    ("int | Point", None), ("List[int]", (list,)),
])
def test_annotations_understood(ann, types):
    assert _types_of(ann) == types


# ---------------------------------------------------------------- dispatch

async def test_dispatch_results_notifications_and_errors():
    reg = MethodRegistry()
    seen = []

    @reg.method("ok")
    async def ok(call, x=None):
        seen.append((call.method, call.request_id, call.role, x))
        return x

    @reg.method("typeerror")
    async def typeerror(call):
        raise TypeError("value must be a number")

    @reg.method("group")
    async def group(call):
        async with trio.open_nursery() as n:
            async def child():
                raise RpcError(-32003, "busy")
            n.start_soon(child)

    @reg.method("self_cancel")
    async def self_cancel(call):
        call.cancel_scope.cancel()
        await trio.sleep_forever()

    @reg.method("notify_local")
    async def notify_local(call):
        await call.notify("x", {})

    assert await dispatch(reg, "ok", [5], id="a") == {"jsonrpc": "2.0", "result": 5, "id": "a"}
    assert seen == [("ok", "a", Role.ADMIN, 5)]
    assert await dispatch(reg, "ok", [5], has_id=False) is None
    assert await dispatch(reg, "nope", has_id=False) is None
    assert await dispatch(reg, "typeerror") == {"jsonrpc": "2.0", "id": 1, "error": {
        "code": -32602, "message": "invalid params for typeerror: value must be a number"}}
    assert await dispatch(reg, "group") == {"jsonrpc": "2.0", "id": 1, "error": {"code": -32003, "message": "busy"}}
    assert await dispatch(reg, "self_cancel") == {"jsonrpc": "2.0", "result": None, "id": 1}
    # a Call made in-process has no client to notify
    r = await dispatch(reg, "notify_local")
    assert r["error"]["code"] == -32603 and r["error"]["message"].startswith("internal error in notify_local (reference ")


async def test_audit_of_mutating_calls():
    log = []

    async def audit(actor, method, params, ok, error):
        log.append((actor, method, params, ok, error))

    reg = MethodRegistry(audit=audit)

    @reg.method("points.write", role=Role.OPERATOR, mutating=True)
    async def write(call, point: str, value, priority: int = 16):
        if point == "bad":
            raise RpcError(-32002, "unknown point 'bad'")
        if point == "crash":
            raise KeyError("x")
        return value

    @reg.method("points.read")
    async def read(call, point: str):
        return 1

    await dispatch(reg, "points.write", ["p", 3])
    await dispatch(reg, "points.write", {"point": "p", "value": 4, "priority": 8}, has_id=False)
    await dispatch(reg, "points.write", ["bad", 1])
    await dispatch(reg, "points.write", ["crash", 1])
    await dispatch(reg, "points.write", ["p"])
    await dispatch(reg, "points.write", ["p", 1], role=Role.VIEWER)
    await dispatch(reg, "points.read", ["p"])
    crash = log[3]
    assert crash[:4] == ("uid:1(tester)", "points.write", {"point": "crash", "value": 1}, False)
    assert crash[4].startswith("internal error KeyError (reference ")  # the text is in the log only
    assert log[:3] + log[4:] == [
        ("uid:1(tester)", "points.write", {"point": "p", "value": 3}, True, None),
        ("uid:1(tester)", "points.write", {"point": "p", "value": 4, "priority": 8}, True, None),
        ("uid:1(tester)", "points.write", {"point": "bad", "value": 1}, False, "unknown point 'bad'"),
        ("uid:1(tester)", "points.write", {"params": ["p"]}, False,
         "invalid params for points.write: missing a required argument: 'value'"),
        ("uid:1(tester)", "points.write", {"params": ["p", 1]}, False,
         "permission denied: points.write needs role operator, uid:1(tester) has viewer"),
    ]


async def test_cancelled_mutating_call_is_audited():
    log = []
    started = trio.Event()

    async def audit(actor, method, params, ok, error):
        await trio.sleep(0)  # an audit that awaits still runs, shielded
        log.append((method, ok, error))

    reg = MethodRegistry(audit=audit)

    @reg.method("w", mutating=True)
    async def w(call):
        started.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as n:
        n.start_soon(dispatch, reg, "w")
        with trio.fail_after(5):
            await started.wait()
        n.cancel_scope.cancel()
    assert log == [("w", False, "cancelled")]


async def test_failing_audit_is_logged_not_answered(caplog):
    async def audit(*args):
        raise OSError("disk full")

    reg = MethodRegistry(audit=audit)

    @reg.method("w", mutating=True)
    async def w(call):
        return "done"

    with caplog.at_level(logging.ERROR, logger="gatewayd.rpc"):
        assert (await dispatch(reg, "w"))["result"] == "done"
    assert "audit of w by uid:1(tester) failed" in caplog.text
