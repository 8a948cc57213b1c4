//! AVX2+FMA kernels, 8 lanes. Same names and contracts as `scalar`; tails go through a scalar
//! leftovers loop so nothing reads past a slice. Callers must have checked AVX2 and FMA
//! (`cpu::isa()` does), which is why every function here is `unsafe`. The GEMM microkernel and
//! `exp` are the shared bodies of `simd`, instantiated here for `__m256`.

use super::simd::{self, Lanes};
use super::{scalar, AdamParams, Tile};
use std::arch::x86_64::*;

const W: usize = 8;

/// The operations of the shared bodies in `simd`, one AVX2/FMA intrinsic each.
impl Lanes for __m256 {
    const W: usize = W;
    // SAFETY (every method): `Lanes` requires the caller to run with AVX2 and FMA (and pointers
    // to hold W lanes), which is all these intrinsics need.
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: see above.
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: see above.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: see above.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        // SAFETY: see above.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> Self {
        // SAFETY: see above.
        unsafe { _mm256_broadcast_ss(&*p) }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        // SAFETY: see above.
        unsafe { _mm256_add_ps(self, b) }
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        // SAFETY: see above.
        unsafe { _mm256_mul_ps(self, b) }
    }
    #[inline(always)]
    unsafe fn min(self, b: Self) -> Self {
        // SAFETY: see above.
        unsafe { _mm256_min_ps(self, b) }
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        // SAFETY: see above.
        unsafe { _mm256_max_ps(self, b) }
    }
    #[inline(always)]
    unsafe fn fmadd(self, b: Self, c: Self) -> Self {
        // SAFETY: see above.
        unsafe { _mm256_fmadd_ps(self, b, c) }
    }
    #[inline(always)]
    unsafe fn fnmadd(self, b: Self, c: Self) -> Self {
        // SAFETY: see above.
        unsafe { _mm256_fnmadd_ps(self, b, c) }
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        // SAFETY: see above.
        unsafe { _mm256_round_ps(self, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC) }
    }
    #[inline(always)]
    unsafe fn pow2(self) -> Self {
        // SAFETY: see above.
        unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_add_epi32(_mm256_cvtps_epi32(self), _mm256_set1_epi32(127)),
                23,
            ))
        }
    }
    #[inline(always)]
    unsafe fn prefetch_c_row(_p: *const f32) {}
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn hmax(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_max_ps(lo, hi);
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// 1 / (1 + exp(-x)).
///
/// # Safety
/// The host supports AVX2 and FMA.
#[inline(always)]
pub(super) unsafe fn sigmoid8(x: __m256) -> __m256 {
    // SAFETY: AVX2 and FMA are available (this function's contract); no memory is touched.
    unsafe {
        let one = _mm256_set1_ps(1.0);
        let e = simd::exp(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_div_ps(one, _mm256_add_ps(one, e))
    }
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 4 * W <= n {
        for (u, a) in acc.iter_mut().enumerate() {
            // SAFETY: i + 4W <= n, so lanes i+uW .. i+uW+8 are in bounds of both slices.
            *a = unsafe { _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + u * W)), _mm256_loadu_ps(pb.add(i + u * W)), *a) };
        }
        i += 4 * W;
    }
    while i + W <= n {
        // SAFETY: i + W <= n.
        acc[0] = unsafe { _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]) };
        i += W;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum(v) + scalar::dot(&a[i..], &b[i..])
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    let va = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + W <= n {
        // SAFETY: i + W <= n for both slices.
        unsafe {
            let r = _mm256_fmadd_ps(va, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(y.as_ptr().add(i)));
            _mm256_storeu_ps(y.as_mut_ptr().add(i), r);
        }
        i += W;
    }
    scalar::axpy(alpha, &x[i..], &mut y[i..]);
}

