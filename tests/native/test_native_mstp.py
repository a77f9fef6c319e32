"""MS/TP: encoder vs the reference, COBS edges, the streaming receiver (chunking, every error kind, resync)
and differential runs against the octet-by-octet reference receiver."""

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from native_support import budget

import reference as ref
from gatewayd.native import crc, mstp
from gatewayd.native.mstp import Frame, MstpError, MstpReceiver, encode_frame


def norm(items):
    out = []
    for x in items:
        if isinstance(x, Frame):
            out.append(("frame", x.frame_type, x.dest, x.src, x.data))
        else:
            out.append((x.kind, x.frame_type, x.dest, x.src))
    return out


def header(t, dest, src, length):
    h = bytes([t, dest, src, length >> 8, length & 0xFF])
    return b"\x55\xff" + h + bytes([crc.mstp_header_crc(h)])


frame_types = st.one_of(st.integers(0, 31), st.integers(32, 127), st.integers(128, 255))


@settings(max_examples=budget(1500), deadline=None)
@given(frame_types, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=2100))
def test_encode_matches_reference_and_round_trips(t, dest, src, data):
    ext = 32 <= t <= 127
    if ext:
        ok = 1 <= len(data) <= 2032
    else:
        ok = len(data) <= 501 and not (t >= 128 and len(data) < 2)
    if not ok:
        with pytest.raises(ValueError):
            encode_frame(t, dest, src, data)
        return
    f = encode_frame(t, dest, src, data)
    assert f == ref.encode_frame(t, dest, src, data)
    if ext:
        assert 0x55 not in f[8:]                      # COBS + XOR 0x55: no preamble inside the data field
        assert (f[5] << 8 | f[6]) == len(f) - 8 - 2   # Length = encoded data + encoded CRC - 2
    assert MstpReceiver(max_data=2032).feed(f) == [Frame(t, dest, src, data)]


@pytest.mark.parametrize("n", [1, 253, 254, 255, 507, 508, 509, 762, 2032])
@pytest.mark.parametrize("fill", [0x00, 0x07, 0x55])
def test_cobs_block_boundaries(n, fill):
    for data in (bytes([fill]) * n, bytes([fill]) * (n - 1) + b"\0", b"\0" + bytes([fill]) * (n - 1)):
        f = encode_frame(40, 1, 2, data)
        assert f == ref.encode_frame(40, 1, 2, data)
        assert ref.cobs_decode(f[8:-5]) == data
        assert MstpReceiver(max_data=2032).feed(f) == [Frame(40, 1, 2, data)]


def test_encode_limits():
    assert len(encode_frame(6, 1, 2, bytes(501))) == 8 + 501 + 2
    with pytest.raises(ValueError, match="at most 501"):
        encode_frame(6, 1, 2, bytes(502))
    with pytest.raises(ValueError, match="1..2032"):
        encode_frame(32, 1, 2, b"")
    with pytest.raises(ValueError, match="vendor id"):
        encode_frame(130, 1, 2, b"\x01")
    with pytest.raises(ValueError, match="dest"):
        encode_frame(0, 256, 2)
    assert mstp.is_extended(32) and mstp.is_extended(127) and not mstp.is_extended(128)


def stream_of(rnd, n):
    frames = []
    for i in range(n):
        t = rnd.choice([0, 1, 5, 6, 32, 33, 34, 130])
        size = rnd.randrange(2, 480) if t != 0 else 0
        if t in (32, 33):
            size = rnd.randrange(502, 1498)
        frames.append(encode_frame(t, i % 256, 3, os.urandom(size)))
    noise = [os.urandom(rnd.randrange(0, 20)).replace(b"\x55", b"\x00") for _ in frames]
    return frames, b"".join(g + f for g, f in zip(noise, frames)), sum(map(len, noise))


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 4096, 65536])
def test_any_chunking_gives_the_same_frames(chunk):
    rnd = random.Random(chunk)
    frames, stream, noise = stream_of(rnd, 150)
    rx = MstpReceiver()
    got = [f for i in range(0, len(stream), chunk) for f in rx.feed(stream[i:i + chunk])]
    assert [encode_frame(*f) for f in got] == frames
    c = rx.counters
    assert c["frames"] == 150 and c["garbage_bytes"] == noise
    assert c["header_crc"] == c["data_crc"] == c["oversize"] == c["truncated"] == c["malformed"] == 0


def test_buffer_types():
    f = encode_frame(6, 1, 2, b"abc") * 3
    for chunk in (bytearray(f), memoryview(f)):
        assert MstpReceiver().feed(chunk) == [Frame(6, 1, 2, b"abc")] * 3


