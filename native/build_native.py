"""cffi API-mode build of ``gatewayd.native._native`` from the C sources in native/.

``setup.py`` picks up ``ffibuilder`` (``cffi_modules``) for ``pip install .``,
``pip install -e .`` and ``pip wheel .``; there the C sources are given relative to
the repository root, as setuptools wants. ``python native/build_native.py [DIR]``
compiles the module directly (absolute paths) into DIR (default: build/native),
e.g. for the sanitizer build; the installed package is rebuilt with ``pip install -e .``.

``GATEWAYD_NATIVE_CFLAGS`` adds compiler flags (``native/sanitize.sh`` uses it for
ASan/UBSan; ``-fsanitize`` flags are passed to the linker too).

The declarations live in ``gatewayd_native.cdef``, the C side in ``gatewayd_native.h``
and one ``.c`` file per area (SPDX-License-Identifier: Apache-2.0).
"""

import os
import sys

from cffi import FFI, VerificationError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCES = ["crc.c", "mstp.c", "rtu.c", "planner.c", "codec.c"]
NO_COMPILER = ("gatewayd: cannot build the native extension (native/*.c): a C compiler and the Python headers "
               "are needed (Debian: apt-get install gcc python3-dev)")


def make_builder(absolute: bool) -> FFI:
    """``absolute``: for ``FFI.compile()``, which compiles from its own temporary directory."""
    builder = FFI()
    with open(os.path.join(HERE, "gatewayd_native.cdef"), encoding="utf-8") as fh:
        builder.cdef(fh.read())
    extra = os.environ.get("GATEWAYD_NATIVE_CFLAGS", "").split()
    where = (lambda p: os.path.join(ROOT, p)) if absolute else (lambda p: p)
    builder.set_source(
        "gatewayd.native._native",
        '#include "gatewayd_native.h"',
        sources=[where(os.path.join("native", s)) for s in SOURCES],
        include_dirs=[where("native")],
        libraries=["m"],
        extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"] + extra,
        extra_link_args=[f for f in extra if f.startswith("-fsanitize")],
    )
    return builder


# setuptools runs from the repository root (relative sources); anything else gets absolute paths.
ffibuilder = make_builder(absolute=os.path.abspath(os.getcwd()) != ROOT)


def main(argv: list[str]) -> int:
    target = argv[0] if argv else os.path.join(ROOT, "build", "native")
    try:
        so = make_builder(absolute=True).compile(tmpdir=target, verbose=False)
    except VerificationError as e:  # cffi's wrapper around CompileError, LinkError, CCompilerError ...
        print(f"{NO_COMPILER}. Compiler said: {e}", file=sys.stderr)
        return 1
    print(so)
    return 0


if __name__ == "__main__" and os.path.basename(sys.argv[0]) == "build_native.py":
    sys.exit(main(sys.argv[1:]))
