#!/bin/sh
# The README's second command: set up, then run every test.
#
#   1. C unit tests (ctest)
#   2. the busted specs under Lua 5.4, against throwaway SoftHSM tokens, a
#      throwaway PostgreSQL cluster and real nginx, all on loopback
#   3. the same busted suite against an AddressSanitizer + UBSan build
#      (except the nginx specs: nginx cannot load a sanitized module; and the
#      luarocks spec: it builds and loads a rock of its own, unsanitized)
#   4. the libFuzzer targets, each for a bounded time
#   5. valgrind memcheck over the C core
#   6. the C core and its unit tests in the build types CI does not cover
#      (Debug, MinSizeRel): built and run with ctest
#   7. the threaded drivers of the PKCS#11 layer (spec/c/threads.sh: signers,
#      slot listing and health during re-initialization, forced
#      re-initialization, fork, login recovery, idle sessions, two Lua
#      states) under ThreadSanitizer (build-tsan/); step 1 runs them in
#      build/ and step 3 in build-asan/
# The builds of steps 3, 4, 6 and 7 run beside step 2 (those after the
# sanitized one beside step 3 too), and memcheck and the fuzzers (as soon
# as they are built) beside steps 2 and 3, all at the lowest priority (see
# `lowest` below).
#
# Ends with one "N passed, N failed" line over the distinct tests and steps
# (busted's pending tests shown beside it); the sanitizer pass re-runs the
# same specs, so it has a line of its own, outside that count, and any
# failure in it still fails the run. Extra arguments go
# to the busted runs (e.g. scripts/test.sh spec/engine/engine_spec.lua); set
# JWKE_QUICK=1 to run only steps 1 and 2, JWKE_BUSTED_OUTPUT to give step 2
# another busted output handler (e.g. a file of your own that times tests).
set -u
cd "$(dirname "$0")/.."
scripts/setup.sh || exit 1
. scripts/softhsm-env.sh
. scripts/postgres-env.sh
# The background builds and checks (below), stopped if the run ends early:
# each with everything it started (stop_tree). Killing only the subshell
# left its cmake, fuzzers or valgrind running after the run, writing into
# build-asan/ or a deleted $JWKE_TMP while the next run started.
background="" # their pids
# stop_tree PID: terminates PID and its descendants, each stopped before
# its children are listed so that it starts no new one meanwhile. TERM,
# not KILL: make deletes the object file a killed compiler left half
# written, which would otherwise look up to date and break every later
# build-asan/ link.
stop_tree() {
  kill -STOP "$1" 2>/dev/null || return 0
  for child in $(ps -o pid= --ppid "$1"); do stop_tree "$child"; done
  kill -TERM "$1" 2>/dev/null
  kill -CONT "$1" 2>/dev/null
}
trap 'for job in $background $(cat "$JWKE_TMP/shard-pids" 2>/dev/null); do stop_tree "$job"; done
  postgres_stop; rm -rf "$JWKE_TMP"' EXIT
# sh runs the EXIT trap on exit, not on a signal: a run interrupted or
# terminated would otherwise leave its PostgreSQL cluster and background
# jobs running for good.
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
# beside VAR COMMAND...: runs COMMAND in the background, its pid in VAR;
# joined PID waits for it and forgets it (its id may be reused by then).
beside() {
  beside_var=$1
  shift
  "$@" &
  eval "$beside_var=$!"
  background="$background $!"
}
joined() {
  wait "$1"
  background=$(for job in $background; do [ "$job" = "$1" ] || echo "$job"; done)
}

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
  echo "npm install of jose failed: spec/jose/jose_interop_spec.lua will report it"
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

