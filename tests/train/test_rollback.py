"""Rollback on loss spikes (train/rollback.py) through `sos train`: an injected spike and an
injected NaN each restore the last good state and log an event; a resumed run killed at random
moments makes the same decisions and ends bit-identical (a SAGI model, so its agent-state buffers
travel in checkpoints and snapshots too); rollback.max stops the run with a clear message and a
finite checkpoint; a checkpoint with non-finite weights is never written."""

from __future__ import annotations

import json
import math
import pathlib
import random
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.train.test_trainer import SOS, corpus, final_weights, run_until_killed, write_config  # noqa: F401

SAGI_MODEL = {
    "family": "sagi",
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "ffn_hidden": 32,
    "max_agents": 4,
    "agent_hidden": 16,
    "route_top_k": 2,
    "dim_s": 8,
    "dim_msg": 4,
    "attn_dim": 8,
    "budget_compute": 6.5,
}


def config(tmp: pathlib.Path, data, out, rollback: dict, model: dict = SAGI_MODEL, **run) -> pathlib.Path:
    path = write_config(tmp / f"{out.name}.toml", data, out, **run)
    text = path.read_text().replace("n_kv_heads = 2\n", "")
    model_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in model.items())
    text = text.replace("[model]\nd_model = 32\nn_layers = 2\nn_heads = 4\n", f"[model]\n{model_lines}\n")
    text += "\n[rollback]\n" + "".join(
        f"{k} = {v if isinstance(v, str) else json.dumps(v)}\n" for k, v in rollback.items()
    )
    path.write_text(text)
    return path


def events(run: pathlib.Path) -> list:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("event")]


@pytest.mark.parametrize("scale,reason", [("100.0", "surprise"), ("nan", "non-finite loss")])
def test_injected_spike_rolls_back(corpus, tmp_path, scale, reason):  # noqa: F811
    rb = {"every": 4, "warmup": 4, "inject_spikes": [22], "inject_scale": scale}
    cfg = config(tmp_path, corpus, tmp_path / "run", rb, steps=16, checkpoint_every=8)
    out = subprocess.run(SOS + ["train", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (ev,) = events(tmp_path / "run")
    # micro-batch 22 is the first of step 11 (grad_accum 2); the last snapshot was taken at step 8
    assert ev["step"] == 11 and ev["restored_step"] == 8 and ev["reason"].startswith(reason)
    assert ev["skipped_batches"] == [16, 24] and "rollback 1/5 at step 11" in out.stdout
    steps = [r["step"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())]
    assert steps[-1] == 16
    for arr in final_weights(tmp_path / "run").values():
        assert np.isfinite(arr).all()


def test_rollback_off_stops_on_nan(corpus, tmp_path):  # noqa: F811
    rb = {"enabled": False, "inject_spikes": [6], "inject_scale": "nan"}
    cfg = config(tmp_path, corpus, tmp_path / "run", rb, steps=8)
    out = subprocess.run(SOS + ["train", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 2 and "non-finite loss at step 3" in out.stderr


def test_kill_and_resume_makes_the_same_rollbacks(corpus, tmp_path):  # noqa: F811
    rb = {"every": 4, "warmup": 4, "inject_spikes": [22, 41], "lr_scale": 0.5}
    ref = config(tmp_path, corpus, tmp_path / "ref", rb)
    subprocess.run(SOS + ["train", str(ref)], check=True, capture_output=True)
    want = final_weights(tmp_path / "ref")
    assert len(events(tmp_path / "ref")) == 2 and any(k.endswith("agent_state") for k in want)
    killed = config(tmp_path, corpus, tmp_path / "killed", rb)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    for kill_at in sorted(random.Random(7).sample(range(6, 30), 3)):
        run_until_killed(SOS + ["train", str(killed)], metrics, kill_at)
    out = subprocess.run(SOS + ["train", str(killed)], check=True, capture_output=True, text=True)
    assert "resumed from" in out.stdout
    got = final_weights(tmp_path / "killed")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].tobytes() == want[name].tobytes(), name
    last = sorted((tmp_path / "killed" / "checkpoints").glob("step-*"))[-1]
    state = json.loads((last / "state.json").read_text())
    assert state["rollback"]["count"] == 2 and state["rollback"]["lr_factor"] == 0.25


def test_rollback_max_stops_with_a_good_checkpoint(corpus, tmp_path):  # noqa: F811
    rb = {"every": 4, "warmup": 4, "max": 1, "inject_spikes": [18, 26], "inject_scale": "nan"}
    cfg = config(tmp_path, corpus, tmp_path / "run", rb, steps=20, checkpoint_every=100)
    out = subprocess.run(SOS + ["train", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 2 and "rollback.max = 1 rollbacks are spent" in out.stderr
    assert "non-finite loss at step 11" in out.stderr  # batch 18 (step 9) -> back to 8; batch 26 is in step 11
    folders = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert [f.name for f in folders] == ["step-00000008"]
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert all(np.isfinite(a).all() for a in load_file(str(folders[0] / name)).values())


def test_checkpoint_with_non_finite_weights_is_refused(corpus, tmp_path):  # noqa: F811
    from sos_rs import _core
    from sos_rs.train.config import load
    from sos_rs.train.trainer import Trainer, TrainingError

    cfg = load(str(config(tmp_path, corpus, tmp_path / "run", {"every": 4})))
    trainer = Trainer(cfg, log=lambda *_: None)
    p = trainer.model.parameters()[3]
    p.grad = _core.Tensor(p.numpy())  # an update with an infinite learning rate: the weight becomes non-finite
    trainer.opt.step(math.inf)
    assert not p.data.is_finite()
    with pytest.raises(TrainingError, match="not finite"):
        trainer.save(0.0, None)
    assert not (tmp_path / "run" / "checkpoints").exists()