/// Applies `$vec` to 8-lane chunks of equal-length slices and `$tail` to the leftovers.
macro_rules! map_lanes {
    ($n:expr, |$i:ident| $vec:block, $tail:expr) => {{
        let n = $n;
        let mut $i = 0;
        while $i + W <= n {
            $vec
            $i += W;
        }
        $tail($i)
    }};
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn scale(alpha: f32, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    let va = _mm256_set1_ps(alpha);
    map_lanes!(
        x.len(),
        |i| {
            // SAFETY: i + W <= len for both slices.
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(va, _mm256_loadu_ps(x.as_ptr().add(i))));
            }
        },
        |i: usize| scalar::scale(alpha, &x[i..], &mut out[i..])
    )
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(a.len() == b.len() && a.len() == out.len());
    map_lanes!(
        a.len(),
        |i| {
            // SAFETY: i + W <= len for all three slices.
            unsafe {
                let r = _mm256_add_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), r);
            }
        },
        |i: usize| scalar::add(&a[i..], &b[i..], &mut out[i..])
    )
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(a.len() == b.len() && a.len() == out.len());
    map_lanes!(
        a.len(),
        |i| {
            // SAFETY: i + W <= len for all three slices.
            unsafe {
                let r = _mm256_mul_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), r);
            }
        },
        |i: usize| scalar::mul(&a[i..], &b[i..], &mut out[i..])
    )
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn scale_mul(alpha: f32, x: &[f32], w: &[f32], out: &mut [f32]) {
    assert!(x.len() == w.len() && x.len() == out.len());
    let va = _mm256_set1_ps(alpha);
    map_lanes!(
        x.len(),
        |i| {
            // SAFETY: i + W <= len for all three slices.
            unsafe {
                let xs = _mm256_mul_ps(va, _mm256_loadu_ps(x.as_ptr().add(i)));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(xs, _mm256_loadu_ps(w.as_ptr().add(i))));
            }
        },
        |i: usize| scalar::scale_mul(alpha, &x[i..], &w[i..], &mut out[i..])
    )
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn sum(x: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let tail = map_lanes!(
        x.len(),
        |i| {
            // SAFETY: i + W <= len.
            unsafe {
                acc = _mm256_add_ps(acc, _mm256_loadu_ps(x.as_ptr().add(i)));
            }
        },
        |i: usize| scalar::sum(&x[i..])
    );
    hsum(acc) + tail
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn sumsq(x: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let tail = map_lanes!(
        x.len(),
        |i| {
            // SAFETY: i + W <= len.
            unsafe {
                let v = _mm256_loadu_ps(x.as_ptr().add(i));
                acc = _mm256_fmadd_ps(v, v, acc);
            }
        },
        |i: usize| scalar::sumsq(&x[i..])
    );
    hsum(acc) + tail
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn max(x: &[f32]) -> f32 {
    let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
    let tail = map_lanes!(
        x.len(),
        |i| {
            // SAFETY: i + W <= len.
            unsafe {
                acc = _mm256_max_ps(acc, _mm256_loadu_ps(x.as_ptr().add(i)));
            }
        },
        |i: usize| scalar::max(&x[i..])
    );
    hmax(acc).max(tail)
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_shift_sum(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    assert_eq!(x.len(), out.len());
    let vs = _mm256_set1_ps(shift);
    let mut acc = _mm256_setzero_ps();
    let tail = map_lanes!(
        x.len(),
        |i| {
            // SAFETY: i + W <= len for both slices.
            unsafe {
                let e = simd::exp(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), vs));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), e);
                acc = _mm256_add_ps(acc, e);
            }
        },
        |i: usize| scalar::exp_shift_sum(&x[i..], shift, &mut out[i..])
    );
    hsum(acc) + tail
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_sub(x: &mut [f32], shift: &[f32]) {
    assert_eq!(x.len(), shift.len());
    map_lanes!(
        x.len(),
        |i| {
            // SAFETY: i + W <= len for both slices.
            unsafe {
                let d = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(shift.as_ptr().add(i)));
                _mm256_storeu_ps(x.as_mut_ptr().add(i), simd::exp(d));
            }
        },
        |i: usize| scalar::exp_sub(&mut x[i..], &shift[i..])
    )
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    map_lanes!(
        x.len(),
        |i| {
            // SAFETY: i + W <= len for both slices.
            unsafe {
                let v = _mm256_loadu_ps(x.as_ptr().add(i));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(v, sigmoid8(v)));
            }
        },
        |i: usize| scalar::silu(&x[i..], &mut out[i..])
    )
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert!(x.len() == dy.len() && x.len() == dx.len());
    let one = _mm256_set1_ps(1.0);
    map_lanes!(
        x.len(),
        |i| {
            // SAFETY: i + W <= len for all three slices.
            unsafe {
                let v = _mm256_loadu_ps(x.as_ptr().add(i));
                let s = sigmoid8(v);
                let t = _mm256_fmadd_ps(v, _mm256_sub_ps(one, s), one);
                let r = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(dy.as_ptr().add(i)), s), t);
                _mm256_storeu_ps(dx.as_mut_ptr().add(i), r);
            }
        },
        |i: usize| scalar::silu_backward(&x[i..], &dy[i..], &mut dx[i..])
    )
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gelu(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    let k2 = _mm256_set1_ps(2.0 * scalar::GELU_K);
    let c = _mm256_set1_ps(scalar::GELU_C);
    map_lanes!(
        x.len(),
        |i| {
            // SAFETY: i + W <= len for both slices.
            unsafe {
                let v = _mm256_loadu_ps(x.as_ptr().add(i));
                let x3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
                let u2 = _mm256_mul_ps(k2, _mm256_fmadd_ps(c, x3, v));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(v, sigmoid8(u2)));
            }
        },
        |i: usize| scalar::gelu(&x[i..], &mut out[i..])
    )
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert!(x.len() == dy.len() && x.len() == dx.len());
    let k2 = _mm256_set1_ps(2.0 * scalar::GELU_K);
    let c = _mm256_set1_ps(scalar::GELU_C);
    let c3 = _mm256_set1_ps(3.0 * scalar::GELU_C);
    let one = _mm256_set1_ps(1.0);
    map_lanes!(
        x.len(),
        |i| {
            // SAFETY: i + W <= len for all three slices.
            unsafe {
                let v = _mm256_loadu_ps(x.as_ptr().add(i));
                let x2 = _mm256_mul_ps(v, v);
                let u2 = _mm256_mul_ps(k2, _mm256_fmadd_ps(_mm256_mul_ps(c, x2), v, v));
                let s = sigmoid8(u2);
                let du = _mm256_mul_ps(k2, _mm256_fmadd_ps(c3, x2, one));
                let inner = _mm256_mul_ps(_mm256_mul_ps(v, s), _mm256_mul_ps(_mm256_sub_ps(one, s), du));
                let r = _mm256_mul_ps(_mm256_loadu_ps(dy.as_ptr().add(i)), _mm256_add_ps(s, inner));
                _mm256_storeu_ps(dx.as_mut_ptr().add(i), r);
            }
        },
        |i: usize| scalar::gelu_backward(&x[i..], &dy[i..], &mut dx[i..])
    )
}

