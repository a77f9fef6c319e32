"""JSON-RPC 2.0 conformance over the real Unix socket: the spec's examples, ids, errors, batches, limits."""

from __future__ import annotations

import json
import re
import logging
import os
import pwd

import pytest
import trio

from gatewayd.rpc import Role
from rpc_support import WAIT, expect_silence

ME = f"uid:{os.getuid()}({pwd.getpwuid(os.getuid()).pw_name})"


def ok(result, id):
    return {"jsonrpc": "2.0", "result": result, "id": id}


def err(code, message, id=None, data=None):
    e = {"code": code, "message": message}
    if data is not None:
        e["data"] = data
    return {"jsonrpc": "2.0", "error": e, "id": id}


# ---------------------------------------------------------------- the spec's examples section

SPEC_CALLS = [
    # rpc call with positional parameters
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}', ok(19, 1)),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}', ok(-19, 2)),
    # rpc call with named parameters
    ('{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}', ok(19, 3)),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}', ok(19, 4)),
    # rpc call of non-existent method
    ('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}', err(-32601, "method not found: foobar", "1")),
    # rpc call with invalid Request object
    ('{"jsonrpc": "2.0", "method": 1, "params": "bar"}', err(-32600, 'invalid request: "method" must be a string')),
    # rpc call Batch, invalid JSON... is below; empty Array
    ("[]", err(-32600, "invalid request: empty batch")),
    # rpc call with an invalid Batch (but not empty)
    ("[1]", [err(-32600, "invalid request: expected a JSON object")]),
    # rpc call with invalid Batch
    ("[1,2,3]", [err(-32600, "invalid request: expected a JSON object")] * 3),
    # rpc call Batch
    ('[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
     ' {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},'
     ' {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},'
     ' {"foo": "boo"},'
     ' {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},'
     ' {"jsonrpc": "2.0", "method": "get_data", "id": "9"}]',
     [ok(7, "1"), ok(19, "2"), err(-32600, 'invalid request: "jsonrpc" must be exactly "2.0"'),
      err(-32601, "method not found: foo.get", "5"), ok(["hello", 5], "9")]),
]


async def test_spec_examples_with_answers(server, connect):
    raw = await connect(server)
    for text, expected in SPEC_CALLS:  # one connection: errors never break it
        assert await raw.request(text) == expected, text
    await raw.close()


@pytest.mark.parametrize("text", [
    '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',  # rpc call with invalid JSON
    '[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},{"jsonrpc": "2.0", "method"]',  # batch
])
async def test_spec_invalid_json_is_one_parse_error(server, text, connect):
    raw = await connect(server)
    resp = await raw.request(text)
    assert resp.keys() == {"jsonrpc", "error", "id"} and resp["jsonrpc"] == "2.0" and resp["id"] is None
    assert resp["error"].keys() == {"code", "message"} and resp["error"]["code"] == -32700
    assert resp["error"]["message"].startswith("parse error: ")
    await expect_silence(raw)  # and the connection goes on
    await raw.close()


async def test_spec_notifications_get_no_answer(server, probe, connect):
    raw = await connect(server)
    await raw.send('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}')
    await raw.send('{"jsonrpc": "2.0", "method": "foobar"}')  # not even an error
    await expect_silence(raw)
    assert probe.seen["update"] == (1, 2, 3, 4, 5)
    # rpc call Batch (all notifications): nothing at all, not even []
    await raw.send('[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},'
                   '{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]')
    await expect_silence(raw)
    assert probe.seen["notify_sum"] == (1, 2, 4) and probe.seen["notify_hello"] == (7,)
    await raw.close()


async def test_failing_notifications_get_no_answer_either(server, probe, connect):
    raw = await connect(server)
    for text in ('{"jsonrpc":"2.0","method":"crash"}', '{"jsonrpc":"2.0","method":"fail"}',
                 '{"jsonrpc":"2.0","method":"subtract","params":[1]}', '{"jsonrpc":"2.0","method":"admin_only"}',
                 '{"jsonrpc":"2.0","method":"rpc.anything"}'):
        await raw.send(text)
    await expect_silence(raw)
    await raw.close()


# ---------------------------------------------------------------- ids

