#!/bin/sh
# Builds the libFuzzer targets (clang, AddressSanitizer, UndefinedBehavior-
# Sanitizer) into build-fuzz/ and runs each one for a bounded time over its
# corpus in spec/fuzz/corpus/<target>/. Exits non-zero when a target crashes,
# leaks or trips a sanitizer; the input that did it is kept in
# build-fuzz/artifacts/ and printed.
#
#   scripts/fuzz.sh                  every target, JWKE_FUZZ_SECONDS each (default 20)
#   scripts/fuzz.sh jws jwk          only these targets
#   JWKE_FUZZ_SECONDS=300 scripts/fuzz.sh
#   scripts/fuzz.sh --build-only     build them, run nothing (test.sh builds
#                                    ahead of the runs)
#
# New inputs libFuzzer finds go to a temporary folder, never into the
# repository's corpus: add an interesting one by hand (a crash that was
# fixed belongs there, as a regression seed).
set -eu
cd "$(dirname "$0")/.."

BUILD_ONLY=0
if [ "${1:-}" = "--build-only" ]; then
  BUILD_ONLY=1
  shift
fi
SECONDS_EACH=${JWKE_FUZZ_SECONDS:-20}
TARGETS=${*:-"b64url jws jwk ec p11_map pem x509 records"}
BUILD=build-fuzz

# clang and its libFuzzer/sanitizer runtimes (Debian 12: clang 14).
fuzzer_works() {
  command -v clang >/dev/null 2>&1 || return 1
  probe=$(mktemp -d)
  printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' > "$probe/p.c"
  clang -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" >/dev/null 2>&1
  rc=$?
  rm -rf "$probe"
  return $rc
}
if ! fuzzer_works; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q clang libclang-rt-dev
  fuzzer_works || { echo "fuzz: clang cannot build libFuzzer targets" >&2; exit 1; }
fi

CC=clang cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DJWKE_FUZZ=ON >/dev/null
cmake --build "$BUILD" --target fuzzers -j"$(nproc)"
[ "$BUILD_ONLY" = 0 ] || exit 0

mkdir -p "$BUILD/artifacts"
work=$(mktemp -d /tmp/jwkengine-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT

failed=""
for t in $TARGETS; do
  corpus="spec/fuzz/corpus/$t"
  [ -d "$corpus" ] || { echo "fuzz: no corpus folder $corpus" >&2; failed="$failed $t"; continue; }
  mkdir -p "$work/$t"
  dict=""
  [ -f "spec/fuzz/$t.dict" ] && dict="-dict=spec/fuzz/$t.dict"
  echo "== fuzz_$t: ${SECONDS_EACH}s over $(ls "$corpus" | wc -l) seeds"
  # The first folder receives new inputs; the repository corpus is read only.
  if "$BUILD/fuzz/fuzz_$t" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
      -max_len=16384 -print_final_stats=1 -artifact_prefix="$BUILD/artifacts/$t-" $dict \
      "$work/$t" "$corpus" >"$work/$t.log" 2>&1; then
    grep -E "^(Done|stat::number_of_executed_units)" "$work/$t.log" || true
  else
    tail -n 40 "$work/$t.log"
    echo "fuzz: fuzz_$t FAILED; reproduce with: $BUILD/fuzz/fuzz_$t $BUILD/artifacts/$t-*" >&2
    failed="$failed $t"
  fi
done

if [ -n "$failed" ]; then
  echo "fuzz: failed:$failed"
  exit 1
fi
echo "fuzz: every target ran ${SECONDS_EACH}s without a crash"
