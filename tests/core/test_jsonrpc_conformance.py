"""JSON-RPC 2.0 conformance over a real Unix socket (the spec's examples and then some)."""

import json
import os
import socket

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.rpc import MethodRegistry, Role, RoleMap, RpcError, SocketInUse, serve_unix
from gatewayd.rpc.client import DaemonNotRunning, RpcClient, connect_error
from gatewayd.rpc.protocol import parse_message

SEEN = {}


def make_registry():
    reg = MethodRegistry()

    async def subtract(call, minuend, subtrahend):
        return minuend - subtrahend

    async def update(call, *args):
        SEEN["update"] = args

    async def notify_hello(call, *args):
        SEEN["hello"] = args

    async def get_data(call):
        return ["hello", 5]

    async def fail(call):
        raise RpcError(-32002, "no such thing", {"what": "x"})

    async def crash(call):
        raise ValueError("boom")

    async def admin_only(call):
        return "secret"

    async def slow(call, seconds: float):
        await trio.sleep(seconds)
        return "slept"

    async def watch(call):
        n = 0
        try:
            while not call.closed.is_set():
                await call.notify("tick", {"n": n})
                n += 1
                await trio.sleep(0.01)
        finally:
            SEEN["watch_closed"] = call.closed.is_set()

    async def nan(call):
        return {"x": float("nan")}

    for name, f in [("subtract", subtract), ("update", update), ("notify_hello", notify_hello),
                    ("get_data", get_data), ("fail", fail), ("crash", crash), ("slow", slow), ("watch", watch),
                    ("nan", nan)]:
        reg.add(name, f)
    reg.add("admin_only", admin_only, role=Role.ADMIN)
    return reg


class Viewer(RoleMap):
    """Our own uid is always admin; this map makes the test's connection a viewer."""

    def role_for(self, uid, gid):
        return Role.VIEWER


@pytest.fixture
async def server(tmp_path, nursery):
    path = str(tmp_path / "ctl.sock")
    await nursery.start(lambda task_status: serve_unix(path, make_registry(), Viewer(), max_request_bytes=4096,
                                                       task_status=task_status))
    yield path


class Raw:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(path)
        self.buf = b""

    def send(self, text):
        self.s.sendall(text.encode() + b"\n")

    def recv(self):
        while b"\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                return None
            self.buf += d
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def close(self):
        self.s.close()


async def roundtrip(path, text, expect_reply=True):
    def go():
        r = Raw(path)
        try:
            r.send(text)
            if not expect_reply:
                r.send('{"jsonrpc":"2.0","method":"get_data","id":"sentinel"}')
            return r.recv()
        finally:
            r.close()
    return await trio.to_thread.run_sync(go)


SPEC = [
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
     {"jsonrpc": "2.0", "result": 19, "id": 1}),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
     {"jsonrpc": "2.0", "result": 19, "id": 3}),
    ('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
     {"jsonrpc": "2.0", "error": {"code": -32601, "message": "method not found: foobar"}, "id": "1"}),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [1], "id": null}',
     {"jsonrpc": "2.0", "error": {"code": -32602,
                                  "message": "invalid params for subtract: missing a required argument: 'subtrahend'"},
      "id": None}),
    ('{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
     {"jsonrpc": "2.0", "error": {"code": -32600, "message": 'invalid request: "method" must be a string'},
      "id": None}),
    ('{"jsonrpc": "1.0", "method": "get_data", "id": 7}',
     {"jsonrpc": "2.0", "error": {"code": -32600, "message": 'invalid request: "jsonrpc" must be exactly "2.0"'},
      "id": 7}),
    ('[]', {"jsonrpc": "2.0", "error": {"code": -32600, "message": "invalid request: empty batch"}, "id": None}),
    ('{"jsonrpc": "2.0", "method": "fail", "id": 2.5}',
     {"jsonrpc": "2.0", "error": {"code": -32002, "message": "no such thing", "data": {"what": "x"}}, "id": 2.5}),
    ('{"jsonrpc": "2.0", "method": "admin_only", "id": 4}',
     {"jsonrpc": "2.0", "error": {"code": -32001, "message": "permission denied: admin_only needs role admin, "
                                  f"uid:{os.getuid()}({__import__('pwd').getpwuid(os.getuid()).pw_name}) has viewer"},
      "id": 4}),
    ('{"jsonrpc": "2.0", "method": "rpc.discover", "id": 5}',
     {"jsonrpc": "2.0", "error": {"code": -32601, "message": "method not found: rpc.discover"}, "id": 5}),
    ('{"jsonrpc": "2.0", "method": "nan", "id": 6}', {"jsonrpc": "2.0", "result": {"x": None}, "id": 6}),
]


@pytest.mark.parametrize("request_text,expected", SPEC)
async def test_spec_examples(server, request_text, expected):
    assert await roundtrip(server, request_text) == expected


async def test_internal_error_carries_no_exception_text(server):
    resp = await roundtrip(server, '{"jsonrpc": "2.0", "method": "crash", "id": 9}')
    assert resp["id"] == 9 and resp["error"]["code"] == -32603
    assert resp["error"]["message"].startswith("internal error in crash (reference ") and "boom" not in str(resp)


