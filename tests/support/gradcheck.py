"""The gradient-check harness shared by the dense and sparse op tables: forward against a float64
numpy reference, Rust backward against central differences of that reference in float64
(eps 1e-6, rtol 1e-3, atol 1e-5, as torch.gradcheck)."""

from __future__ import annotations

import numpy as np

import sos_rs
from sos_rs import _core

EPS, RTOL, ATOL = 1e-6, 1e-3, 1e-5


def numeric_grad(ref, inputs, i, upstream):
    """d sum(ref(inputs) * upstream) / d inputs[i] by central differences in float64."""
    args = [a.astype(np.float64) for a in inputs]
    x = args[i].copy()
    g = np.zeros_like(x)
    for j in range(x.size):
        orig = x.flat[j]
        vals = []
        for step in (EPS, -EPS):
            x.flat[j] = orig + step
            args[i] = x
            vals.append(np.sum(ref(*args) * upstream))
        x.flat[j] = orig
        g.flat[j] = (vals[0] - vals[1]) / (2 * EPS)
    return g


def check_op(name, op, ref, inputs, wrt, rng) -> None:
    tensors = [sos_rs.tensor(a, requires_grad=True) for a in inputs]
    out = op(*tensors)
    want = ref(*[a.astype(np.float64) for a in inputs])
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6, err_msg=f"{name} forward")
    upstream = rng.uniform(-1, 1, np.shape(want)).astype(np.float32)
    out.backward(_core.Tensor(np.asarray(upstream, dtype=np.float32)))
    for i in wrt:
        num = numeric_grad(ref, inputs, i, upstream.astype(np.float64))
        got = tensors[i].grad.numpy()
        np.testing.assert_allclose(got, num, rtol=RTOL, atol=ATOL, err_msg=f"{name}: gradient of input {i}")
