"""SAGI against its PyTorch reference (python/sos_rs/hf/modeling_sos_sagi.py): logits, loss, every
parameter gradient and the agent states after a training pass (B=4, T=64; gates below
route_min_gate dropped, thought rounds capped by the budget), from goldens written by
scripts/make_golden.py and live where torch is installed; the export (agent states included)
loads with transformers' trust_remote_code and gives the same logits; it round-trips into sos_rs."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from sos_rs.hf import export_pretrained, load_pretrained
from sos_rs.models import SAGILM, SAGIConfig
from tests.support.golden_cases import SAGI_CASES, build_sagi, sagi_batch

GOLDEN = pathlib.Path(__file__).parents[1] / "golden"

try:
    import torch

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False
try:
    import transformers  # noqa: F401

    HAVE_HF = HAVE_TORCH
except ImportError:
    HAVE_HF = False

SOURCES = [
    pytest.param("golden", id="golden"),
    pytest.param(
        "torch",
        id="torch-live",
        marks=pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed; golden comparison still ran"),
    ),
]


def reference(name: str, source: str) -> dict:
    if source == "golden":
        with np.load(GOLDEN / f"{name}.npz") as z:
            return {k: z[k] for k in z.files}
    from scripts.make_golden import run_case

    return run_case(name)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", sorted(SAGI_CASES))
def test_sagi_matches_torch(name: str, source: str) -> None:
    ref = reference(name, source)
    model = SAGILM(SAGIConfig.from_dict(json.loads(str(ref["config"]))))
    model.load_state_dict({k[len("param/") :]: v for k, v in ref.items() if k.startswith("param/")})
    ids, targets = ref["ids"], ref["targets"]
    logits, _ = model.forward_with_aux(ids)  # no state update: the pass the reference made
    loss = model.loss(ids, targets)  # training mode: moves the agent states after the pass
    loss.backward()
    report = {"logits": float(np.abs(logits.numpy() - ref["logits"]).max()), "loss": abs(loss.item() - ref["loss"])}
    rel = {}
    for pname, p in model.named_parameters():
        got = np.zeros(p.shape, np.float32) if p.grad is None else p.grad.numpy()
        want = ref[f"grad/{pname}"]
        report[pname] = float(np.abs(got - want).max())
        rel[pname] = report[pname] / max(float(np.abs(want).max()), 1e-6)
    states = {n: float(np.abs(b.numpy() - ref[f"state_after/{n}"]).max()) for n, b in model.named_buffers()}
    worst = max(rel, key=rel.get)
    stats = model.last_stats
    print(
        f"\n[{name}/{source}] logits max|Δ| {report['logits']:.2e}, loss |Δ| {report['loss']:.2e}, grad max|Δ| "
        f"{max(v for k, v in report.items() if k not in ('logits', 'loss')):.2e}, worst relative {rel[worst]:.2e} "
        f"({worst}), agent states max|Δ| {max(states.values()):.2e}; agents/token {stats['agents_per_token']:.3f}, "
        f"thought rounds/token {stats['thought_rounds']:.3f}"
    )
    assert report["logits"] <= 1e-4 and report["loss"] <= 1e-5
    for pname in rel:
        assert report[pname] <= 1e-3 and rel[pname] <= 1e-3, (pname, report[pname], rel[pname])
    assert max(states.values()) <= 1e-6 and len(states) == model.config.n_layers
    # the realised counts are the reference's, and the case exercises what it claims
    n_tok = ids.size
    assert stats["agents_per_token"] == pytest.approx(ref["agents"].sum() / (n_tok * len(ref["agents"])))
    assert stats["thought_rounds"] == pytest.approx(ref["rounds"].sum() / (n_tok * len(ref["rounds"])))
    cap_agents, cap_rounds = model.config.caps()
    if name == "sagi_tiny":
        assert 1 < stats["agents_per_token"] < cap_agents, "some gates should fall below route_min_gate"
        assert 1 < stats["thought_rounds"] <= cap_rounds < model.config.k_thought_max


@pytest.mark.skipif(not HAVE_HF, reason="transformers (and torch) not installed")
@pytest.mark.parametrize("name", sorted(SAGI_CASES))
def test_export_loads_with_trust_remote_code(name: str, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model = build_sagi(name).eval()
    ids, _ = sagi_batch(SAGI_CASES[name])
    export_pretrained(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), trust_remote_code=True)
    hf.eval()
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)).logits.numpy()
    got = model(ids).numpy()
    print(f"\n[{name}] sos vs transformers (trust_remote_code) logits max|Δ| {np.abs(got - want).max():.2e}")
    assert type(hf).__name__ == "SosSAGIForCausalLM"
    for n, b in model.named_buffers():  # the agent states travel with the weights
        np.testing.assert_array_equal(dict(hf.named_buffers())[n].numpy(), b.numpy())
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_export_round_trips_with_agent_states(tmp_path) -> None:
    model = build_sagi("sagi_tiny")
    export_pretrained(model, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "config.json", "modeling_sos_sagi.py"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "sos_sagi" and config["auto_map"]["AutoModelForCausalLM"].startswith(
        "modeling_sos_sagi."
    )
    back = load_pretrained(tmp_path)
    assert type(back) is SAGILM and back.config == model.config
    want, got = model.state_dict(), back.state_dict()
    assert list(want) == list(got) and any(k.endswith("agent_state") for k in want)
    fresh = SAGILM(model.config).state_dict()  # differs from the case's perturbed weights
    assert any(fresh[k].tobytes() != want[k].tobytes() for k in want if k.endswith("agent_state"))
    for k in want:
        assert want[k].tobytes() == got[k].tobytes(), k
