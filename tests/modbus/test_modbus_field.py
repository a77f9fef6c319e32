"""Modbus in the field (issues 11.7, 11.14, 12.1-12.6, 12.8, 12.23): against real peers on loopback.

Most tests use :class:`mbtest.MiniSlave`, a slave written here that misbehaves the way field devices
do (a request-size limit, busy answers, no FC22, hostile answers); profile matching uses the pymodbus
server (FC43 identity).
"""

import struct

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.events import DeviceRecovered, DeviceStatusChanged, StatusChanged
from gatewayd.native import codec
from gatewayd.rpc.client import RpcRemoteError
from gatewayd.testing import rpc, run_gateway, site_toml, wait_until
from gatewayd_modbus import pdu
from gatewayd_modbus.transport import TcpLink, Timeout, TransportError
from mbtest import MiniSlave, free_port


def site(devices: str, driver_extra: str = "") -> str:
    return f"""
[drivers.mb]
type = "modbus"
poll_interval = "50ms"
response_timeout_ms = 300
{driver_extra}
{devices}"""


def device(name: str, port: int, points: dict, extra: str = "") -> str:
    out = f"[drivers.mb.devices.{name}]\nhost = \"127.0.0.1\"\nport = {port}\n{extra}\n"
    for pname, body in points.items():
        out += f"[drivers.mb.devices.{name}.points.{pname}]\n{body}\n"
    return out


async def cycles(drv, dev, n, timeout=15):
    """Wait for ``n`` more polling cycles of a device (its own counter: unchanged values publish nothing)."""
    c0 = drv.devices[dev].stats["cycles"]
    with trio.fail_after(timeout):
        while drv.devices[dev].stats["cycles"] < c0 + n:
            await trio.sleep(0.01)


# ----------------------------------------------------------------------------------- 11.7 hostile answers

def test_a_longer_payload_than_the_layout_never_resizes_an_exported_buffer():
    # a string point's scratch buffer is exported to C; a payload longer than the layout used to
    # .extend() it while exported: BufferError
    dec = codec.BlockDecoder([codec.PointSpec(0, "string", length=2)])
    assert dec.decode(b"ABCD") == ["ABCD"]
    assert dec.decode(b"ABCDEFGHIJKL") == ["ABCD"]
    assert dec.decode(b"WXYZ") == ["WXYZ"]


def test_answers_are_checked_strictly_against_the_request():
    req = pdu.read(2, 0, 2)
    assert pdu.read_payload(req, bytes([3, 4, 0, 1, 0, 2])) == bytes([0, 1, 0, 2])
    assert pdu.read_payload(req, bytes([3, 2, 0, 1])) == bytes([0, 1])  # short but whole: the decoder marks it
    for bad in (bytes([3, 6, 0, 1, 0, 2, 0, 3]),   # more registers than asked for
                bytes([3, 3, 0, 1, 0]),            # half a register
                bytes([3, 5, 0, 1]),               # byte count disagrees with the data
                bytes([3, 0]),                     # no data
                bytes([4, 4, 0, 1, 0, 2])):        # another function
        with pytest.raises(pdu.InvalidResponse):
            pdu.read_payload(req, bad)
    with pytest.raises(pdu.InvalidResponse, match="protocol id"):
        pdu.Mbap().parse(b"\x00\x01\x00\x07\x00\x03\x01")
    with pytest.raises(pdu.InvalidResponse, match="MBAP length 0"):
        pdu.Mbap().parse(b"\x00\x01\x00\x00\x00\x00\x01")
    assert pdu.Mbap().parse(b"\x00\x01\x00\x00\x00\x04\x01\x03")[0] == 0  # incomplete: wait for more


def _frame(tid, unit, body):
    return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body


