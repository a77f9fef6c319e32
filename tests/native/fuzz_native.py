"""Coverage-guided fuzzing of the two stream receivers with atheris (libFuzzer), when it is installed.

    python tests/native/fuzz_native.py mstp -runs=200000 [-max_len=8192] [corpus_dir]
    python tests/native/fuzz_native.py rtu  -max_total_time=60

Each input drives a receiver with chunk sizes taken from the input itself, then checks the invariants
(tests/native/test_native_fuzz.py checks the same ones with hypothesis in the normal suite):
MS/TP: every frame returned is one the stream really holds (re-encoding it gives bytes found in the
input), the counters add up, nothing is returned for empty input; RTU: every response returned has the
expected unit/function, a good CRC and lies in the input. Only the Python wrappers are instrumented
(the atheris wheel has no libFuzzer runtime a -fsanitize=fuzzer-no-link C build could link against);
memory errors in the C code surface when the harness runs under native/sanitize.sh's ASan/UBSan
build, which tests/native/test_native_fuzz.py does whenever atheris is installed.
"""

import sys

if __name__ == "__main__":
    import atheris  # optional: pip install atheris

    with atheris.instrument_imports(include=["gatewayd.native"]):
        from gatewayd.native import crc, mstp, rtu
else:
    from gatewayd.native import crc, mstp, rtu


def check_mstp(data: bytes) -> None:
    if len(data) < 3:
        return
    max_data, step, stream = (data[0] << 3) % 2033, data[1] % 64 + 1, data[2:]
    rx = mstp.MstpReceiver(max_data=max_data)
    items = []
    for i in range(0, len(stream), step):
        items += rx.feed(stream[i:i + step], with_errors=True)
    e = rx.silence()
    items += [e] if e else []
    frames = [x for x in items if isinstance(x, mstp.Frame)]
    c = rx.counters
    assert c["frames"] == len(frames)
    assert sum(c[k] for k in ("header_crc", "data_crc", "oversize", "truncated", "malformed")) == \
        len(items) - len(frames)
    assert c["garbage_bytes"] <= len(stream)
    for f in frames:
        assert len(f.data) <= max_data
        if mstp.is_extended(f.frame_type):
            assert f.data  # (COBS has more than one encoding of some data: no byte comparison)
        elif f.frame_type < 128 or len(f.data) >= 2:
            assert mstp.encode_frame(*f) in stream, f


def check_rtu(data: bytes) -> None:
    if len(data) < 4:
        return
    unit, function, step, stream = data[0], data[1] % 127 + 1, data[2] % 32 + 1, data[3:]
    sc = rtu.RtuResponseScanner(unit, function)
    for i in range(0, len(stream), step):
        r = sc.feed(stream[i:i + step])
        if r is not None:
            frame = bytes([r.unit]) + r.pdu
            frame += crc.crc16_modbus(frame).to_bytes(2, "little")
            assert r.unit == unit and r.function & 0x7F == function and frame in stream
            assert (r.exception_code is not None) == bool(r.function & 0x80)
        assert sc._rx.len <= 520
    assert sc.garbage_bytes <= len(stream)


TARGETS = {"mstp": check_mstp, "rtu": check_rtu}


def main(argv) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        raise SystemExit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus]")
    atheris.Setup([argv[0]] + argv[2:], atheris.instrument_func(TARGETS[argv[1]]))
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
