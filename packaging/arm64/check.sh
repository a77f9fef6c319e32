#!/usr/bin/env bash
# make arm64-check: build the native extension for aarch64 and run the native tests there.
#
# Reproducible recipe: a minimal Debian bookworm arm64 root (debootstrap, run through
# qemu-user-static + binfmt_misc), the project copied in, the extension compiled by the
# arm64 gcc inside the root, tests/native run by the arm64 python3. Needs root, the
# packages debootstrap qemu-user-static binfmt-support (installed when missing) and the
# Debian mirror. The root is cached in $ARM64_ROOT (default /var/tmp/gatewayd-arm64-root);
# delete it to start over. armhf: ARCH=armhf (qemu-arm) works the same way.
set -euo pipefail
ARCH=${ARCH:-arm64}
ROOT=${ARM64_ROOT:-/var/tmp/gatewayd-$ARCH-root}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
start=$(date +%s)

if [ "$(id -u)" != 0 ]; then echo "arm64-check needs root (debootstrap, chroot)" >&2; exit 2; fi
need=""
command -v debootstrap >/dev/null || need="$need debootstrap"
[ -x /usr/bin/qemu-aarch64-static ] || need="$need qemu-user-static binfmt-support"
if [ -n "$need" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need; fi
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
update-binfmts --enable qemu-arm >/dev/null 2>&1 || true

if [ ! -e "$ROOT/.gatewayd-ready" ]; then
    echo "== debootstrap $ARCH root in $ROOT (first run only; log in $ROOT/debootstrap.log)"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    debootstrap --arch="$ARCH" --variant=minbase bookworm "$ROOT" "$MIRROR" > "$ROOT.debootstrap.log" 2>&1 \
        || { tail -20 "$ROOT.debootstrap.log"; exit 1; }
    echo "== toolchain and test packages inside the root (apt resolves what debootstrap --include cannot)"
    chroot "$ROOT" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends python3-dev python3-cffi python3-pytest python3-hypothesis python3-crcmod \
        gcc libc6-dev >/dev/null' || exit 1
    touch "$ROOT/.gatewayd-ready"
fi
t_root=$(date +%s)

echo "== copy the project and build the extension with the $ARCH compiler"
rm -rf "$ROOT/src" && mkdir -p "$ROOT/src"
tar -C "$SRC" -cf - native gatewayd/__init__.py gatewayd/native tests/native pyproject.toml | tar -C "$ROOT/src" -xf -
rm -f "$ROOT"/src/gatewayd/native/_native*.so
chroot "$ROOT" /bin/sh -c 'cd /src/native && GATEWAYD_NATIVE_ABSPATHS=1 python3 -c "
from build_native import ffibuilder
so = ffibuilder.compile(tmpdir=\"/src/build\", verbose=False)
print(\"built\", so)
" && cp /src/build/gatewayd/native/_native*.so /src/gatewayd/native/ && uname -m && file=$(ls /src/gatewayd/native/_native*.so) && echo "$file"'
t_build=$(date +%s)

echo "== native tests on $ARCH (emulated)"
# the project's pytest config wants pytest-trio, which the arm64 root does not need for tests/native
chroot "$ROOT" /bin/sh -c 'cd /src && PYTHONPATH=/src:/src/tests/native python3 -m pytest tests/native -q -p no:cacheprovider -c /dev/null --rootdir=/src'
end=$(date +%s)
echo "== arm64-check ok: root $((t_root - start))s, build $((t_build - t_root))s, tests $((end - t_build))s, total $((end - start))s"
