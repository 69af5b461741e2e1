#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs (fuse3, the reference
# registry, skopeo, umoci, an oras-py venv, cargo-fuzz), checks formatting and lints, builds
# once, runs every test, fuzzes each fuzz target for a bounded time, and checks that every
# case of RELIABILITY.md passed. Each test starts the registries and mounts it uses on
# 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --tests
# A minimal Rust toolchain lacks the formatter and the linter.
if command -v rustup >/dev/null; then
    rustup component add rustfmt clippy 2>/dev/null || true
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# One build serves every test binary; the end-to-end tests run the binaries it makes.
cargo build --workspace --bins --quiet
# RELIABILITY.md's rows come from this run only.
rm -rf target/reliability
cargo test --workspace --quiet 2>&1 | tee target/test-output.txt
# The filesystem contract and the everyday tools again, through an in-process surrogate
# session, a surrogate child process (exec:), and a Registry by name through the emulated
# Kubernetes API server's exec endpoint and the surrogate's spool: each must behave exactly
# like the direct sources.
for via in session exec kubernetes; do
    echo "semantics and tools through $via:"
    REPOSURE_TEST_VIA=$via cargo test --quiet -p reposure-tests --test semantics --test tools 2>&1 | tee -a target/test-output.txt
done
# The fuzz targets, 20 s each after their regressions (a separate, instrumented build).
echo "fuzzing:"
scripts/fuzz.sh
# Every fault, bad-input, load and security case listed in RELIABILITY.md passed just now.
target/debug/reliability-report --check RELIABILITY.md
target/debug/semantics-check SEMANTICS.md
# The benchmark in its quick mode (small sizes, debug build), so the script never rots;
# its figures mean nothing and no timing fails the run.
echo "benchmark, quick mode:"
bench/run.sh --quick
# One closing line for the whole run.
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f; exit (f > 0) }' target/test-output.txt
