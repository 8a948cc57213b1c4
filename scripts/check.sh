#!/usr/bin/env bash
# The style and consistency checks CI runs before the tests (./scripts/test.sh calls this):
# rustfmt, clippy with warnings denied (core crate, and with the Python bindings), ruff lint and
# format, mypy, and mypy's stubtest of _core.pyi against the compiled module. Needs .venv with
# the extension built (./scripts/test.sh does that); run it alone after `maturin develop`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if command -v rustup >/dev/null && ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add clippy rustfmt
fi
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy (warnings denied)"
cargo clippy -q --all-targets -- -D warnings
PYO3_PYTHON="$PWD/$PY" cargo clippy -q --all-targets --features python -- -D warnings
echo "== ruff"
$PY -m ruff check .
$PY -m ruff format --check .
echo "== mypy"
$PY -m mypy
echo "== stubtest (_core.pyi against the compiled module)"
$PY -m mypy.stubtest sos_rs._core
