"""Native core figures: MS/TP receive, CRCs (vs crcmod and pure Python), block planner, block decode.

Targets (issue 3): MS/TP receive >= 100 MB/s and >= 30x the pure-Python reference; planning 10,000
points < 2 ms; decoding one 125-register block holding 60 points < 5 us, the Python call included.
Prints figures and ratios; asserts nothing. Best of several runs (the machine is shared and noisy).
"""

import os
import random
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "native")]

import crcmod  # noqa: E402
import crcmod.predefined  # noqa: E402

import reference as ref  # noqa: E402
from gatewayd.native import codec, crc, mstp, planner  # noqa: E402


def best(fn, repeat=5, number=1):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return min(times)


def mstp_receive(rnd):
    frames = [mstp.encode_frame(rnd.choice([5, 6]), rnd.randrange(128), 1, os.urandom(rnd.randrange(20, 480)))
              for _ in range(2000)]
    frames += [mstp.encode_frame(32, 3, 1, os.urandom(1400)) for _ in range(200)]
    frames += [mstp.encode_frame(0, rnd.randrange(128), 1) for _ in range(1000)]   # tokens
    rnd.shuffle(frames)
    stream = b"".join(frames) * 4
    chunks = [stream[i:i + 65536] for i in range(0, len(stream), 65536)]
    nframes = 4 * len(frames)

    def run():
        rx = mstp.MstpReceiver()
        got = 0
        for c in chunks:
            got += len(rx.feed(c))
        assert got == nframes

    t = best(run)
    sample = stream[:150_000]
    tp = best(lambda: ref.MstpReceiver().feed(sample), repeat=1)
    c_ns, py_ns = t / len(stream) * 1e9, tp / len(sample) * 1e9
    print(f"MS/TP receive, 64 KiB chunks ({len(stream) / 1e6:.1f} MB, {nframes} frames incl. 800 extended):")
    print(f"  C {c_ns:6.2f} ns/byte = {1e3 / c_ns:6.1f} MB/s   pure Python {py_ns:8.1f} ns/byte = "
          f"{1e3 / py_ns:5.2f} MB/s   ratio x{py_ns / c_ns:,.0f}   (target >= 100 MB/s, >= 30x)")
    noisy = bytes(rnd.choice([0x55, 0xFF, 0x00, rnd.randrange(256)]) for _ in range(1 << 20))
    tn = best(lambda: mstp.MstpReceiver().feed(noisy, with_errors=True), repeat=3)
    print(f"  line noise (1 MiB, 0x55/0xFF-heavy): {tn / len(noisy) * 1e9:6.2f} ns/byte")
    one = stream[:100_000]

    def bytewise():
        rx = mstp.MstpReceiver()
        for i in range(len(one)):
            rx.feed(one[i:i + 1])

    tb = best(bytewise, repeat=1)
    print(f"  one octet per feed() (a datalink reading byte by byte): {tb / len(one) * 1e9:6.0f} ns/byte "
          "(Python call overhead bound)")


def crcs():
    data = os.urandom(1 << 20)
    small = data[:20_000]
    print("CRCs over 1 MiB (pure Python over 20 kB):")
    for name, cfun, mod, pyfun in [
        ("Modbus CRC-16", crc.crc16_modbus, crcmod.predefined.mkCrcFun("modbus"), ref.crc16_modbus),
        ("MS/TP data CRC-16", crc.mstp_data_crc, crcmod.predefined.mkCrcFun("x-25"), ref.mstp_data_crc),
        ("CRC-32K", crc.crc32k, crcmod.mkCrcFun(0x1741B8CD7, rev=True, initCrc=0, xorOut=0xFFFFFFFF), ref.crc32k),
        ("MS/TP header CRC-8", crc.mstp_header_crc, crcmod.mkCrcFun(0x181, rev=True, initCrc=0, xorOut=0xFF),
         ref.mstp_header_crc),
    ]:
        tc = best(lambda: cfun(data)) / len(data) * 1e9
        tm = best(lambda: mod(data)) / len(data) * 1e9
        tpy = best(lambda: pyfun(small), repeat=1) / len(small) * 1e9
        print(f"  {name:19} C {tc:5.2f} ns/byte   crcmod {tm:5.2f} ns/byte (x{tm / tc:4.2f})   "
              f"pure Python {tpy:7.1f} ns/byte (x{tpy / tc:,.0f})")
    modbus = crcmod.predefined.mkCrcFun("modbus")
    for n in (8, 256):
        frame = data[:n]
        tcall = best(lambda: crc.crc16_modbus(frame), number=20000)
        tmod = best(lambda: modbus(frame), number=20000)
        print(f"  one Modbus CRC call on {n:3} bytes, Python call included: C {tcall * 1e9:5.0f} ns, "
              f"crcmod {tmod * 1e9:5.0f} ns")


