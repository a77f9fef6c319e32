"""Native core figures: MS/TP receive, CRCs (vs crcmod and pure Python), planner, block decode.

Targets (issue 3): MS/TP receive >= 100 MB/s and >= 30x the pure-Python reference;
planning 10,000 points < 2 ms; one 125-register/60-point block decode < 5 us.
Prints figures and ratios; asserts nothing.
"""

import os
import random
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "native")]

import crcmod.predefined  # noqa: E402

import reference as ref  # noqa: E402
from gatewayd.native import codec, crc, mstp, planner  # noqa: E402


def best(fn, repeat=5, number=1):
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        t.append((time.perf_counter() - t0) / number)
    return min(t)


def main():
    rnd = random.Random(7)
    # ---------------------------------------------------------------- MS/TP receive
    frames = [mstp.encode_frame(rnd.choice([5, 6]), rnd.randrange(128), 1, os.urandom(rnd.randrange(20, 480)))
              for _ in range(2000)]
    frames += [mstp.encode_frame(40, 3, 1, os.urandom(1400)) for _ in range(200)]
    stream = b"".join(frames) * 4
    chunks = [stream[i:i + 65536] for i in range(0, len(stream), 65536)]

    def rx_c():
        r = mstp.MstpReceiver()
        for c in chunks:
            r.feed(c)
    t = best(rx_c)
    mbs = len(stream) / t / 1e6
    sample = stream[: 200_000]
    tp = best(lambda: ref.MstpReceiver().feed(sample), repeat=1)
    py_mbs = len(sample) / tp / 1e6
    print(f"MS/TP receive (64 KiB chunks): {mbs:8.1f} MB/s  {1e9 / (mbs * 1e6):6.2f} ns/byte   "
          f"pure Python {py_mbs:6.3f} MB/s   ratio x{mbs / py_mbs:,.0f}")
    one = stream[:100_000]

    def rx_bytewise():
        r = mstp.MstpReceiver()
        for i in range(len(one)):
            r.feed(one[i:i + 1])
    tb = best(rx_bytewise, repeat=1)
    print(f"MS/TP receive (1 byte at a time): {len(one) / tb / 1e6:8.2f} MB/s (per-call overhead bound)")

    # ---------------------------------------------------------------- CRCs
    data = os.urandom(1 << 20)
    small = data[:20_000]
    for name, cfun, mod, pyfun in [
        ("Modbus CRC-16", crc.crc16_modbus, crcmod.predefined.mkCrcFun("modbus"), ref.crc16_modbus),
        ("MS/TP data CRC-16", crc.mstp_data_crc, crcmod.predefined.mkCrcFun("x-25"), ref.mstp_data_crc),
        ("CRC-32K", crc.crc32k, crcmod.mkCrcFun(0x1741B8CD7, rev=True, initCrc=0, xorOut=0xFFFFFFFF), ref.crc32k),
        ("MS/TP header CRC-8", crc.mstp_header_crc, None, ref.mstp_header_crc),
    ]:
        tc = best(lambda: cfun(data)) / len(data) * 1e9
        tm = best(lambda: mod(data)) / len(data) * 1e9 if mod else float("nan")
        tpy = best(lambda: pyfun(small), repeat=1) / len(small) * 1e9
        print(f"{name:20} C {tc:6.2f} ns/byte   crcmod {tm:6.2f} ns/byte   pure Python {tpy:8.1f} ns/byte   "
              f"C vs Python x{tpy / tc:,.0f}")

    # ---------------------------------------------------------------- planner
    pts = [(rnd.choice([2, 3]), 1, rnd.randrange(0, 30000), rnd.choice([1, 2, 2, 4])) for _ in range(10_000)]
    tpl = best(lambda: planner.plan(pts), repeat=7)
    p = planner.plan(pts)
    # the C planning call alone, inputs already marshalled (what the 2 ms target measures)
    from array import array

    from gatewayd.native._bindings import ffi, lib
    tables, units, addrs, widths = zip(*pts)
    tb, ub, ab, wb = bytes(tables), bytes(units), array("I", addrs), array("I", widths)
    n = len(pts)
    bufs = [ffi.new("gw_sort_item[]", n), ffi.new("gw_block[]", n), ffi.new("uint32_t[]", n + 1),
            ffi.new("uint32_t[]", n), ffi.new("uint32_t[]", n), ffi.new("size_t *"), ffi.new("uint8_t[]", n)]
    fb = ffi.new("gw_range[]", 1)
    pa, pw = ffi.from_buffer("uint32_t[]", ab), ffi.from_buffer("uint32_t[]", wb)
    tc = best(lambda: lib.gw_plan(tb, ub, pa, pw, n, 10, 125, 2000, fb, 0, *bufs), repeat=7)
    print(f"planner, 10,000 points: {tc * 1e3:6.2f} ms in C; {tpl * 1e3:6.2f} ms including the Python "
          f"wrapper (marshalling in and out); {len(p.blocks)} blocks")

    # ---------------------------------------------------------------- decode
    specs, off = [], 0
    while len(specs) < 60:
        t = "float32" if len(specs) % 2 else "uint16"
        specs.append(codec.PointSpec(off, t, "CDAB" if len(specs) % 3 == 0 else "ABCD"))
        off += 2 if t == "float32" else 1
    payload = os.urandom(250)
    d = codec.BlockDecoder(specs)
    n = 20000
    td = best(lambda: d.decode(payload), repeat=5, number=n)
    print(f"block decode, 125 registers / 60 points (90 regs used): {td * 1e6:6.2f} us per call incl. Python")
    tn = best(lambda: [struct.unpack_from(">f" if s.type == "float32" else ">H", payload, 2 * s.offset)
                       for s in specs], repeat=5, number=2000)
    print(f"  same block with struct.unpack_from per point: {tn * 1e6:6.2f} us  (ratio x{tn / td:.1f})")


if __name__ == "__main__":
    main()