answers = st.one_of(
    st.binary(max_size=20),                                                    # garbage, truncated MBAP
    st.builds(lambda body, unit: ("same", unit, body), st.binary(max_size=40), st.sampled_from([1, 1, 1, 2])),
    st.builds(lambda n: ("long", 1, bytes([3, 2 * n]) + bytes(2 * n)), st.integers(0, 125)),
    st.builds(lambda fc, code: ("same", 1, bytes([fc, code])), st.integers(0, 255), st.integers(0, 255)),
    st.builds(lambda tid, body: ("tid", tid, body), st.integers(0, 65535), st.binary(max_size=12)),
    st.builds(lambda length, rest: ("len", length, rest), st.integers(0, 65535), st.binary(max_size=12)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(answer=answers)
async def test_fuzzed_answers_over_a_socket_raise_only_the_link_error_kinds(answer):
    slave = MiniSlave({1: {a: a for a in range(16)}})

    def hostile(tid, unit, req):
        if isinstance(answer, bytes):
            return answer
        what, a, body = answer
        if what == "same" or what == "long":
            return _frame(tid, a, body)
        if what == "tid":
            return _frame(a, 1, body)
        return struct.pack(">HHHB", tid, 0, a, 1) + body  # any length field

    slave.hostile = hostile
    spec = [codec.PointSpec(0, "uint16"), codec.PointSpec(1, "float32"), codec.PointSpec(3, "string", length=4)]
    dec = codec.BlockDecoder(spec)
    async with trio.open_nursery() as n:
        await n.start(slave.serve)
        link = TcpLink("127.0.0.1", slave.port)
        req = pdu.read(2, 0, 7)
        with trio.fail_after(5):
            try:
                dec.decode_into(pdu.read_payload(req, await link.request(1, req, 0.05)))
            except (pdu.ModbusException, pdu.InvalidResponse, Timeout, TransportError):
                pass
        await link.close()
        n.cancel_scope.cancel()


async def test_a_malformed_answer_is_an_error_of_that_device_and_its_siblings_keep_polling(
        tmp_path, mini_slave_factory):
    bad = await mini_slave_factory({1: {a: 0x4142 for a in range(10)}})
    good = await mini_slave_factory({1: {0: 5}})
    long_answers = [3]

    def hostile(tid, unit, req):
        if long_answers[0] and req[0] == 3:  # answers with more registers than asked for (count+4)
            long_answers[0] -= 1
            count = struct.unpack(">H", req[3:5])[0] + 4
            return _frame(tid, unit, bytes([3, 2 * count]) + b"AB" * count)
        return None

    bad.hostile = hostile
    body = site(device("bad", bad.port, {"name": 'address = 0\ntype = "string"\nlength = 4\nkind = "string"'})
                + device("good", good.port, {"x": "address = 0"}))
    async with run_gateway(tmp_path, body) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: pts["bad/name"].status == "ok" and pts["good/x"].status == "ok", timeout=15)
        drv = gw.drivers["mb"].instance
        assert gw.drivers["mb"].crashes == 0 and gw.drivers["mb"].instance is drv
        d = drv.devices["bad"]
        assert d.stats["invalid_responses"] == 3 and d.stats["crashes"] == 0, str(d.stats)
        assert d.stats["last_error"] == "invalid answer: 16 data bytes in the answer, 8 asked for"
        assert pts["bad/name"].value == "ABABABAB"
        await cycles(drv, "good", 3)


async def test_an_unexpected_error_in_one_device_restarts_that_device_only(tmp_path, mini_slave_factory,
                                                                           monkeypatch):
    a = await mini_slave_factory({1: {0: 1}})
    b = await mini_slave_factory({1: {0: 2}})
    body = site(device("a", a.port, {"x": "address = 0"}) + device("b", b.port, {"x": "address = 0"}))
    async with run_gateway(tmp_path, body) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: pts["a/x"].status == "ok" and pts["b/x"].status == "ok", timeout=15)
        drv = gw.drivers["mb"].instance
        real = drv._poll_group
        boom = [2]

        async def surprising(d, g):
            if d.id == "a" and boom[0]:
                boom[0] -= 1
                raise RuntimeError("a surprise")
            return await real(d, g)

        monkeypatch.setattr(drv, "_poll_group", surprising)
        await cycles(drv, "b", 5)
        with trio.fail_after(15):
            while drv.devices["a"].stats["crashes"] < 2 or pts["a/x"].status != "ok":
                await trio.sleep(0.05)
        assert gw.drivers["mb"].crashes == 0 and gw.drivers["mb"].instance is drv
        assert drv.devices["b"].stats["crashes"] == 0


# ----------------------------------------------------------------------------------- 11.14 read-modify-write

