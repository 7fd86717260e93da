#!/bin/sh
# The threaded scenarios of the PKCS#11 layer (spec/c/threads.c, and
# spec/c/lua_threads.c through the public Lua API) against a throwaway
# SoftHSM token behind the fault module, each mode in a process of its
# own. ctest runs it in every build folder (build/, build-asan/,
# build-tsan/): a sanitizer report, a lock-order abort or a failed check
# fails it.
#   spec/c/threads.sh BUILD_DIR [MODE...]
# ThreadSanitizer's settings come from spec/c/tsan.supp (what is
# suppressed, and why) and exitcode=66, so any report that is left fails
# the mode.
set -u
build=$(cd "$1" && pwd)
shift
source_dir=$(cd "$(dirname "$0")/../.." && pwd)
modes=${*:-"signers list-reinit forced-reinit fork login logged-out idle open-session acquire-release lua"}
tmp=$(mktemp -d /tmp/jwkengine-threads.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/tokens"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$tmp" \
  >"$tmp/softhsm2.conf"
export SOFTHSM2_CONF="$tmp/softhsm2.conf"
unset JWKE_FAULTS JWKE_FAULT_LATENCY_US JWKE_FAULT_REMOVED JWKE_FAULT_SESSION_IDLE_MS \
  JWKE_FAULT_CONTROL JWKE_FAULT_STATS LD_PRELOAD
export JWKE_FAULT_MODULE=/usr/lib/softhsm/libsofthsm2.so
# absent (no settings) until a mode writes it
export JWKE_FAULT_CONTROL="$tmp/faults.ctl"
export TSAN_OPTIONS="suppressions=$source_dir/spec/c/tsan.supp exitcode=66 second_deadlock_stack=1 report_signal_unsafe=0 ${TSAN_OPTIONS:-}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0 ${ASAN_OPTIONS:-}"
faultmod="$build/spec/faultmod/libjwke_faultmod.so"
pin=1234
softhsm2-util --init-token --free --label threads --so-pin 5678 --pin $pin >/dev/null || exit 1
pkcs11-tool --module "$JWKE_FAULT_MODULE" --token-label threads --login --pin $pin --keypairgen \
  --key-type EC:prime256v1 --usage-sign --label t --id 01 >/dev/null 2>&1 || exit 1

failed=0
for mode in $modes; do
  rm -f "$tmp/faults.ctl"
  if [ "$mode" = lua ]; then
    "$build/lua_threads" "$source_dir" "$faultmod" threads $pin \
      "$tmp/faults.ctl" 2 >"$tmp/out" 2>&1
  else
    "$build/threads" "$mode" "$faultmod" threads $pin t >"$tmp/out" 2>&1
  fi
  rc=$?
  if [ $rc -ne 0 ] || grep -qE "WARNING: ThreadSanitizer|ERROR: AddressSanitizer|runtime error:|lock order violated" "$tmp/out"; then
    cat "$tmp/out"
    echo "threads $mode: FAILED (exit $rc)"
    failed=$((failed + 1))
  else
    tail -n 1 "$tmp/out"
  fi
done
[ $failed -eq 0 ]
