"""Every golden case, shared by scripts/make_golden.py (which writes tests/golden/<case>.npz) and
the model comparisons tests/models/test_dense_vs_torch.py and
tests/models/test_moa_discoverlm_vs_torch.py (which replay them).

Dense cases: a DenseConfig dict and a batch; the golden also holds 10 AdamW steps.
Sparse cases (MoA, DiscoverLM): a family and config dict, a batch with regulariser triples, and a
deterministic perturbation of the initial weights so every parameter (LayerScales, RoPE
perturbation, ball origins) matters to the output.

SAGI cases: a config dict and a batch; the perturbation sharpens the routing (query and key
projections, agent states) so some gates fall below route_min_gate and tokens use fewer agents,
and gives the message LayerScale weight. The golden also holds the agent states after the pass."""

import numpy as np

from sos_rs import DenseConfig
from sos_rs.models import FAMILIES, SAGILM, DiscoverLMConfig, MoAConfig, SAGIConfig

B, T = 4, 64
STEPS = 10
# clip 0.5: below the cases' gradient norms (0.58-0.85 over the 10 steps), so clipping acts every step.
OPTIM = {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "clip": 0.5}

DENSE_CASES = {
    # grouped-query attention (4 query heads share 2 kv heads), separate lm_head
    "dense_gqa_untied": DenseConfig(
        vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, max_seq_len=T
    ).to_dict(),
    # plain multi-head attention, lm_head tied to the embedding
    "dense_mha_tied": DenseConfig(
        vocab_size=128, d_model=64, n_layers=2, n_heads=4, ffn_hidden=96, max_seq_len=T, tie_embeddings=True
    ).to_dict(),
}

# Documents packed into rows (data.doc_mask): the dense GQA case with RoPE positions restarting
# and a block-diagonal causal mask; the doc lengths per row include 1-token documents, one longer
# than a 64-key tile's worth of the row, and a row that is one whole document.
DOC_MASK_CASES = {"dense_doc_mask": (DENSE_CASES["dense_gqa_untied"], [[1, 20, 5, 38], [64], [30, 30, 4], [2, 1, 61]])}

SPARSE_CASES = {
    # untied head, capacity 1.0 (tokens are dropped), z-loss on, ball pruning with a small radius
    "moa_tiny": (
        "moa",
        MoAConfig.tiny(
            tie_embeddings=False, z_loss_coef=1e-3, capacity_factor=1.0, ball_radius_init=0.3, seed=5
        ).to_dict(),
    ),
    # the Discovery structure scaled down: tied, TI regulariser, unlimited capacity
    "discoverlm_tiny": ("discoverlm", DiscoverLMConfig.tiny(seed=6).to_dict()),
}


def dense_batch(cfg: dict):
    rng = np.random.default_rng(1234)
    seq = rng.integers(0, cfg["vocab_size"], (B, T + 1))
    return seq[:, :-1].copy(), seq[:, 1:].copy()


def build_sparse(name: str):
    """The sos_rs model of a sparse case with its perturbed weights."""
    family, cfg = SPARSE_CASES[name]
    model_cls = FAMILIES[family]
    cfg_cls = model_cls.config_class
    model = model_cls(cfg_cls.from_dict(cfg))
    rng = np.random.default_rng(99)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("_scale") or "rope.coef" in key or "ball_origin" in key:
            state[key] = rng.normal(0.0, 0.3, value.shape).astype(np.float32)
    model.load_state_dict(state)
    return model


def sparse_batch(cfg: dict):
    rng = np.random.default_rng(4321)
    seq = rng.integers(0, cfg["vocab_size"], (B, T + 1))
    n = B * T
    triples = np.stack([rng.choice(n, 3, replace=False) for _ in range(cfg["ti_triples"])])
    return seq[:, :-1].copy(), seq[:, 1:].copy(), triples


SAGI_CASES = {
    # untied head, a budget that caps the thought rounds (2 of 3), gates dropped below 0.15
    "sagi_tiny": SAGIConfig.tiny(tie_embeddings=False, seed=7).to_dict(),
    # no dense MLP (the swarm is the only MLP), tied, 1 agent per token (not renormalised), 2 rounds
    "sagi_top1": SAGIConfig.tiny(ffn_hidden=0, route_top_k=1, budget_compute=7.0, seed=8).to_dict(),
}


def build_sagi(name: str) -> SAGILM:
    """The sos_rs model of a SAGI case with its perturbed weights and states."""
    model = SAGILM(SAGIConfig.from_dict(SAGI_CASES[name]))
    rng = np.random.default_rng(77)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("message_scale"):
            state[key] = rng.normal(0.0, 0.3, value.shape).astype(np.float32)
        elif key.endswith(("query_proj.weight", "key_proj.weight", "thought_proj.weight", "obs_proj.weight")):
            state[key] = rng.normal(0.0, 0.4, value.shape).astype(np.float32)
        elif key.endswith("agent_state"):
            state[key] = rng.normal(0.0, 1.0, value.shape).astype(np.float32)
    model.load_state_dict(state)
    return model


def sagi_batch(cfg: dict):
    seq = np.random.default_rng(2468).integers(0, cfg["vocab_size"], (B, T + 1))
    return seq[:, :-1].copy(), seq[:, 1:].copy()


def doc_mask_batch(cfg: dict, lens: list):
    """ids, targets, positions, segments [B, T] of a doc-mask case: rows of `dense_batch`, with
    documents of the given lengths per row (segments numbered from 0, positions restarting)."""
    ids, targets = dense_batch(cfg)
    seg = np.array([np.repeat(np.arange(len(row)), row) for row in lens], dtype=np.int64)
    pos = np.array([np.concatenate([np.arange(n) for n in row]) for row in lens], dtype=np.int64)
    assert seg.shape == ids.shape and pos.shape == ids.shape
    return ids, targets, pos, seg
