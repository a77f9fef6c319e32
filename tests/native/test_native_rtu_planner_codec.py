"""Modbus RTU scanner, block planner (optimality vs exhaustive search), register codec round trips."""

import math
import os
import random
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import reference as ref
from gatewayd.native import codec, planner, rtu
from gatewayd.native.codec import BlockDecoder, EncodeError, PointSpec

N = int(1000 * float(os.environ.get("GATEWAYD_FUZZ_SCALE", "1")))


# ------------------------------------------------------------------ RTU

def resp(unit, pdu):
    return rtu.frame(unit, pdu)


def test_rtu_frame_and_scan_read_response():
    assert rtu.frame(1, bytes.fromhex("030000000a")) == bytes.fromhex("01030000000ac5cd")
    r = resp(1, bytes([3, 4, 0, 1, 0, 2]))
    sc = rtu.RtuResponseScanner(1, 3, byte_count=4)
    assert sc.feed(r[:3]) is None
    res = sc.feed(r[3:])
    assert res == rtu.RtuResult(1, 3, bytes([3, 4, 0, 1, 0, 2]), None)


def test_rtu_exception_garbage_and_bad_crc_resync():
    good = resp(7, bytes([3, 2, 0x12, 0x34]))
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    sc = rtu.RtuResponseScanner(7, 3, byte_count=2)
    assert sc.feed(b"\x00\xff\x07\x99" + bytes(bad)) is None
    assert sc.feed(good).pdu == bytes([3, 2, 0x12, 0x34])
    assert sc.bad_crc >= 1 and sc.garbage_bytes >= 4
    sc.reset(7, 3, byte_count=2)
    e = sc.feed(resp(7, bytes([0x83, 0x02])))
    assert e.exception_code == 2 and e.function == 0x83


def test_rtu_fixed_and_variable_lengths():
    sc = rtu.RtuResponseScanner(1, 6, fixed_length=8)
    assert sc.feed(resp(1, bytes([6, 0, 1, 0, 5]))).pdu == bytes([6, 0, 1, 0, 5])
    sc = rtu.RtuResponseScanner(1, 43)
    body = bytes([43, 14, 1, 1, 0, 0, 1, 0, 3]) + b"ACM"
    assert sc.feed(b"\xAA" + resp(1, body)).pdu == body
    assert rtu.expected_response_length(3, 10) == 25 and rtu.expected_response_length(1, 9) == 7


