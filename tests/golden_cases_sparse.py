"""The sparse-family comparison cases shared by scripts/make_golden_sparse.py and
tests/test_sparse_vs_torch.py: a config, a batch, regulariser triples, and a deterministic
perturbation of the initial weights so every parameter (LayerScales, RoPE perturbation, ball
origins) matters to the output."""

import numpy as np

from sos_rs.models import FAMILIES, DiscoverLMConfig, MoAConfig

B, T = 4, 64

CASES = {
    # untied head, capacity 1.0 (tokens are dropped), z-loss on, ball pruning with a small radius
    "moa_tiny": ("moa", MoAConfig.tiny(tie_embeddings=False, z_loss_coef=1e-3, capacity_factor=1.0, ball_radius_init=0.3, seed=5).to_dict()),
    # the Discovery structure scaled down: tied, TI regulariser, unlimited capacity
    "discoverlm_tiny": ("discoverlm", DiscoverLMConfig.tiny(seed=6).to_dict()),
}


def build(name: str):
    """The sos_rs model of a case with its perturbed weights."""
    family, cfg = CASES[name]
    cfg_cls, model_cls = FAMILIES[family]
    model = model_cls(cfg_cls.from_dict(cfg))
    rng = np.random.default_rng(99)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("_scale") or "rope.coef" in key or "ball_origin" in key:
            state[key] = rng.normal(0.0, 0.3, value.shape).astype(np.float32)
    model.load_state_dict(state)
    return model


def batch(cfg: dict):
    rng = np.random.default_rng(4321)
    seq = rng.integers(0, cfg["vocab_size"], (B, T + 1))
    n = B * T
    triples = np.stack([rng.choice(n, 3, replace=False) for _ in range(cfg["ti_triples"])])
    return seq[:, :-1].copy(), seq[:, 1:].copy(), triples
