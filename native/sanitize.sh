#!/usr/bin/env bash
# Build the native extension with ASan + UBSan into a temp dir and run the native tests against it.
# Python itself is not instrumented, so ASan is preloaded and leak checking is off (CPython "leaks" at exit).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"   # absolute, but keep the venv symlink
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "building the sanitized extension in $tmp"
(cd native && GATEWAYD_NATIVE_ABSPATHS=1 GATEWAYD_NATIVE_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -O1 -g" \
    "$PY" - "$tmp" <<'PY'
import os, sys
sys.path.insert(0, ".")
from build_native import ffibuilder
out = sys.argv[1]
so = ffibuilder.compile(tmpdir=out, verbose=False)
print("built", so)
PY
)
so=$(find "$tmp" -name '_native*.so' | head -1)
export GATEWAYD_NATIVE_SO="$so"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
"$PY" -c "import sys, gatewayd.native; m = sys.modules['gatewayd.native._native']; assert '$tmp' in m.__file__, m.__file__; print('using', m.__file__)"
exec "$PY" -m pytest tests/native -q -p no:cacheprovider "$@"
