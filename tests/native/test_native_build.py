"""The bindings' public face and the build script's one-line error without a compiler."""

import os
import subprocess
import sys

from gatewayd.native import _bindings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bindings_expose_only_ffi_and_lib():
    assert _bindings.__all__ == ["ffi", "lib"]
    assert _bindings.lib.gw_crc16_modbus(b"123456789", 9) == 0x4B37


def test_missing_compiler_gives_one_clear_line(tmp_path):
    env = dict(os.environ, CC=str(tmp_path / "no-such-gcc"))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "native", "build_native.py"), str(tmp_path / "out")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "C compiler" in lines[0] and "apt-get install gcc python3-dev" in lines[0]
