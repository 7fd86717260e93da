#!/bin/sh
# The README's second command: set up, then run every test.
#
#   1. C unit tests (ctest)
#   2. the busted specs under Lua 5.4, against throwaway SoftHSM tokens, a
#      throwaway PostgreSQL cluster and real nginx, all on loopback
#   3. the same busted suite against an AddressSanitizer + UBSan build
#      (except the nginx specs: nginx cannot load a sanitized module; and the
#      luarocks spec: it builds and loads a rock of its own, unsanitized)
#   4. the libFuzzer targets, each for a bounded time (in the background
#      while steps 5 and 6 run; reported last)
#   5. valgrind memcheck over the C core
#   6. the C core and its unit tests in the build types CI does not cover
#      (Debug, MinSizeRel): built and run with ctest
#
# Ends with one "N passed, N failed" line over the distinct tests and steps
# (busted's pending tests shown beside it); the sanitizer pass re-runs the
# same specs, so it has a line of its own, outside that count, and any
# failure in it still fails the run. Extra arguments go
# to the busted runs (e.g. scripts/test.sh spec/engine_spec.lua); set
# JWKE_QUICK=1 to run only steps 1 and 2.
set -u
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1
. scripts/softhsm-env.sh
. scripts/postgres-env.sh
trap 'postgres_stop; rm -rf "$JWKE_TMP"' EXIT

# A developer's own settings must not leak into the specs.
unset HSM_ENABLED HSM_LIBRARY HSM_TOKEN_LABEL HSM_SLOT HSM_PIN HSM_PIN_FILE HSM_KEY_SET_PREFIX \
  HSM_MIN_RSA_BITS HSM_MAX_SESSIONS HSM_URI JWKENGINE_CONFIG DSN SECRETS_SYSTEM LD_PRELOAD \
  JWKE_FAULTS JWKE_FAULT_LATENCY_US JWKE_FAULT_REMOVED JWKE_FAULT_TOKEN_FLAGS JWKE_FAULT_FORK_STRICT \
  JWKE_FAULT_LENGTHS
# The fault module reads these when a spec loads it in-process.
export JWKE_FAULT_CONTROL="$JWKE_TMP/faults.ctl" JWKE_FAULT_STATS="$JWKE_TMP/faults-%p.stats"
# p11-kit's client module reads its server's address from the environment
# (spec/helpers/p11kit.lua starts a server there).
export P11_KIT_SERVER_ADDRESS="unix:path=$JWKE_TMP/p11kit.sock"

# The npm `jose` package for the interop spec, pinned by scripts/npm-jose.
mkdir -p "$JWKE_TMP/npm-jose"
cp scripts/npm-jose/package.json scripts/npm-jose/*.mjs "$JWKE_TMP/npm-jose/"
(cd "$JWKE_TMP/npm-jose" && npm install --no-audit --no-fund --loglevel=error >/dev/null) ||
  echo "npm install of jose failed: spec/jose_interop_spec.lua will report it"
export JWKE_NPM_JOSE_DIR="$JWKE_TMP/npm-jose"

# Each step's wall time, printed with the summary: the suite has a time
# budget (README, "Testing").
run_started=$(date +%s)
timings=""
step_label=""
step() { # label: ends the previous step's clock, starts this one's
  now=$(date +%s)
  [ -z "$step_label" ] || timings="$timings  $step_label: $((now - step_started)) s
"
  step_label=$1
  step_started=$now
  [ "$1" = "end" ] || echo "== $1"
}

passed=0
failed=0
pending=0
rerun_summary=""
rerun_failed=0
summary=""
log="$JWKE_TMP/step.log"
add() { # label passed failed [pending]
  passed=$((passed + $2))
  failed=$((failed + $3))
  pending=$((pending + ${4:-0}))
  summary="$summary$1: $2 passed, $3 failed${4:+, $4 pending}
"
}
# A second run of tests already counted: its own line, failures still fail.
add_rerun() { # label passed failed [pending]
  rerun_failed=$((rerun_failed + $3))
  rerun_summary="$rerun_summary$1 (the same tests again, not in the total): $2 passed, $3 failed${4:+, $4 pending}
"
}

# Runs busted with the given build folder; reports its summary line
# through `record` (add or add_rerun).
busted_run() { # record label build_dir [busted args...]
  record=$1 label=$2 build=$3
  shift 3
  JWKE_BUILD_DIR=$build "$@" 2>&1 | tee "$log"
  line=$(grep -E '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors?' "$log" | tail -n 1)
  if [ -z "$line" ]; then
    $record "$label" 0 1
    return
  fi
  ok=$(echo "$line" | sed -n 's/^\([0-9]*\) success.*/\1/p')
  bad=$(echo "$line" | sed -n 's/.* \([0-9]*\) failures\{0,1\} \/ \([0-9]*\) errors\{0,1\}.*/\1 \2/p' |
    awk '{print $1 + $2}')
  skipped=$(echo "$line" | sed -n 's/.* \([0-9]*\) pending.*/\1/p')
  $record "$label" "${ok:-0}" "${bad:-1}" "${skipped:-0}"
}

