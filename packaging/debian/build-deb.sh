#!/usr/bin/env bash
# make deb: build dist/gatewayd_<version>_<arch>.deb
#
# Layout: a self-contained library tree /usr/lib/gatewayd/site (gatewayd, its plugins and every
# dependency, installed with pip --target for the box's python3 3.11), run by Debian's
# /usr/bin/python3 through two small wrappers /usr/bin/gatewayd and /usr/bin/gatewayctl.
# Plus the systemd unit, sysusers.d/tmpfiles.d snippets, /etc/gatewayd/gatewayd.toml (conffile)
# and the docs. Cross builds: see docs/operations.md ("Building for aarch64/armhf").
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$SRC/dist}
PY=${PYTHON:-$SRC/.venv/bin/python}
EXTRAS=${GATEWAYD_EXTRAS:-all}
VERSION=$("$PY" -c "import tomllib; print(tomllib.load(open('$SRC/pyproject.toml','rb'))['project']['version'])")
ARCH=$(dpkg --print-architecture)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/gatewayd_${VERSION}_${ARCH}
mkdir -p "$STAGE/DEBIAN" "$OUT"

echo "== python payload (extras: $EXTRAS)"
"$PY" -m pip wheel -q --no-deps -w "$WORK/wheels" "$SRC"
WHEEL=$(ls "$WORK"/wheels/gatewayd-*.whl)
"$PY" -m pip install -q --no-compile --target "$STAGE/usr/lib/gatewayd/site" "gatewayd[$EXTRAS] @ file://$WHEEL"
rm -rf "$STAGE/usr/lib/gatewayd/site/bin"
find "$STAGE/usr/lib/gatewayd/site" -name __pycache__ -prune -exec rm -rf {} +
# what never runs on a box: apsw's bundled sqlite3 command-line tools/extensions (3 MB) and its tests;
# debug symbols of the extension modules, as dh_strip would (strip of the build root = the target's)
rm -rf "$STAGE/usr/lib/gatewayd/site/apsw/sqlite_extra_binaries" "$STAGE/usr/lib/gatewayd/site/apsw/tests"
if command -v strip >/dev/null; then
    find "$STAGE/usr/lib/gatewayd/site" -name '*.so' -exec strip --strip-unneeded {} +
fi
# the Modbus profiles travel with the package
mkdir -p "$STAGE/usr/share/gatewayd"
if [ -d "$SRC/profiles" ]; then cp -r "$SRC/profiles" "$STAGE/usr/share/gatewayd/"; fi

echo "== wrappers, unit, config, docs"
mkdir -p "$STAGE/usr/bin"
for cmd in gatewayd gatewayctl; do
    mod=$([ $cmd = gatewayd ] && echo gatewayd || echo gatewayd.cli)
    cat > "$STAGE/usr/bin/$cmd" <<WRAP
#!/bin/sh
# $cmd: runs gatewayd from its self-contained library tree with Debian's python3
# (-P: the current directory is not put on sys.path, so a ./gatewayd or ./trio.py is never imported)
lib="\$(dirname "\$(readlink -f "\$0")")/../lib/gatewayd/site"
PYTHONPATH="\$lib" GATEWAYD_PROFILES="\${GATEWAYD_PROFILES:-\$lib/../../../share/gatewayd/profiles}" exec /usr/bin/python3 -s -P -m $mod "\$@"
WRAP
    chmod 755 "$STAGE/usr/bin/$cmd"
done
install -D -m 644 "$SRC/packaging/systemd/gatewayd.service" "$STAGE/usr/lib/systemd/system/gatewayd.service"
# Type=notify-reload needs systemd >= 253 (the target's: build in the target root, or set GATEWAYD_SYSTEMD_VERSION)
SYSTEMD_VERSION=${GATEWAYD_SYSTEMD_VERSION:-$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 }')}
if [ "${SYSTEMD_VERSION:-0}" -ge 253 ] 2>/dev/null; then
    install -D -m 644 "$SRC/packaging/systemd/notify-reload.conf" \
        "$STAGE/usr/lib/systemd/system/gatewayd.service.d/notify-reload.conf"
fi
install -D -m 644 "$SRC/packaging/systemd/gatewayd.sysusers" "$STAGE/usr/lib/sysusers.d/gatewayd.conf"
install -D -m 644 "$SRC/packaging/systemd/gatewayd.tmpfiles" "$STAGE/usr/lib/tmpfiles.d/gatewayd.conf"
install -D -m 640 "$SRC/packaging/debian/gatewayd.toml" "$STAGE/etc/gatewayd/gatewayd.toml"
mkdir -p "$STAGE/etc/gatewayd/conf.d"
install -D -m 644 "$SRC/README.md" "$STAGE/usr/share/doc/gatewayd/README.md"
install -D -m 644 "$SRC/docs/operations.md" "$STAGE/usr/share/doc/gatewayd/operations.md"
printf 'gatewayd\nLicense: Apache-2.0\nBundled Python dependencies keep their own licenses (see usr/lib/gatewayd/site/*.dist-info).\n' \
    > "$STAGE/usr/share/doc/gatewayd/copyright"

echo "== control files"
SIZE=$(du -sk "$STAGE" | cut -f1)
cat > "$STAGE/DEBIAN/control" <<CTL
Package: gatewayd
Version: ${VERSION}-1
Architecture: ${ARCH}
Maintainer: gatewayd developers <dev@gatewayd.invalid>
Installed-Size: ${SIZE}
Depends: python3 (>= 3.11), python3 (<< 3.12)
Recommends: systemd
Section: net
Priority: optional
Homepage: https://gatewayd.invalid
Description: edge gateway daemon for building and plant field devices
 gatewayd polls and subscribes to BACnet, Modbus TCP/RTU and OPC UA devices,
 normalizes every reading into one point model, keeps local stores (history,
 priority arrays, audit, outbox) and forwards events northbound over MQTT.
 Configured by /etc/gatewayd/gatewayd.toml, operated with gatewayctl.
CTL
echo "/etc/gatewayd/gatewayd.toml" > "$STAGE/DEBIAN/conffiles"
# md5sums: `dpkg --verify gatewayd` on a box tells whether the installed files were changed
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
    > "$STAGE/DEBIAN/md5sums"
for s in postinst prerm postrm; do install -m 755 "$SRC/packaging/debian/$s" "$STAGE/DEBIAN/$s"; done

DEB="$OUT/gatewayd_${VERSION}-1_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
