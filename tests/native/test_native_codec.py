"""Register codec: decode against struct for every type and order, encode/decode round trips, scale/add,
bits and masks, strings, short payloads, encode errors, FC22 masks."""

import math
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_support import budget

from gatewayd.native import codec
from gatewayd.native.codec import MISSING, BlockDecoder, EncodeError, PointSpec, encode, mask_write, mask_write_at

ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]
FMT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "int64": ">q", "uint64": ">Q",
       "float32": ">f", "float64": ">d"}
RANGES = {"int16": (-2**15, 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-2**31, 2**31 - 1),
          "uint32": (0, 2**32 - 1), "int64": (-2**63, 2**63 - 1), "uint64": (0, 2**64 - 1)}


def wire(type_, order, value):
    """Reference encoding, from the order table: the big-endian image, registers reversed for a word swap,
    bytes swapped in each register for a byte swap."""
    img = struct.pack(FMT[type_], value)
    regs = [img[i:i + 2] for i in range(0, len(img), 2)]
    if order in ("CDAB", "DCBA"):
        regs = regs[::-1]
    if order in ("BADC", "DCBA"):
        regs = [r[::-1] for r in regs]
    return b"".join(regs)


def test_order_table_for_one_32_bit_value():
    v = 0x11223344
    assert wire("uint32", "ABCD", v).hex() == "11223344"
    assert wire("uint32", "CDAB", v).hex() == "33441122"
    assert wire("uint32", "BADC", v).hex() == "22114433"
    assert wire("uint32", "DCBA", v).hex() == "44332211"
    for order in ORDERS:
        assert BlockDecoder([PointSpec(0, "uint32", order)]).decode(wire("uint32", order, v)) == [v]
    assert BlockDecoder([PointSpec(0, "uint64", "CDAB")]).decode(bytes.fromhex("7788556633441122")) == \
        [0x1122334455667788]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", list(FMT))
def test_round_trip_every_type_and_order(type_, order):
    rnd = random.Random(f"{type_}{order}")
    for _ in range(300):
        if type_.startswith("float"):
            v = rnd.choice([0.0, -0.0, 1.5, rnd.uniform(-1e6, 1e6), rnd.uniform(-1e30, 1e30)])
            if type_ == "float32":
                v = struct.unpack(">f", struct.pack(">f", v))[0]
        else:
            lo, hi = RANGES[type_]
            v = rnd.choice([lo, hi, 0, 1, -1 if lo else 2, rnd.randint(lo, hi)])
        spec = PointSpec(1, type_, order)
        payload = b"\xaa\xbb" + wire(type_, order, v) + b"\xcc"
        got = BlockDecoder([spec]).decode(payload)[0]
        assert got == v and type(got) is type(v)
        regs = encode(spec, v)
        assert struct.pack(f">{len(regs)}H", *regs) == wire(type_, order, v)


@settings(max_examples=budget(1500), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(FMT)), st.sampled_from(ORDERS), st.integers(0, 130)),
                min_size=1, max_size=60), st.binary(max_size=260))
def test_decode_matches_struct_and_never_reads_beyond_the_payload(specs, payload):
    ps = [PointSpec(off, t, o) for t, o, off in specs]
    vals, status = BlockDecoder(ps).decode_into(payload)
    for s, v, k in zip(ps, vals, status):
        n = 2 * s.registers
        raw = payload[2 * s.offset: 2 * s.offset + n]
        if len(raw) < n:
            assert v is None and k == MISSING
            continue
        regs = [raw[i:i + 2] for i in range(0, n, 2)]
        if s.order in ("CDAB", "DCBA"):
            regs = regs[::-1]
        if s.order in ("BADC", "DCBA"):
            regs = [r[::-1] for r in regs]
        want = struct.unpack(FMT[s.type], b"".join(regs))[0]
        assert (v == want and type(v) is type(want)) or (math.isnan(want) and math.isnan(v))


@settings(max_examples=budget(1000), deadline=None)
@given(st.sampled_from(["int16", "uint16", "int32", "uint32", "int64"]), st.sampled_from(ORDERS),
       st.sampled_from([0.1, 0.01, 2.0, -0.5, 10.0]), st.sampled_from([0.0, -40.0, 273.15]), st.data())
