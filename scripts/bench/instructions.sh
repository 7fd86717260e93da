#!/bin/sh
# The engine's own work per ES256 token, counted by callgrind (immune to the
# machine's load; BENCHMARKS.md, "Instructions per token"):
#
#   scripts/bench/instructions.sh [N] [ALG] [SIDES]   (default 1000 ES256 "floor jwkengine jwkengine-luajit")
#   W=20 PEERS_VERIFY_AFTER_SIGN=false scripts/bench/instructions.sh 50 RS256 jwkengine
#
# Runs peers.sh's floor (host SHA-256 + C_SignInit + C_Sign, one session),
# jwkengine's engine:sign_jwt under Lua 5.4 and LuaJIT, and the OpenSSL +
# libp11 peer on the same key,
# each with W = 100 (or $W) and with W + N tokens after the same warm-up; a side's
# cost per token is (its instructions at W + N - at W) / N, so start-up,
# warm-up and exit cancel out. The engine's own work is jwkengine minus
# the floor. Allocations per token: the same difference of valgrind's heap
# summary (malloc, calloc and realloc calls, Lua's allocator included).
set -eu
N=${1:-1000}
ALG=${2:-ES256}
SIDES=${3:-floor jwkengine jwkengine-luajit openssl-libp11}
W=${W:-100}
. "$(dirname "$0")/peers/env.sh"
cc -O2 -g -I/usr/include/p11-kit-1 -o "$DIR/floor" "$PEERS_DIR/floor.c" -lcrypto -ldl
cc -O2 -g -o "$DIR/openssl_engine" "$PEERS_DIR/openssl_engine.c" -lcrypto
ENGINE_SO=$(find /usr/lib -path '*engines-3/pkcs11.so' 2>/dev/null | head -n 1)
URI_ID=$(key_id_uri "$ALG")
make_token "$ALG"
kid=$(kid_of "$ALG")

# side COUNT: the command line signing COUNT tokens
side() {
  case "$1" in
    floor) echo "$DIR/floor $MODULE peers-$ALG 1234 $ALG $(key_id_hex "$ALG") $kid -$2" ;;
    jwkengine) echo "lua5.4 $PEERS_DIR/jwkengine.lua peers-$ALG -$2" ;;
    jwkengine-luajit) echo "luajit $PEERS_DIR/jwkengine.lua peers-$ALG -$2" ;;
    openssl-libp11) echo "$DIR/openssl_engine $ENGINE_SO $MODULE pkcs11:token=peers-$ALG;id=$URI_ID;type=private 1234 $ALG $kid -$2" ;;
  esac
}
# cpath SIDE: the jwkengine module the side loads
cpath() { [ "$1" = jwkengine-luajit ] && echo "$ROOT/build/lib-luajit/?.so;;" || echo "$ROOT/build/lib/?.so;;"; }
# instructions SIDE COUNT
instructions() {
  LUA_CPATH=$(cpath "$1") valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file="$DIR/cg.out" $(side "$1" "$2") >"$DIR/vg.out" 2>"$DIR/vg.err" || {
    cat "$DIR/vg.err" >&2; exit 1; }
  sed -n 's/^summary: //p; s/^totals: //p' "$DIR/cg.out" | head -n 1
}
# allocations SIDE COUNT
allocations() {
  LUA_CPATH=$(cpath "$1") valgrind --tool=memcheck $(side "$1" "$2") 2>&1 >/dev/null | sed -n 's/.*total heap usage: \([0-9,]*\) allocs.*/\1/p' | tr -d ,
}

echo "per $ALG token, (W + N) - W with W = $W, N = $N, callgrind and memcheck"
echo
echo "| side | instructions | allocations |"
echo "|---|---:|---:|"
for s in $SIDES; do
  i0=$(instructions $s $W); i1=$(instructions $s $((W + N)))
  a0=$(allocations $s $W); a1=$(allocations $s $((W + N)))
  per=$(( (i1 - i0) / N ))
  eval "per_$(echo $s | tr -d -)=$per"
  printf '| %s | %s | %s |\n' "$s" "$per" "$(awk "BEGIN { printf \"%.1f\", ($a1 - $a0) / $N }")"
done
case "$SIDES" in *floor*jwkengine*jwkengine-luajit*openssl-libp11*) ;; *) exit 0 ;; esac
echo
echo "the engine's own work per token: $((per_jwkengine - per_floor)) instructions under Lua 5.4 (target: at most 20000), $((per_jwkengineluajit - per_floor)) under LuaJIT"
echo "OpenSSL + libp11's own work per token: $((per_openssllibp11 - per_floor)) instructions"
echo "floor / jwkengine: $(awk "BEGIN { printf \"%.3f\", $per_floor / $per_jwkengine }") (Lua 5.4), $(awk "BEGIN { printf \"%.3f\", $per_floor / $per_jwkengineluajit }") (LuaJIT); floor / OpenSSL + libp11: $(awk "BEGIN { printf \"%.3f\", $per_floor / $per_openssllibp11 }")"
