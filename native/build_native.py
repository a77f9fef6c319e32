"""cffi API-mode build of ``gatewayd.native._native`` from the C sources in native/.

Used by setup.py (``cffi_modules``) for ``pip install .``, ``pip install -e .`` and
wheel builds; ``python native/build_native.py`` builds in place for development.
``GATEWAYD_NATIVE_CFLAGS`` adds compiler flags (``native/sanitize.sh`` uses it).
"""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCES = ["crc.c", "mstp.c", "rtu.c", "planner.c", "codec.c"]

ffibuilder = FFI()
with open(os.path.join(HERE, "gatewayd_native.cdef"), encoding="utf-8") as fh:
    ffibuilder.cdef(fh.read())

extra = os.environ.get("GATEWAYD_NATIVE_CFLAGS", "").split()
ffibuilder.set_source(
    "gatewayd.native._native",
    '#include "gatewayd_native.h"',
    # setuptools wants paths relative to the project root (where pip runs setup.py);
    # the in-place development build below runs from anywhere, so it gets absolute ones
    sources=[os.path.join("native", s) if os.path.abspath(os.getcwd()) == ROOT else os.path.join(HERE, s)
             for s in SOURCES],
    include_dirs=[HERE],
    extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"] + extra,
    extra_link_args=[f for f in extra if f.startswith("-fsanitize")],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(ROOT, "build", "native"), verbose=False)