def planning(rnd):
    pts = [(rnd.choice([2, 3]), 1, rnd.randrange(0, 30000), rnd.choice([1, 2, 2, 4])) for _ in range(10_000)]
    forbidden = [(2, 1, a, a + 3) for a in range(500, 30000, 1500)]
    t = best(lambda: planner.plan(pts), repeat=9)
    tf = best(lambda: planner.plan(pts, forbidden=forbidden), repeat=9)
    prepared = planner.PlanInput(pts)
    tp = best(lambda: planner.plan(prepared), repeat=9)
    tpf = best(lambda: planner.plan(prepared, forbidden=forbidden), repeat=9)
    tpack = best(lambda: planner.PlanInput(pts), repeat=9)
    p = planner.plan(pts)
    assert planner.plan(prepared) == p
    from array import array
    from itertools import chain

    from gatewayd.native._bindings import ffi, lib
    n = len(pts)
    quads = ffi.from_buffer("uint32_t[]", array("I", chain.from_iterable(pts)))
    out = [ffi.new("gw_sort_item[]", 2 * n), ffi.new("uint32_t[]", 4 * n), ffi.new("uint32_t[]", n + 1),
           ffi.new("uint32_t[]", 2 * n), ffi.new("uint8_t[]", n)]
    fb = ffi.new("gw_range[]", 1)
    tc = best(lambda: lib.gw_plan(quads, n, 10, 125, 2000, fb, 0, *out), repeat=9)
    print(f"planner, 10,000 points -> {len(p.blocks)} blocks (target < 2 ms):")
    print(f"  plan(PlanInput) {tp * 1e3:5.2f} ms ({tpf * 1e3:5.2f} ms with 20 forbidden ranges): a driver re-planning "
          f"points it packed once; packing them {tpack * 1e3:5.2f} ms")
    print(f"  plan(tuples)    {t * 1e3:5.2f} ms ({tf * 1e3:5.2f} ms with 20 forbidden ranges); "
          f"the C call alone {tc * 1e3:5.2f} ms")


def decoding(rnd):
    # 60 points filling 125 registers: 5 float64 (20), 50 float32/int32/uint32 (100), 5 uint16 (5),
    # mixed orders, some scaled
    kinds = ["float64"] * 5 + ["float32", "int32", "uint32", "float32", "float32"] * 10 + ["uint16"] * 5
    rnd.shuffle(kinds)
    specs, off = [], 0
    for i, t in enumerate(kinds):
        scale = 0.1 if t == "uint16" and i % 2 else 1.0
        specs.append(codec.PointSpec(off, t, ["ABCD", "CDAB", "BADC", "DCBA"][i % 4], scale=scale))
        off += codec.WIDTHS[t]
    assert off == 125 and len(specs) == 60
    payload = os.urandom(250)
    d = codec.BlockDecoder(specs)
    td = best(lambda: d.decode(payload), repeat=7, number=20000)
    ti = best(lambda: d.decode_into(payload), repeat=7, number=20000)
    fmts = {"float64": "d", "float32": "f", "int32": "i", "uint32": "I", "uint16": "H"}

    def by_struct():
        return [struct.unpack_from(">" + fmts[s.type], payload, 2 * s.offset)[0] for s in specs]

    tn = best(by_struct, repeat=5, number=2000)
    print(f"block decode, 125 registers / 60 points (mixed types and orders): {td * 1e6:5.2f} us per decode() "
          f"call, {ti * 1e6:5.2f} us decode_into()   (target < 5 us)")
    print(f"  the same with struct.unpack_from per point (ABCD only, no scaling): {tn * 1e6:5.2f} us "
          f"(x{tn / td:.1f} slower)")


def main():
    rnd = random.Random(7)
    mstp_receive(rnd)
    crcs()
    planning(rnd)
    decoding(rnd)


if __name__ == "__main__":
    main()
