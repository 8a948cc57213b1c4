"""The speed work's Python surface: fused Linear, thread report, bit-identical thread counts."""

import numpy as np
import pytest

import sos_rs
from sos_rs import _core


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))


ACTS = {
    "none": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "gelu": _gelu,
}


@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_matches_numpy(act, with_bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 37, 29)).astype(np.float32)
    w = rng.standard_normal((45, 29)).astype(np.float32)
    b = rng.standard_normal(45).astype(np.float32)
    bias = sos_rs.tensor(b).data if with_bias else None
    y = _core.linear(sos_rs.tensor(x).data, sos_rs.tensor(w).data, bias, act).numpy()
    want = ACTS[act](x.astype(np.float64) @ w.T.astype(np.float64) + (b if with_bias else 0.0))
    assert y.shape == (3, 37, 45)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "args, err",
    [
        (((2, 4), (3, 5), None, "none"), sos_rs.ShapeError),  # in-features differ
        (((2, 4), (3, 4), (4,), "none"), sos_rs.ShapeError),  # bias is not [out]
        (((2, 4), (3, 4), None, "tanh"), sos_rs.InvalidValueError),  # unknown activation
    ],
)
def test_linear_errors(args, err):
    xs, ws, bs, act = args
    t = lambda s: sos_rs.tensor(np.ones(s, np.float32)).data  # noqa: E731
    with pytest.raises(err):
        _core.linear(t(xs), t(ws), t(bs) if bs else None, act)


def test_thread_info_and_peak_probe():
    info = sos_rs.thread_info()
    assert f"{sos_rs.num_threads()} threads in" in info and "core group" in info
    scalar = _core.fma_peak("scalar", 1, 1, 5)
    # GFLOP/s of one thread: a scalar FMA loop does at least 0.05 and no CPU core reaches 1000.
    assert 0.05 < scalar < 1000, scalar
    if sos_rs.detected_isa() != "scalar":
        simd = _core.fma_peak("avx2", 1, 1, 5)
        # 8 lanes per FMA (and two FMA units on most cores): far above the scalar loop, below 1000.
        assert 4 * scalar < simd < 1000, (simd, scalar)
    with pytest.raises(sos_rs.InvalidValueError):
        _core.fma_peak("sse9")


def test_one_and_two_threads_same_bits():
    rng = np.random.default_rng(1)
    a = sos_rs.tensor(rng.standard_normal((300, 520)).astype(np.float32)).data
    w = sos_rs.tensor(rng.standard_normal((190, 520)).astype(np.float32)).data
    q = sos_rs.tensor(rng.standard_normal((2, 80, 4, 16)).astype(np.float32)).data
    kv = sos_rs.tensor(rng.standard_normal((2, 80, 2, 16)).astype(np.float32)).data
    before = sos_rs.num_threads()
    outs = []
    try:
        for n in (1, 2):
            sos_rs.set_num_threads(n)
            o, lse = _core.attention_forward(q, kv, kv, 0.25)
            outs.append([_core.matmul(a, w, False, True).numpy(), o.numpy(), lse.numpy()])
    finally:
        sos_rs.set_num_threads(before)
    for x, y in zip(*outs):
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32))
