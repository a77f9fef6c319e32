"""The sans-IO core: parsing, framing, encoding; fuzzed with hypothesis."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.rpc.protocol import (EOF, NEED_DATA, LineReader, Request, RequestTooLarge, RpcError, assemble, encode,
                                   encode_response, error_response, parse_message, result_response)

ERROR_CODES = {-32700, -32600}


def assert_valid_error(resp: dict) -> None:
    assert set(resp) == {"jsonrpc", "error", "id"} and resp["jsonrpc"] == "2.0"
    assert set(resp["error"]) == {"code", "message"} and resp["error"]["code"] in ERROR_CODES
    assert isinstance(resp["error"]["message"], str) and resp["error"]["message"]
    assert resp["id"] is None or isinstance(resp["id"], (str, int, float)) and not isinstance(resp["id"], bool)
    json.loads(encode(resp))  # and it can be sent


# ---------------------------------------------------------------- parse_message

def test_parse_single_batch_and_notification():
    (req,), batch = parse_message(b'{"jsonrpc":"2.0","method":"a.b","params":{"x":1},"id":null}')
    assert not batch and isinstance(req, Request)
    assert (req.method, req.params, req.id, req.has_id, req.is_notification) == ("a.b", {"x": 1}, None, True, False)
    (note,), _ = parse_message('{"jsonrpc":"2.0","method":"n"}')
    assert note.is_notification and note.params is None
    items, batch = parse_message('[{"jsonrpc":"2.0","method":"m","params":[1],"id":1}, 5]')
    assert batch and isinstance(items[0], Request) and items[1]["error"]["code"] == -32600


@pytest.mark.parametrize("data", [b"", b"   ", b"{", b"NaN", b"[1, -Infinity]", b"\xc3\x28", b"\xef\xbb\xbf{}",
                                  b"[" * 50_000, b'{"a": 1} x'])
def test_not_json(data):
    (resp,), batch = parse_message(data)
    assert not batch and resp["error"]["code"] == -32700 and resp["id"] is None
    assert_valid_error(resp)


def test_assemble():
    a, b = result_response(1, 1), error_response(RpcError(-32601, "x"), 2)
    assert assemble([a], False) == a
    assert assemble([None], False) is None
    assert assemble([a, None, b], True) == [a, b]
    assert assemble([None, None], True) is None


def test_rpc_error():
    e = RpcError(RpcError.NOT_FOUND, "unknown point 'x'", {"point": "x"})
    assert (e.code, e.message, e.data, str(e)) == (-32002, "unknown point 'x'", {"point": "x"}, "unknown point 'x'")
    assert e.to_dict() == {"code": -32002, "message": "unknown point 'x'", "data": {"point": "x"}}
    assert RpcError(-32003, "busy").to_dict() == {"code": -32003, "message": "busy"}
    assert (RpcError.PARSE_ERROR, RpcError.INVALID_REQUEST, RpcError.METHOD_NOT_FOUND, RpcError.INVALID_PARAMS,
            RpcError.INTERNAL_ERROR, RpcError.PERMISSION_DENIED, RpcError.CONFLICT, RpcError.UNAVAILABLE) == \
        (-32700, -32600, -32601, -32602, -32603, -32001, -32003, -32004)


# ---------------------------------------------------------------- LineReader

def drain(reader: LineReader) -> list:
    out = []
    while True:
        item = reader.next_line()
        if item is NEED_DATA or item is EOF:
            return out + [item]
        out.append(item)


def test_line_reader_splits_and_keeps_the_tail():
    r = LineReader(100)
    assert drain(r) == [NEED_DATA]
    r.receive_data(b'a\nb\r\n\n  \nc')
    assert drain(r) == [b"a", b"b\r", NEED_DATA]
    r.receive_data(b'c\nd')
    assert drain(r) == [b"cc", NEED_DATA]
    r.receive_data(b"")
    assert drain(r) == [b"d", EOF]  # the unterminated last line, then the end
    with pytest.raises(RuntimeError):
        r.receive_data(b"more")


def test_line_reader_cap():
    r = LineReader(5)
    r.receive_data(b"12345\n123456")  # 5 is fine; 6 without a newline yet is already too long
    assert r.next_line() == b"12345"
    with pytest.raises(RequestTooLarge) as e:
        r.next_line()
    assert e.value.code == -32600 and e.value.message == \
        "request larger than the limit of 5 bytes; closing the connection"
    with pytest.raises(RequestTooLarge):  # it stays broken
        r.next_line()
    r = LineReader(5)
    r.receive_data(b"123456\n")
    with pytest.raises(RequestTooLarge):
        r.next_line()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12),
       st.lists(st.integers(1, 30), min_size=1, max_size=20), st.integers(1, 40))
def test_line_reader_matches_a_plain_split(lines, cuts, cap):
    data = b"".join(line + b"\n" for line in lines)
    r = LineReader(cap)
    got, i, k = [], 0, 0
    try:
        while True:
            item = r.next_line()
            if item is EOF:
                break
            if item is NEED_DATA:
                n = cuts[k % len(cuts)]
                k += 1
                r.receive_data(data[i:i + n])
                i += n
                assert r.buffered <= cap + n  # never more than the cap plus one read
                continue
            got.append(item)
        too_long = False
    except RequestTooLarge:
        too_long = True
    expected = [line for line in lines if line.strip()]
    first_long = next((j for j, line in enumerate(lines) if len(line) > cap), None)
    if first_long is None:
        assert not too_long and got == expected
    else:
        assert too_long and got == [line for line in lines[:first_long] if line.strip()]


# ---------------------------------------------------------------- encoding

class Color(enum.Enum):
    RED = "red"


class Thing:
    def __str__(self) -> str:
        return "a thing"


@dataclasses.dataclass
class Pt:
    id: str
    value: float


def test_encode_values_json_lacks():
    utc = dt.datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=dt.timezone.utc)
    plus2 = dt.datetime(2024, 5, 1, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    naive = dt.datetime(2024, 5, 1, 12, 0)
    out = json.loads(encode({
        "nan": float("nan"), "inf": [float("inf"), -float("inf"), 1.5], "utc": utc, "plus2": plus2, "naive": naive,
        "date": dt.date(2024, 5, 1), "time": dt.time(8, 0), "td": dt.timedelta(minutes=1, milliseconds=500),
        "dec": decimal.Decimal("1.25"), "dnan": decimal.Decimal("NaN"), "enum": Color.RED, "bytes": b"\x00\xab",
        "set": {3, 1, 2}, "dc": Pt("p", float("nan")), "path": pathlib.Path("/a/b"), 7: "int key",
        "tuple": (1, 2), "obj": Thing(),
    }))
    assert out == {
        "nan": None, "inf": [None, None, 1.5], "utc": "2024-05-01T12:30:15.250000Z",
        "plus2": "2024-05-01T14:30:00+02:00",
        "naive": naive.astimezone().isoformat().replace("+00:00", "Z"), "date": "2024-05-01", "time": "08:00:00",
        "td": 60.5, "dec": 1.25, "dnan": None, "enum": "red", "bytes": "00ab", "set": [1, 2, 3],
        "dc": {"id": "p", "value": None}, "path": "/a/b", "7": "int key", "tuple": [1, 2], "obj": "a thing",
    }


def test_encode_is_one_line_of_utf8():
    data = encode({"text": "line1\nline2 ü €", "tuple_key": {(1, 2): "x"}})
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data) == {"text": "line1\nline2 ü €", "tuple_key": {"(1, 2)": "x"}}
    assert "ü €".encode() in data  # not escaped
    assert encode("\ud800") == b'"\\ud800"\n'  # lone surrogates stay escapes


def test_encode_response_never_raises():
    a: list = []
    a.append(a)
    with pytest.raises(ValueError, match="circular"):
        encode(a)
    assert json.loads(encode_response(result_response(a, "x"))) == error_response(
        RpcError(-32603, "internal error: response not encodable: value nested deeper than 200 levels (or circular)"),
        "x")
    batch = json.loads(encode_response([result_response(1, 1), result_response(a, 2)]))
    assert batch[0] == result_response(1, 1) and batch[1]["error"]["code"] == -32603 and batch[1]["id"] == 2


# ---------------------------------------------------------------- fuzzing the whole sans-IO path

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)
request_like = st.fixed_dictionaries({}, optional={
    "jsonrpc": st.sampled_from(["2.0", "1.0", 2.0]) | json_values, "method": st.text(max_size=8) | json_values,
    "params": json_values, "id": json_values, "extra": json_values})


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda o: json.dumps(o).encode()),
    request_like.map(lambda o: json.dumps(o).encode()),
    st.lists(request_like | json_values, max_size=5).map(lambda o: json.dumps(o).encode()),
))
def test_parser_never_raises_and_errors_are_valid(data):
    items, is_batch = parse_message(data)
    assert items
    for it in items:
        if isinstance(it, dict):
            assert_valid_error(it)
        else:
            assert isinstance(it.method, str) and (it.params is None or isinstance(it.params, (list, dict)))
            assert it.id is None or isinstance(it.id, (str, int, float)) and not isinstance(it.id, bool)
    if not is_batch:
        assert len(items) == 1


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=10), st.one_of(st.none(), st.lists(json_values, max_size=3),
                                       st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
       st.one_of(st.none(), st.text(max_size=5), st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
       st.booleans())
def test_valid_requests_round_trip(method, params, rid, with_id):
    obj = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        obj["params"] = params
    if with_id:
        obj["id"] = rid
    (req,), batch = parse_message(encode(obj))
    assert isinstance(req, Request) and not batch
    assert (req.method, req.params, req.has_id) == (method, params, with_id)
    if with_id:
        assert req.id == rid and json.loads(encode(result_response(None, req.id)))["id"] == rid
