"""The governor's thermometer (SPEC §8): the squared L2-star discrepancy of points in [0,1]^d
(Warnock's formula, the Rust kernel in rust/governor/) and the temperature T = D² / E[D²], where
E[D²] = (2^−d − 3^−d) / N is its expectation for N i.i.d. uniform points. T ≈ 1: as disordered
as random; T ≫ 1: collapsed or clustered.

Two ways of turning a model's state into points, both per layer:
- router probability vectors [N, E] are mapped to [0,1]^(E-1) by `router_points`, the
  stick-breaking transform that sends the uniform distribution on the simplex (Dirichlet(1))
  to the uniform cube: routing as varied as random reads T ≈ 1, routing that collapses to one
  point (flat, as at initialisation) or to the corners (one-hot) reads T ≫ 1. The raw vectors
  would not do: they live on a simplex, read T ≫ 1 whatever the routing, and not monotonically;
- activations [N, D] are projected to `ACT_DIM` = 8 coordinates by a fixed random orthonormal matrix,
  standardised per coordinate over the N tokens and mapped through the normal CDF (a Gaussian
  cloud becomes uniform; a collapsed one piles up at 0.5).
The control law that acts on these readings lives in train/governor.py."""

from __future__ import annotations

import numpy as np

from . import _core

ACT_DIM = 8
"""Coordinates of the random projection of activations."""


def l2star_sq(points) -> float:
    """D² of `points` [N, d] (any float array; converted to float64). N = 0, d = 0, NaN or a
    coordinate outside [0, 1] raise InvalidValueError; another rank ShapeError."""
    return _core.l2star_sq(np.ascontiguousarray(points, dtype=np.float64))


def expected_l2star_sq(n: int, d: int) -> float:
    """E[D²] of n i.i.d. uniform points in [0,1]^d: (2^−d − 3^−d) / n."""
    return (2.0**-d - 3.0**-d) / n


def temperature(points) -> float:
    """T = D² / E[D²] of `points` [N, d]."""
    x = np.ascontiguousarray(points, dtype=np.float64)
    if x.ndim != 2:
        from .errors import ShapeError

        raise ShapeError(f"temperature: expected points [N, d], got shape {x.shape}")
    return l2star_sq(x) / expected_l2star_sq(x.shape[0], x.shape[1])


# erfc(a) ≈ t·exp(−a² + Σ c_i t^i), t = 1/(1 + a/2) (Numerical Recipes, erfcc), highest power first.
_ERFC_COEFFS = (
    0.17087277,
    -0.82215223,
    1.48851587,
    -1.13520398,
    0.27886807,
    -0.18628806,
    0.09678418,
    0.37409196,
    1.00002368,
    -1.26551223,
)


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Φ(z) through erfc with the Numerical Recipes Chebyshev fit (|error| < 1.2e-7), so no
    scipy at run time; clipped to [0, 1]."""
    a = np.abs(z) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = np.zeros_like(t)
    for c in _ERFC_COEFFS:  # Horner, highest power first
        poly = poly * t + c
    poly = poly - a * a
    erfc = t * np.exp(poly)
    return np.clip(np.where(z >= 0, 1.0 - 0.5 * erfc, 0.5 * erfc), 0.0, 1.0)


def router_points(probs: np.ndarray) -> np.ndarray:
    """Router probability vectors [N, E] (rows summing to 1) -> points [N, E-1] in [0,1]:
    v_i = p_i / (1 − Σ_{j<i} p_j) is Beta(1, E−1−i) for Dirichlet(1) vectors, independently, and
    its CDF u_i = 1 − (1 − v_i)^(E−1−i) is then uniform. E = 1 gives no coordinates (ShapeError
    from `temperature`); an exhausted stick (no mass left) maps to 0."""
    p = np.asarray(probs, dtype=np.float64)
    n, e = p.shape
    rem = 1.0 - np.concatenate([np.zeros((n, 1)), np.cumsum(p[:, :-2], axis=1)], axis=1) if e > 1 else p[:, :0]
    v = np.divide(p[:, :-1], rem, out=np.zeros((n, max(e - 1, 0))), where=rem > 1e-12)
    k = (e - 1 - np.arange(e - 1))[None, :]
    return np.clip(1.0 - (1.0 - np.clip(v, 0.0, 1.0)) ** k, 0.0, 1.0)


def projection(width: int, seed: int) -> np.ndarray:
    """The fixed random projection [width, min(width, ACT_DIM)] of a layer's activations: the
    orthonormal columns of a Gaussian matrix's QR factor, so i.i.d. Gaussian activations stay
    i.i.d. (a plain Gaussian matrix would correlate the coordinates and read T > 1)."""
    a = np.random.default_rng([seed, width, 0x50C]).standard_normal((width, min(width, ACT_DIM)))
    q, r = np.linalg.qr(a)
    return q * np.sign(np.diag(r))  # unique sign convention


def activation_points(x: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """Activations x [N, D] -> points [N, ACT_DIM] in [0,1]: x·proj, standardised per coordinate
    over the tokens (a coordinate with no spread becomes 0), then the normal CDF."""
    y = np.asarray(x, dtype=np.float64) @ proj
    y = y - y.mean(axis=0)
    std = y.std(axis=0)
    y = np.divide(y, std, out=np.zeros_like(y), where=std > 1e-12 * (1.0 + np.abs(y).max()))
    return normal_cdf(y)


__all__ = [
    "ACT_DIM",
    "activation_points",
    "expected_l2star_sq",
    "l2star_sq",
    "normal_cdf",
    "projection",
    "router_points",
    "temperature",
]
