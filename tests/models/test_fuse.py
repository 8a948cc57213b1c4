"""`sos fuse`: a model fused with itself keeps its logits; fused with a copy whose hidden units
are permuted, Procrustes finds the permutation and the host's logits come back within 1e-4;
widths that differ give a semi-orthogonal map; heads regroup; what cannot be bridged and damaged
inputs are refused by name; the command aligns, grafts, heals and reports end to end."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from sos_rs import DenseConfig, DenseLM
from sos_rs.autograd import no_grad
from sos_rs.cli.fuse import write_run
from sos_rs.fuse import FuseError, align_embeddings, graft_attention, layer_map
from tests.support.hf_tiny import word_tokenizer

SOS = [sys.executable, "-m", "sos_rs"]
V = 120
IDS = np.random.default_rng(7).integers(0, V, (2, 24))


def model(seed: int = 1, **over) -> DenseLM:
    base = dict(vocab_size=V, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=32, init_std=0.3, seed=seed)
    m = DenseLM(DenseConfig(**{**base, **over}))
    rng = np.random.default_rng(seed)
    sd = m.state_dict()
    for k in sd:  # non-uniform norms, so a norm folded the wrong way shows
        if k.endswith("norm.weight"):
            sd[k] = (1 + 0.3 * rng.standard_normal(sd[k].shape)).astype(np.float32)
    m.load_state_dict(sd)
    return m


def logits(m) -> np.ndarray:
    with no_grad():
        return m.forward(IDS).numpy()


def permuted(m: DenseLM, perm: np.ndarray) -> DenseLM:
    """The same function with hidden unit i moved to perm position: every weight that reads or
    writes the residual stream is permuted."""
    reads = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight", "lm_head.weight")
    out = {}
    for k, v in m.state_dict().items():
        if k.endswith("embed_tokens.weight") or k.endswith(reads):
            v = v[:, perm]
        elif k.endswith(("o_proj.weight", "down_proj.weight")) or (k.endswith("norm.weight") and "self_attn" not in k):
            v = v[perm]
        out[k] = v
    d = DenseLM(m.config)
    d.load_state_dict(out)
    return d


def fuse(host, donor, layers=None):
    ids = np.arange(V)
    al = align_embeddings(host.model.embed_tokens.weight.numpy(), donor.model.embed_tokens.weight.numpy(), ids, ids)
    fused, report = graft_attention(host, donor, al.map, layer_map(host.config.n_layers, donor.config.n_layers, layers))
    return fused, report, al


@pytest.mark.parametrize("over", [{}, {"qk_norm": True, "head_dim": 16}, {"qkv_bias": True, "tie_embeddings": True}])
def test_self_fusion_keeps_logits(over):
    host = model(**over)
    if over.get("qkv_bias"):  # non-zero biases
        sd = host.state_dict()
        sd.update({k: np.full_like(v, 0.2) for k, v in sd.items() if k.endswith(".bias")})
        host.load_state_dict(sd)
    fused, report, al = fuse(host, host)
    assert al.residual < 1e-6 and report.scale == 1.0
    assert np.abs(logits(fused) - logits(host)).max() < 1e-4  # float rounding of the folded norms only


def test_permuted_donor_recovers_host_logits():
    host = model()
    perm = np.random.default_rng(3).permutation(32)
    donor = permuted(host, perm)
    assert np.abs(logits(donor) - logits(host)).max() < 1e-4  # a permuted copy is the same function
    fused, _, al = fuse(host, donor)
    assert np.array_equal(np.argmax(np.abs(al.map), axis=1), perm)  # Procrustes found it
    assert np.abs(logits(fused) - logits(host)).max() < 1e-4
    # broken: a different donor's attention does change the logits
    other, _, _ = fuse(host, model(seed=9))
    assert np.abs(logits(other) - logits(host)).max() > 1e-2


def test_widths_differ_semi_orthogonal():
    host, donor = model(), model(seed=2, d_model=16, n_heads=2, n_kv_heads=1)
    fused, report, al = fuse(host, donor)
    assert al.map.shape == (16, 32) and np.allclose(al.map @ al.map.T, np.eye(16), atol=1e-10)
    assert report.scale == pytest.approx(np.sqrt(0.5))
    assert any("repeated 2x" in n for n in report.notes)
    assert np.isfinite(logits(fused)).all()


def test_regroup_repeat_heads_is_exact():
    """Two donor heads, host four: repeating each head with half its o_proj is the same sublayer."""
    donor = model(n_heads=2, n_kv_heads=1, head_dim=16)
    host = model(n_heads=4, n_kv_heads=2, head_dim=16)
    fused, _, _ = fuse(host, donor)
    # the host body with the donor's own attention, computed without regrouping
    ref = DenseLM(donor.config)
    sd = {k: v for k, v in host.state_dict().items() if "self_attn" not in k and "input_layernorm" not in k}
    sd.update({k: v for k, v in donor.state_dict().items() if "self_attn" in k or "input_layernorm" in k})
    ref.load_state_dict(sd)
    assert np.abs(logits(fused) - logits(ref)).max() < 1e-4


@pytest.mark.parametrize(
    "host_over,donor_over,layers,message",
    [
        ({}, {"head_dim": 16}, None, "head size 16 (donor) vs 8 (host) cannot be bridged"),
        ({"n_heads": 4}, {"n_heads": 3, "n_kv_heads": 3, "head_dim": 8}, None, "cannot regroup 3 donor query heads"),
        ({}, {"sandwich_norm": True}, None, "sandwich_norm"),
        ({}, {}, "0,1", "--layers gives 2 donor layers; the host has 3"),
        ({}, {}, "0,1,7", "names donor layers [7]"),
        ({}, {}, "a,b,c", "expected a comma list"),
    ],
)
def test_refusals(host_over, donor_over, layers, message):
    with pytest.raises(FuseError) as e:
        fuse(model(**host_over), model(seed=2, **donor_over), layers)
    assert message in str(e.value)


def test_too_few_shared_tokens():
    host, donor = model(), model(seed=2)
    with pytest.raises(FuseError, match="share 5 tokens"):
        align_embeddings(
            host.model.embed_tokens.weight.numpy(), donor.model.embed_tokens.weight.numpy(), np.arange(5), np.arange(5)
        )


def test_command_end_to_end(tmp_path):
    # host and donor: different word vocabularies sharing 60 words, different widths
    words_h = [f"w{i}" for i in range(V - 2)]
    words_d = [f"w{i}" for i in range(58, 58 + V - 2)]
    for name, words, m in (
        ("host", words_h, model()),
        ("donor", words_d, model(seed=2, d_model=16, n_heads=2, n_kv_heads=1)),
    ):
        word_tokenizer(tmp_path / f"{name}.json", words)
        write_run(m, tmp_path / f"{name}.json", tmp_path / name, {})
    rng = random.Random(0)
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(20):
        (texts / f"d{i}.txt").write_text(" ".join(f"w{rng.randrange(58, 100)}" for _ in range(80)) + "\n")
    data = tmp_path / "data"
    prep = [
        "prepare",
        str(texts),
        "--out",
        str(data),
        "--tokenizer",
        str(tmp_path / "host.json"),
        "--eot-token",
        "<eot>",
    ]
    assert subprocess.run(SOS + prep, capture_output=True).returncode == 0
    args = [str(tmp_path / "host"), str(tmp_path / "donor"), "--graft", "attention", "--out", str(tmp_path / "f")]
    args += ["--heal-steps", "6", "--heal-grafted-first", "2", "--data", str(data), "--seq-len", "16"]
    args += ["--batch-size", "4", "--threads", "1", "--eval-text", str(texts / "d0.txt")]
    out = subprocess.run(SOS + ["fuse", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "f" / "fuse_report.json").read_text())
    assert report["alignment"]["shared_tokens"] == 62  # 60 words, <eot>, <unk>
    assert set(report["eval"]) == {"host", "donor", "fused", "healed"}
    assert set(report["wall_s"]) == {"align", "graft", "eval", "heal"}
    assert (tmp_path / "f" / "fused" / "checkpoints").is_dir() and (tmp_path / "f" / "fuse_report.json").is_file()
    # refusals reach the user as one line, exit 2
    bad = subprocess.run(SOS + ["fuse", str(tmp_path / "nope"), *args[1:]], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("sos fuse:") and "Traceback" not in bad.stderr
