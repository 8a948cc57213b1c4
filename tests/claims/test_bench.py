"""`sos bench`: the FLOP count by hand, a training worker of every family at a tiny size (sos_rs,
and PyTorch where installed), and the command end to end on one small model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sos_rs.bench import flops, worker
from sos_rs.bench.presets import PRESETS, preset
from sos_rs.models import FAMILIES, DenseConfig, DenseLM, build_model

TINY = {
    "dense": dict(vocab_size=64, d_model=16, n_layers=1, n_heads=2, max_seq_len=8),
    "moa": dict(vocab_size=64, d_model=16, n_layers=1, n_heads=2, max_seq_len=8, ffn_rank=4),
    "discoverlm": dict(vocab_size=64, d_model=16, n_layers=1, n_heads=2, max_seq_len=8, ffn_hidden=48, ffn_rank=4),
}


def test_dense_flops_by_hand():
    # d=16, 1 layer, ffn 32·ceil(8·16/3/32) = 64, vocab 64, untied:
    # matmul weights q,k,v,o 4·16·16 = 1024, gate/up/down 3·16·64 = 3072, lm_head 64·16 = 1024 -> 5120
    model = DenseLM(DenseConfig(**TINY["dense"]))
    assert flops.matmul_params(model, 1.0, measured=False) == pytest.approx(5120 + 3 * 16)  # + three norm gains
    b, t = 2, 8
    attn = 6 * 1 * b * 2 * t * t * 8  # one attention module, 2 heads of 8
    assert flops.train_step_flops(model, b, t, 1.0, False) == pytest.approx(6 * (5120 + 48) * b * t + attn)


def test_every_family_has_presets():
    for family in FAMILIES:
        for name in ("small", "medium"):
            cfg, batch = preset(family, name)
            assert batch > 0 and build_model(family, cfg).num_parameters() > 0
    assert set(PRESETS) >= set(FAMILIES)


def test_large_preset_is_the_issue_14_model_and_opt_in():
    from sos_rs.bench.presets import DEFAULT_PRESETS
    from sos_rs.bench.runner import BenchConfig, BenchError, run_bench

    cfg, batch = preset("dense", "large")
    model = DenseLM(DenseConfig(**cfg))  # untied lm_head: 135M parameters
    c = model.config
    shape = (c.d_model, c.n_layers, c.n_heads, c.ffn_hidden, c.vocab_size, c.max_seq_len, batch)
    assert shape == (768, 12, 12, 2048, 32768, 1024, 2) and not c.tie_embeddings
    assert 134e6 < model.num_parameters() < 136e6
    assert "large" not in DEFAULT_PRESETS
    assert preset("moa", "large") is None and preset("sagi", "large") is None
    with pytest.raises(BenchError, match="small, medium, large"):
        run_bench(BenchConfig(families=["dense"], presets=["huge"]))


FRAMEWORKS = ["sos"]
try:
    import torch  # noqa: F401

    FRAMEWORKS.append("torch")
except ImportError:
    pass


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("family", sorted(TINY))
def test_train_worker(family, framework):
    spec = dict(kind="train", framework=framework, family=family, preset="tiny", config=TINY[family], batch=2)
    spec.update(threads=1, steps=2, warmup=1)
    r = worker.train(spec)
    assert r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["steps"] == 3 and r["final_loss"] > 0
    if framework == "sos":
        assert r["gflops"] > 0
        assert (r["active_param_fraction"] < 1.0) == (family != "dense")


def test_cli_quick_one_model(tmp_path):
    out = tmp_path / "b.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sos_rs",
            "bench",
            "--quick",
            "--families",
            "dense",
            "--presets",
            "small",
            "--steps",
            "1",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "FMA peak" in res.stdout and "qkv_proj" in res.stdout and "dense" in res.stdout
    data = json.loads(out.read_text())
    m = data["machine"]
    assert m["peak_gflops"] > 0 and all(g["gflops"] > 0 for g in m["gemm"]) and m["attention"]
    row = data["train"][0]["sos"]
    assert row["family"] == "dense" and row["tokens_per_s"] > 0 and 0 < row["frac_peak"]
    # The peak is the highest reading of the run, the workers' readings after their steps included.
    assert 0 < row["peak_gflops_after"] <= m["peak_gflops"]
    assert abs(row["frac_peak"] - row["gflops"] / m["peak_gflops"]) < 1e-9
    bad = subprocess.run(
        [sys.executable, "-m", "sos_rs", "bench", "--families", "nope"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr
