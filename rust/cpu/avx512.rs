//! AVX-512F kernels, 16 lanes, for the compute-bound primitives (GEMM, dot, axpy, exp). The
//! memory-bound elementwise kernels gain nothing from wider vectors and use `avx2` instead.
//! Tails use masked loads and stores, which never touch lanes outside the mask. The GEMM
//! microkernel and `exp` are the shared bodies of `simd`, instantiated here for `__m512`.

use super::simd::{self, Lanes};
use super::Tile;
use std::arch::x86_64::*;

const W: usize = 16;

/// The operations of the shared bodies in `simd`, one AVX-512F intrinsic each.
impl Lanes for __m512 {
    const W: usize = W;
    // SAFETY (every method): `Lanes` requires the caller to run with AVX-512F (and pointers to
    // hold W lanes), which is all these intrinsics need.
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: see above.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: see above.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: see above.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        // SAFETY: see above.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> Self {
        // SAFETY: see above.
        unsafe { _mm512_set1_ps(*p) }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        // SAFETY: see above.
        unsafe { _mm512_add_ps(self, b) }
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        // SAFETY: see above.
        unsafe { _mm512_mul_ps(self, b) }
    }
    #[inline(always)]
    unsafe fn min(self, b: Self) -> Self {
        // SAFETY: see above.
        unsafe { _mm512_min_ps(self, b) }
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        // SAFETY: see above.
        unsafe { _mm512_max_ps(self, b) }
    }
    #[inline(always)]
    unsafe fn fmadd(self, b: Self, c: Self) -> Self {
        // SAFETY: see above.
        unsafe { _mm512_fmadd_ps(self, b, c) }
    }
    #[inline(always)]
    unsafe fn fnmadd(self, b: Self, c: Self) -> Self {
        // SAFETY: see above.
        unsafe { _mm512_fnmadd_ps(self, b, c) }
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        // SAFETY: see above.
        unsafe { _mm512_roundscale_ps(self, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC) }
    }
    #[inline(always)]
    unsafe fn pow2(self) -> Self {
        // SAFETY: see above.
        unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                _mm512_cvtps_epi32(self),
                _mm512_set1_epi32(127),
            )))
        }
    }
    #[inline(always)]
    unsafe fn prefetch_c_row(p: *const f32) {
        // SAFETY: see above; a prefetch is a hint that never faults.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(p.add(16) as *const i8);
        }
    }
}

#[inline(always)]
fn tail_mask(rem: usize) -> __mmask16 {
    ((1u32 << rem) - 1) as __mmask16
}

/// # Safety
/// The host supports AVX-512F, AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm512_setzero_ps();
    let mut acc1 = _mm512_setzero_ps();
    let mut i = 0;
    while i + 2 * W <= n {
        // SAFETY: i + 2W <= n for both slices.
        unsafe {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + W)), _mm512_loadu_ps(pb.add(i + W)), acc1);
        }
        i += 2 * W;
    }
    while i < n {
        let k = tail_mask((n - i).min(W));
        // SAFETY: masked lanes are not accessed; unmasked lanes are < n.
        unsafe {
            acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, pa.add(i)), _mm512_maskz_loadu_ps(k, pb.add(i)), acc0);
        }
        i += W;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
}

/// # Safety
/// The host supports AVX-512F, AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    let va = _mm512_set1_ps(alpha);
    let mut i = 0;
    while i < n {
        let k = tail_mask((n - i).min(W));
        // SAFETY: masked loads/stores touch only lanes i..min(i+W, n).
        unsafe {
            let r = _mm512_fmadd_ps(
                va,
                _mm512_maskz_loadu_ps(k, x.as_ptr().add(i)),
                _mm512_maskz_loadu_ps(k, y.as_ptr().add(i)),
            );
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(i), k, r);
        }
        i += W;
    }
}

/// # Safety
/// The host supports AVX-512F, AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn exp_shift_sum(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    assert_eq!(x.len(), out.len());
    let n = x.len();
    let vs = _mm512_set1_ps(shift);
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let k = tail_mask((n - i).min(W));
        // SAFETY: masked loads/stores touch only lanes i..min(i+W, n); AVX-512F is available
        // for `exp` (this function's contract).
        unsafe {
            let e = simd::exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x.as_ptr().add(i)), vs));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), k, e);
            acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(k, e));
        }
        i += W;
    }
    _mm512_reduce_add_ps(acc)
}

/// # Safety
/// The host supports AVX-512F, AVX2 and FMA (`cpu::isa()` checks).
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn exp_sub(x: &mut [f32], shift: &[f32]) {
    assert_eq!(x.len(), shift.len());
    let n = x.len();
    let mut i = 0;
    while i < n {
        let k = tail_mask((n - i).min(W));
        // SAFETY: masked loads/stores touch only lanes i..min(i+W, n) of both slices; AVX-512F
        // is available for `exp` (this function's contract).
        unsafe {
            let d = _mm512_sub_ps(
                _mm512_maskz_loadu_ps(k, x.as_ptr().add(i)),
                _mm512_maskz_loadu_ps(k, shift.as_ptr().add(i)),
            );
            _mm512_mask_storeu_ps(x.as_mut_ptr().add(i), k, simd::exp(d));
        }
        i += W;
    }
}

/// The GEMM microkernel tile: 8 rows × 32 columns (see `simd::gemm_tile`).
pub const MR: usize = 8;
pub const NR: usize = 32;

/// C[MR×NR] (+)= A·B over `kc` steps with the addressing of `t` (see `Tile`).
///
/// # Safety
/// The host supports AVX-512F and FMA; every address `t` describes for r < MR, p < kc, j < NR
/// is valid (A, B readable, C writable) and C does not overlap A or B.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn gemm_tile(kc: usize, t: &Tile, accumulate: bool) {
    // SAFETY: AVX-512F is available and `t` is valid for this tile (this function's contract).
    unsafe {
        if t.rsa == 1 && t.csa == MR && t.ldb == NR {
            simd::gemm_tile::<__m512, MR>(kc, t, 1, MR, NR, accumulate) // packed panels: constant strides
        } else {
            simd::gemm_tile::<__m512, MR>(kc, t, t.rsa, t.csa, t.ldb, accumulate)
        }
    }
}
