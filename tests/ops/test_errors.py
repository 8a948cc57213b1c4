"""Bad input from Python gets a typed exception that names the problem (never a panic or crash),
or a documented conversion. One table of rows: what is passed, what must come back."""

from __future__ import annotations

import numpy as np
import pytest

import sos_rs
from sos_rs import DenseConfig, DenseLM, DTypeError, InvalidValueError, ShapeError, _core
from sos_rs import functional as F


def t(*shape):
    return sos_rs.tensor(np.ones(shape, np.float32))


ERRORS = [
    ("float64 array to the core", lambda: _core.Tensor(np.ones(3)), DTypeError, "float64"),
    ("int array as data", lambda: sos_rs.tensor(np.ones(3, np.int32)), DTypeError, "int32"),
    ("not an array", lambda: _core.Tensor([1.0, 2.0]), TypeError, "numpy array"),
    ("NaN data", lambda: sos_rs.tensor(np.array([1.0, np.nan], np.float32)), InvalidValueError, "non-finite"),
    ("inf data", lambda: sos_rs.tensor(np.array([np.inf], np.float32)), InvalidValueError, "non-finite"),
    ("linear inner dims", lambda: F.linear(t(2, 3), t(4, 5)), ShapeError, "inner dims"),
    ("add shapes", lambda: F.add(t(2, 3), t(3, 2)), ShapeError, "add"),
    ("rmsnorm weight", lambda: F.rmsnorm(t(2, 3), t(4), 1e-5), ShapeError, "rmsnorm"),
    ("rope odd head", lambda: F.rope(t(1, 2, 1, 3)), ShapeError, "even"),
    ("rope 3-d", lambda: F.rope(t(2, 2, 4)), ShapeError, "rope"),
    (
        "attention heads",
        lambda: F.causal_attention(t(1, 4, 3, 8), t(1, 4, 2, 8), t(1, 4, 2, 8)),
        ShapeError,
        "multiple",
    ),
    (
        "attention k/v differ",
        lambda: F.causal_attention(t(1, 4, 2, 8), t(1, 4, 2, 8), t(1, 5, 2, 8)),
        ShapeError,
        "attention",
    ),
    ("token id too large", lambda: F.embedding(t(5, 2), np.array([1, 5])), InvalidValueError, "out of range"),
    ("negative token id", lambda: F.embedding(t(5, 2), np.array([-1])), InvalidValueError, "negative"),
    ("float token ids", lambda: F.embedding(t(5, 2), np.array([1.0])), DTypeError, "integer"),
    ("target out of range", lambda: F.cross_entropy(t(2, 4), np.array([0, 4])), InvalidValueError, "out of range"),
    ("target count", lambda: F.cross_entropy(t(2, 4), np.array([0])), ShapeError, "target"),
    ("item of a matrix", lambda: _core.Tensor.zeros([2, 2]).item(), ShapeError, "one-element"),
    ("reshape count", lambda: _core.Tensor.zeros([2, 3]).reshape([4]), ShapeError, "reshape"),
    (
        "backward of non-scalar",
        lambda: sos_rs.tensor(np.ones(2, np.float32), True).backward(),
        ShapeError,
        "one-element",
    ),
    (
        "model ids 1-d",
        lambda: DenseLM(DenseConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, max_seq_len=4))(np.array([1, 2])),
        ShapeError,
        "[B, T]",
    ),
    (
        "model too long",
        lambda: DenseLM(DenseConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, max_seq_len=4))(
            np.zeros((1, 5), int)
        ),
        ShapeError,
        "max_seq_len",
    ),
    (
        "model id out of vocab",
        lambda: DenseLM(DenseConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, max_seq_len=4))(np.full((1, 2), 8)),
        InvalidValueError,
        "vocabulary size 8",
    ),
    ("bad config", lambda: DenseConfig(d_model=10, n_heads=4), ValueError, "multiple of n_heads"),
    (
        "adamw step 0",
        lambda: _core.adamw_step(
            _core.Tensor.zeros([2]),
            _core.Tensor.zeros([2]),
            _core.Tensor.zeros([2]),
            _core.Tensor.zeros([2]),
            1e-3,
            0.9,
            0.99,
            1e-8,
            0.0,
            0,
        ),
        InvalidValueError,
        "step",
    ),
    (
        "adamw shapes",
        lambda: _core.adamw_step(
            _core.Tensor.zeros([2]),
            _core.Tensor.zeros([3]),
            _core.Tensor.zeros([2]),
            _core.Tensor.zeros([2]),
            1e-3,
            0.9,
            0.99,
            1e-8,
            0.0,
            1,
        ),
        ShapeError,
        "adamw",
    ),
    (
        "load_state_dict shape",
        lambda: DenseLM(DenseConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2)).load_state_dict(
            {"lm_head.weight": np.zeros((3, 3))}, strict=False
        ),
        ShapeError,
        "lm_head.weight",
    ),
]


@pytest.mark.parametrize("what,call,exc,needle", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_input_raises_named_error(what, call, exc, needle):
    with pytest.raises(exc) as info:
        call()
    assert needle in str(info.value), str(info.value)


CONVERSIONS = [
    ("float64 becomes float32", np.array([1.5, 2.0]), [1.5, 2.0]),
    ("list becomes float32", [[1.0, 2.0]], [[1.0, 2.0]]),
    (
        "non-contiguous is copied in logical order",
        np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
        [[0, 2], [4, 6], [8, 10]],
    ),
    ("transposed view", np.arange(6, dtype=np.float32).reshape(2, 3).T, [[0, 3], [1, 4], [2, 5]]),
]


@pytest.mark.parametrize("what,given,want", CONVERSIONS, ids=[c[0] for c in CONVERSIONS])
def test_documented_conversions(what, given, want):
    out = sos_rs.tensor(given).numpy()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.asarray(want, np.float32))


def test_integer_ids_of_any_width_are_accepted():
    w = sos_rs.tensor(np.arange(10, dtype=np.float32).reshape(5, 2))
    for dt in (np.int8, np.uint16, np.int32, np.uint32, np.int64):
        np.testing.assert_array_equal(F.embedding(w, np.array([4, 0], dt)).numpy(), [[8, 9], [0, 1]])
