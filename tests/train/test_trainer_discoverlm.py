"""`sos train` and `sos export` with the sparse families: a DiscoverLM run on a tiny prepared
corpus logs the active-parameter fraction and TI violation rate, validates and samples, resumes
from its checkpoint (ending with the very weights of an uninterrupted run; a restart from scratch
would not), and exports a folder whose model matches one built independently from the checkpoint."""

from __future__ import annotations

import json
import pathlib
import random
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file

from sos_rs.hf import load_pretrained
from sos_rs.models import build_model
from sos_rs.train import checkpoint as ckpt

SOS = [sys.executable, "-m", "sos_rs"]
WORDS = "of man first disobedience and the fruit forbidden tree whose mortal taste brought death into world".split()


def prepare(root: pathlib.Path) -> pathlib.Path:
    rng = random.Random(1)
    src = root / "texts"
    src.mkdir()
    for i in range(30):
        (src / f"doc{i:02d}.txt").write_text(
            "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(8)) + "\n"
        )
    out = root / "prepared"
    subprocess.run(
        SOS + ["prepare", str(src), "--out", str(out), "--vocab-size", "280"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def config(path: pathlib.Path, data: pathlib.Path, out: pathlib.Path, steps: int) -> pathlib.Path:
    path.write_text(
        "\n".join(
            [
                "[model]",
                'family = "discoverlm"',
                "d_model = 32",
                "n_layers = 1",
                "n_heads = 4",
                "ffn_hidden = 96",
                "ffn_rank = 8",
                "[data]",
                f'dir = "{data}"',
                "seq_len = 32",
                "batch_size = 4",
                "[optim]",
                "lr = 3e-3",
                "[schedule]",
                'kind = "constant"  # the same rates for steps 1-6 whether a run plans 6 or 8 steps',
                "warmup_steps = 2",
                "[run]",
                f'out = "{out}"',
                f"steps = {steps}",
                "checkpoint_every = 3",
                "eval_every = 3",
                "eval_batches = 1",
                "log_every = 1",
                "sample_every = 3",
                "sample_tokens = 5",
                "threads = 1",
                "keep_last = 2",
            ]
        )
        + "\n"
    )
    return path


def test_discoverlm_trains_resumes_and_exports(tmp_path):
    data = prepare(tmp_path)
    run = tmp_path / "run"
    subprocess.run(
        SOS + ["train", str(config(tmp_path / "a.toml", data, run, 6))], check=True, capture_output=True, text=True
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "active_param_fraction" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert all(0.0 < r["active_param_fraction"] < 1.0 and 0.0 <= r["ti_violation_rate"] <= 1.0 for r in steps)
    assert any("val_bpb" in r for r in records) and (run / "samples.txt").read_text().strip()
    # The loss includes the regularisers; validation is cross-entropy alone (below the logged loss is fine).
    res = subprocess.run(
        SOS + ["train", str(config(tmp_path / "b.toml", data, run, 8)), "--resume", "auto"],
        check=True,
        capture_output=True,
        text=True,
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # The resumed process logged steps 7 and 8 only: it started from step 6, not from scratch.
    assert [r["step"] for r in records if "active_param_fraction" in r] == list(range(1, 9)), res.stdout + res.stderr
    # ... and it ends with the weights of one uninterrupted 8-step run (same data order, optimizer state).
    straight = tmp_path / "straight"
    subprocess.run(
        SOS + ["train", str(config(tmp_path / "c.toml", data, straight, 8))], check=True, capture_output=True, text=True
    )
    resumed_w, _, resumed_state = ckpt.load(ckpt.latest_valid(run / "checkpoints"))
    straight_w, _, straight_state = ckpt.load(ckpt.latest_valid(straight / "checkpoints"))
    assert resumed_state["step"] == straight_state["step"] == 8
    assert resumed_w.keys() == straight_w.keys()
    for name in straight_w:
        assert np.array_equal(resumed_w[name], straight_w[name]), f"{name}: the resumed run diverged"
    hf = tmp_path / "hf"
    subprocess.run(SOS + ["export", str(run), "--hf", str(hf)], check=True, capture_output=True, text=True)
    assert {"model.safetensors", "config.json", "modeling_sos_moa.py", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in hf.iterdir()
    }
    # The export, loaded, against a model built independently from the checkpoint's own weights.
    model = load_pretrained(hf)
    reference = build_model(resumed_state["model_family"], resumed_state["model_config"])
    reference.load_state_dict(resumed_w)
    exported = load_file(str(hf / "model.safetensors"))
    for name, arr in resumed_w.items():
        assert np.array_equal(model.state_dict()[name], arr), name
        assert np.array_equal(exported[name], arr), name
    ids = np.random.default_rng(0).integers(0, reference.config.vocab_size, (2, 16))
    model.eval()
    reference.eval()
    assert np.array_equal(model(ids).numpy(), reference(ids).numpy())
    assert json.loads((hf / "config.json").read_text())["model_type"] == "sos_discoverlm"