def test_scale_add_round_trip(type_, order, scale, add, data):
    lo, hi = RANGES[type_]
    raw = data.draw(st.integers(max(lo, -2**50), min(hi, 2**50)))
    spec = PointSpec(0, type_, order, scale=scale, add=add)
    value = BlockDecoder([spec]).decode(wire(type_, order, raw))[0]
    assert isinstance(value, float) and value == pytest.approx(raw * scale + add)
    assert encode(spec, value) == encode(PointSpec(0, type_, order), raw)


def test_bits_masks_strings_and_short_payloads():
    specs = [PointSpec(0, "int16", scale=0.1, add=-40.0), PointSpec(1, "uint16", bit_offset=15),
             PointSpec(1, "uint16", bit_mask=0x0F00), PointSpec(2, "string", length=3),
             PointSpec(5, "string", "BADC", length=2), PointSpec(7, "float32"), PointSpec(1, "bool", bit_mask=0x0001),
             PointSpec(1, "uint16", "BADC", bit_offset=0), PointSpec(9, "uint32", "CDAB", bit_mask=0xFFFF0000),
             PointSpec(1, "bool")]
    payload = struct.pack(">hH", 655, 0x8A01) + b"AB\x00C\x00\x00" + b"YXWZ" + struct.pack(">f", 1.5) + \
        bytes.fromhex("00011234")
    d = BlockDecoder(specs)
    vals = d.decode(payload)
    assert vals[0] == pytest.approx(25.5) and vals[1] is True and vals[2] == 0x0A and vals[6] is True
    assert vals[3] == "AB\x00C" and vals[4] == "XYZW" and vals[5] == 1.5 and vals[7] is False
    assert vals[8] == 0x1234 and vals[9] is True       # CDAB: 0x1234_0001
    short, status = d.decode_into(payload[:10])
    assert short[:5] == [pytest.approx(25.5), True, 0x0A, "AB\x00C", None] and short[5] is None
    assert status[4] == status[5] == MISSING and status[0] != MISSING
    bits = BlockDecoder([PointSpec(0, "bool"), PointSpec(9, "bool"), PointSpec(30, "bool")], bits=True)
    assert bits.decode(bytes([0x01, 0x02])) == [True, True, None]
    assert bits.decode(bytes([0x00, 0x00, 0x00, 0x40])) == [False, False, True]
    assert BlockDecoder([]).decode(b"") == []
    assert BlockDecoder([PointSpec(0, "uint64")]).decode(b"\xff" * 8) == [2**64 - 1]
    assert BlockDecoder([PointSpec(0, "uint64", scale=2.0)]).decode(b"\xff" * 8) == [2.0**65]
    assert BlockDecoder([PointSpec(0, "int64")]).decode(b"\x80" + bytes(7)) == [-2**63]
    for view in (bytearray(payload), memoryview(payload)):
        assert BlockDecoder(specs).decode(view) == vals


def test_spec_checks():
    for bad in [PointSpec(0, "int24"), PointSpec(0, "int16", "ABDC"), PointSpec(-1, "int16"),
                PointSpec(0, "string"), PointSpec(0, "int16", bit_offset=16), PointSpec(0, "int32", bit_mask=1 << 32),
                PointSpec(0, "int16", scale=0.0), PointSpec(0, "int16", bit_offset=1, bit_mask=2)]:
        with pytest.raises(ValueError):
            BlockDecoder([bad])


def test_encode_strings_and_scaled_values():
    assert encode(PointSpec(0, "int16", scale=0.1, add=-40.0), 25.5) == [655]
    assert encode(PointSpec(0, "string", "BADC", length=2), "XYZ") == [0x5958, 0x005A]
    assert encode(PointSpec(0, "string", length=2), "ab") == [0x6162, 0]
    assert encode(PointSpec(0, "uint64"), 2**64 - 1) == [0xFFFF] * 4
    assert encode(PointSpec(0, "uint64"), 1.5e19) == encode(PointSpec(0, "uint64"), 15000000000000000000)
    assert encode(PointSpec(0, "float32"), float("nan")) == [0x7FC0, 0]
    assert encode(PointSpec(0, "float64", "DCBA"), 1) == [0, 0, 0, 0xF03F]
    assert encode(PointSpec(0, "bool"), True) == [1]
    assert encode(PointSpec(0, "int16"), True) == [1]


