"""The dense family's memory switches change no bits: `[model] recompute` (activation
recomputation per block) trains to the same weights, and the fused lm_head + cross-entropy loss
equals cross-entropy of the logits `forward()` returns."""

from __future__ import annotations

import numpy as np
import pytest

from sos_rs import _core, optim
from sos_rs import functional as F
from sos_rs.models import build_model

CFG = dict(vocab_size=300, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=16)


def batches(n, b=3, t=16):
    rng = np.random.default_rng(0)
    return [rng.integers(0, CFG["vocab_size"], (b, t + 1)) for _ in range(n)]


def train(cfg, steps=2, accum=2):
    model = build_model("dense", cfg)
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    data = iter(batches(steps * accum))
    losses = []
    for _ in range(steps):
        for _ in range(accum):
            ids = next(data)
            loss = model.loss(ids[:, :-1], ids[:, 1:])
            loss.backward(_core.Tensor.full([], 1.0 / accum))
            losses.append(loss.item())
        optim.clip_grad_norm(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
    return model, losses


@pytest.mark.parametrize("tied", [False, True])
def test_recompute_trains_to_the_same_bits(tied):
    plain, lp = train(dict(CFG, tie_embeddings=tied))
    rec, lr = train(dict(CFG, tie_embeddings=tied, recompute=True))
    assert lp == lr
    a, b = plain.state_dict(), rec.state_dict()
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name
    ids = batches(1)[0]
    assert plain.eval_loss(ids[:, :-1], ids[:, 1:]) == rec.eval_loss(ids[:, :-1], ids[:, 1:])


def test_recompute_is_validated_and_estimated_smaller():
    with pytest.raises(Exception, match="recompute"):
        from sos_rs.models.registry import get_family

        get_family("dense").config_class(**dict(CFG, recompute="yes"))
    big = dict(vocab_size=4096, d_model=128, n_layers=6, n_heads=4, max_seq_len=256)
    full = build_model("dense", big).estimate_memory(8, 256).activations
    rec = build_model("dense", dict(big, recompute=True)).estimate_memory(8, 256).activations
    assert rec < full / 2


def test_fused_loss_equals_cross_entropy_of_forward():
    model = build_model("dense", CFG)
    ids = batches(1)[0]
    fused = model.loss(ids[:, :-1], ids[:, 1:])
    fused.backward()
    g_fused = {n: p.grad.numpy() for n, p in model.named_parameters()}
    model.zero_grad()
    plain = F.cross_entropy(model(ids[:, :-1]), ids[:, 1:])
    plain.backward()
    assert fused.item() == plain.item()
    for n, p in model.named_parameters():
        assert g_fused[n].tobytes() == p.grad.numpy().tobytes(), n