async def test_two_bit_writes_to_one_register_without_fc22_both_land(tmp_path, mini_slave_factory):
    slave = await mini_slave_factory({1: {10: 0}}, fc22=False)
    bits = {f"b{i}": f'address = 10\nbit_offset = {i}\nkind = "binary"\nwritable = true' for i in range(4)}
    async with run_gateway(tmp_path, site(device("m1", slave.port, bits))) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: all(pts[f"m1/b{i}"].status == "ok" for i in range(4)), timeout=15)

        slave.delay = 0.1  # a slow device: the four writes arrive while the first is still in progress

        async def write(i):
            await rpc(gw, "points.write", {"point": f"m1/b{i}", "value": True})

        async with trio.open_nursery() as n:
            for i in range(4):
                n.start_soon(write, i)
        assert slave.units[1][10] == 0b1111
        assert sum(1 for r in slave.log if r[1] == 22) == 1  # no FC22 learned once: later writes skip it


# ----------------------------------------------------------------------------------- 12.1 / 12.3 learning

EVERY_4 = {f"p{a}": f"address = {a}" for a in range(0, 60, 4)}       # 15 points over 57 registers
CONTIGUOUS = {f"p{a}": f"address = {a}" for a in range(60)}


@pytest.mark.parametrize("points,requests", [(EVERY_4, 3), (CONTIGUOUS, 3)])
async def test_exception_03_to_a_large_read_learns_the_size_limit_not_holes(tmp_path, mini_slave_factory, caplog,
                                                                            points, requests):
    slave = await mini_slave_factory({1: {a: a for a in range(60)}}, max_registers=20)
    async with run_gateway(tmp_path, site(device("m1", slave.port, points))) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: all(p.status == "ok" for p in pts.values()), timeout=15)
        drv = gw.drivers["mb"].instance
        await cycles(drv, "m1", 2)
        d = drv.devices["m1"]
        assert d.refused == [] and d.max_registers == 20
        assert d.stats["last_cycle_requests"] == requests and d.stats["planned_requests"] == requests
        assert [pts[f"m1/{k}"].value for k in points] == [int(k[1:]) for k in points]
        span = 57 if points is EVERY_4 else 60
        assert (f"learned about m1: at most 20 registers per request (exception 03 to a {span}-register read)"
                in caplog.text)
        dev = next(x for x in await rpc(gw, "devices.list") if x["device"] == "m1")
        assert dev["learned_max_registers"] == 20 and dev["refused_ranges"] == []


async def test_busy_is_retried_never_learned_never_a_refusal(tmp_path, mini_slave_factory):
    slave = await mini_slave_factory({1: {0: 1, 1: 2}})
    async with run_gateway(tmp_path, site(device("m1", slave.port, {"a": "address = 0", "b": "address = 1"}))) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: pts["m1/a"].status == "ok" and pts["m1/b"].status == "ok", timeout=15)
        drv = gw.drivers["mb"].instance
        sub = gw.bus.subscribe("test:busy", maxlen=100000)
        slave.busy = 2
        await cycles(drv, "m1", 3)
        d = drv.devices["m1"]
        assert slave.busy == 0 and d.stats["busy"] == 2 and d.stats["exceptions"] == 0
        assert d.refused == [] and d.stats["splits"] == 0 and d.stats["failed_cycles"] == 0
        assert not [e for e in sub.get_nowait() if isinstance(e, (StatusChanged, DeviceStatusChanged))]
        sub.close()


async def test_the_first_learning_cycle_does_not_re_read_the_failed_block(tmp_path, mini_slave_factory):
    slave = await mini_slave_factory({1: {0: 0, 1: 1, 2: 2, 5: 5, 6: 6, 7: 7}})
    points = {f"p{a}": f"address = {a}" for a in (0, 1, 2, 5, 6, 7)}
    async with run_gateway(tmp_path, site(device("m1", slave.port, points))) as gw:
        await wait_until(gw, lambda: all(p.status == "ok" for p in gw.points.points.values()), timeout=15)
        await cycles(gw.drivers["mb"].instance, "m1", 1)
        reads = [r for r in slave.log if r[1] == 3]
        # the block 0..7 refused (02), its halves read at once (not the block again), the gap learned
        assert reads[:5] == [(1, 3, 0, 8), (1, 3, 0, 3), (1, 3, 5, 3), (1, 3, 0, 3), (1, 3, 5, 3)]
        assert gw.drivers["mb"].instance.devices["m1"].refused == [(2, 1, 3, 4)]


# ----------------------------------------------------------------------------------- 12.2 reload

