#!/usr/bin/env bash
# The README's test command: creates .venv, builds the extension in release mode, runs the style
# checks (scripts/check.sh), then every Rust and Python test. Works on a fresh machine with Rust
# and Python 3.9+.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "maturin>=1.5,<2" "pytest>=7" "safetensors>=0.4"
# OpenMPI (and iproute2, for the two-namespace check) for the data-parallel tests
# (tests/train/test_distributed.py): installed only when missing, and only where we may (root
# with apt-get, as in CI); elsewhere those tests skip.
EXTRAS=dev
if { ! command -v mpirun >/dev/null || ! command -v ip >/dev/null; } && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing OpenMPI (openmpi-bin, libopenmpi-dev) and iproute2"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        openmpi-bin libopenmpi-dev iproute2 >/dev/null
fi
if [ "${SOS_SKIP_TORCH:-0}" != 1 ]; then
    # PyTorch and transformers run the live comparisons (dense, routed families, SAGI) and the
    # LlamaForCausalLM export check. CPU wheels from the PyTorch index when it answers (~200 MB),
    # else PyPI's build (~5 GB with its CUDA libraries, about 2 minutes). SOS_SKIP_TORCH=1 skips.
    echo "== installing torch + transformers (SOS_SKIP_TORCH=1 skips)"
    .venv/bin/python -m pip install -q --retries 0 --timeout 20 "torch>=2.1" \
        --index-url https://download.pytorch.org/whl/cpu 2>/dev/null || .venv/bin/python -m pip install -q "torch>=2.1"
    EXTRAS=$EXTRAS,hf
fi
if command -v mpirun >/dev/null; then EXTRAS=$EXTRAS,mpi; else echo "note: no mpirun; the MPI tests will skip"; fi
echo "== building sos_rs (release)"
# maturin develop also installs the runtime dependencies and the extras: `dev` (ruff, mypy,
# pytest, hypothesis, scipy), `hf` (transformers; torch is already there) and, with MPI
# present, `mpi` (mpi4py)
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop --release -q --extras "$EXTRAS"
./scripts/check.sh
echo "== Rust tests"
cargo test --release -q
# The SIMD parity tests skip the instruction sets this host lacks; say so rather than pass silently.
.venv/bin/python -c "import sos_rs; d = sos_rs.detected_isa(); order = ['scalar', 'avx2', 'avx512']
lacks = order[order.index(d) + 1:]
print('SIMD parity checked for', ', '.join(order[1:order.index(d) + 1]) or 'no SIMD path',
      '| SKIPPED (host lacks): ' + ', '.join(lacks) if lacks else '| no path skipped')"
echo "== Python tests"
.venv/bin/python -m pytest -q -rs "$@"
echo "== wheel (fresh venv, no repository, no cargo)"
./scripts/wheel_check.sh
echo "== fuzz smoke (about 60 s; ./scripts/fuzz.sh for the full run)"
./scripts/fuzz.sh --smoke
# Two "machines": mpirun across two network namespaces over TCP (needs root, iproute2, OpenMPI).
if command -v mpirun >/dev/null && command -v ip >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "== MPI across two network namespaces"
    PY="$PWD/.venv/bin/python" ./scripts/mpi_netns_check.sh
else
    echo "note: not root or no iproute2/OpenMPI; skipping scripts/mpi_netns_check.sh"
fi