# busted_sharded SHARDS [EXCLUDE_PATTERN...] -- COMMAND...: runs COMMAND
# (a busted command line) SHARDS times side by side, each with its share of
# the spec files (scripts/deal-specs.lua) appended, and each with a SoftHSM
# token folder, fault-control file, p11-kit socket and PostgreSQL database
# names of its own (JWKE_SHARD), so no two shards share a token, a file or
# a server. Prints each shard's output in turn, then one busted summary
# line over all of them for busted_run to count. A shard that printed no
# summary (it crashed) counts as one error.
busted_sharded() {
  shards=$1
  shift
  excludes=""
  while [ "$1" != "--" ]; do
    excludes="$excludes $1"
    shift
  done
  shift
  find spec -name '*_spec.lua' | sort | lua5.4 scripts/deal-specs.lua "$shards" $excludes >"$JWKE_TMP/deal"
  : >"$JWKE_TMP/shard-pids"
  k=1
  while [ "$k" -le "$shards" ]; do
    dir="$JWKE_TMP/shard$k"
    mkdir -p "$dir/tokens"
    sed "s|$JWKE_TMP/tokens|$dir/tokens|" "$SOFTHSM2_CONF" >"$dir/softhsm2.conf"
    files=$(awk -F '\t' -v k="$k" '$1 == k { print $2 }' "$JWKE_TMP/deal")
    (
      export SOFTHSM2_CONF="$dir/softhsm2.conf" JWKE_SHARD="$k" \
        JWKE_FAULT_CONTROL="$dir/faults.ctl" JWKE_FAULT_STATS="$dir/faults-%p.stats" \
        P11_KIT_SERVER_ADDRESS="unix:path=$dir/p11kit.sock"
      # shellcheck disable=SC2086 # one word per spec file
      exec "$@" $files
    ) >"$dir/busted.log" 2>&1 &
    echo $! >>"$JWKE_TMP/shard-pids"
    k=$((k + 1))
  done
  total_ok=0 total_failed=0 total_errors=0 total_pending=0
  k=1
  for pid in $(cat "$JWKE_TMP/shard-pids"); do
    wait "$pid"
    echo "---- shard $k of $shards: $(awk -F '\t' -v k="$k" '$1 == k { n++ } END { print n + 0 }' "$JWKE_TMP/deal") spec files"
    cat "$JWKE_TMP/shard$k/busted.log"
    line=$(grep -E '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors?' "$JWKE_TMP/shard$k/busted.log" | tail -n 1)
    if [ -z "$line" ]; then
      echo "shard $k printed no summary: counted as one error"
      total_errors=$((total_errors + 1))
    else
      set -- $(echo "$line" | sed 's/[^0-9 ]//g')
      total_ok=$((total_ok + $1)) total_failed=$((total_failed + $2))
      total_errors=$((total_errors + $3)) total_pending=$((total_pending + ${4:-0}))
    fi
    k=$((k + 1))
  done
  : >"$JWKE_TMP/shard-pids"
  echo "$total_ok successes / $total_failed failures / $total_errors errors / $total_pending pending (all $shards shards)"
}

# Runs ctest in a build folder; counts its summary line.
ctest_run() { # label build_dir
  (cd "$2" && ctest --output-on-failure) 2>&1 | tee "$log"
  c_total=$(sed -n 's/.* tests failed out of \([0-9]*\).*/\1/p' "$log")
  c_failed=$(sed -n 's/.* tests passed, \([0-9]*\) tests failed out of.*/\1/p' "$log")
  add "$1" "$(( ${c_total:-0} - ${c_failed:-0} ))" "${c_failed:-1}"
}

# What runs beside the busted passes runs at the lowest CPU and I/O
# priority (nice 19, ionice idle): the passes mostly wait on tokens,
# servers and timers (about 40 % of 2 cores), and these take only what the
# passes leave idle. None of them has a timer, a token or a server a pass
# uses: a build is done when it is done, libFuzzer stops on time rather
# than on work, memcheck counts errors, not seconds.
lowest() { nice -n 19 ionice -c 3 "$@"; }

# build_variant DIR TYPE TARGET [CMAKE_ARGS...]: configures and builds
# TARGET ("all" for everything) into DIR at the lowest priority; the log in
# $JWKE_TMP/DIR.log, the exit status in $JWKE_TMP/DIR.rc.
build_variant() {
  dir=$1 type=$2 target=$3
  shift 3
  { lowest cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="$type" "$@" &&
    lowest cmake --build "$dir" -j"$(nproc)" --target "$target"; } >"$JWKE_TMP/$dir.log" 2>&1
  echo $? >"$JWKE_TMP/$dir.rc"
}
built() { [ "$(cat "$JWKE_TMP/$1.rc" 2>/dev/null)" = 0 ]; }

step "1. C unit tests"
ctest_run "ctest" build

