"""Exact emulation of IEEE-style binary floating-point formats on float64 numpy arrays.

Values are always carried as float64 arrays whose entries are representable in the format being
emulated; `Format.round` maps any float64 to the nearest such value:

- round to nearest, ties to even (IEEE 754 default), on the significand of `precision` bits
  (counting the implicit bit): float16 11, bfloat16 8, float32 24;
- gradual underflow: below 2**emin the quantum stays 2**(emin - precision + 1) (subnormals), so
  float16's smallest positive value is 2**-24 and bfloat16's 2**-133;
- overflow: a value whose rounding exceeds the largest finite number becomes ±inf (so float16
  65520 = 65504 + half an ulp rounds, as a tie to the even 2**16, to inf); NaN and inf pass.

Why float64 carries the values exactly: every float16/bfloat16/float32 number is a float64, and
the product of two of them has at most 48 significant bits, so it is exact in float64.
A single basic operation (+, -, ×, ÷, √) on format values computed in float64 and then rounded
gives the correctly rounded result, because float64's 53 bits are at least 2p + 2 for p <= 24
(Figueroa's theorem on innocuous double rounding). A fused multiply-add acc + a·b is not such an
operation (a·b is not a format value), so `fma` first forms acc + a·b rounded to odd in float64
(exact TwoSum, then the last bit set when the sum was inexact) and only then rounds to the
format; rounding to odd with >= p + 2 bits makes the second rounding exact (Boldo–Melquiond).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Format:
    """A binary floating-point format: `precision` significand bits, normal exponents
    emin..emax (the value 1.0 has exponent 0)."""

    name: str
    precision: int
    emin: int
    emax: int

    @property
    def max(self) -> float:
        """Largest finite value, (2 - 2**(1 - p)) · 2**emax."""
        return float(np.ldexp(2.0 - 2.0 ** (1 - self.precision), self.emax))

    @property
    def unit_roundoff(self) -> float:
        """Half the distance from 1 to the next value: 2**-p."""
        return 2.0**-self.precision

    def round(self, x: np.ndarray) -> np.ndarray:
        """Each entry of `x` (float64) rounded to the nearest value of this format, ties to even,
        with subnormals and overflow to ±inf; returned as float64."""
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(over="ignore"):  # overflow to inf is the specified result
            if self.name == "float16":
                return x.astype(np.float16).astype(np.float64)  # numpy rounds double -> half directly, RNE
            if self.name == "float32":
                return x.astype(np.float32).astype(np.float64)  # IEEE double -> single conversion, RNE
        if self.name == "float64":
            return x
        return round_to_format(x, self.precision, self.emin, self.emax)


def round_to_format(x: np.ndarray, precision: int, emin: int, emax: int) -> np.ndarray:
    """Round float64 `x` to `precision` significand bits with exponent range [emin, emax]:
    the exponent E of the leading bit (floor(log2|x|), exact from frexp) sets the quantum
    2**(max(E, emin) - precision + 1); x / quantum is an exact power-of-two scaling, `np.rint`
    rounds it half to even, and the product is the rounded value. Overflow -> ±inf."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        _, e = np.frexp(x)  # x = m · 2**e with 0.5 <= |m| < 1, so the leading bit is 2**(e-1)
        quantum_exp = np.maximum(e - 1, emin) - (precision - 1)
        y = np.ldexp(np.rint(np.ldexp(x, -quantum_exp)), quantum_exp)
        biggest = np.ldexp(2.0 - 2.0 ** (1 - precision), emax)
        y = np.where(np.abs(y) > biggest, np.copysign(np.inf, x), y)
        return np.where(np.isfinite(x), y, x)


def bf16_from_f32_bits(x32: np.ndarray) -> np.ndarray:
    """bfloat16 rounding of float32 values by the bit trick hardware and PyTorch use: add
    0x7FFF plus the lowest kept bit to the 32-bit pattern and clear the low 16 bits (round to
    nearest even; carries into the exponent give the next binade or inf). Returned as float64.
    A float32 input makes this a single rounding; it cross-checks `round_to_format`."""
    x32 = np.ascontiguousarray(x32, dtype=np.float32)
    u = x32.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    out = rounded.view(np.float32).astype(np.float64)
    return np.where(np.isnan(x32), np.float64(np.nan), out)


FLOAT16 = Format("float16", 11, -14, 15)
BFLOAT16 = Format("bfloat16", 8, -126, 127)
FLOAT32 = Format("float32", 24, -126, 127)
FLOAT64 = Format("float64", 53, -1022, 1023)
FORMATS = {f.name: f for f in (FLOAT16, BFLOAT16, FLOAT32, FLOAT64)}


def two_sum(a: np.ndarray, b: np.ndarray):
    """(s, err) with s = fl(a + b) and s + err = a + b exactly (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    return s, err


def round_to_odd_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b rounded to odd in float64: the nearest-rounded sum, moved one ulp towards the exact
    sum when it was inexact and its last bit is even (so the last bit records 'inexact')."""
    s, err = two_sum(a, b)
    bits = s.view(np.int64)
    fix = (err != 0) & ((bits & 1) == 0)
    # Within one sign, float64 bit patterns are ordered like the values they encode: moving the
    # magnitude up is +1 when err has the sign of s, else -1 (s != 0 whenever err != 0).
    step = np.where(np.signbit(err) == np.signbit(s), 1, -1).astype(np.int64)
    return np.where(fix, (bits + step).view(np.float64), s)


def fma(acc: np.ndarray, a: np.ndarray, b: np.ndarray, fmt: Format) -> np.ndarray:
    """round_fmt(acc + a·b) with a single rounding (a fused multiply-add in `fmt`), for acc, a,
    b holding values of formats of at most 24 significand bits: a·b is exact in float64, the sum
    is rounded to odd, then to `fmt` (exact by Boldo–Melquiond since 53 >= p + 2)."""
    if fmt.name == "float64":
        return acc + a * b
    return fmt.round(round_to_odd_sum(acc, a * b))