@pytest.mark.parametrize("id_text,id_value", [
    ('"abc"', "abc"), ('""', ""), ('"ünï"', "ünï"), ("0", 0), ("-7", -7), ("1.5", 1.5),
    (str(2 ** 70), 2 ** 70), ("null", None),
])
async def test_ids_are_echoed_exactly(server, id_text, id_value, connect):
    raw = await connect(server)
    await raw.send('{"jsonrpc":"2.0","method":"get_data","id":' + id_text + "}")
    line = await raw.recv_raw()
    resp = json.loads(line)
    assert resp == ok(["hello", 5], id_value)
    assert type(resp["id"]) is type(id_value)
    # an id of null is a request (answered), unlike a missing id
    await raw.send('{"jsonrpc":"2.0","method":"fail","id":' + id_text + "}")
    assert await raw.recv() == err(-32002, "no such thing", id_value, {"what": "x"})
    await raw.close()


@pytest.mark.parametrize("bad_id", ["true", "false", '{"a":1}', "[1]"])
async def test_ids_of_other_types_are_invalid_requests(server, bad_id, connect):
    raw = await connect(server)
    assert await raw.request('{"jsonrpc":"2.0","method":"get_data","id":' + bad_id + "}") == \
        err(-32600, "invalid request: id must be a string, number or null")
    await raw.close()


# ---------------------------------------------------------------- invalid request objects

@pytest.mark.parametrize("text,expected", [
    ('{"jsonrpc":"1.0","method":"get_data","id":7}',
     err(-32600, 'invalid request: "jsonrpc" must be exactly "2.0"', 7)),
    ('{"method":"get_data","id":7}', err(-32600, 'invalid request: "jsonrpc" must be exactly "2.0"', 7)),
    ('{"jsonrpc":2.0,"method":"get_data","id":7}', err(-32600, 'invalid request: "jsonrpc" must be exactly "2.0"', 7)),
    ('{"jsonrpc":"2.0","method":1,"id":"x"}', err(-32600, 'invalid request: "method" must be a string', "x")),
    ('{"jsonrpc":"2.0","id":"x"}', err(-32600, 'invalid request: "method" must be a string', "x")),
    ('{"jsonrpc":"2.0","method":"get_data","params":"bar","id":8}',
     err(-32600, 'invalid request: "params" must be an array or an object', 8)),
    ('{"jsonrpc":"2.0","method":"get_data","params":null,"id":8}',
     err(-32600, 'invalid request: "params" must be an array or an object', 8)),
    ('{"jsonrpc":"2.0","method":"get_data","id":9,"extra":1}',
     err(-32600, "invalid request: unknown member(s) ['extra']", 9)),
    ('"just a string"', err(-32600, "invalid request: expected a JSON object")),
    ("42", err(-32600, "invalid request: expected a JSON object")),
    ("[[]]", [err(-32600, "invalid request: expected a JSON object")]),
])
async def test_invalid_request_objects(server, text, expected, connect):
    raw = await connect(server)
    assert await raw.request(text) == expected
    await raw.close()


@pytest.mark.parametrize("data", [b'{"jsonrpc":"2.0","method":"get_data","id":NaN}', b"\xff\xfe{}",
                                  b'{"a":Infinity}', b"[" * 100_000 + b"]" * 100_000])
async def test_not_json_is_a_parse_error(nursery, sock_path, start_server, data, connect):
    await start_server(sock_path)  # the default 1 MiB cap: the deep nesting fits
    raw = await connect(sock_path)
    resp = await raw.request(data)
    assert resp["error"]["code"] == -32700 and resp["id"] is None
    await expect_silence(raw)
    await raw.close()


# ---------------------------------------------------------------- params and errors