async def test_a_reload_that_restarts_the_driver_forgets_learned_ranges_of_every_device(tmp_path,
                                                                                        mini_slave_factory):
    slave = await mini_slave_factory({1: {0: 0, 1: 1, 5: 5}, 2: {0: 0, 2: 2}})
    m1 = {"a": "address = 0", "b": "address = 1", "c": "address = 5"}
    m2 = {"a": "address = 0", "b": "address = 2"}
    two = site(device("m1", slave.port, m1, "unit = 1") + device("m2", slave.port, m2, "unit = 2"))
    async with run_gateway(tmp_path, two) as gw:
        await wait_until(gw, lambda: all(p.status == "ok" for p in gw.points.points.values()), timeout=15)
        drv = gw.drivers["mb"].instance
        await cycles(drv, "m1", 1)
        assert drv.devices["m1"].refused == [(2, 1, 2, 4)] and drv.devices["m2"].refused == [(2, 2, 1, 1)]
        # a point added to m2 restarts the driver: m1 (unchanged) forgets too, and learns again
        m2["z"] = "address = 0\ntype = \"int16\""
        with open(gw.config.path, "w") as fh:
            fh.write(site_toml(tmp_path, site(device("m1", slave.port, m1, "unit = 1")
                                              + device("m2", slave.port, m2, "unit = 2"))))
        res = await rpc(gw, "config.reload")
        assert res["ok"] and res["changed"] == ["driver mb restarted"]
        new = gw.drivers["mb"].instance
        await wait_until(gw, lambda: gw.points.points.get("m2/z") is not None
                         and gw.points.points["m2/z"].status == "ok", timeout=15)
        await cycles(new, "m1", 2)
        assert new is not drv and new.devices["m1"].stats["splits"] == 1  # learned afresh
        assert new.devices["m1"].refused == [(2, 1, 2, 4)]


# ----------------------------------------------------------------------------------- 12.4 shared link

async def test_devices_behind_one_endpoint_recover_together_with_the_real_outage(tmp_path, monkeypatch):
    import gatewayd.points as points_mod

    monkeypatch.setattr(points_mod.DeviceHealth, "BASE", 30.0)   # backoff far beyond the test's bounds
    monkeypatch.setattr(points_mod.DeviceHealth, "DOWN_AFTER", 1)
    port = free_port()
    slave = MiniSlave({1: {0: 1}, 2: {0: 2}})
    slave.port = port
    body = site(device("u1", port, {"x": "address = 0"}, "unit = 1") + device("u2", port, {"x": "address = 0"},
                                                                              "unit = 2"))
    async with trio.open_nursery() as n:
        await n.start(slave.serve)
        async with run_gateway(tmp_path, body) as gw:
            pts = gw.points.points
            await wait_until(gw, lambda: pts["u1/x"].status == "ok" and pts["u2/x"].status == "ok", timeout=15)
            sub = gw.bus.subscribe("test:outage", maxlen=100000)
            await slave.stop()  # the endpoint goes away: connections closed, nothing listens
            await wait_until(gw, lambda: gw.points.devices["u1"].conn_status == "down"
                             and gw.points.devices["u2"].conn_status == "down", timeout=15)
            await n.start(slave.serve)   # back on the same port
            # one request through the link (an operator's read) finds it back: both devices retry now,
            # not after their 30 s backoff
            await rpc(gw, "modbus.read_registers", {"device": "u1", "address": 0})
            await wait_until(gw, lambda: gw.points.devices["u1"].conn_status == "ok"
                             and gw.points.devices["u2"].conn_status == "ok", timeout=10)
            events = sub.get_nowait()
            first = {}
            for e in events:
                if isinstance(e, DeviceStatusChanged) and e.status in ("fault", "down") and e.device not in first:
                    first[e.device] = e.ts
            rec = {e.device: e for e in events if isinstance(e, DeviceRecovered)}
            for dev in ("u1", "u2"):  # the outage printed is the real one: from the first failure
                assert rec[dev].down_for == pytest.approx(rec[dev].ts - first[dev], abs=0.05)
            sub.close()
        n.cancel_scope.cancel()


# ----------------------------------------------------------------------------------- 12.6 messages

