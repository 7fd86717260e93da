#!/bin/sh
# Installs what jwkengine needs from Debian and builds it into build/.
# Used by both README commands; safe to run again.
set -eu
cd "$(dirname "$0")/.."

PACKAGES="build-essential cmake pkg-config lua5.4 liblua5.4-dev libssl-dev openssl
  libp11-kit-dev lua-cjson lua-yaml lua-busted lua-sql-sqlite3 lua-sql-postgres softhsm2 opensc
  postgresql python3 python3-jwcrypto python3-cryptography
  nginx libnginx-mod-http-lua libluajit2-5.1-dev luajit2 valgrind libnss3 libnss3-tools
  p11-kit p11-kit-modules wrk luarocks python3-prometheus-client python3-pykcs11"
# Node.js (for the npm `jose` interop check) may come with the machine;
# Debian's is used only when there is none.
command -v npm >/dev/null 2>&1 || PACKAGES="$PACKAGES nodejs npm"

missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $missing
  # Debian starts the packaged nginx on port 80; the tests run their own.
  case "$missing" in *nginx*) $SUDO service nginx stop >/dev/null 2>&1 || true ;; esac
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