/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamParams) {
    let n = p.len();
    assert!(g.len() == n && m.len() == n && v.len() == n);
    let b1 = _mm256_set1_ps(h.beta1);
    let b2 = _mm256_set1_ps(h.beta2);
    let nb1 = _mm256_set1_ps(1.0 - h.beta1);
    let nb2 = _mm256_set1_ps(1.0 - h.beta2);
    let decay = _mm256_set1_ps(1.0 - h.lr * h.weight_decay);
    let step = _mm256_set1_ps(h.lr / h.bias1);
    let bc2 = _mm256_set1_ps(h.bias2_sqrt);
    let eps = _mm256_set1_ps(h.eps);
    map_lanes!(
        n,
        |i| {
            // SAFETY: i + W <= n for all four slices.
            unsafe {
                let gi = _mm256_loadu_ps(g.as_ptr().add(i));
                let mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m.as_ptr().add(i))), _mm256_mul_ps(nb1, gi));
                let vi = _mm256_add_ps(
                    _mm256_mul_ps(b2, _mm256_loadu_ps(v.as_ptr().add(i))),
                    _mm256_mul_ps(_mm256_mul_ps(nb2, gi), gi),
                );
                let denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2), eps);
                let pi = _mm256_mul_ps(_mm256_loadu_ps(p.as_ptr().add(i)), decay);
                let pi = _mm256_sub_ps(pi, _mm256_mul_ps(step, _mm256_div_ps(mi, denom)));
                _mm256_storeu_ps(m.as_mut_ptr().add(i), mi);
                _mm256_storeu_ps(v.as_mut_ptr().add(i), vi);
                _mm256_storeu_ps(p.as_mut_ptr().add(i), pi);
            }
        },
        |i: usize| scalar::adamw(&mut p[i..], &g[i..], &mut m[i..], &mut v[i..], h)
    )
}