async def test_messages_say_what_happened_and_what_to_check(tmp_path, mini_slave_factory):
    slave = await mini_slave_factory({1: {0: 1, 1: 2}})
    closed_port = free_port()
    body = site(device("m1", slave.port, {"a": "address = 0", "w": "address = 1\nwritable = true"})
                + device("gone", closed_port, {"a": "address = 0"}))
    async with run_gateway(tmp_path, body) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: pts["m1/a"].status == "ok" and gw.points.devices["gone"].failures >= 1,
                         timeout=15)
        # a failing device shows it at once (not ok/open with an empty reason until it is down)
        gone = next(x for x in await rpc(gw, "devices.list") if x["device"] == "gone")
        assert gone["conn_status"] == "fault" and gone["conn_state"] == "opening"
        assert gone["reason"].startswith(f"cannot connect to 127.0.0.1:{closed_port}: connection refused: "
                                         "nothing listens on that port (is the device on, is the port right?)")
        assert "(failure 1 of 5 before down; next attempt in" in gone["reason"]
        # exception 11 from a gateway: a hint about the unit id
        slave.hostile = lambda tid, unit, req: _frame(tid, unit, bytes([req[0] | 0x80, 11]))
        with pytest.raises(RpcRemoteError) as ei:
            await rpc(gw, "modbus.read_registers", {"device": "m1", "address": 0, "unit": 9})
        assert ei.value.message == ("m1: the device answered exception 11 (gateway target device failed to respond)"
                                    " to function 3: the gateway answered but unit 9 behind it did not; is 9 the "
                                    "right unit id, and is the device behind the gateway powered and wired?")
        slave.hostile = None
        # too many registers: one sentence
        with pytest.raises(RpcRemoteError) as ei:
            await rpc(gw, "modbus.read_registers", {"device": "m1", "address": 0, "count": 126})
        assert ei.value.message == "count 126 is out of range: one Modbus request reads 1 to 125 registers"
        # a write with no answer: the device may have applied it
        slave.silent_units.add(1)
        with pytest.raises(RpcRemoteError) as ei:
            await rpc(gw, "points.write", {"point": "m1/w", "value": 7})
        assert ("m1/w: no answer from the device (no response within 300 ms); it may have applied the write: "
                "read the point back to check") in ei.value.message
        assert slave.units[1][1] == 7  # it did
        slave.silent_units.clear()


# ----------------------------------------------------------------------------------- 12.8 profile threshold

AHU = {"holding": {"0": 215, "1": 1}, "identity": {"vendor": "Trane", "product_code": "AHU-CSAA",
                                                   "revision": "3.0", "model": "CSAA air handler"}}


async def test_an_air_handler_gets_no_profile_below_the_threshold(tmp_path, tcp_server_factory):
    srv = tcp_server_factory({"1": AHU})
    async with run_gateway(tmp_path, site(device("ahu", srv.port, {"t": "address = 0"}))) as gw:
        await wait_until(gw, lambda: gw.points.points["ahu/t"].status == "ok", timeout=15)
        r = await rpc(gw, "modbus.device_identification", {"device": "ahu"})
        assert r["objects"]["vendor"] == "Trane"
        assert r["profile"] is None and r["profile_score"] < 0.5
        scan = await rpc(gw, "discovery.scan", {"driver": "mb", "mode": "tcp", "host": "127.0.0.1",
                                                "port": srv.port, "units": [1]})
        assert scan["found"][0]["vendor"] == "Trane" and "profile" not in scan["found"][0]


# ----------------------------------------------------------------------------------- 12.23 existing options

async def test_throttle_delay_spaces_every_request(tmp_path, mini_slave_factory):
    slave = await mini_slave_factory({1: {0: 1, 10: 2, 30: 3}})
    times = []
    slave.hostile = lambda tid, unit, req: times.append(trio.current_time())
    points = {"a": "address = 0", "b": "address = 10", "c": "address = 30"}
    async with run_gateway(tmp_path, site(device("m1", slave.port, points, "max_gap = 0\nthrottle_delay_ms = 80"),
                                          )) as gw:
        await wait_until(gw, lambda: all(p.status == "ok" for p in gw.points.points.values()), timeout=15)
        await cycles(gw.drivers["mb"].instance, "m1", 2)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) >= 5 and min(gaps) >= 0.08


