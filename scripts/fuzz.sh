#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for a bounded time, on the stable toolchain:
#
#   scripts/fuzz.sh [SECONDS]     # seconds per target; default 20 (CI), FUZZ_SECONDS too
#
# Builds with cargo-fuzz (installed if missing) without a sanitizer (`-s none`: stable Rust
# has no AddressSanitizer; Rust's own checks, overflow checks and debug assertions are on).
# Each target first replays its regressions (fuzz/regressions/TARGET: inputs that once
# broke it) and its seed corpus, then fuzzes. A crash fails the run and leaves its input
# in fuzz/artifacts/TARGET/: fix the cause, then add the input to fuzz/regressions/TARGET.
# Each target's run is recorded as a row of RELIABILITY.md (target/reliability/).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-${FUZZ_SECONDS:-20}}
targets=(session_request image_archive manifest listing)

if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked --version 0.13.2 --quiet
fi
mkdir -p fuzz/target
if ! cargo fuzz build -s none >fuzz/target/build.log 2>&1; then
    tail -40 fuzz/target/build.log >&2
    exit 1
fi

rows=target/reliability
mkdir -p "$rows"
for target in "${targets[@]}"; do
    # New inputs go to a working copy of the corpus, so the committed seeds stay small.
    corpus=fuzz/target/corpus/$target
    mkdir -p "$corpus" fuzz/regressions/"$target"
    cp -n fuzz/corpus/"$target"/* "$corpus"/
    log=fuzz/target/$target.log
    echo "fuzzing $target for ${seconds}s"
    if ! cargo fuzz run -s none "$target" "$corpus" fuzz/regressions/"$target" -- \
        -max_total_time="$seconds" -max_len=1048576 -timeout=30 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log" >&2
        echo "fuzz: $target crashed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs=$(awk '/stat::number_of_executed_units:/ { print $2 }' "$log")
    corpus_size=$(find "$corpus" -type f | wc -l)
    id=security.fuzz-${target//_/-}
    cat >"$rows/$id.json" <<JSON
{
  "id": "$id",
  "category": "security",
  "case": "cargo-fuzz target $target for ${seconds} s, after replaying its regressions and seed corpus",
  "outcome": "no crash, hang or broken property in $runs inputs (corpus grew to $corpus_size)",
  "faults": 0,
  "inputs": $runs,
  "operations": 0,
  "bytes_lost": 0,
  "passed": true,
  "test": "scripts/fuzz.sh ($target)"
}
JSON
    echo "fuzz: $target: $runs inputs, no crash"
done
