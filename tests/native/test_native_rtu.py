"""Modbus RTU: request frames, the response scanner (every expectation mode, exceptions, garbage, bad CRCs,
chunking) and a differential against the reference scanner."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_support import budget

import reference as ref
from gatewayd.native import rtu
from gatewayd.native.rtu import RtuResponseScanner, RtuResult


def feed_all(sc, stream, chunk):
    for i in range(0, len(stream), chunk):
        r = sc.feed(stream[i:i + chunk])
        if r is not None:
            return r
    return None


def test_frame_and_expected_lengths():
    assert rtu.frame(1, bytes.fromhex("030000000a")) == bytes.fromhex("01030000000ac5cd")
    with pytest.raises(ValueError):
        rtu.frame(256, b"\x03")
    with pytest.raises(ValueError):
        rtu.frame(1, b"")
    assert rtu.expected_response_length(3, 10) == 25 and rtu.expected_response_length(1, 9) == 7
    assert rtu.expected_response_length(16) == 8 and rtu.expected_response_length(22) == 10
    assert rtu.expected_response_length(43) is None


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_read_response_exception_and_resync_after_garbage_and_bad_crc(chunk):
    good = rtu.frame(7, bytes([3, 4, 0x12, 0x34, 0x56, 0x78]))
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    sc = RtuResponseScanner(7, 3, byte_count=4)
    r = feed_all(sc, b"\x00\xff\x07\x99" + bytes(bad) + good, chunk)
    assert r == RtuResult(7, 3, bytes([3, 4, 0x12, 0x34, 0x56, 0x78]), None)
    assert sc.bad_crc == 1 and sc.garbage_bytes == 4 + len(bad)
    sc.reset(7, 3, byte_count=4)
    e = feed_all(sc, rtu.frame(7, bytes([0x83, 0x02])), chunk)
    assert e.exception_code == 2 and e.function == 0x83 and e.pdu == b"\x83\x02"


def test_other_units_and_functions_are_garbage():
    sc = RtuResponseScanner(2, 4)
    stream = rtu.frame(1, bytes([4, 2, 0, 1])) + rtu.frame(2, bytes([3, 2, 0, 1])) + rtu.frame(2, bytes([4, 2, 9, 9]))
    assert sc.feed(stream).pdu == bytes([4, 2, 9, 9])
    assert sc.garbage_bytes == 14 and sc.bad_crc == 0


def test_a_false_long_candidate_does_not_hold_up_the_answer():
    # noise "11 03 F0" claims 240 data octets; the real answer right behind it is found at once
    good = rtu.frame(0x11, bytes([3, 2, 0xAB, 0xCD]))
    sc = RtuResponseScanner(0x11, 3)
    assert sc.feed(b"\x11\x03\xf0" + good).pdu == bytes([3, 2, 0xAB, 0xCD])


@pytest.mark.parametrize("function,pdu,kw", [
    (6, bytes([6, 0, 1, 0, 5]), {"fixed_length": 8}),
    (16, bytes([16, 0, 1, 0, 2]), {}),
    (22, bytes([22, 0, 4, 0xF2, 0xF2, 0x00, 0x25]), {}),
    (7, bytes([7, 0x6D]), {}),
    (8, bytes([8, 0, 0, 0xA5, 0x37]), {}),
    (24, bytes([24, 0, 6, 0, 2, 0x01, 0xB8, 0x12, 0x84]), {}),
    (17, bytes([17, 3, 0x42, 0xFF, 0x01]), {}),
    (43, bytes([43, 14, 1, 1, 0, 0, 2, 0, 3]) + b"ACM" + bytes([1, 2]) + b"X1", {}),
    (43, bytes([43, 13, 9, 9, 9]), {}),          # another MEI type: shortest CRC-valid length
    (100, bytes([100, 1, 2, 3, 4, 5]), {}),      # unknown function: shortest CRC-valid length
])
@pytest.mark.parametrize("chunk", [1, 5, 300])
def test_response_layouts(function, pdu, kw, chunk):
    sc = RtuResponseScanner(1, function, **kw)
    stream = b"\xaa\x01" + rtu.frame(1, pdu) + b"\x01"
    r = feed_all(sc, stream, chunk)
    assert r is not None and r.pdu == pdu and r.exception_code is None


def test_device_id_response_longer_than_a_false_crc_match():
    # a long FC43 answer is taken by its object list, never cut at an early accidental CRC match
    rnd = random.Random(5)
    for _ in range(200):
        objs = b"".join(bytes([k, n]) + bytes(rnd.randrange(256) for _ in range(n))
                        for k, n in enumerate(rnd.choices(range(1, 30), k=5)))
        pdu = bytes([43, 14, 1, 1, 0, 0, 5]) + objs
        r = feed_all(RtuResponseScanner(9, 43), rtu.frame(9, pdu), 1)
        assert r.pdu == pdu


def test_bytes_after_the_answer_are_kept_and_reset_drops_them():
    sc = RtuResponseScanner(1, 3, byte_count=2)
    a, b = rtu.frame(1, bytes([3, 2, 0, 1])), rtu.frame(1, bytes([3, 2, 0, 2]))
    assert sc.feed(a + b[:4]).pdu == bytes([3, 2, 0, 1])
    assert sc.feed(b[4:]).pdu == bytes([3, 2, 0, 2])
    assert sc.feed(a + b).pdu == bytes([3, 2, 0, 1])
    g = sc.garbage_bytes
    sc.reset(1, 3, byte_count=2)
    assert sc.garbage_bytes == g + len(b)
    assert sc.feed(b"") is None


def test_bounded_buffer_under_endless_noise():
    sc = RtuResponseScanner(1, 3)
    rnd = random.Random(1)
    for _ in range(200):
        assert sc.feed(bytes(rnd.choice([1, 3, rnd.randrange(256)]) for _ in range(1000))) is None or True
    assert sc._rx.len <= 520


def test_argument_checks():
    with pytest.raises(ValueError):
        RtuResponseScanner(1, 0)
    with pytest.raises(ValueError):
        RtuResponseScanner(1, 3, byte_count=252)
    with pytest.raises(ValueError):
        RtuResponseScanner(1, 6, fixed_length=3)


expectations = st.sampled_from([
    (3, {"byte_count": 4}), (3, {}), (4, {"byte_count": 2}), (1, {}), (6, {}), (16, {"fixed_length": 8}),
    (24, {}), (43, {}), (100, {})])


def response_for(function, kw, data):
    if function in (1, 3, 4):
        n = kw.get("byte_count", len(data))
        return bytes([function, n]) + (data + bytes(n))[:n]
    if function in (6, 16):
        return bytes([function]) + (data + bytes(4))[:4]
    if function == 24:
        return bytes([24, 0, len(data) + 2, 0, len(data) // 2]) + data
    if function == 43:
        return bytes([43, 14, 1, 1, 0, 0, 1, 0, len(data)]) + data
    return bytes([function]) + data


@settings(max_examples=budget(1500), deadline=None)
@given(expectations, st.binary(max_size=30), st.binary(max_size=30), st.booleans(), st.integers(1, 2),
       st.booleans(), st.lists(st.integers(0, 255), max_size=3))
def test_scanner_matches_the_reference(exp, garbage, data, exception, unit, corrupt, noise_units):
    function, kw = exp
    pdu = bytes([function | 0x80, 4]) if exception else response_for(function, kw, data)
    good = bytearray(rtu.frame(unit, pdu))
    if corrupt:
        good[len(good) // 2] ^= 0x40
    # noise that starts like a candidate now and then
    stream = bytes(noise_units) + garbage + bytes([unit, function]) + bytes(good) + garbage
    want = ref.rtu_find(stream, unit, function, kw.get("byte_count"), kw.get("fixed_length"))
    sc = RtuResponseScanner(unit, function, **kw)
    got = feed_all(sc, stream, 1)
    if want is None:
        assert got is None
    else:
        frame = want[1]
        assert got is not None and (got.unit, got.function, got.pdu) == (frame[0], frame[1], frame[1:-2])
        assert got.exception_code == (frame[2] if frame[1] & 0x80 else None)
        assert sc.garbage_bytes == want[0]
