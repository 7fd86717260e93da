#!/bin/sh
# jwkengine against what a user would pick instead, on the same SoftHSM
# token and the same key (BENCHMARKS.md, "Peers"):
#
#   scripts/bench/peers.sh [--rounds N] [--seconds S] [--algs "ES256 EdDSA RS256"]
#   PEERS_BASELINE=/path/to/other/tree scripts/bench/peers.sh ...   (before and after)
#
# Each peer is a process of its own that warms up, makes complete compact
# JWTs with kid for S seconds (default 1) and prints its rate and a sample
# token: the raw C floor (host SHA-256 + C_SignInit + C_Sign over a fixed
# signing input, scripts/bench/peers/floor.c), jwkengine's engine:sign_jwt
# under Lua 5.4 and under LuaJIT, OpenSSL 3 + libp11's pkcs11 engine in C,
# Node.js pkcs11js (npm, installed into the run's temporary folder) and
# PyKCS11; and jwkengine with hsm.verify_after_sign off. A round runs the
# floor, every peer (in reverse order every other round), and the floor
# again; a peer's ratio is its rate over the mean of its round's two floors, and the table shows the median over N rounds
# (default 5). Every sample token is verified by python3-jwcrypto.
# Needs scripts/setup.sh's packages and build; nothing outside a
# temporary folder is touched.
set -eu
. "$(dirname "$0")/peers/env.sh"
ROUNDS=5
SECS=1
ALGS="ES256 EdDSA RS256"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --algs) ALGS=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--seconds S] [--algs \"ES256 EdDSA RS256\"]" >&2; exit 2 ;;
  esac
done
ENGINE_SO=$(find /usr/lib -path '*engines-3/pkcs11.so' 2>/dev/null | head -n 1)
[ -n "$ENGINE_SO" ] || { echo "libp11's engine is missing: apt-get install libengine-pkcs11-openssl" >&2; exit 1; }

cc -O2 -I/usr/include/p11-kit-1 -o "$DIR/floor" "$PEERS_DIR/floor.c" -lcrypto -ldl
cc -O2 -o "$DIR/openssl_engine" "$PEERS_DIR/openssl_engine.c" -lcrypto
(cd "$DIR" && npm install --silent --no-audit --no-fund --prefix "$DIR/node" pkcs11js >"$DIR/npm.log" 2>&1) || {
  cat "$DIR/npm.log" >&2; exit 1; }
export NODE_PATH="$DIR/node/node_modules"

for alg in $ALGS; do make_token "$alg"; done

# jwkengine-lua5.4-no-verify: hsm.verify_after_sign = false, what the
# default's check of every RSA signature costs (EC and EdDSA: the same as
# the default, which does not verify them)
PEERS="jwkengine-lua5.4 jwkengine-luajit openssl-libp11 node-pkcs11js python-pykcs11 jwkengine-lua5.4-no-verify"
REVERSED="jwkengine-lua5.4-no-verify python-pykcs11 node-pkcs11js openssl-libp11 jwkengine-luajit jwkengine-lua5.4"
# PEERS_BASELINE=DIR: one more peer, "jwkengine-baseline", the Lua 5.4
# engine of another tree (its lua/ and build/lib/, e.g. `git worktree add`
# of main, built): a change's before and after in the same rounds
if [ -n "${PEERS_BASELINE:-}" ]; then
  [ -f "$PEERS_BASELINE/build/lib/jwkengine/core.so" ] || { echo "PEERS_BASELINE: build $PEERS_BASELINE first" >&2; exit 1; }
  PEERS="jwkengine-baseline $PEERS"
  REVERSED="$REVERSED jwkengine-baseline"
fi

# run PEER ALG: prints "rate N" and "token JWT"
run() {
  kid=$(kid_of "$2")
  id=$(key_id_hex "$2")
  case "$1" in
    floor) "$DIR/floor" "$MODULE" "peers-$2" 1234 "$2" "$id" "$kid" "$SECS" ;;
    jwkengine-lua5.4) LUA_CPATH="$ROOT/build/lib/?.so;;" lua5.4 "$PEERS_DIR/jwkengine.lua" "peers-$2" "$SECS" ;;
    jwkengine-lua5.4-no-verify) PEERS_VERIFY_AFTER_SIGN=false LUA_CPATH="$ROOT/build/lib/?.so;;" lua5.4 "$PEERS_DIR/jwkengine.lua" "peers-$2" "$SECS" ;;
    jwkengine-baseline) LUA_PATH="$PEERS_BASELINE/lua/?.lua;$PEERS_BASELINE/lua/?/init.lua;;" \
      LUA_CPATH="$PEERS_BASELINE/build/lib/?.so;;" lua5.4 "$PEERS_DIR/jwkengine.lua" "peers-$2" "$SECS" ;;
    jwkengine-luajit) LUA_CPATH="$ROOT/build/lib-luajit/?.so;;" luajit "$PEERS_DIR/jwkengine.lua" "peers-$2" "$SECS" ;;
    openssl-libp11)
      # libp11 0.4.12 cannot list a token holding an Ed25519 key
      [ "$2" = EdDSA ] && return 0
      "$DIR/openssl_engine" "$ENGINE_SO" "$MODULE" "pkcs11:token=peers-$2;id=$(key_id_uri "$2");type=private" 1234 "$2" "$kid" "$SECS" 2>"$DIR/openssl.err" ;;
    node-pkcs11js) node "$PEERS_DIR/pkcs11js.js" "$MODULE" "peers-$2" 1234 "$2" "$id" "$kid" "$SECS" ;;
    python-pykcs11) "$PYTHON" "$PEERS_DIR/pykcs11_peer.py" "$MODULE" "peers-$2" 1234 "$2" "$id" "$kid" "$SECS" ;;
  esac
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
: >"$DIR/rates"
for round in $(seq 1 "$ROUNDS"); do
  order=$PEERS
  [ $((round % 2)) -eq 0 ] && order=$REVERSED
  for alg in $ALGS; do
    for peer in floor $order floor; do
      out=$(run "$peer" "$alg") || { echo "$peer $alg failed" >&2; cat "$DIR/openssl.err" >&2 2>/dev/null; exit 1; }
      [ -n "$out" ] || continue
      rate=$(echo "$out" | sed -n 's/^rate //p')
      cpu_rate=$(echo "$out" | sed -n 's/^cpu_rate //p')
      echo "$round $alg $peer $rate $cpu_rate" >>"$DIR/rates"
      echo "$peer $(echo "$out" | sed -n 's/^token //p')" >>"$DIR/tokens-$alg"
    done
    printf '.' >&2
  done