async def test_parse_error(server):
    resp = await roundtrip(server, '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert resp["error"]["code"] == -32700 and resp["id"] is None


async def test_batch_invalid_json(server):
    resp = await roundtrip(server, '[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
                                   '{"jsonrpc": "2.0", "method"]')
    assert resp["error"]["code"] == -32700


@pytest.mark.parametrize("batch,n", [("[1]", 1), ("[1,2,3]", 3)])
async def test_invalid_batches(server, batch, n):
    resp = await roundtrip(server, batch)
    assert resp == [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "invalid request: expected a JSON object"},
                     "id": None}] * n


async def test_mixed_batch(server):
    resp = await roundtrip(server, json.dumps([
        {"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"},
    ]))
    assert [r.get("result", r.get("error", {}).get("code")) for r in resp] == [19, 19, -32600, -32601, ["hello", 5]]
    assert [r["id"] for r in resp] == ["1", "2", None, "5", "9"]
    assert SEEN["hello"] == (7,)


async def test_notifications_get_no_reply(server):
    SEEN.pop("update", None)
    resp = await roundtrip(server, '{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', expect_reply=False)
    assert resp["id"] == "sentinel"  # the first reply is the next request's
    assert SEEN["update"] == (1, 2, 3, 4, 5)
    resp = await roundtrip(server, '[{"jsonrpc": "2.0", "method": "update", "params": [1]},'
                                   '{"jsonrpc": "2.0", "method": "foobar"}]', expect_reply=False)
    assert resp["id"] == "sentinel"  # an all-notification batch answers nothing, errors included


async def test_request_size_cap_closes_the_connection(server):
    def go():
        r = Raw(server)
        r.send('{"jsonrpc":"2.0","method":"get_data","id":1,"pad":"' + "x" * 10000 + '"}')
        first, second = r.recv(), r.recv()
        r.close()
        return first, second
    first, second = await trio.to_thread.run_sync(go)
    assert first["error"] == {"code": -32600,
                              "message": "request larger than the limit of 4096 bytes; closing the connection"}
    assert second is None


async def test_watch_streams_until_the_client_leaves(server):
    SEEN.pop("watch_closed", None)

    def go():
        c = RpcClient(server)
        it = c.stream("watch")
        got = [next(it)["params"]["n"] for _ in range(3)]
        c.close()
        return got
    assert await trio.to_thread.run_sync(go) == [0, 1, 2]
    with trio.fail_after(5):
        while "watch_closed" not in SEEN:
            await trio.sleep(0.01)  # the server task notices EOF on its own schedule
    assert SEEN["watch_closed"] is True


async def test_a_slow_call_does_not_block_other_connections(server):
    async with trio.open_nursery() as n:
        n.start_soon(roundtrip, server, '{"jsonrpc":"2.0","method":"slow","params":[1.5],"id":1}')
        with trio.fail_after(2):
            assert (await roundtrip(server, '{"jsonrpc":"2.0","method":"get_data","id":2}'))["result"] == ["hello", 5]
        n.cancel_scope.cancel()


async def test_stale_socket_replaced_live_one_refused(tmp_path, nursery):
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # a file with nobody listening
    await nursery.start(lambda task_status: serve_unix(path, make_registry(), RoleMap(), task_status=task_status))
    assert os.stat(path).st_mode & 0o777 == 0o660
    with pytest.raises(SocketInUse, match="another gatewayd is already listening"):
        await serve_unix(path, make_registry(), RoleMap())


def test_role_map_resolution():
    import grp
    import pwd
    rm = RoleMap.from_config(admin=["uid:4242"], operator=[f"gid:{os.getgid()}"], viewer=["*"])
    assert rm.role_for(0, 0) == Role.ADMIN
    assert rm.role_for(4242, 99999) == Role.ADMIN
    assert rm.role_for(54321, 99999) == Role.VIEWER
    assert RoleMap.from_config(operator=["gid:99999"]).role_for(54321, 99999) == Role.OPERATOR
    assert RoleMap.from_config().role_for(54321, 1) is None
    with pytest.raises(ValueError, match="no such group 'surely-not-a-group'"):
        RoleMap.from_config(viewer=["group:surely-not-a-group"])
    RoleMap.from_config(viewer=[f"user:{pwd.getpwuid(0).pw_name}", f"group:{grp.getgrgid(0).gr_name}"])


def test_client_messages(tmp_path):
    import errno
    with pytest.raises(DaemonNotRunning, match="gatewayd is not running: no control socket at"):
        RpcClient(str(tmp_path / "missing.sock"))
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "stale.sock"))
    s.close()
    with pytest.raises(DaemonNotRunning, match="exists but nobody is listening"):
        RpcClient(str(tmp_path / "stale.sock"))
    # EACCES cannot be provoked as root: check the errno mapping directly
    e = connect_error(str(tmp_path / "stale.sock"), OSError(errno.EACCES, "Permission denied"))
    assert "permission denied on" in str(e) and "usermod -aG" in str(e)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12,
).map(lambda o: json.dumps(o).encode())))
def test_parser_never_raises(data):
    items, is_batch = parse_message(data)
    assert items
    for it in items:
        if isinstance(it, dict):
            assert it["jsonrpc"] == "2.0" and it["error"]["code"] in (-32700, -32600) and "id" in it