@pytest.mark.parametrize("params,message", [
    ("[1]", "missing a required argument: 'subtrahend'"),
    ("{}", "missing required arguments: 'minuend', 'subtrahend'"),
    ("[1,2,3]", "too many positional parameters: takes at most 2 (minuend, subtrahend), got 3"),
    ('{"minuend":1,"subtrahend":2,"x":3}', "unexpected parameter 'x' (accepted: minuend, subtrahend)"),
    ('{"minuend":"1","subtrahend":2}', "parameter 'minuend' must be a number, got string"),
    ("[true, 2]", "parameter 'minuend' must be a number, got boolean"),
    ('{"call":1,"minuend":1,"subtrahend":2}', "unexpected parameter 'call' (accepted: minuend, subtrahend)"),
])
async def test_invalid_params_name_the_parameter(server, params, message, connect):
    raw = await connect(server)
    assert await raw.request('{"jsonrpc":"2.0","method":"subtract","params":' + params + ',"id":1}') == \
        err(-32602, "invalid params for subtract: " + message, 1)
    await raw.close()


async def test_method_without_params_rejects_some(server, connect):
    raw = await connect(server)
    assert await raw.request('{"jsonrpc":"2.0","method":"get_data","params":[1],"id":1}') == \
        err(-32602, "invalid params for get_data: takes no positional parameters, got 1", 1)
    assert await raw.request('{"jsonrpc":"2.0","method":"get_data","params":{"a":1},"id":2}') == \
        err(-32602, "invalid params for get_data: unexpected parameter 'a' (takes no parameters)", 2)
    assert await raw.request('{"jsonrpc":"2.0","method":"get_data","params":[],"id":3}') == ok(["hello", 5], 3)
    assert await raw.request('{"jsonrpc":"2.0","method":"get_data","params":{},"id":4}') == ok(["hello", 5], 4)
    await raw.close()


async def test_internal_error_is_short_and_logged(server, caplog, connect):
    raw = await connect(server)
    with caplog.at_level(logging.ERROR, logger="gatewayd.rpc"):
        await raw.send('{"jsonrpc":"2.0","method":"crash","id":1}')
        line = await raw.recv_raw()
    resp = json.loads(line)
    assert resp["id"] == 1 and resp["error"]["code"] == -32603
    # no exception text to the client (it may hold paths or values): only a reference into the log
    m = re.fullmatch(r"internal error in crash \(reference ([0-9a-f]{8}): the daemon's log has the details\)",
                     resp["error"]["message"])
    assert m, resp
    assert b"Traceback" not in line and b"boom" not in line and b"/secret/path" not in line
    logged = [r for r in caplog.records if r.exc_info and "crash" in r.getMessage()]
    assert logged and m.group(1) in logged[0].getMessage()  # the traceback is in the log, under the reference
    assert "boom: /secret/path" in str(logged[0].exc_info[1])
    await raw.close()


async def test_reserved_rpc_names_are_not_methods(server, connect):
    raw = await connect(server)
    assert await raw.request('{"jsonrpc":"2.0","method":"rpc.discover","id":1}') == \
        err(-32601, "method not found: rpc.discover", 1)
    await raw.close()


async def test_values_json_cannot_carry(server, connect):
    raw = await connect(server)
    assert await raw.request('{"jsonrpc":"2.0","method":"values","id":1}') == ok(
        {"nan": None, "inf": None, "when": "2024-05-01T12:00:00Z", "day": "2024-05-01", "raw": "01ff",
         "tags": ["a", "b"]}, 1)
    assert await raw.request('{"jsonrpc":"2.0","method":"circular","id":2}') == err(
        -32603, "internal error: response not encodable: value nested deeper than 200 levels (or circular)", 2)
    # a lone surrogate (valid JSON escape, not valid UTF-8) goes back as the same escape
    await raw.send('{"jsonrpc":"2.0","method":"echo","params":["\\ud800x"],"id":3}')
    line = await raw.recv_raw()
    assert b"\\ud800x" in line and json.loads(line) == ok("\ud800x", 3)
    await raw.close()


# ---------------------------------------------------------------- framing and the size cap

async def test_framing_blank_lines_crlf_and_split_writes(server, connect):
    raw = await connect(server)
    await raw.send(b'\n\r\n  \n{"jsonrpc":"2.0","method":"get_data","id":1}\r', newline=True)
    assert await raw.recv() == ok(["hello", 5], 1)
    msg = b'{"jsonrpc":"2.0","method":"subtract","params":[5,3],"id":2}\n'
    for i in range(len(msg)):  # one byte per write
        await raw.send(msg[i:i + 1], newline=False)
    assert await raw.recv() == ok(2, 2)
    # several requests in one write are answered in order
    await raw.send(b'{"jsonrpc":"2.0","method":"echo","params":[1],"id":1}\n'
                   b'{"jsonrpc":"2.0","method":"echo","params":[2],"id":2}\n'
                   b'{"jsonrpc":"2.0","method":"echo","params":[3],"id":3}', newline=True)
    assert [await raw.recv() for _ in range(3)] == [ok(1, 1), ok(2, 2), ok(3, 3)]
    await raw.close()


