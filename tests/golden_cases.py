"""The model-comparison cases shared by scripts/make_golden.py and tests/test_dense_vs_torch.py."""

import numpy as np

from sos_rs import DenseConfig

B, T = 4, 64
STEPS = 10
OPTIM = {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "clip": 1.0}

CASES = {
    # grouped-query attention (4 query heads share 2 kv heads), separate lm_head
    "dense_gqa_untied": DenseConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, max_seq_len=T).to_dict(),
    # plain multi-head attention, lm_head tied to the embedding
    "dense_mha_tied": DenseConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, ffn_hidden=96, max_seq_len=T, tie_embeddings=True).to_dict(),
}


def batch(cfg: dict):
    rng = np.random.default_rng(1234)
    seq = rng.integers(0, cfg["vocab_size"], (B, T + 1))
    return seq[:, :-1].copy(), seq[:, 1:].copy()