@settings(max_examples=N // 2, deadline=None)
@given(st.binary(max_size=30), st.integers(0, 60), st.integers(1, 16))
def test_rtu_scanner_finds_the_frame_after_any_garbage(garbage, nregs, chunk):
    data = bytes(random.randrange(256) for _ in range(2 * nregs))
    good = resp(17, bytes([4, len(data)]) + data)
    stream = garbage + good
    sc = rtu.RtuResponseScanner(17, 4, byte_count=len(data))
    found = None
    for i in range(0, len(stream), chunk):
        found = found or sc.feed(stream[i:i + chunk])
    assert found is not None and found.pdu == bytes([4, len(data)]) + data


# ------------------------------------------------------------------ planner

def test_planner_basic_gap_cap_forbidden():
    P = planner.Table.HOLDING
    pts = [(P, 1, 0, 2), (P, 1, 12, 1), (P, 1, 13, 2), (P, 1, 200, 1), (3, 1, 0, 1), (P, 2, 0, 1)]
    p = planner.plan(pts, max_gap=10)
    spans = sorted((b.table, b.unit, b.start, b.count) for b in p.blocks)
    assert spans == [(2, 1, 0, 15), (2, 1, 200, 1), (2, 2, 0, 1), (3, 1, 0, 1)]
    p = planner.plan(pts, max_gap=10, forbidden=[(P, 1, 5, 5)])
    assert sorted((b.start, b.count) for b in p.blocks if b.unit == 1 and b.table == P) == [(0, 2), (12, 3), (200, 1)]
    p = planner.plan([(P, 1, 0, 1), (P, 1, 130, 1), (P, 1, 2, 200), (P, 1, 7, 1)], max_registers=125,
                     forbidden=[(P, 1, 7, 7)])
    assert p.errors == {2: "wider than the largest request allowed",
                        3: "inside an address range the device refused (exception 02/03)"}
    for b in p.blocks:
        for i, off in b.members:
            assert pts and off == [(P, 1, 0, 1), (P, 1, 130, 1)][i][2] - b.start


point = st.tuples(st.sampled_from([0, 2, 3]), st.sampled_from([1, 2]), st.integers(0, 60), st.integers(1, 6))


@settings(max_examples=N // 2, deadline=None)
@given(st.lists(point, min_size=1, max_size=7), st.integers(0, 6), st.integers(4, 20),
       st.lists(st.tuples(st.sampled_from([0, 2, 3]), st.sampled_from([1, 2]), st.integers(0, 60),
                          st.integers(0, 3)), max_size=2))
def test_planner_is_optimal_on_small_inputs_and_keeps_the_rules(pts, gap, cap, fb):
    forbidden = [(t, u, s, s + w) for t, u, s, w in fb]
    p = planner.plan(pts, max_gap=gap, max_registers=cap, max_bits=cap * 2, forbidden=forbidden)
    ok = [i for i in range(len(pts)) if i not in p.errors]
    covered = {}
    for b in p.blocks:
        c = cap * 2 if b.table <= 1 else cap
        assert b.count <= c
        for (t, u, s, e) in forbidden:
            assert not (t == b.table and u == b.unit and s < b.start + b.count and e >= b.start)
        for i, off in b.members:
            t, u, a, w = pts[i]
            assert (t, u) == (b.table, b.unit) and a == b.start + off and off + w <= b.count
            covered[i] = True
    assert sorted(covered) == ok
    want = ref.plan_min_blocks([pts[i] for i in ok], gap, cap, cap * 2, forbidden) if ok else 0
    assert len(p.blocks) == want


def test_planner_is_deterministic_and_handles_10k_points():
    rnd = random.Random(3)
    pts = [(rnd.choice([2, 3]), rnd.randrange(1, 4), rnd.randrange(0, 20000), rnd.choice([1, 2, 4]))
           for _ in range(10_000)]
    a = planner.plan(pts)
    assert a == planner.plan(pts)
    assert sum(len(b.members) for b in a.blocks) == 10_000


# ------------------------------------------------------------------ codec

INT_RANGES = {"int16": (-2**15, 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-2**31, 2**31 - 1),
              "uint32": (0, 2**32 - 1), "int64": (-2**63, 2**63 - 1), "uint64": (0, 2**64 - 1)}
FMT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "int64": ">q", "uint64": ">Q",
       "float32": ">f", "float64": ">d"}


def wire(type_, order, value):
    """Reference encoding: the big-endian image re-ordered into registers as the order says."""
    img = struct.pack(FMT[type_], value)
    regs = [img[i:i + 2] for i in range(0, len(img), 2)]
    if order in ("CDAB", "DCBA"):
        regs = regs[::-1]
    if order in ("BADC", "DCBA"):
        regs = [r[::-1] for r in regs]
    return b"".join(regs)


@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA"])
@pytest.mark.parametrize("type_", list(FMT))
def test_decode_encode_round_trip_every_type_and_order(type_, order):
    rnd = random.Random(hash((type_, order)) & 0xFFFF)
    for _ in range(200):
        if type_.startswith("float"):
            v = rnd.uniform(-1e6, 1e6)
            if type_ == "float32":
                v = struct.unpack(">f", struct.pack(">f", v))[0]
        else:
            lo, hi = INT_RANGES[type_]
            v = rnd.choice([lo, hi, 0, rnd.randint(lo, hi)])
        spec = PointSpec(1, type_, order)
        payload = b"\xaa\xbb" + wire(type_, order, v)
        got = BlockDecoder([spec]).decode(payload)[0]
        assert got == v and type(got) is type(v)
        regs = codec.encode(spec, v)
        assert struct.pack(f">{len(regs)}H", *regs) == wire(type_, order, v)


def test_scale_add_bits_masks_strings_and_short_payloads():
    specs = [PointSpec(0, "int16", scale=0.1, add=-40.0), PointSpec(1, "uint16", bit_offset=15),
             PointSpec(1, "uint16", bit_mask=0x0F00), PointSpec(2, "string", length=3),
             PointSpec(5, "string", "BADC", length=2), PointSpec(7, "float32"), PointSpec(1, "bool", bit_mask=0x0001)]
    payload = struct.pack(">hH", 655, 0x8A01) + b"AB\x00C\x00\x00" + b"YXWZ" + struct.pack(">f", 1.5)
    d = BlockDecoder(specs)
    vals = d.decode(payload)
    assert vals[0] == pytest.approx(25.5) and vals[1] is True and vals[2] == 0x0A and vals[6] is True
    assert vals[3] == "AB\x00C" and vals[4] == "XYZW" and vals[5] == 1.5
    short, kinds = d.decode_into(payload[:10])
    assert short[5] is None and short[4] is None and short[0] == pytest.approx(25.5) and kinds[5] == 5
    bits = BlockDecoder([PointSpec(0, "bool"), PointSpec(9, "bool"), PointSpec(30, "bool")], bits=True)
    assert bits.decode(bytes([0x01, 0x02])) == [True, True, None]
    assert codec.encode(PointSpec(0, "int16", scale=0.1, add=-40.0), 25.5) == [655]
    assert codec.encode(PointSpec(0, "string", "BADC", length=2), "XYZ") == [0x5958, 0x005A]


@pytest.mark.parametrize("spec,value,msg", [
    (PointSpec(0, "int16"), 40000, "out of range for int16"),
    (PointSpec(0, "uint16"), -1, "out of range"),
    (PointSpec(0, "int16", scale=0.1), 5000.0, "after scale 0.1"),
    (PointSpec(0, "uint32"), float("nan"), "not a finite number"),
    (PointSpec(0, "float32"), 1e39, "out of range"),
    (PointSpec(0, "string", length=1), "abc", "does not fit"),
    (PointSpec(0, "uint16"), "x", "cannot write"),
])
def test_encode_errors(spec, value, msg):
    with pytest.raises(EncodeError, match=msg):
        codec.encode(spec, value)


def test_mask_write_fc22_semantics():
    for bit in range(16):
        for on in (True, False):
            a, o = codec.mask_write(PointSpec(0, "uint16", bit_offset=bit), on)
            cur = random.randrange(65536)
            res = (cur & a) | (o & ~a & 0xFFFF)
            assert ((res >> bit) & 1) == on and (res & ~(1 << bit)) == (cur & ~(1 << bit))
    a, o = codec.mask_write(PointSpec(0, "uint16", bit_mask=0x0F00), 0xA)
    assert (0x1234 & a) | (o & ~a & 0xFFFF) == 0x1A34
    with pytest.raises(EncodeError, match="does not fit the field"):
        codec.mask_write(PointSpec(0, "uint16", bit_mask=0x0F00), 0x1F)


@settings(max_examples=N, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(FMT)), st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"]),
                          st.integers(0, 120)), min_size=1, max_size=60), st.binary(max_size=260))
def test_decode_never_reads_out_of_bounds_and_matches_struct(specs, payload):
    ps = [PointSpec(off, t, o) for t, o, off in specs]
    vals = BlockDecoder(ps).decode(payload)
    for s, v in zip(ps, vals):
        n = 2 * s.registers
        raw = payload[2 * s.offset: 2 * s.offset + n]
        if len(raw) < n:
            assert v is None
            continue
        regs = [raw[i:i + 2] for i in range(0, n, 2)]
        if s.order in ("CDAB", "DCBA"):
            regs = regs[::-1]
        if s.order in ("BADC", "DCBA"):
            regs = [r[::-1] for r in regs]
        want = struct.unpack(FMT[s.type], b"".join(regs))[0]
        assert v == want or (isinstance(want, float) and math.isnan(want) and math.isnan(v))
