"""CRCs and MS/TP: known answers, crcmod and reference differentials, streaming receiver, fuzzing."""

import os
import random

import crcmod
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from gatewayd.native import crc, mstp

N = int(2000 * float(os.environ.get("GATEWAYD_FUZZ_SCALE", "1")))

crc16_x25 = crcmod.predefined.mkCrcFun("x-25")
crc16_modbus = crcmod.predefined.mkCrcFun("modbus")
crc32k_mod = crcmod.mkCrcFun(0x1741B8CD7, rev=True, initCrc=0, xorOut=0xFFFFFFFF)


def test_known_answers():
    assert crc.crc16_modbus(b"123456789") == 0x4B37
    assert crc.mstp_data_crc(b"123456789") == 0x906E          # CRC-16/X-25 check value
    assert crc.crc32k(b"123456789") == crc32k_mod(b"123456789")
    # Annex G: Token frame from 0x05 to 0x10 has header CRC 0x8C
    assert mstp.encode_frame(0, 0x10, 0x05) == bytes.fromhex("55ff00100500008c")
    # Modbus: read holding registers request 01 03 00 00 00 0A -> CRC C5 CD
    assert crc.crc16_modbus(bytes.fromhex("01030000000a")).to_bytes(2, "little") == bytes.fromhex("c5cd")


@settings(max_examples=N, deadline=None)
@given(st.binary(max_size=600))
def test_crcs_against_crcmod_and_reference(data):
    assert crc.crc16_modbus(data) == crc16_modbus(data) == ref.crc16_modbus(data)
    assert crc.mstp_data_crc(data) == crc16_x25(data) == ref.mstp_data_crc(data)
    assert crc.crc32k(data) == crc32k_mod(data) == ref.crc32k(data)
    assert crc.mstp_header_crc(data[:5]) == ref.mstp_header_crc(data[:5])


def test_header_and_data_residues():
    for _ in range(200):
        h = bytes(random.randrange(256) for _ in range(5))
        c = crc.mstp_header_crc(h)
        # receiver check from clause 9: CRC over header + CRC octet leaves 0x55
        assert ref.mstp_header_crc(h + bytes([c])) ^ 0xFF == 0x55
        d = os.urandom(random.randrange(1, 60))
        assert crc16_x25(d + crc.mstp_data_crc(d).to_bytes(2, "little")) == 0x0F47  # good-CRC residue, complemented


frame_types = st.one_of(st.integers(0, 7), st.integers(32, 127), st.integers(128, 255))


@settings(max_examples=N // 4, deadline=None)
@given(frame_types, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=1497))
def test_encode_matches_reference_and_round_trips(t, dest, src, data):
    ext = 32 <= t <= 127
    if (ext and not data) or (not ext and t < 128 and len(data) > 501):
        with pytest.raises(ValueError):
            mstp.encode_frame(t, dest, src, data)
        return
    f = mstp.encode_frame(t, dest, src, data)
    assert f == ref.encode_frame(t, dest, src, data)
    rx = mstp.MstpReceiver(max_data=1497)
    assert rx.feed(f) == [mstp.Frame(t, dest, src, data)]


def test_cobs_full_block_edges():
    for n in (253, 254, 255, 508, 509):
        data = bytes([7]) * n
        f = mstp.encode_frame(40, 1, 2, data)
        assert f == ref.encode_frame(40, 1, 2, data)
        assert mstp.MstpReceiver().feed(f)[0].data == data
    data = bytes(range(256)) * 5
    assert mstp.MstpReceiver().feed(mstp.encode_frame(33, 1, 2, data))[0].data == data


def test_streaming_one_byte_and_big_chunks_give_the_same_frames():
    frames = [mstp.encode_frame(random.choice([0, 1, 5, 6, 40, 130]), i % 256, 3, os.urandom(random.randrange(1, 400)))
              for i in range(300)]
    stream = b"".join(os.urandom(random.randrange(0, 20)).replace(b"\x55", b"\x00") + f for f in frames)
    big = mstp.MstpReceiver().feed(stream)
    rx = mstp.MstpReceiver()
    small = [fr for i in range(len(stream)) for fr in rx.feed(stream[i:i + 1])]
    assert len(big) == 300 and big == small
    assert rx.counters["frames"] == 300 and rx.counters["header_crc"] == 0


def test_errors_are_reported_counted_and_the_receiver_resyncs():
    good = mstp.encode_frame(6, 1, 2, b"hello")
    bad_hdr = bytearray(good)
    bad_hdr[7] ^= 0xFF
    bad_data = bytearray(good)
    bad_data[9] ^= 0x01
    oversize = b"\x55\xff\x06\x01\x02\x03\x00" + bytes([crc.mstp_header_crc(b"\x06\x01\x02\x03\x00")])
    rx = mstp.MstpReceiver()
    out = rx.feed(b"garbage" + bytes(bad_hdr) + good + bytes(bad_data) + good + oversize + good, with_errors=True)
    kinds = [o.kind if isinstance(o, mstp.MstpError) else "frame" for o in out]
    assert kinds == ["header_crc", "frame", "data_crc", "frame", "oversize", "frame"]
    c = rx.counters
    assert (c["frames"], c["header_crc"], c["data_crc"], c["oversize"]) == (3, 1, 1, 1)
    # truncation: a frame cut short by silence
    assert rx.feed(good[:10]) == []
    assert rx.silence() == mstp.MstpError("truncated")
    assert rx.feed(good) == [mstp.Frame(6, 1, 2, b"hello")]
    assert rx.counters["truncated"] == 1


def test_a_real_preamble_inside_a_bad_header_is_found():
    good = mstp.encode_frame(0, 9, 8)
    stream = b"\x55\xff\x01" + good  # a broken header whose bytes hold the start of a real frame
    out = mstp.MstpReceiver().feed(stream, with_errors=True)
    assert out[-1] == mstp.Frame(0, 9, 8, b"")


@settings(max_examples=N // 2, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=40),
    st.builds(lambda t, d: mstp.encode_frame(t, 1, 2, d), st.sampled_from([0, 5, 6, 130]), st.binary(max_size=80)),
    st.builds(lambda d: mstp.encode_frame(40, 3, 4, d), st.binary(min_size=1, max_size=300)),
), max_size=12), st.integers(1, 64), st.integers(0, 600))
def test_receiver_matches_the_reference_on_arbitrary_streams(parts, chunk, max_data):
    stream = b"".join(parts)
    rx = mstp.MstpReceiver(max_data=max_data)
    got = []
    for i in range(0, len(stream), chunk):
        got += rx.feed(stream[i:i + chunk], with_errors=True)
    want = ref.MstpReceiver(max_data=max_data).feed(stream)
    norm = [("frame", g.frame_type, g.dest, g.src, g.data) if isinstance(g, mstp.Frame) else (g.kind,) for g in got]
    assert norm == want


def test_fuzz_random_bytes_never_crash():
    rnd = random.Random(1)
    rx = mstp.MstpReceiver()
    for _ in range(int(200 * float(os.environ.get("GATEWAYD_FUZZ_SCALE", "1")))):
        blob = bytes(rnd.choice([0x55, 0xFF, 0x00, rnd.randrange(256)]) for _ in range(rnd.randrange(1, 3000)))
        rx.feed(blob, with_errors=True)
    assert rx.counters["garbage_bytes"] > 0
