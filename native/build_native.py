"""cffi API-mode build of ``gatewayd.native._native`` from the C sources in native/.

setup.py uses ``ffibuilder`` (``cffi_modules``) for ``pip install .``, ``pip install -e .``
and wheel builds; ``python native/build_native.py`` builds into build/native for
development. ``GATEWAYD_NATIVE_CFLAGS`` adds compiler flags (``native/sanitize.sh``
uses it for ASan/UBSan).
"""

import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCES = ["crc.c", "mstp.c", "rtu.c", "planner.c", "codec.c"]


def make_builder(absolute: bool) -> FFI:
    """setuptools refuses absolute source paths; ``FFI.compile()`` changes into its tmpdir and needs them."""
    b = FFI()
    with open(os.path.join(HERE, "gatewayd_native.cdef"), encoding="utf-8") as fh:
        b.cdef(fh.read())
    extra = os.environ.get("GATEWAYD_NATIVE_CFLAGS", "").split()
    where = (lambda p: p) if absolute else os.path.relpath
    b.set_source(
        "gatewayd.native._native",
        '#include "gatewayd_native.h"',
        sources=[where(os.path.join(HERE, s)) for s in SOURCES],
        include_dirs=[where(HERE)],
        extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"] + extra,
        extra_link_args=[f for f in extra if f.startswith("-fsanitize")],
    )
    return b


ffibuilder = make_builder(absolute=os.environ.get("GATEWAYD_NATIVE_ABSPATHS") == "1")

if __name__ == "__main__" and os.path.basename(sys.argv[0]) == "build_native.py":
    make_builder(absolute=True).compile(tmpdir=os.path.join(ROOT, "build", "native"), verbose=False)