# Runs ctest in a build folder; counts its summary line.
ctest_run() { # label build_dir
  (cd "$2" && ctest --output-on-failure) 2>&1 | tee "$log"
  c_total=$(sed -n 's/.* tests failed out of \([0-9]*\).*/\1/p' "$log")
  c_failed=$(sed -n 's/.* tests passed, \([0-9]*\) tests failed out of.*/\1/p' "$log")
  add "$1" "$(( ${c_total:-0} - ${c_failed:-0} ))" "${c_failed:-1}"
}

step "1. C unit tests"
ctest_run "ctest" build

step "2. busted (Lua 5.4, build/)"
busted_run add "busted" build lua5.4 /usr/bin/busted -o scripts/busted-timing.lua "$@"

if [ "${JWKE_QUICK:-0}" != 1 ]; then
  step "3. busted against the AddressSanitizer + UBSan build (build-asan/)"
  # a failed build must not leave an older build-asan/ to be tested
  if cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DJWKE_SANITIZE=ON >"$log" 2>&1 &&
    cmake --build build-asan -j"$(nproc)" >>"$log" 2>&1; then
    asan_built=1
  else
    tail -n 40 "$log"
    echo "the AddressSanitizer build failed: the sanitizer pass is not run"
    add_rerun "busted (ASan+UBSan)" 0 1
    asan_built=0
  fi
  # The sanitized runner hosts busted: it links the sanitizer runtime first,
  # so nothing is preloaded into the specs' other processes. A plain lua5.4
  # that loads the sanitized module gets the runtime through JWKE_PRELOAD.
  # a small quarantine: freed blocks held by ASan would otherwise look like
  # growth to the soak's flat-memory check
  export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:quarantine_size_mb=8
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  export JWKE_PRELOAD="$(gcc -print-file-name=libasan.so)"
  # specs may leave out what only waits (the 30 s outage) in this pass
  export JWKE_SANITIZER_PASS=1
  if [ "$asan_built" = 1 ]; then
    busted_run add_rerun "busted (ASan+UBSan)" build-asan build-asan/jwkengine /usr/bin/busted -o scripts/busted-timing.lua \
      --cpath='build-asan/lib/?.so' --exclude-pattern=nginx --exclude-pattern=luarocks "$@"
    if grep -qE "ERROR: AddressSanitizer|runtime error:" "$log"; then
      echo "the sanitizers reported an error (above)"
      add_rerun "sanitizer reports" 0 1
    fi
  fi
  unset ASAN_OPTIONS UBSAN_OPTIONS JWKE_PRELOAD JWKE_SANITIZER_PASS

  # The fuzzers run in the background while steps 5 and 6 run, so their
  # clang build and their bounded runs overlap memcheck and the other build
  # types instead of adding to them. None of the three has a timer, a token
  # or a server that the others' load could make fail: libFuzzer stops on
  # time, not on work done.
  echo "== 4. fuzzers (beside steps 5 and 6; reported after them)"
  fuzz_log="$JWKE_TMP/fuzz.log"
  JWKE_FUZZ_SECONDS=${JWKE_FUZZ_SECONDS:-15} scripts/fuzz.sh >"$fuzz_log" 2>&1 &
  fuzz_pid=$!

  step "5. valgrind memcheck over the core"
  scripts/memcheck.sh build >"$log" 2>&1
  mc_rc=$?
  cat "$log"
  mc_ok=$(grep -c "^memcheck .*: 0 errors, 0 leak records" "$log")
  mc_bad=$(( $(grep -c "^memcheck .*errors" "$log") - mc_ok ))
  [ "$mc_rc" -eq 0 ] || [ "$mc_bad" -gt 0 ] || mc_bad=1
  add "memcheck" "$mc_ok" "$mc_bad"

  # Only the runner and the unit tests (the c_tests target): enough to
  # catch what one build type breaks (a Debug build once failed to link).
  step "6. other build types: the core, the runner and ctest"
  for type in Debug MinSizeRel; do
    dir=build-$(echo "$type" | tr 'A-Z' 'a-z')
    if cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="$type" >"$log" 2>&1 &&
      cmake --build "$dir" -j"$(nproc)" --target c_tests >>"$log" 2>&1; then
      ctest_run "ctest ($type)" "$dir"
    else
      tail -n 30 "$log"
      add "build ($type)" 0 1
    fi
  done

  step "4. fuzzers: waiting for them to end"
  wait "$fuzz_pid"
  fuzz_rc=$?
  grep -E '^(== |Done |fuzz: )' "$fuzz_log"
  if [ "$fuzz_rc" -eq 0 ]; then add "fuzzers" 1 0; else tail -n 60 "$fuzz_log"; add "fuzzers" 0 1; fi
fi

step end
echo
printf "wall time per step (the fuzzers began with step 5):\n%s" "$timings"
echo "all steps: $(( $(date +%s) - run_started )) s (after the set-up)"
printf "%s" "$summary"
printf "%s" "$rerun_summary"
echo "$passed passed, $failed failed, $pending pending"
[ "$rerun_failed" -eq 0 ] || echo "the sanitizer pass failed ($rerun_failed): the run fails"
[ "$failed" -eq 0 ] && [ "$rerun_failed" -eq 0 ]