@pytest.mark.parametrize("spec,value,msg", [
    (PointSpec(0, "int16"), 40000, r"out of range for int16 -32768\.\.32767"),
    (PointSpec(0, "uint16"), -1, "out of range"),
    (PointSpec(0, "int16", scale=0.1), 5000.0, "after scale 0.1"),
    (PointSpec(0, "uint32"), float("nan"), "not a finite number"),
    (PointSpec(0, "int64"), float("inf"), "not a finite number"),
    (PointSpec(0, "uint64"), 2.0**64, "out of range"),
    (PointSpec(0, "uint64"), 2**64, "out of range"),
    (PointSpec(0, "float32"), 1e39, "out of range"),
    (PointSpec(0, "string", length=1), "abc", "does not fit"),
    (PointSpec(0, "string", length=2), "€", "latin-1"),
    (PointSpec(0, "string", length=2), 5, "takes a str"),
    (PointSpec(0, "uint16"), "x", "cannot write"),
    (PointSpec(0, "uint16", bit_offset=2), 1, "mask_write"),
])
def test_encode_errors(spec, value, msg):
    with pytest.raises(EncodeError, match=msg):
        encode(spec, value)
    assert issubclass(EncodeError, ValueError)


def fc22(current, and_mask, or_mask):
    return (current & and_mask) | (or_mask & ~and_mask & 0xFFFF)


def test_mask_write_fc22_semantics():
    rnd = random.Random(4)
    for bit in range(16):
        for on in (True, False):
            for order in ("ABCD", "BADC"):
                spec = PointSpec(0, "uint16", order, bit_offset=bit)
                a, o = mask_write(spec, on)
                cur = rnd.randrange(65536)
                new = fc22(cur, a, o)
                dec = BlockDecoder([spec, PointSpec(0, "uint16", order)])
                before = dec.decode(cur.to_bytes(2, "big"))[1]
                v, whole = dec.decode(new.to_bytes(2, "big"))
                assert v is on and whole & ~(1 << bit) == before & ~(1 << bit)
    a, o = mask_write(PointSpec(0, "uint16", bit_mask=0x0F00), 0xA)
    assert fc22(0x1234, a, o) == 0x1A34
    assert mask_write(PointSpec(0, "uint16", "BADC", bit_mask=0x0F00), 0xA) == (0xFFF0, 0x000A)
    assert mask_write(PointSpec(0, "bool", bit_mask=0x0030), True) == (0xFFCF, 0x0030)
    assert mask_write(PointSpec(0, "uint16", bit_mask=0x00F0, scale=0.5), 2.5) == (0xFF0F, 0x0050)
    with pytest.raises(EncodeError, match="does not fit the field"):
        mask_write(PointSpec(0, "uint16", bit_mask=0x0F00), 0x1F)
    with pytest.raises(EncodeError, match="bit_offset or bit_mask"):
        mask_write(PointSpec(0, "uint16"), 1)


def test_mask_write_on_wider_points_names_the_register():
    # uint32 ABCD: value bit 3 is in the second (low) register; CDAB: in the first
    assert mask_write_at(PointSpec(0, "uint32", bit_offset=3), True) == (1, 0xFFF7, 0x0008)
    assert mask_write_at(PointSpec(0, "uint32", "CDAB", bit_offset=3), True) == (0, 0xFFF7, 0x0008)
    assert mask_write_at(PointSpec(0, "uint32", bit_offset=20), True) == (0, 0xFFEF, 0x0010)
    assert mask_write_at(PointSpec(0, "int64", "DCBA", bit_mask=0xFF << 56), 0x12) == (3, 0xFF00, 0x0012)
    assert mask_write(PointSpec(0, "uint32", bit_offset=20), False) == (0xFFEF, 0)
    with pytest.raises(EncodeError, match="register \\+1"):
        mask_write(PointSpec(0, "uint32", bit_offset=3), True)
    with pytest.raises(EncodeError, match="spans 2 registers"):
        mask_write_at(PointSpec(0, "uint32", bit_mask=0x000FF000), 1)


def test_decoder_is_reusable_and_module_tables():
    d = BlockDecoder([PointSpec(i, "uint16") for i in range(125)])
    for k in range(3):
        payload = bytes([k]) * 250
        assert d.decode(payload) == [k * 257] * 125
    assert set(codec.TYPES) == set(codec.WIDTHS) | {"string"} and codec.ORDERS.keys() == set(ORDERS)
