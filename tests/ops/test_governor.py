"""The governor's thermometer: `sos_rs.governor.l2star_sq` against scipy's
`qmc.discrepancy(method="L2-star") ** 2`, temperatures of uniform and collapsed points, bad input."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import sos_rs
from sos_rs import governor as g
from sos_rs.errors import InvalidValueError, ShapeError

qmc = pytest.importorskip("scipy.stats.qmc")


def point_set(kind: str, n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(n * 100 + d)
    if kind == "random":
        return rng.random((n, d))
    if kind == "sobol":
        return qmc.Sobol(d, scramble=True, seed=n).random(n) if n > 1 else rng.random((n, d))
    if kind == "clustered":
        return np.clip(0.3 + 0.01 * rng.standard_normal((n, d)), 0.0, 1.0)
    return np.repeat(rng.random((max(n // 3, 1), d)), 3, axis=0)[:n]  # duplicated


def rounding_floor(x: np.ndarray) -> float:
    """What f64 can resolve: D² is a small difference of terms of size 3^-d and the two sums,
    so any summation order (scipy's or ours) moves it by about eps × those terms × log2(N²)."""
    n, d = x.shape
    single = np.prod(1 - x * x, axis=1).mean() * 2.0 ** (1 - d)
    return 1.1e-16 * (3.0**-d + single) * 4 * np.log2(2 * n * n)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Sobol' wants powers of two
@pytest.mark.parametrize("kind", ["random", "sobol", "clustered", "duplicated"])
@pytest.mark.parametrize("n", [1, 2, 17, 1000])
@pytest.mark.parametrize("d", [1, 2, 8, 33])
def test_matches_scipy(kind, n, d):
    x = point_set(kind, n, d)
    want = qmc.discrepancy(x, method="L2-star") ** 2
    got = g.l2star_sq(x)
    # 1e-10 relative, or the f64 rounding floor where D² is a cancellation of much larger terms
    # (Sobol' with d <= 2 and N = 1000: both scipy and we are ~4e-10 from the exact value there,
    # see test_exact_value_for_one_dimension)
    assert abs(got - want) <= max(1e-10 * abs(want), rounding_floor(x)), (got, want)


def test_exact_value_for_one_dimension():
    """d = 1 in exact rational arithmetic: Σ_ij (1 − max) = Σ_k (2k+1)(1 − x_(k)) over sorted x."""
    x = qmc.Sobol(1, scramble=True, seed=1).random(1024)
    xs = sorted(Fraction(float(v)) for v in x[:, 0])
    n = len(xs)
    exact = (
        Fraction(1, 3) - sum(1 - v * v for v in xs) / n + sum((2 * k + 1) * (1 - v) for k, v in enumerate(xs)) / (n * n)
    )
    assert abs(g.l2star_sq(x) - float(exact)) <= 1e-9 * float(exact)


def test_same_bits_for_any_thread_count():
    x = np.random.default_rng(5).random((600, 9))
    was = sos_rs.num_threads()
    try:
        sos_rs.set_num_threads(1)
        one = g.l2star_sq(x)
        sos_rs.set_num_threads(2)
        two = g.l2star_sq(x)
    finally:
        sos_rs.set_num_threads(was)
    assert one.hex() == two.hex()


@pytest.mark.parametrize("d", [1, 4, 8])
def test_uniform_points_read_temperature_one(d):
    ts = [g.temperature(np.random.default_rng(s).random((256, d))) for s in range(200)]
    assert 0.8 <= np.mean(ts) <= 1.25


def test_gaussian_activations_read_near_one_and_collapsed_far_above():
    proj = g.projection(64, 0)
    ts = [
        g.temperature(g.activation_points(np.random.default_rng(s).standard_normal((256, 64)), proj)) for s in range(50)
    ]
    assert 0.8 <= np.mean(ts) <= 1.5
    collapsed = np.tile(np.random.default_rng(1).standard_normal(64), (256, 1))
    assert g.temperature(g.activation_points(collapsed, proj)) > 50


def test_collapsed_router_reads_far_above_one():
    # every token routed to the same path with certainty: N identical corners of [0,1]^4,
    # D² = 3^-4 exactly, T = N·3^-4 / (2^-4 − 3^-4) ≈ 63 for N = 256
    one_hot = np.zeros((256, 4))
    one_hot[:, 2] = 1.0
    assert g.temperature(one_hot) == pytest.approx(256 * 3.0**-4 / (2.0**-4 - 3.0**-4), rel=1e-12)
    assert g.temperature(one_hot) > 50


@pytest.mark.parametrize(
    "points, error",
    [
        (np.zeros((0, 3)), InvalidValueError),
        (np.zeros((3, 0)), InvalidValueError),
        (np.array([[0.5, 1.5]]), InvalidValueError),
        (np.array([[0.5, -1e-9]]), InvalidValueError),
        (np.array([[0.5, np.nan]]), InvalidValueError),
        (np.zeros(4), ShapeError),
    ],
)
def test_bad_points_are_refused(points, error):
    with pytest.raises(error):
        g.l2star_sq(points)