async def test_request_at_the_cap_passes(server, connect):
    raw = await connect(server)
    head, tail = '{"jsonrpc":"2.0","method":"echo","params":["', '"],"id":1}'
    pad = 4096 - len(head) - len(tail)
    assert await raw.request(head + "x" * pad + tail) == ok("x" * pad, 1)
    await raw.close()


@pytest.mark.parametrize("terminated", [True, False])
async def test_request_over_the_cap_is_answered_then_closed(server, terminated, connect):
    raw = await connect(server)
    head, tail = '{"jsonrpc":"2.0","method":"echo","params":["', '"],"id":1}'
    big = head + "x" * (4097 - len(head) - len(tail)) + tail
    # a request before it in the same write is still answered first
    await raw.send('{"jsonrpc":"2.0","method":"get_data","id":0}\n' + big, newline=terminated)
    assert await raw.recv() == ok(["hello", 5], 0)
    assert await raw.recv() == err(-32600, "request larger than the limit of 4096 bytes; closing the connection")
    assert await raw.recv() is None  # closed: the stream cannot be resynchronised
    await raw.close()


async def test_unterminated_last_request_is_answered_at_eof(server, connect):
    raw = await connect(server)
    await raw.send('{"jsonrpc":"2.0","method":"subtract","params":[9,4],"id":1}', newline=False)
    await raw.half_close()
    assert await raw.recv() == ok(5, 1)
    assert await raw.recv() is None
    await raw.close()


# ---------------------------------------------------------------- roles

async def test_role_too_low_is_refused_with_the_role_needed(server, probe, connect):
    raw = await connect(server)  # probe.role: viewer
    assert await raw.request('{"jsonrpc":"2.0","method":"admin_only","id":4}') == \
        err(-32001, f"permission denied: admin_only needs role admin, {ME} has viewer", 4)
    assert await raw.request('{"jsonrpc":"2.0","method":"points.write","params":["p", 1],"id":5}') == \
        err(-32001, f"permission denied: points.write needs role operator, {ME} has viewer", 5)
    # the refused mutating call is in the audit
    assert probe.audit == [(ME, "points.write", {"params": ["p", 1]}, False,
                            f"permission denied: points.write needs role operator, {ME} has viewer")]
    names = {m["name"] for m in (await raw.request('{"jsonrpc":"2.0","method":"gateway.methods","id":6}'))["result"]}
    assert "get_data" in names and "gateway.methods" in names
    assert "admin_only" not in names and "points.write" not in names
    await raw.close()


async def test_role_is_fixed_per_connection(server, probe, connect):
    probe.role = Role.OPERATOR
    raw = await connect(server)
    assert await raw.request('{"jsonrpc":"2.0","method":"points.write","params":["p", 1],"id":1}') == \
        ok({"point": "p", "value": 1, "priority": 16}, 1)
    assert probe.audit == [(ME, "points.write", {"point": "p", "value": 1}, True, None)]
    probe.role = Role.ADMIN
    assert (await raw.request('{"jsonrpc":"2.0","method":"admin_only","id":2}'))["error"]["code"] == -32001
    admin = await connect(server)
    assert await admin.request('{"jsonrpc":"2.0","method":"admin_only","id":2}') == ok("secret", 2)
    methods = (await admin.request('{"jsonrpc":"2.0","method":"gateway.methods","id":3}'))["result"]
    assert {"name": "points.write", "role": "operator", "mutating": True, "params": "point value [priority]",
            "doc": "Pretend to command a point."} in methods
    await raw.close()
    await admin.close()


async def test_no_role_no_access(server, probe, connect):
    probe.role = None
    raw = await connect(server)
    # refused as soon as it connects, whatever it sends
    assert await raw.recv() == err(-32001, f"permission denied: {ME} has no role on this gateway "
                                           "(see admin/operator/viewer in [control])")
    assert await raw.recv() is None
    await raw.close()


