"""Fuzzing both stream receivers in the normal suite: hypothesis drives the invariant checks of
fuzz_native.py (the atheris harness) with inputs biased towards the interesting octets, plus a seeded
random soak. GATEWAYD_FUZZ_SCALE scales both (e.g. 50 for a long run); with atheris installed the
coverage-guided harness runs briefly too."""

import importlib.util
import os
import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_support import SCALE, budget

from fuzz_native import check_mstp, check_rtu
from gatewayd.native import crc, mstp, rtu

HERE = os.path.dirname(os.path.abspath(__file__))

# octets that matter to the state machines, and pieces of valid frames
mstp_atoms = st.one_of(
    st.sampled_from([b"\x55", b"\xff", b"\x55\xff", b"\x00", b"\x55\x55\xff"]),
    st.binary(max_size=16),
    st.builds(lambda t, d: mstp.encode_frame(t, 1, 2, d), st.sampled_from([0, 6, 200]), st.binary(min_size=2, max_size=60)),
    st.builds(lambda t, d: mstp.encode_frame(t, 1, 2, d), st.sampled_from([32, 33, 64]), st.binary(min_size=1, max_size=700)),
    st.builds(lambda h: b"\x55\xff" + h + bytes([crc.mstp_header_crc(h)]), st.binary(min_size=5, max_size=5)),
)


@settings(max_examples=budget(1000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 255), st.integers(0, 255), st.lists(mstp_atoms, max_size=25), st.binary(max_size=8))
def test_mstp_receiver_invariants(max_data, step, atoms, tail):
    check_mstp(bytes([max_data, step]) + b"".join(atoms) + tail)


rtu_atoms = st.one_of(
    st.sampled_from([b"\x01", b"\x03", b"\x83", b"\x01\x03", b"\x01\x2b\x0e"]),
    st.binary(max_size=12),
    st.builds(lambda f, d: rtu.frame(1, bytes([f]) + d), st.integers(1, 127), st.binary(max_size=40)),
    st.builds(lambda d: rtu.frame(1, bytes([3, len(d)]) + d), st.binary(max_size=250)),
)


@settings(max_examples=budget(1000), deadline=None)
@given(st.integers(0, 255), st.lists(rtu_atoms, max_size=12), st.integers(0, 255))
def test_rtu_scanner_invariants(function, atoms, step):
    check_rtu(bytes([1, function, step]) + b"".join(atoms))


def test_seeded_random_soak():
    rnd = random.Random(20240611)
    alphabet = [0x55, 0xFF, 0x00, 0x01, 0x03, 0x83]
    for _ in range(int(150 * SCALE)):
        n = rnd.randrange(1, 4000)
        blob = bytes(rnd.choice(alphabet) if rnd.random() < 0.5 else rnd.randrange(256) for _ in range(n))
        check_mstp(blob)
        check_rtu(blob[:600])


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
@pytest.mark.parametrize("target", ["mstp", "rtu"])
def test_atheris_harness(target, tmp_path):
    runs = int(20000 * SCALE)
    seconds = int(min(500, 10 * SCALE))  # whichever comes first: big budgets stay bounded in time
    p = subprocess.run([sys.executable, os.path.join(HERE, "fuzz_native.py"), target, f"-runs={runs}",
                        f"-max_total_time={seconds}", "-max_len=4096", "-seed=1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=seconds + 100)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Done" in p.stderr