/// The GEMM microkernel tile: 6 rows × 16 columns (see `simd::gemm_tile`).
pub const MR: usize = 6;
pub const NR: usize = 16;

/// dst[c·ldd + r] = scale·src[r·lds + c] for r, c < 8: an 8×8 transpose in registers
/// (unpack, shuffle, lane permute), the core of the transposing packs.
///
/// # Safety
/// The host supports AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn transpose8x8(src: &[f32], lds: usize, dst: &mut [f32], ldd: usize, scale: f32) {
    assert!(src.len() >= 7 * lds + 8 && dst.len() >= 7 * ldd + 8);
    let (ps, pd, vs) = (src.as_ptr(), dst.as_mut_ptr(), _mm256_set1_ps(scale));
    // SAFETY: rows 0..8 of 8 floats at stride lds (ldd) lie inside src (dst) by the assert.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_mul_ps(vs, _mm256_loadu_ps(ps.add(i * lds))));
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[(i / 2) * 2], r[(i / 2) * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        for c in 0..4 {
            _mm256_storeu_ps(pd.add(c * ldd), _mm256_permute2f128_ps::<0x20>(u[c], u[c + 4]));
            _mm256_storeu_ps(pd.add((c + 4) * ldd), _mm256_permute2f128_ps::<0x31>(u[c], u[c + 4]));
        }
    }
}

/// C[MR×NR] (+)= A·B over `kc` steps with the addressing of `t` (see `Tile`).
///
/// # Safety
/// The host supports AVX2 and FMA; every address `t` describes for r < MR, p < kc, j < NR is
/// valid (A, B readable, C writable) and C does not overlap A or B.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemm_tile(kc: usize, t: &Tile, accumulate: bool) {
    // SAFETY: AVX2 and FMA are available and `t` is valid for this tile (this function's
    // contract).
    unsafe {
        if t.rsa == 1 && t.csa == MR && t.ldb == NR {
            simd::gemm_tile::<__m256, MR>(kc, t, 1, MR, NR, accumulate) // packed panels: constant strides
        } else {
            simd::gemm_tile::<__m256, MR>(kc, t, t.rsa, t.csa, t.ldb, accumulate)
        }
    }
}

/// See `simd::softmax_step`.
///
/// # Safety
/// The host supports this module's instruction set (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softmax_step(st: &mut [f32], nr: usize, m: &mut [f32], l: &mut [f32], corr: &mut [f32]) {
    assert!(nr.is_multiple_of(W) && st.len().is_multiple_of(nr) && m.len().min(l.len()).min(corr.len()) >= nr);
    // SAFETY: the shapes are checked above; the set is available (this function's contract).
    unsafe { simd::softmax_step::<__m256>(st, nr, m, l, corr) }
}

/// See `simd::attn_ds_row`.
///
/// # Safety
/// The host supports this module's instruction set (`cpu::isa()` checks).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn attn_ds_row(s: &mut [f32], dp: &mut [f32], lse: f32, delta: f32, scale: f32) {
    assert!(s.len() == dp.len() && s.len().is_multiple_of(W));
    // SAFETY: the lengths are checked above; the set is available (this function's contract).
    unsafe { simd::attn_ds_row::<__m256>(s, dp, lse, delta, scale) }
}
