# Sourced by peers.sh and instructions.sh: a throwaway SoftHSM folder and,
# per algorithm, a token "peers-ALG" holding one key pair jwkengine made
# (kid "peer-alg"). Sets ROOT, PEERS_DIR, DIR (removed on exit), MODULE,
# PYTHON, SOFTHSM2_CONF, LUA_PATH; defines kid_of, key_id_hex, key_id_uri,
# make_token.
ROOT=${ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
PEERS_DIR="$ROOT/scripts/bench/peers"
MODULE=/usr/lib/softhsm/libsofthsm2.so
# Debian's python3-pykcs11 and python3-jwcrypto: the system interpreter, not
# another python3 earlier on PATH
PYTHON=/usr/bin/python3
[ -f "$ROOT/build/lib/jwkengine/core.so" ] && [ -f "$ROOT/build/lib-luajit/jwkengine/core.so" ] || {
  echo "build jwkengine first (scripts/setup.sh)" >&2; exit 1; }
# tmpfs when there is one: SoftHSM's file store reads the key's file per call
BASE=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && BASE=/dev/shm
DIR=$(mktemp -d "$BASE/jwkengine-peers.XXXXXX")
trap 'rm -rf "$DIR"' EXIT INT TERM
mkdir "$DIR/tokens"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$DIR" >"$DIR/softhsm2.conf"
export SOFTHSM2_CONF="$DIR/softhsm2.conf"
LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;"
export LUA_PATH

kid_of() { echo "peer-$1" | tr 'A-Z' 'a-z'; }
key_id_hex() { printf '%s' "$(kid_of "$1")" | od -An -tx1 | tr -d ' \n'; }
# the same in a PKCS#11 URI's percent-encoding
key_id_uri() { key_id_hex "$1" | sed 's/../%&/g'; }
make_token() {
  softhsm2-util --init-token --free --label "peers-$1" --so-pin 0000 --pin 1234 >/dev/null
  LUA_CPATH="$ROOT/build/lib/?.so;;" lua5.4 "$PEERS_DIR/setup.lua" "$DIR" "peers-$1" "$1" "$(kid_of "$1")"
}