# ---------------------------------------------------------------- concurrency and the client leaving

async def test_a_slow_call_does_not_block_other_connections(server, probe, connect):
    slow = await connect(server)
    await slow.send('{"jsonrpc":"2.0","method":"slow","id":1}')
    await slow.send('{"jsonrpc":"2.0","method":"get_data","id":2}')  # waits for the slow one: in order
    with trio.fail_after(WAIT):
        await probe.slow_started.wait()
    other = await connect(server)
    assert await other.request('{"jsonrpc":"2.0","method":"get_data","id":3}') == ok(["hello", 5], 3)
    probe.release.set()
    assert await slow.recv() == ok("slept", 1)
    assert await slow.recv() == ok(["hello", 5], 2)
    await slow.close()
    await other.close()


async def test_watch_streams_until_the_client_disconnects(server, probe, connect):
    raw = await connect(server)
    await raw.send('{"jsonrpc":"2.0","method":"watch","id":1}')
    assert [await raw.recv() for _ in range(3)] == [
        {"jsonrpc": "2.0", "method": "tick", "params": {"n": n}} for n in range(3)]
    await raw.close()
    with trio.fail_after(WAIT):
        await probe.watch_ended.wait()
    assert probe.watch_saw_closed is True


async def test_watch_ends_when_the_client_stops_sending(server, probe, connect):
    raw = await connect(server)
    await raw.send('{"jsonrpc":"2.0","method":"watch","id":1}')
    for _ in range(3):
        assert (await raw.recv())["method"] == "tick"
    await raw.half_close()  # still reading: it gets the call's answer
    assert await raw.recv() == ok({"ticks": 3}, 1)
    assert probe.watch_saw_closed is True
    assert await raw.recv() is None
    await raw.close()


async def test_watch_with_a_limit_answers_after_its_notifications(server, probe, connect):
    raw = await connect(server)
    await raw.send('{"jsonrpc":"2.0","method":"watch","params":{"limit":2},"id":"w"}')
    assert [await raw.recv() for _ in range(3)] == [
        {"jsonrpc": "2.0", "method": "tick", "params": {"n": 0}},
        {"jsonrpc": "2.0", "method": "tick", "params": {"n": 1}}, ok({"ticks": 2}, "w")]
    await raw.close()


async def test_hangup_abandons_a_read_in_progress(server, probe, connect):
    raw = await connect(server)
    await raw.send('{"jsonrpc":"2.0","method":"slow","id":1}')
    with trio.fail_after(WAIT):
        await probe.slow_started.wait()
    await raw.close()
    with trio.fail_after(WAIT):
        await probe.slow_cancelled.wait()  # nobody could read its answer


async def test_hangup_lets_a_write_finish_and_audits_it(server, probe, connect):
    raw = await connect(server)
    await raw.send('{"jsonrpc":"2.0","method":"slow_write","params":{"point":"p"},"id":1}')
    await raw.close()
    with trio.fail_after(WAIT):
        await probe.write_saw_closed.wait()
        probe.release.set()
        await probe.write_done.wait()
        await probe.audited.wait()
    assert probe.audit == [(ME, "slow_write", {"point": "p"}, True, None)]


async def test_half_closed_client_is_answered(server, connect):
    raw = await connect(server)
    await raw.send('{"jsonrpc":"2.0","method":"get_data","id":1}\n{"jsonrpc":"2.0","method":"echo","id":2}')
    await raw.half_close()
    assert await raw.recv() == ok(["hello", 5], 1)
    assert await raw.recv() == ok(None, 2)
    assert await raw.recv() is None
    await raw.close()


async def test_many_clients_at_once(server, connect):
    results = []

    async def one(i):
        raw = await connect(server)
        results.append(await raw.request(json.dumps({"jsonrpc": "2.0", "method": "subtract", "params": [i, 1],
                                                      "id": i})))
        await raw.close()

    async with trio.open_nursery() as n:
        for i in range(50):
            n.start_soon(one, i)
    assert sorted(results, key=lambda r: r["id"]) == [ok(i - 1, i) for i in range(50)]