@pytest.mark.parametrize("disconnect", [True, False])
async def test_disconnect_between_polls_closes_the_connection_after_each_cycle(tmp_path, mini_slave_factory,
                                                                                disconnect):
    slave = await mini_slave_factory({1: {0: 1}})
    extra = f"disconnect_between_polls = {str(disconnect).lower()}"
    async with run_gateway(tmp_path, site(device("m1", slave.port, {"a": "address = 0"}, extra))) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/a"].status == "ok", timeout=15)
        await cycles(gw.drivers["mb"].instance, "m1", 4)
        if disconnect:
            assert slave.connections >= 4
        else:
            assert slave.connections == 1


async def test_fc24_values_are_checked(tmp_path, mini_slave_factory):
    slave = await mini_slave_factory({1: {0: 1}})
    slave.fifo[5] = [7, 8, 0xFFFF]
    async with run_gateway(tmp_path, site(device("m1", slave.port, {"a": "address = 0"}))) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/a"].status == "ok", timeout=15)
        r = await rpc(gw, "modbus.read_fifo", {"device": "m1", "address": 5})
        assert r["values"] == [7, 8, 0xFFFF]
        slave.fifo[5] = []
        assert (await rpc(gw, "modbus.read_fifo", {"device": "m1", "address": 5}))["values"] == []
        # a FIFO answer whose counts disagree with its data is refused, not half-decoded
        slave.hostile = lambda tid, unit, req: (_frame(tid, unit, bytes([24]) + struct.pack(">HHH", 8, 3, 7))
                                                if req[0] == 24 else None)
        with pytest.raises(RpcRemoteError) as ei:
            await rpc(gw, "modbus.read_fifo", {"device": "m1", "address": 5})
        assert ei.value.data == {"kind": "invalid"} and "FIFO response with byte count 8, FIFO count 3" in \
            ei.value.message


async def test_every_conn_state_value_is_reported(tmp_path, mini_slave_factory, monkeypatch):
    import gatewayd.points as points_mod

    monkeypatch.setattr(points_mod.DeviceHealth, "BASE", 0.05)
    monkeypatch.setattr(points_mod.DeviceHealth, "DOWN_AFTER", 2)
    slave = await mini_slave_factory({1: {0: 1}})
    states = []
    async with run_gateway(tmp_path, site(device("m1", slave.port, {"a": "address = 0"}))) as gw:
        sub = gw.bus.subscribe("test:states", maxlen=100000)
        await wait_until(gw, lambda: gw.points.points["m1/a"].status == "ok", timeout=15)
        slave.silent_units.add(1)
        await wait_until(gw, lambda: gw.points.devices["m1"].conn_status == "down", timeout=15)
        slave.silent_units.clear()
        await wait_until(gw, lambda: gw.points.devices["m1"].conn_status == "ok", timeout=15)
        states += [(e.status, e.conn_state) for e in sub.get_nowait() if isinstance(e, DeviceStatusChanged)]
    states += [(e.status, e.conn_state) for e in sub.get_nowait() if isinstance(e, DeviceStatusChanged)]
    sub.close()
    states = states[[s[0] for s in states].index("fault"):]  # the first ok/open may precede the subscription
    assert states == [("fault", "opening"), ("down", "closed"), ("ok", "open"),
                      ("ok", "closing"), ("ok", "closed")]  # the last two: the driver stopping
    assert {c for _, c in states} == {"closed", "opening", "open", "closing"}  # every value


async def test_the_recovery_message_gives_the_whole_outage(tmp_path, monkeypatch, caplog):
    import gatewayd.points as points_mod

    monkeypatch.setattr(points_mod.DeviceHealth, "BASE", 0.3)    # failures at 0, 0.3, 0.9 s: down at the third
    monkeypatch.setattr(points_mod.DeviceHealth, "DOWN_AFTER", 3)
    slave = MiniSlave({1: {0: 1}})
    async with trio.open_nursery() as n:
        await n.start(slave.serve)
        async with run_gateway(tmp_path, site(device("u1", slave.port, {"x": "address = 0"}))) as gw:
            await wait_until(gw, lambda: gw.points.points["u1/x"].status == "ok", timeout=15)
            sub = gw.bus.subscribe("test:outage", maxlen=100000)
            stopped_at = gw.points.wall()
            await slave.stop()
            await wait_until(gw, lambda: gw.points.devices["u1"].conn_status == "down", timeout=15)
            await n.start(slave.serve)
            await wait_until(gw, lambda: gw.points.devices["u1"].conn_status == "ok", timeout=15)
            events = sub.get_nowait()
            sub.close()
        n.cancel_scope.cancel()
    rec = next(e for e in events if isinstance(e, DeviceRecovered))
    # from the first failure (one poll interval after the stop), not from the moment it was declared down
    assert rec.ts - stopped_at - 0.2 <= rec.down_for <= rec.ts - stopped_at
    assert f"device u1 recovered after {rec.down_for:.0f}s" in caplog.text