if [ "${JWKE_QUICK:-0}" != 1 ]; then
  # Built while step 2 runs: the sanitized build for step 3, the fuzzers
  # for step 4, and the other build types for step 6 (only the runner and
  # the unit tests, the c_tests target: enough to catch what one build type
  # breaks; a Debug build once failed to link).
  build_beside_busted() {
    build_variant build-asan RelWithDebInfo all -DJWKE_SANITIZE=ON
    lowest scripts/fuzz.sh --build-only >"$JWKE_TMP/build-fuzz.log" 2>&1
    echo $? >"$JWKE_TMP/build-fuzz.rc"
    build_variant build-debug Debug c_tests
    build_variant build-minsizerel MinSizeRel c_tests
    build_variant build-tsan RelWithDebInfo thread_drivers -DJWKE_TSAN=ON
  }
  beside builds build_beside_busted
  # Memcheck (step 5, over build/, on a SoftHSM token folder of its own)
  # from the start, and the fuzzers (step 4) as soon as they are built:
  # beside both busted passes. Run after the first pass they took 170 s of
  # the budget (8 targets of 15 s each, one after the other, then
  # memcheck); libFuzzer stops on time and memcheck counts errors, so
  # neither depends on the CPU it gets.
  mkdir -p "$JWKE_TMP/memcheck-tokens"
  sed "s|$JWKE_TMP/tokens|$JWKE_TMP/memcheck-tokens|" "$SOFTHSM2_CONF" >"$JWKE_TMP/memcheck-softhsm2.conf"
  memcheck_beside_busted() {
    SOFTHSM2_CONF="$JWKE_TMP/memcheck-softhsm2.conf" lowest scripts/memcheck.sh build >"$JWKE_TMP/memcheck.log" 2>&1
    echo $? >"$JWKE_TMP/memcheck.rc"
  }
  beside memcheck memcheck_beside_busted
  fuzz_beside_busted() {
    while ! [ -e "$JWKE_TMP/build-fuzz.rc" ] && kill -0 "$builds" 2>/dev/null; do sleep 1; done
    if [ "$(cat "$JWKE_TMP/build-fuzz.rc" 2>/dev/null)" = 0 ]; then
      JWKE_FUZZ_SECONDS=${JWKE_FUZZ_SECONDS:-15} lowest scripts/fuzz.sh >"$JWKE_TMP/fuzz.log" 2>&1
      echo $? >"$JWKE_TMP/fuzz.rc"
    fi
  }
  beside fuzz fuzz_beside_busted
fi

# The busted passes run their spec files in SHARDS processes side by side
# (busted_sharded) unless the run names its own files or arguments.
SHARDS=${JWKE_SHARDS:-3}
# sharded COMMAND... [-- EXCLUDE_PATTERN...]: as busted_sharded, or the
# command alone with the run's own arguments.
busted_cmd() { # exclude patterns are the caller's "$@" before "--"
  if [ "$extra_args" -gt 0 ]; then "$@"; else busted_sharded "$SHARDS" $pass_excludes -- "$@"; fi
}
extra_args=$#
rm -f build/spec-timings.txt

step "2. busted (Lua 5.4, build/)"
pass_excludes=""
# every spec file's time, for the next deal: see spec/timings.txt
export JWKE_SPEC_TIMINGS="$PWD/build/spec-timings.txt"
busted_run add "busted" build busted_cmd lua5.4 /usr/bin/busted -o ${JWKE_BUSTED_OUTPUT:-scripts/busted-timing.lua} "$@"
unset JWKE_SPEC_TIMINGS

