#!/bin/sh
# The README's second command: set up, then run every test (C unit tests
# through ctest, the busted specs under Lua 5.4 against a throwaway SoftHSM
# token folder). Ends with one "N passed, N failed" line over everything.
set -u
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1
. scripts/softhsm-env.sh
. scripts/postgres-env.sh
trap 'postgres_stop; rm -rf "$JWKE_TMP"' EXIT

log="$JWKE_TMP/test.log"
(cd build && ctest --output-on-failure) 2>&1 | tee "$log"
c_passed=$(sed -n 's/.* tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2 \1/p' "$log" | awk '{print $1-$2}')
c_failed=$(sed -n 's/.* tests passed, \([0-9]*\) tests failed out of.*/\1/p' "$log")

# Unset HSM_* so a developer's own settings cannot leak into the specs.
unset HSM_ENABLED HSM_LIBRARY HSM_TOKEN_LABEL HSM_SLOT HSM_PIN HSM_KEY_SET_PREFIX JWKENGINE_CONFIG \
  DSN SECRETS_SYSTEM
lua5.4 /usr/bin/busted -o utfTerminal "$@" 2>&1 | tee "$log"
summary=$(grep -E '[0-9]+ successes? / [0-9]+ failures? / [0-9]+ errors?' "$log" | tail -n 1)
b_passed=$(echo "$summary" | sed -n 's/^\([0-9]*\) success.*/\1/p')
b_failed=$(echo "$summary" | sed -n 's/.* \([0-9]*\) failures\{0,1\} \/ \([0-9]*\) errors\{0,1\}.*/\1 \2/p' | awk '{print $1+$2}')

passed=$(( ${c_passed:-0} + ${b_passed:-0} ))
failed=$(( ${c_failed:-1} + ${b_failed:-1} ))
[ -n "$summary" ] || { echo "busted printed no summary"; failed=$((failed + 1)); }
echo
echo "ctest: ${c_passed:-0} passed, ${c_failed:-?} failed; busted: ${b_passed:-0} passed, ${b_failed:-?} failed"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
