#!/usr/bin/env bash
# The install path of a user without Rust or a clone: builds the abi3 wheel (maturin build
# --release), installs it into a fresh venv, and from an empty folder outside the repository (no
# repository on PYTHONPATH, no cargo on PATH) runs `sos --version`, `sos init`, a tiny
# `sos prepare` and a 3-step `sos train` of the shipped demo config. Run by scripts/test.sh;
# alone: ./scripts/wheel_check.sh (needs .venv with maturin, as scripts/test.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sos-wheel.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
echo "== wheel: build"
.venv/bin/maturin build --release -q -o "$TMP/dist" >/dev/null
WHEEL=$(ls "$TMP"/dist/sos_rs-*-abi3-*.whl)
echo "built $(basename "$WHEEL")"
# The example configs must travel inside the wheel.
.venv/bin/python - "$WHEEL" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for need in ("sos_rs/_core.abi3.so", "sos_rs/configs/demo.toml", "sos_rs/configs/sagi_demo.toml"):
    assert need in names, f"{need} missing from the wheel"
PY
echo "== wheel: install into a fresh venv"
"${PYTHON:-python3}" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q "$WHEEL"
mkdir "$TMP/work"
cd "$TMP/work"
# No repository on the path, no Rust toolchain: only the venv and the system.
CLEAN=(env -i "HOME=$TMP" "PATH=$TMP/venv/bin:/usr/bin:/bin" SOS_QUIET=1 SOS_NUM_THREADS=2 "TMPDIR=$TMP")
"${CLEAN[@]}" sh -c '! command -v cargo >/dev/null' || echo "note: cargo is on /usr/bin here; the wheel does not use it"
"${CLEAN[@]}" python - "$REPO" <<'PY'
import pathlib, sys
import sos_rs
where = pathlib.Path(sos_rs.__file__).resolve()
assert pathlib.Path(sys.argv[1]).resolve() not in where.parents, f"imported from the repository: {where}"
print(f"sos_rs {sos_rs.__version__} from {where.parent}")
PY
"${CLEAN[@]}" sos --version
"${CLEAN[@]}" sos init
test -f configs/demo.toml && test -f configs/sagi_demo.toml
"${CLEAN[@]}" python - <<'PY'
import random
random.seed(0)
words = "the a fox dog cat runs jumps over under quick lazy red blue small big tree river hill".split()
with open("corpus.txt", "w") as f:
    for _ in range(400):
        f.write(" ".join(random.choice(words) for _ in range(12)) + ".\n\n")
PY
"${CLEAN[@]}" sos prepare corpus.txt --out data --split-blank-lines --vocab-size 300 --quiet >/dev/null
"${CLEAN[@]}" sos train configs/demo.toml --set data.dir=data --out run --steps 3 \
    --set model.d_model=32 --set model.n_layers=1 --set model.n_heads=2 --set model.n_kv_heads=1 \
    --set data.seq_len=32 --set data.batch_size=2 --set run.log_every=1 --set run.eval_every=3 \
    --set run.eval_batches=1 --set run.sample_every=0 --set run.checkpoint_every=3 --set schedule.warmup_steps=1 \
    >train.log 2>&1 || { cat train.log; exit 1; }
test -d run && ls run | grep -q . || { echo "no run output"; cat train.log; exit 1; }
echo "wheel check: ok (installed, sos --version, sos init, prepare, 3 training steps)"