if [ "${JWKE_QUICK:-0}" != 1 ]; then
  step "3. busted against the AddressSanitizer + UBSan build (build-asan/)"
  # only build-asan/ (the first build): the others go on beside this pass
  while ! [ -e "$JWKE_TMP/build-asan.rc" ] && kill -0 "$builds" 2>/dev/null; do sleep 1; done

  # a failed build must not leave an older build-asan/ to be tested
  if built build-asan; then
    # The sanitized runner hosts busted: it links the sanitizer runtime
    # first, so nothing is preloaded into the specs' other processes. A
    # plain lua5.4 that loads the sanitized module gets the runtime through
    # JWKE_PRELOAD. A small quarantine: freed blocks held by ASan would
    # otherwise look like growth to the soak's flat-memory check.
    export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:quarantine_size_mb=8
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    export JWKE_PRELOAD="$(gcc -print-file-name=libasan.so)"
    # specs may leave out what only waits (the 30 s outage) in this pass
    export JWKE_SANITIZER_PASS=1
    pass_excludes="nginx luarocks"
    busted_run add_rerun "busted (ASan+UBSan)" build-asan busted_cmd build-asan/jwkengine /usr/bin/busted \
      -o scripts/busted-timing.lua --cpath='build-asan/lib/?.so' --exclude-pattern=nginx \
      --exclude-pattern=luarocks "$@"
    if grep -qE "ERROR: AddressSanitizer|runtime error:" "$log"; then
      echo "the sanitizers reported an error (above)"
      add_rerun "sanitizer reports" 0 1
    fi
    # the threaded drivers of step 1 (ctest's `threads`), sanitized
    if spec/c/threads.sh build-asan; then
      add_rerun "threaded drivers (ASan+UBSan)" 1 0
    else
      add_rerun "threaded drivers (ASan+UBSan)" 0 1
    fi
    unset ASAN_OPTIONS UBSAN_OPTIONS JWKE_PRELOAD JWKE_SANITIZER_PASS
  else
    tail -n 40 "$JWKE_TMP/build-asan.log"
    echo "the AddressSanitizer build failed: the sanitizer pass is not run"
    add_rerun "busted (ASan+UBSan)" 0 1
  fi

  step "4. fuzzers (built beside step 2, run beside steps 2 and 3)"
  joined "$fuzz"
  if ! [ "$(cat "$JWKE_TMP/build-fuzz.rc" 2>/dev/null)" = 0 ]; then
    tail -n 40 "$JWKE_TMP/build-fuzz.log"
    add "fuzzers" 0 1
  elif grep -E '^(== |Done |fuzz: )' "$JWKE_TMP/fuzz.log" && [ "$(cat "$JWKE_TMP/fuzz.rc")" = 0 ]; then
    add "fuzzers" 1 0
  else
    tail -n 60 "$JWKE_TMP/fuzz.log"
    add "fuzzers" 0 1
  fi

  step "5. valgrind memcheck over the core (run beside steps 2 and 3)"
  joined "$memcheck"
  cat "$JWKE_TMP/memcheck.log"
  mc_ok=$(grep -c "^memcheck .*: 0 errors, 0 leak records" "$JWKE_TMP/memcheck.log")
  mc_bad=$(( $(grep -c "^memcheck .*errors" "$JWKE_TMP/memcheck.log") - mc_ok ))
  [ "$(cat "$JWKE_TMP/memcheck.rc")" = 0 ] || [ "$mc_bad" -gt 0 ] || mc_bad=1
  # a memcheck that checked nothing is a failure too
  [ "$mc_ok" -gt 0 ] || [ "$mc_bad" -gt 0 ] || mc_bad=1
  add "memcheck" "$mc_ok" "$mc_bad"

  step "6. other build types (built beside steps 2 and 3): ctest"
  joined "$builds"
  for dir in build-debug build-minsizerel; do
    type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$dir/CMakeCache.txt" 2>/dev/null)
    if built "$dir"; then
      ctest_run "ctest ($type)" "$dir"
    else
      tail -n 30 "$JWKE_TMP/$dir.log"
      add "build ($dir)" 0 1
    fi
  done

  step "7. the threaded drivers under ThreadSanitizer (build-tsan/, built beside steps 2 and 3)"
  if built build-tsan; then
    if spec/c/threads.sh build-tsan; then
      add "threaded drivers (TSan)" 1 0
    else
      add "threaded drivers (TSan)" 0 1
    fi
  else
    tail -n 30 "$JWKE_TMP/build-tsan.log"
    add "build (build-tsan)" 0 1
  fi
fi

step end
echo
printf "wall time per step:\n%s" "$timings"
echo "all steps: $(( $(date +%s) - run_started )) s (after the set-up)"
printf "%s" "$summary"
printf "%s" "$rerun_summary"
echo "$passed passed, $failed failed, $pending pending"
[ "$rerun_failed" -eq 0 ] || echo "the sanitizer pass failed ($rerun_failed): the run fails"
[ "$failed" -eq 0 ] && [ "$rerun_failed" -eq 0 ]
