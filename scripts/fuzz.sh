#!/usr/bin/env bash
# Fuzzing: the cargo-fuzz targets in fuzz/ (libFuzzer with AddressSanitizer: shard header, shard
# open, belt state, CPU lists and cgroup quotas), then the hypothesis harness of
# scripts/fuzz_py.py (sos prepare inputs, checkpoint folders, belt states, TOML configs, the
# public API). Prints the inputs and outcomes per target and a total; exits 1 on any crash, any
# exception outside the documented types, or any damaged input loaded silently.
#
#   ./scripts/fuzz.sh            # the full run: >= 100,000 inputs, under 15 minutes on 2 cores
#   ./scripts/fuzz.sh --smoke    # about 60 seconds (scripts/test.sh runs this)
#
# The Rust part needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`); without them it is skipped with a note and the Python part runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODE=${1:-full}
if [ "$MODE" = "--smoke" ]; then
    RUST_RUNS=50000 RUST_SECONDS=4 PY_SCALE=0.03 PY_SECONDS=6
else
    RUST_RUNS=500000 RUST_SECONDS=45 PY_SCALE=1 PY_SECONDS=150
fi
TARGETS="shard_header shard_open belt_state text_lists"
status=0
total=0
if command -v cargo >/dev/null && cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== cargo fuzz (nightly, AddressSanitizer): building"
    cargo +nightly fuzz build -O >/dev/null 2>&1 || { cargo +nightly fuzz build -O; exit 1; }
    LOGS=$(mktemp -d)
    trap 'rm -rf "$LOGS"' EXIT
    for t in $TARGETS; do
        mkdir -p "fuzz/corpus/$t"
        rc=0
        cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" -- -runs=$RUST_RUNS -max_total_time=$RUST_SECONDS \
            -rss_limit_mb=2048 -timeout=10 >"$LOGS/$t.log" 2>&1 || rc=$?
        runs=$(grep -oE '^Done [0-9]+ runs' "$LOGS/$t.log" | grep -oE '[0-9]+' || true)
        if [ -z "$runs" ]; then
            runs=$(grep -oE '^#[0-9]+' "$LOGS/$t.log" | tail -1 | tr -d '#' || true)
        fi
        runs=${runs:-0}
        total=$((total + runs))
        if [ "$rc" -eq 0 ]; then
            echo "rust $t: $runs inputs: ok $runs, crash 0"
        else
            status=1
            echo "rust $t: $runs inputs: CRASH (libFuzzer exit $rc); reproduce with the artifact below"
            grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$LOGS/$t.log" | head -8
        fi
    done
else
    echo "== cargo fuzz: skipped (needs a nightly toolchain and cargo-fuzz: rustup toolchain install nightly;" \
        "cargo install cargo-fuzz)"
fi
echo "== hypothesis harness (scripts/fuzz_py.py)"
out=$(mktemp)
rc=0
SOS_QUIET=1 SOS_NUM_THREADS=${SOS_NUM_THREADS:-2} "$PY" -m scripts.fuzz_py --scale "$PY_SCALE" --seconds "$PY_SECONDS" \
    2>&1 | tee "$out" || rc=$?
[ "$rc" -eq 0 ] || status=1
py=$(grep -oE '^python total: [0-9]+' "$out" | grep -oE '[0-9]+' || echo 0)
rm -f "$out"
total=$((total + py))
echo "fuzz total: $total inputs; $([ $status -eq 0 ] && echo "0 crashes, 0 silent loads" || echo "FAILURES above")"
exit $status
