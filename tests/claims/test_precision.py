"""`sos precision`: the emulated formats on known cases, the fused multiply-add against exact
rational arithmetic, the f32 row against numpy's own float32 products, and the command."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from sos_rs.precision import block
from sos_rs.precision.formats import BFLOAT16, FLOAT16, FLOAT32, bf16_from_f32_bits, fma, round_to_format
from sos_rs.precision.study import StudyConfig, rel_err, run_study, sequential_product

# (format, input, expected): ties go to the even neighbour, overflow gives inf, subnormals keep
# the smallest quantum (f16 2**-24, bf16 2**-133).
CASES = [
    (FLOAT16, 1 + 2**-11, 1.0),  # halfway between 1 and 1 + 2**-10: the even one is 1
    (FLOAT16, 1 + 3 * 2**-11, 1 + 2**-9),  # halfway between 1 + 2**-10 and 1 + 2**-9: up to even
    (FLOAT16, 1 + 2**-11 + 2**-30, 1 + 2**-10),  # just above halfway: up
    (FLOAT16, 65504.0, 65504.0),  # the largest finite float16
    (FLOAT16, 65519.99, 65504.0),  # below max + half ulp: stays finite
    (FLOAT16, 65520.0, np.inf),  # max + half ulp: a tie, to the even 2**16, which overflows
    (FLOAT16, -1e6, -np.inf),
    (FLOAT16, 2**-24, 2**-24),  # smallest subnormal
    (FLOAT16, 2**-25, 0.0),  # halfway between 0 and 2**-24: to even (0)
    (FLOAT16, 3 * 2**-25, 2**-23),  # halfway between 2**-24 and 2**-23: to even (2**-23)
    (FLOAT16, 1.25 * 2**-24, 2**-24),
    (FLOAT16, 5 * 2**-26, 2**-24),  # 1.25 quanta of a subnormal
    (BFLOAT16, 1 + 2**-8, 1.0),
    (BFLOAT16, 1 + 3 * 2**-8, 1 + 2**-6),
    (BFLOAT16, (2 - 2**-7) * 2.0**127, (2 - 2**-7) * 2.0**127),
    (BFLOAT16, (2 - 2**-8) * 2.0**127, np.inf),  # max + half ulp
    (BFLOAT16, 2.0**-133, 2.0**-133),
    (BFLOAT16, 2.0**-134, 0.0),
    (BFLOAT16, 3 * 2.0**-134, 2.0**-132),
    (FLOAT32, 1 + 2**-24, 1.0),
    (FLOAT32, 1 + 3 * 2**-24, 1 + 2**-22),
    (FLOAT32, 2.0**-150, 0.0),
]


@pytest.mark.parametrize("fmt, x, expected", CASES, ids=[f"{c[0].name}-{c[1]!r}" for c in CASES])
def test_known_cases(fmt, x, expected):
    assert fmt.round(np.array([x]))[0] == expected
    assert fmt.round(np.array([-x]))[0] == -expected
    # the generic bit-exact path agrees with the format's own (numpy's casts for f16 and f32)
    got = round_to_format(np.array([x]), fmt.precision, fmt.emin, fmt.emax)[0]
    assert got == expected


def test_nan_and_inf_pass_through():
    for fmt in (FLOAT16, BFLOAT16, FLOAT32):
        out = fmt.round(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0]))
        assert np.isnan(out[0]) and out[1] == np.inf and out[2] == -np.inf and out[3] == 0.0


def random_values(rng, n=200_000):
    """Magnitudes from 2**-30 to 2**20 (subnormal to overflowing for f16), both signs, plus exact
    ties of f16."""
    x = rng.standard_normal(n) * 2.0 ** rng.integers(-30, 20, n)
    ties = (rng.integers(0, 2**11, 2000) * 2 + 1) * 2.0 ** rng.integers(-26, 5, 2000)
    return np.concatenate([x, ties, -ties])


def test_generic_rounding_equals_numpy_float16():
    x = random_values(np.random.default_rng(0))
    np.testing.assert_array_equal(round_to_format(x, 11, -14, 15), x.astype(np.float16).astype(np.float64))


def test_bf16_equals_the_hardware_bit_trick_on_float32_inputs():
    rng = np.random.default_rng(1)
    x32 = random_values(rng).astype(np.float32)
    x32 = np.concatenate([x32, np.float32([3.3895314e38, 1e-40, -1e-45, 1.0 + 2**-8])])
    np.testing.assert_array_equal(BFLOAT16.round(x32.astype(np.float64)), bf16_from_f32_bits(x32))


def nearest(fmt, exact: Fraction) -> float:
    """The correctly rounded (ties to even) value of `exact` in `fmt`, by exhaustive comparison
    of neighbours in exact rational arithmetic."""
    c = float(fmt.round(np.array([float(exact)]))[0])
    dtype = np.float16 if fmt is FLOAT16 else np.float32
    cands = {c}
    v = dtype(c)
    for _ in range(2):
        cands |= {float(np.nextafter(v, dtype(np.inf))), float(np.nextafter(v, dtype(-np.inf)))}
        v = np.nextafter(v, dtype(np.inf))
    v = dtype(c)
    v = np.nextafter(v, dtype(-np.inf))
    cands.add(float(np.nextafter(v, dtype(-np.inf))))
    best = min(abs(Fraction(x) - exact) for x in cands)
    winners = sorted(x for x in cands if abs(Fraction(x) - exact) == best)
    if len(winners) == 1:
        return winners[0]
    even = [
        x for x in winners if int(np.array(x, dtype).view(np.uint16 if dtype is np.float16 else np.uint32)) % 2 == 0
    ]
    return even[0]


@pytest.mark.parametrize("fmt", [FLOAT16, FLOAT32], ids=["f16", "f32"])
def test_fma_is_a_single_rounding(fmt):
    rng = np.random.default_rng(2)
    n = 3000
    a = fmt.round(rng.standard_normal(n))
    b = fmt.round(rng.standard_normal(n) * 2.0 ** rng.integers(-12, 4, n))
    acc = fmt.round(rng.standard_normal(n) * 2.0 ** rng.integers(-4, 8, n))
    # cases built to sit exactly on a tie of acc + a·b, and just off one
    got = fma(acc, a, b, fmt)
    for i in range(n):
        exact = Fraction(acc[i]) + Fraction(a[i]) * Fraction(b[i])
        assert got[i] == nearest(fmt, exact), (acc[i], a[i], b[i])


def test_fma_rounds_to_odd_before_the_last_rounding():
    # acc + a·b = 1 + 2**-11 + 2**-60 for f16: above the tie by 2**-60, so it must round up to
    # 1 + 2**-10; a plain float64 sum loses the 2**-60 and a second rounding would tie to 1.
    acc, a, b = np.array([1.0]), np.array([2.0**-11]), np.array([1.0 + 2**-49])
    assert acc[0] + a[0] * b[0] == 1 + 2**-11  # float64 alone lands on the tie
    assert fma(acc, a, b, FLOAT16)[0] == 1 + 2**-10
    # with no residual a tie stays a tie, decided to even
    assert fma(acc, a, np.array([1.0]), FLOAT16)[0] == 1.0


def test_f32_row_against_numpy_float32_products():
    rng = np.random.default_rng(3)
    d = 256
    x = rng.normal(0, d**-0.5, (4, 16, d))
    w = rng.normal(0, d**-0.5, (4, d, d))
    ref = x @ w
    ours = rel_err(sequential_product(x, w, "f32"), ref, (1, 2))
    numpy32 = rel_err((x.astype(np.float32) @ w.astype(np.float32)).astype(np.float64), ref, (1, 2))
    # both are float32 rounding of inputs plus accumulation: the same order of magnitude
    assert np.all((ours > numpy32 / 4) & (ours < numpy32 * 4)), (ours, numpy32)
    assert np.all(ours < 4 * d**0.5 * 2.0**-24)
    # and the f32-accumulated f16 product is numpy's float32 sum of f16 values, term by term
    xs, ws = FLOAT16.round(x[:1, :2, :8]), FLOAT16.round(w[:1, :8, :3])
    seq = np.zeros((1, 2, 3), np.float32)
    for k in range(8):
        seq = seq + (xs[:, :, k, None].astype(np.float32) * ws[:, None, k, :].astype(np.float32))
    np.testing.assert_array_equal(sequential_product(x[:1, :2, :8], w[:1, :8, :3], "f16 (f32 acc)"), FLOAT16.round(seq))


def test_reference_stack_gradients_match_central_differences():
    shape = block.BlockShape(d_model=8, n_heads=2, ffn_hidden=12, seq_len=5)
    rng = np.random.default_rng(4)
    layers = block.init_stack(rng, shape, 2, 1)
    for layer in layers:
        for k in layer:
            layer[k] = layer[k] + rng.normal(0, 0.3, layer[k].shape)
    x, dy = rng.normal(size=(1, 5, 8)), rng.normal(size=(1, 5, 8))
    _, grads = block.reference(x, layers, dy, shape)
    for i, layer in enumerate(layers):
        for name in block.PARAMS:
            idx = tuple(int(rng.integers(0, s)) for s in layer[name].shape)
            old, eps = layer[name][idx], 1e-6
            layer[name][idx] = old + eps
            up = float((block.reference(x, layers, dy, shape)[0] * dy).sum())
            layer[name][idx] = old - eps
            down = float((block.reference(x, layers, dy, shape)[0] * dy).sum())
            layer[name][idx] = old
            num = (up - down) / (2 * eps)
            assert abs(num - grads[i][name][idx]) <= 1e-5 + 1e-3 * abs(num), (i, name)


def test_study_orders_formats_and_reports_claims():
    cfg = StudyConfig(seeds=3, d=64, rows=4, depths=[1, 2], block=block.BlockShape(16, 2, 48, 8))
    r = run_study(cfg)
    e = r["single_product"]["median_rel_err"]
    assert e["f32"] < e["f16 (f32 acc)"] < e["bf16 (f32 acc)"]
    for row in r["stacks"]:
        m = row["median_rel_err"]
        for what in ("forward", "grad"):
            assert 0 < m["f32"][what] < m["f16"][what] < m["bf16"][what]
        assert len(row["params"]["f16"]) == row["depth"] * len(block.PARAMS)
    assert len(r["claims"]) == 4 and all("measured" in c and "verdict" in c for c in r["claims"])


def test_cli(tmp_path):
    out = tmp_path / "p.json"
    png = tmp_path / "p.png"
    args = "precision --seeds 2 --depths 1,2 --d 32 --rows 2 --block-d 8 --block-heads 2 --block-ffn 16 --block-seq 4"
    res = subprocess.run(
        [sys.executable, "-m", "sos_rs", *args.split(), "--json", str(out), "--plot", str(png)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "claims:" in res.stdout and "f16/f32" in res.stdout
    data = json.loads(out.read_text())
    assert [r["depth"] for r in data["stacks"]] == [1, 2] and png.stat().st_size > 0
    bad = subprocess.run(
        [sys.executable, "-m", "sos_rs", "precision", "--block-d", "10", "--block-heads", "4"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--block-d" in bad.stderr and "Traceback" not in bad.stderr
