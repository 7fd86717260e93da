#!/bin/sh
# valgrind memcheck over the core: the C unit tests, and one plain-Lua run
# through every core path (spec/memcheck/core.lua) on a SoftHSM token behind
# the fault module. Fails on any memcheck error, and on any leak whose stack
# passes through jwkengine's own code (core/, spec/faultmod/); leaks inside
# Lua, SoftHSM or OpenSSL alone are not ours and are only counted.
#   scripts/memcheck.sh [BUILD_DIR]   (needs SOFTHSM2_CONF; test.sh sets it)
set -u
cd "$(dirname "$0")/.."
build=${1:-build}
command -v valgrind >/dev/null || { echo "memcheck: valgrind is not installed"; exit 1; }
: "${SOFTHSM2_CONF:?memcheck: SOFTHSM2_CONF must point at a throwaway token folder}"
logs=$(mktemp -d /tmp/jwkengine-memcheck.XXXXXX)
trap 'rm -rf "$logs"' EXIT
VALGRIND="valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect --keep-debuginfo=yes
  --errors-for-leak-kinds=none --num-callers=30 --error-exitcode=99"

status=0
check() { # name log
  errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$2" | tail -n 1)
  # A leak belongs to the code that allocated it: past the allocator,
  # OpenSSL and libc frames, the first frame decides (ours when it names one
  # of our source files; Lua's, SoftHSM's or another library's otherwise).
  ours=$(awk '/are (definitely|indirectly) lost/ { record = 1; decided = 0; next }
              record && /^==[0-9]+== *$/ { record = 0; next }
              record && !decided && /(at|by) 0x/ {
                if ($0 ~ /vgpreload|libcrypto\.so|libc\.so|ld-linux|\(in \/usr\/lib\/x86_64-linux-gnu\/libssl/) next
                decided = 1
                if ($0 ~ /\((p11_|lua_|swkey|aesgcm|pkey|evp_sig|jws|b64url|ec_der|alg|error|jose_parse|faultmod)[a-z_]*\.c:/) n++
              }
              END { print n + 0 }' "$2")
  lost=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$2" | tail -n 1)
  echo "memcheck $1: ${errors:-?} errors, ${ours} leak records from jwkengine's code (definitely lost in all: ${lost:-0} bytes)"
  if [ "${errors:-1}" != 0 ] || [ "$ours" != 0 ]; then
    status=1
    grep -A30 -E "Invalid|uninitialised|Mismatched|are (definitely|indirectly) lost" "$2" | head -n 80
  fi
}

for t in "$build"/test_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  $VALGRIND --log-file="$logs/$name.log" "$t" >/dev/null 2>&1
  check "$name" "$logs/$name.log"
done

label="memcheck-$$"
softhsm2-util --init-token --free --label "$label" --so-pin 0000 --pin 1234 >/dev/null
control="$logs/faults.ctl"
printf 'faults=C_Sign:CKR_SESSION_HANDLE_INVALID@2;C_SignInit:CKR_USER_NOT_LOGGED_IN@5;C_SignInit:CKR_OBJECT_HANDLE_INVALID@9~;C_Sign:CKR_DEVICE_ERROR@14\n' > "$control"
JWKE_FAULT_CONTROL="$control" LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$build/lib/?.so;;" \
  $VALGRIND --log-file="$logs/core.log" lua5.4 spec/memcheck/core.lua "$build" "$label"
rc=$?
check "core (Lua over the C core)" "$logs/core.log"
if [ "$rc" -ne 0 ] && [ "$rc" -ne 99 ]; then
  echo "memcheck: the core run itself failed (exit $rc)"
  status=1
fi
exit $status
