#!/usr/bin/env bash
# Build the native extension with ASan + UBSan into a temporary directory and run tests/native against
# that build (GATEWAYD_NATIVE_SO makes gatewayd.native load it instead of the installed module).
# CPython itself is not instrumented: libasan is preloaded and leak checking is off (CPython "leaks" at
# exit); any UBSan report aborts the run (halt_on_error, -fno-sanitize-recover). Arguments go to pytest
# instead of the default tests/native; GATEWAYD_FUZZ_SCALE=20 bash native/sanitize.sh runs the fuzz/property budgets 20x longer.
# SPDX-License-Identifier: Apache-2.0
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"   # absolute, but keep the venv's symlink
CC=${CC:-gcc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "sanitize: building the ASan/UBSan extension in $tmp"
GATEWAYD_NATIVE_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -O1 -g" \
    "$PY" native/build_native.py "$tmp" >/dev/null
so=$(find "$tmp" -name '_native*.so' | head -n 1)
[ -n "$so" ] || { echo "sanitize: no extension was built" >&2; exit 1; }

export GATEWAYD_NATIVE_SO="$so"
export LD_PRELOAD="$($CC -print-file-name=libasan.so) $($CC -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# make sure the sanitized module, not the installed one, is what the tests import
"$PY" -c "import sys, gatewayd.native; m = sys.modules['gatewayd.native._native']; \
assert m.__file__ == '$so', m.__file__; print('sanitize: testing', m.__file__)"
"$PY" -m pytest -q -p no:cacheprovider "${@:-tests/native}"   # arguments, if any, replace the selection
echo "sanitize: no ASan/UBSan report"
