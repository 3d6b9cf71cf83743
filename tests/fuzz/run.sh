#!/usr/bin/env bash
# A short libFuzzer pass over the segment-store parsers (tests/fuzz/fuzz_store.c),
# suitable for CI.  Builds build/fuzz with clang (-DFASTQ_FUZZ=ON: ASan + UBSan +
# libFuzzer), starts from the committed seed corpus, and fails on any crash,
# leak, sanitizer report or timeout.  Without clang it falls back to replaying
# the corpus with gcc + ASan/UBSan (build/fuzz-gcc).
#
#   tests/fuzz/run.sh                 # 45 s
#   FUZZ_SECONDS=600 tests/fuzz/run.sh
#   FUZZ_JOBS=2 ...                   # parallel fuzzing processes (-fork)
#
# New coverage goes to build/fuzz/corpus (not committed); crashes are written
# to build/fuzz/artifacts/ (reproduce: build/fuzz/fuzz_store <file>, or
# FQ_FUZZ_VERBOSE=1 build/fuzz-gcc/fuzz_store_replay <file>).
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_=${FUZZ_SECONDS:-45}
JOBS=${FUZZ_JOBS:-1}
extra=()

# stale store directories of fuzz processes that died (a crash skips atexit)
for d in /dev/shm/fqfuzz.*; do
  [ -d "$d" ] || continue
  pid=${d##*.}
  kill -0 "$pid" 2>/dev/null || rm -rf "$d"
done

if ! command -v clang >/dev/null; then
  echo "clang not found: replaying the corpus with gcc + ASan/UBSan instead of fuzzing"
  cmake -S . -B build/fuzz-gcc -DFASTQ_SANITIZE=address,undefined "${extra[@]}" >/dev/null
  cmake --build build/fuzz-gcc -j2 --target fuzz_store_replay >/dev/null
  exec build/fuzz-gcc/fuzz_store_replay tests/fuzz/corpus
fi

cmake -S . -B build/fuzz -DCMAKE_C_COMPILER=clang -DFASTQ_FUZZ=ON "${extra[@]}" >/dev/null
cmake --build build/fuzz -j2 --target fuzz_store >/dev/null
mkdir -p build/fuzz/corpus build/fuzz/artifacts
fork=()
[ "$JOBS" -gt 1 ] && fork=(-fork="$JOBS" -ignore_crashes=0 -ignore_timeouts=0 -ignore_ooms=0)
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
build/fuzz/fuzz_store build/fuzz/corpus tests/fuzz/corpus \
  -max_total_time="$SECONDS_" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
  -artifact_prefix=build/fuzz/artifacts/ -print_final_stats=1 "${fork[@]}"