def test_each_error_is_reported_in_order_counted_and_followed_by_a_resync():
    good = encode_frame(6, 1, 2, b"hello")
    bad_hdr = bytearray(good)
    bad_hdr[7] ^= 0xFF
    bad_data = bytearray(good)
    bad_data[9] ^= 0x01
    bad_ext = bytearray(encode_frame(33, 4, 5, bytes(range(1, 200))))
    bad_ext[20] ^= 0x01
    oversize = header(6, 1, 2, 400) + bytes(402)           # max_data 300 below: skipped, then resync
    implausible = header(6, 1, 2, 3000)                   # no legal frame is that long: resync at once
    malformed = header(40, 1, 2, 3) + b"\x00" * 5
    ext = encode_frame(33, 4, 5, bytes(301))              # Length 305 passes, 301 decoded octets do not
    rx = MstpReceiver(max_data=300)
    out = rx.feed(b"garbage" + bytes(bad_hdr) + good + bytes(bad_data) + good + bytes(bad_ext) + good + oversize
                  + good + implausible + good + malformed + good + ext, with_errors=True)
    assert norm(out) == [
        ("header_crc", None, None, None), ("frame", 6, 1, 2, b"hello"),
        ("data_crc", 6, 1, 2), ("frame", 6, 1, 2, b"hello"),
        ("data_crc", 33, 4, 5), ("frame", 6, 1, 2, b"hello"),
        ("oversize", 6, 1, 2), ("frame", 6, 1, 2, b"hello"),
        ("oversize", 6, 1, 2), ("frame", 6, 1, 2, b"hello"),
        ("malformed", 40, 1, 2), ("frame", 6, 1, 2, b"hello"),
        ("oversize", 33, 4, 5)]
    c = rx.counters
    assert (c["frames"], c["header_crc"], c["data_crc"], c["oversize"], c["malformed"]) == (6, 1, 2, 3, 1)
    assert rx.errors is not None and rx.errors == rx.counters


def test_truncation_by_silence_and_by_a_new_preamble():
    good = encode_frame(6, 1, 2, b"hello")
    rx = MstpReceiver()
    assert rx.feed(good[:10]) == []
    assert rx.silence() == MstpError("truncated", 6, 1, 2)
    assert rx.feed(good[:5]) == [] and rx.silence() == MstpError("truncated")   # inside the header
    assert rx.silence() is None
    assert rx.feed(good) == [Frame(6, 1, 2, b"hello")]
    # an extended frame cut short by the next frame: detected at the next 0x55, no frame lost
    ext = encode_frame(32, 9, 8, bytes(range(256)) * 3)
    out = rx.feed(ext[:300] + good, with_errors=True)
    assert norm(out) == [("truncated", 32, 9, 8), ("frame", 6, 1, 2, b"hello")]
    assert rx.counters["truncated"] == 3


def test_a_real_preamble_inside_a_bad_header_is_found():
    good = encode_frame(0, 9, 8)
    for cut in range(1, 6):
        stream = b"\x55\xff" + bytes([1, 2, 3, 4, 5][:cut]) + good   # a broken header holding a real frame
        out = MstpReceiver().feed(stream, with_errors=True)
        assert out[-1] == Frame(0, 9, 8, b"") and norm(out[:-1]) == [("header_crc", None, None, None)]


def test_repeated_preamble_and_garbage_counting():
    rx = MstpReceiver()
    assert rx.feed(b"\x55\x55\x55" + encode_frame(0, 1, 2)) == [Frame(0, 1, 2, b"")]
    assert rx.counters["garbage_bytes"] == 3            # three of the four 0x55 before 0xFF
    rx.feed(b"\x55\x01ab")
    assert rx.counters["garbage_bytes"] == 7
    rx.feed(b"\x55")
    rx.silence()
    assert rx.counters["garbage_bytes"] == 8


def test_max_data_limits():
    with pytest.raises(ValueError):
        MstpReceiver(max_data=2033)
    rx = MstpReceiver(max_data=0)
    assert rx.feed(encode_frame(0, 1, 2)) == [Frame(0, 1, 2, b"")]
    assert norm(rx.feed(encode_frame(6, 1, 2, b"x") + encode_frame(32, 1, 2, b"x"), with_errors=True)) == \
        [("oversize", 6, 1, 2), ("oversize", 32, 1, 2)]
    rx = MstpReceiver(max_data=2032)
    big = bytes(range(1, 255)) * 8
    assert rx.feed(encode_frame(34, 1, 2, big)) == [Frame(34, 1, 2, big)]


streams = st.lists(st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=12).map(lambda b: b"\x55\xff" + b),
    st.builds(lambda t, d: encode_frame(t, 1, 2, d), st.sampled_from([0, 5, 6, 130]), st.binary(min_size=2, max_size=80)),
    st.builds(lambda t, d: encode_frame(t, 3, 4, d), st.sampled_from([32, 34, 100]), st.binary(min_size=1, max_size=600)),
    st.builds(lambda t, n: header(t, 5, 6, n), st.sampled_from([6, 33, 200]), st.integers(0, 2100)),
), max_size=12)


def mutate(stream: bytes, flips) -> bytes:
    b = bytearray(stream)
    for pos, val in flips:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


@settings(max_examples=budget(1500), deadline=None)
@given(streams, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
       st.lists(st.integers(1, 300), min_size=1, max_size=8), st.integers(0, 2032), st.booleans())
def test_receiver_matches_the_reference_on_arbitrary_streams(parts, flips, chunks, max_data, silence):
    stream = mutate(b"".join(parts), flips)
    rx, want_rx = MstpReceiver(max_data=max_data), ref.MstpReceiver(max_data=max_data)
    got, pos, k = [], 0, 0
    while pos < len(stream):
        n = chunks[k % len(chunks)]
        got += rx.feed(stream[pos:pos + n], with_errors=True)
        pos, k = pos + n, k + 1
    want = want_rx.feed(stream)
    if silence:
        e = rx.silence()
        got += [e] if e else []
        w = want_rx.silence()
        want += [w] if w else []
    assert norm(got) == want
    assert rx.counters == want_rx.counts