# ----------------------------------------------------------------------------------- 12.5 one serial line

async def test_a_unit_scan_over_rtu_over_tcp_finds_every_unit_through_the_polling_link(tmp_path):
    from mbtest import RtuResponder, SharedLine

    responder = RtuResponder({1: {"holding": {0: 11}}, 2: {"holding": {0: 22}}, 5: {"holding": {0: 55}}})
    line = SharedLine(responder)
    async with trio.open_nursery() as n:
        await n.start(line.serve)
        body = f"""
[drivers.mb]
type = "modbus"
transport = "rtu-over-tcp"
host = "127.0.0.1"
port = {line.port}
poll_interval = "20ms"
response_timeout_ms = 200
[drivers.mb.devices.u1]
unit = 1
[drivers.mb.devices.u1.points.x]
address = 0
"""
        async with run_gateway(tmp_path, body) as gw:
            await wait_until(gw, lambda: gw.points.points["u1/x"].status == "ok", timeout=15)
            link = gw.drivers["mb"].instance.links[f"rtu-over-tcp:127.0.0.1:{line.port}"]
            n0 = link.requests
            for _ in range(2):  # with the defaults (parallel = 8), while u1 is being polled
                r = await rpc(gw, "discovery.scan", {"driver": "mb", "mode": "tcp", "transport": "rtu-over-tcp",
                                                     "host": "127.0.0.1", "port": line.port, "units": "1-8"})
                assert sorted(f["unit"] for f in r["found"]) == [1, 2, 5]
            assert line.collisions == 0 and link.requests - n0 >= 16  # the scan queued on the polling link
            assert gw.points.points["u1/x"].status == "ok"
        n.cancel_scope.cancel()


# ----------------------------------------------------------------------------------- C1 / C3 / 12.2 accept

def test_write_range_is_the_register_types_raw_range():
    from types import SimpleNamespace

    from gatewayd_modbus.driver import ModbusDriver

    def pt(**b):
        return SimpleNamespace(binding={"table": "holding", "type": "uint16", "bit_offset": None, "bit_mask": None,
                                        **b})

    assert ModbusDriver.write_range(pt()) == (0, 65535)
    assert ModbusDriver.write_range(pt(type="int16")) == (-32768, 32767)
    assert ModbusDriver.write_range(pt(type="float32")) == (-3.4028234663852886e38, 3.4028234663852886e38)
    assert ModbusDriver.write_range(pt(table="coil", type="bool")) == (None, None)
    assert ModbusDriver.write_range(pt(bit_offset=3)) == (None, None)
    assert ModbusDriver.write_range(pt(bit_mask=0x0F0)) == (0, 15)
    assert ModbusDriver.write_range(pt(type="string", length=4)) == (None, None)


async def test_write_errors_carry_the_contract_kinds(tmp_path, mini_slave_factory):
    slave = await mini_slave_factory({1: {0: 1, 1: 2}})
    points = {"w": "address = 1\nwritable = true", "gone": "address = 9\nwritable = true\ngroup = \"never\""}
    body = site(device("m1", slave.port, points, 'poll_groups = { never = "1h" }'))
    async with run_gateway(tmp_path, body) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/w"].status == "ok", timeout=15)
        drv = gw.drivers["mb"].instance
        cfg = drv.config.devices["m1"].points
        from gatewayd.plugin import WriteError

        with pytest.raises(WriteError) as ei:                     # the device says no: exception 02
            await drv.write(cfg["gone"], 5)
        assert ei.value.kind == "refused" and "the device refused the write: exception 02" in str(ei.value)
        with pytest.raises(WriteError) as ei:                     # does not fit the register
            await drv.write(cfg["w"], -1)
        assert ei.value.kind == "encode" and "-1 is below the minimum 0 for this point" in str(ei.value)
        slave.silent_units.add(1)
        with pytest.raises(WriteError) as ei:                     # no answer: it may have been applied
            await drv.write(cfg["w"], 9)
        assert ei.value.kind == "timeout"
        slave.silent_units.clear()
        await slave.stop()
        with pytest.raises(WriteError) as ei:                     # nothing listens: not written
            await drv.write(cfg["w"], 9)
        assert ei.value.kind == "transport" and "not written, the link is down: cannot connect" in str(ei.value)


