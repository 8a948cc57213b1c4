#!/usr/bin/env bash
# The fusion demonstration of SPEC §6.5 at toy scale: a host trained on Shakespeare and a donor
# trained on synthetic logic sentences (different corpora, tokenizers and widths), then
# `sos fuse` (align, graft, heal) with the four losses on the same held-out Shakespeare text.
# Usage: scripts/fuse_demo.sh SHAKESPEARE_TEXTS_DIR [WORKDIR]   (SOS overrides the command)
set -euo pipefail
SRC=$1
W=${2:-runs/fuse-demo}
SOS=${SOS:-sos}
PY=${PY:-python}
mkdir -p "$W/logic"
$PY - "$W/logic" <<'PYEOF'
import random, sys, pathlib
out = pathlib.Path(sys.argv[1]); rng = random.Random(0)
names = "alice bob carol dave erin frank grace heidi".split()
props = "red tall happy wise brave quiet kind strong".split()
for d in range(400):
    lines = []
    for _ in range(8):
        a, b = rng.sample(props, 2); n = rng.choice(names)
        lines.append(f"if {n} is {a} then {n} is {b}. {n} is {a}. therefore {n} is {b}.")
    (out / f"doc{d:03d}.txt").write_text("\n".join(lines) + "\n")
PYEOF
$SOS prepare "$SRC" --out "$W/data/shakespeare" --vocab-size 2048 --split-blank-lines --min-chars 40 --val-fraction 0.02
$SOS prepare "$W/logic" --out "$W/data/logic" --vocab-size 512
common="--set data.seq_len=64 --set data.batch_size=16 --set run.eval_every=0 --set run.sample_tokens=0"
$SOS train configs/demo.toml $common --set data.dir="$W/data/shakespeare" --set run.out="$W/host" \
  --set run.steps=${HOST_STEPS:-600}
$SOS train configs/demo.toml $common --set data.dir="$W/data/logic" --set run.out="$W/donor" \
  --set model.d_model=64 --set model.n_layers=2 --set model.n_heads=2 --set model.n_kv_heads=2 --set run.steps=${DONOR_STEPS:-300}
find "$SRC" -type f | sort | tail -1 | xargs head -c 20000 > "$W/heldout.txt"
$SOS fuse "$W/host" "$W/donor" --graft attention --out "$W/fused" --data "$W/data/shakespeare" \
  --eval-text "$W/heldout.txt" --heal-steps ${HEAL_STEPS:-200} --heal-grafted-first ${HEAL_FIRST:-50} --seq-len 64 --batch-size 16
