"""The fused optimizer calls: `AdamW.step` (one Rust call over all parameters) and
`AdamW.clip_and_step` (the gradient-norm clip fused in) give the bits of clipping and stepping
tensor by tensor, for 1 and 2 threads."""

from __future__ import annotations

import numpy as np
import pytest

import sos_rs
from sos_rs import DenseConfig, DenseLM, _core, optim

TINY = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, seed=3)


def _batch(seed: int):
    seq = np.random.default_rng(seed).integers(0, 256, (3, 33))
    return seq[:, :-1], seq[:, 1:]


def _per_tensor_step(opt: optim.AdamW, max_norm: float) -> float:
    """The reference: the global clip, then one `adamw_step` per tensor."""
    norm = optim.clip_grad_norm(opt.params, max_norm)
    opt.step_count += 1
    b1, b2 = opt.betas
    for p, m, v in zip(opt.params, opt.m, opt.v):
        wd = opt.weight_decay if opt.decays(p) else 0.0
        _core.adamw_step(p.data, p.grad, m, v, opt.lr, b1, b2, opt.eps, wd, opt.step_count)
    return norm


def _train(fused: bool, max_norm: float, threads: int) -> tuple:
    sos_rs.set_num_threads(threads)
    try:
        model = DenseLM(DenseConfig(**TINY))
        opt = optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
        norms = []
        for step in range(3):
            opt.zero_grad()
            ids, targets = _batch(step)
            model.loss(ids, targets).backward()
            norms.append(opt.clip_and_step(max_norm) if fused else _per_tensor_step(opt, max_norm))
        grads = [p.grad.numpy().tobytes() for p in opt.params]
        state = [t.numpy().tobytes() for t in [p.data for p in opt.params] + opt.m + opt.v]
        return norms, grads, state
    finally:
        sos_rs.set_num_threads(0)


@pytest.mark.parametrize("max_norm", [0.05, 1e9])  # clipping every step, and never
def test_clip_and_step_equals_clip_then_per_tensor_steps(max_norm):
    ref = _train(False, max_norm, 2)
    if max_norm < 1:
        assert min(ref[0]) > max_norm, "the clip must act to be tested"
    for threads in (1, 2):
        got = _train(True, max_norm, threads)
        assert got[0] == ref[0]  # norms, exactly
        assert got[1] == ref[1]  # grads left clipped as clip_grad_norm leaves them
        assert got[2] == ref[2]  # params, m, v


def test_step_skips_parameters_without_grad_and_shared_grads():
    a = sos_rs.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    b = sos_rs.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    c = sos_rs.tensor(np.ones(3, np.float32), requires_grad=True)
    opt = optim.AdamW([a, b, c], lr=0.1)  # type: ignore[list-item]
    g = _core.Tensor(np.full((2, 3), 0.5, np.float32))
    a.grad, b.grad = g, g  # one gradient object held by two parameters
    opt.step()
    np.testing.assert_allclose(a.numpy(), 0.9, rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), 0.9, rtol=1e-6)
    np.testing.assert_array_equal(c.numpy(), 1.0)  # no grad: untouched