async def test_discovery_accept_restarts_the_driver_and_forgets_what_was_learned(tmp_path, mini_slave_factory):
    slave = await mini_slave_factory({1: {0: 0, 1: 1, 5: 5}, 4: {0: 40}})
    body = f"""
[drivers.mb]
type = "modbus"
host = "127.0.0.1"
port = {slave.port}
poll_interval = "50ms"
response_timeout_ms = 300
[drivers.mb.devices.m1]
unit = 1
[drivers.mb.devices.m1.points.a]
address = 0
[drivers.mb.devices.m1.points.b]
address = 1
[drivers.mb.devices.m1.points.c]
address = 5
"""
    async with run_gateway(tmp_path, body) as gw:
        await wait_until(gw, lambda: gw.points.points["m1/c"].status == "ok", timeout=15)
        drv = gw.drivers["mb"].instance
        assert drv.devices["m1"].refused == [(2, 1, 2, 4)]
        r = await rpc(gw, "discovery.scan", {"driver": "mb", "mode": "tcp", "host": "127.0.0.1",
                                             "port": slave.port, "units": [4]})
        assert [f["unit"] for f in r["found"]] == [4]
        await rpc(gw, "discovery.accept", {"driver": "mb", "key": r["found"][0]["key"]})
        new = gw.drivers["mb"].instance
        assert new is not drv
        await wait_until(gw, lambda: gw.points.points["m1/c"].status == "ok", timeout=15)
        await cycles(new, "m1", 2)
        assert new.devices["m1"].stats["splits"] == 1 and new.devices["m1"].refused == [(2, 1, 2, 4)]


def test_connect_failures_say_refused_timed_out_or_no_route():
    import errno
    import socket

    from gatewayd_modbus.transport import _connect_reason, connect

    def trio_style(*errs):  # trio: OSError("all attempts to connect ... failed") caused by a group
        e = OSError("all attempts to connect to h:502 failed")
        e.__cause__ = ExceptionGroup("attempts", list(errs))
        return e

    assert _connect_reason(trio_style(OSError(errno.ECONNREFUSED, "x"))).startswith("connection refused")
    assert _connect_reason(trio_style(OSError(errno.ETIMEDOUT, "x"))).startswith("connection timed out")
    assert _connect_reason(trio_style(OSError(errno.EHOSTUNREACH, "x"))).startswith("no route to the host")
    assert _connect_reason(trio_style(OSError(errno.ENETUNREACH, "x"))).startswith("no route to the network")
    assert _connect_reason(socket.gaierror(-2, "Name or service not known")).startswith("the name does not resolve")
    with pytest.raises(TransportError) as ei:   # and through a real socket: nothing listens there
        trio.run(connect, "127.0.0.1", free_port(), 1.0)
    assert str(ei.value).startswith("cannot connect to 127.0.0.1:") and "connection refused" in str(ei.value)


async def test_a_size_limit_narrower_than_a_point_is_not_learned(tmp_path, mini_slave_factory):
    # a slave that reads one register per request: a float32 point can never be read; learning
    # "max_registers = 1" would stop every multi-register point of the device for good
    slave = await mini_slave_factory({1: {0: 0x4049, 1: 0x0FDB, 5: 7}}, max_registers=1)
    points = {"f": 'address = 0\ntype = "float32"', "u": "address = 5"}
    async with run_gateway(tmp_path, site(device("m1", slave.port, points))) as gw:
        pts = gw.points.points
        await wait_until(gw, lambda: pts["m1/u"].status == "ok" and pts["m1/f"].status == "fault", timeout=15)
        d = gw.drivers["mb"].instance.devices["m1"]
        assert d.max_registers == 125 and d.refused == [(2, 1, 0, 1)]
        assert pts["m1/f"].reason == ("refused by the device (exception 03, illegal data value): holding 0..1 "
                                      "cannot be read")