done
echo >&2
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

for alg in $ALGS; do
  "$PYTHON" "$PEERS_DIR/verify.py" "$DIR/jwks-$alg.json" "$alg" "$(kid_of "$alg")" <"$DIR/tokens-$alg"
done
echo "every sample token ($(cat "$DIR"/tokens-* | wc -l)) verified by python3-jwcrypto"
echo

# the tables: median over rounds of rate / mean of the round's two floors,
# by CPU time (what a peer's work costs, whatever else the machine runs)
# and by wall clock
"$PYTHON" - "$DIR/rates" "$ALGS" "floor $PEERS" <<'PY'
import statistics, sys
rates, algs, peers = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
by = {}
for line in open(rates):
    r, alg, peer, wall, cpu = line.split()
    by.setdefault((r, alg, peer), []).append((float(wall), float(cpu)))
rounds = sorted({k[0] for k in by}, key=int)
for column, title in ((1, "by CPU time"), (0, "by wall clock")):
    print(f"{title}:\n")
    print("| peer (complete compact JWTs with kid) | " + " | ".join(algs) + " |")
    print("|---|" + "---:|" * len(algs))
    for peer in peers:
        cells = []
        for alg in algs:
            ratios, values = [], []
            for r in rounds:
                floor = statistics.mean(v[column] for v in by[(r, alg, "floor")])
                if (r, alg, peer) in by:
                    value = statistics.mean(v[column] for v in by[(r, alg, peer)])
                    values.append(value)
                    ratios.append(value / floor)
            if not ratios:
                cells.append("—")
            elif peer == "floor":
                cells.append(f"{statistics.median(values):,.0f}/s")
            else:
                cells.append(f"{statistics.median(ratios):.3f} ({statistics.median(values):,.0f}/s)")
        print(f"| {peer} | " + " | ".join(cells) + " |")
    print()
print(f"(ratio: median over {len(rounds)} rounds of the peer's rate over the mean of the same round's two floor runs)")
PY
