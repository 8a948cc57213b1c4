//! AVX-512F kernels, 16 lanes, for the compute-bound primitives (GEMM, dot, axpy, exp). The
//! memory-bound elementwise kernels gain nothing from wider vectors and use `avx2` instead.
//! Tails use masked loads and stores, which never touch lanes outside the mask.

use super::Tile;
use std::arch::x86_64::*;

const W: usize = 16;

#[inline(always)]
fn tail_mask(rem: usize) -> __mmask16 {
    ((1u32 << rem) - 1) as __mmask16
}

#[inline(always)]
unsafe fn exp16(x: __m512) -> __m512 {
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.376_26)), _mm512_set1_ps(88.376_26));
    let n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm512_set1_ps(1.987_569_1e-4);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.398_199_9e-3));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.333_452e-3));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.166_579_6e-2));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.166_666_65));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
    _mm512_mul_ps(y, _mm512_castsi512_ps(e))
}

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
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i + W)), _mm512_loadu_ps(pb.add(i + W)), acc1);
        i += 2 * W;
    }
    while i < n {
        let k = tail_mask((n - i).min(W));
        // SAFETY: masked lanes are not accessed; unmasked lanes are < n.
        acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, pa.add(i)), _mm512_maskz_loadu_ps(k, pb.add(i)), acc0);
        i += W;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
}

#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    let va = _mm512_set1_ps(alpha);
    let mut i = 0;
    while i < n {
        let k = tail_mask((n - i).min(W));
        // SAFETY: masked loads/stores touch only lanes i..min(i+W, n).
        let r = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, x.as_ptr().add(i)), _mm512_maskz_loadu_ps(k, y.as_ptr().add(i)));
        _mm512_mask_storeu_ps(y.as_mut_ptr().add(i), k, r);
        i += W;
    }
}

#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn exp_shift_sum(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    assert_eq!(x.len(), out.len());
    let n = x.len();
    let vs = _mm512_set1_ps(shift);
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let k = tail_mask((n - i).min(W));
        // SAFETY: masked loads/stores touch only lanes i..min(i+W, n).
        let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x.as_ptr().add(i)), vs));
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), k, e);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(k, e));
        i += W;
    }
    _mm512_reduce_add_ps(acc)
}

#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn exp_sub(x: &mut [f32], shift: &[f32]) {
    assert_eq!(x.len(), shift.len());
    let n = x.len();
    let mut i = 0;
    while i < n {
        let k = tail_mask((n - i).min(W));
        // SAFETY: masked loads/stores touch only lanes i..min(i+W, n) of both slices.
        let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, x.as_ptr().add(i)), _mm512_maskz_loadu_ps(k, shift.as_ptr().add(i)));
        _mm512_mask_storeu_ps(x.as_mut_ptr().add(i), k, exp16(d));
        i += W;
    }
}

pub const MR: usize = 8;
pub const NR: usize = 32;

/// GEMM microkernel, 8×32 tile in 16 accumulators.
///
/// ```text
///            b: 2 zmm per k step (32 columns), loaded from b + p·ldb
///          [ b0 (cols 0..16) ][ b1 (cols 16..32) ]
/// a[0] ->  [ c00             ][ c01              ]   a[r] = A(r, p), broadcast from
///  ...          (one broadcast of a[r] per row, 2 FMAs)      a + r·rsa + p·csa
/// a[7] ->  [ c70             ][ c71              ]
/// ```
/// 16 accumulators + 2 B vectors + 1 broadcast = 19 of 32 zmm registers; per k step 16 FMAs
/// (8 cycles on two FMA ports) against 2 vector loads and 8 broadcasts (two load ports).
#[inline(always)]
unsafe fn micro_body(kc: usize, t: &Tile, rsa: usize, csa: usize, ldb: usize, accumulate: bool) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // One base pointer per row and a shared step offset: the row addresses are independent of
    // each other, so no add chain runs through the loop (strided A read in place).
    let rows: [*const f32; MR] = std::array::from_fn(|r| t.a.add(r * rsa));
    let (mut off, mut pb) = (0usize, t.b);
    if accumulate {
        for r in 0..MR {
            _mm_prefetch::<_MM_HINT_T0>(t.c.add(r * t.ldc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(t.c.add(r * t.ldc + 16) as *const i8);
        }
    }
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(pb);
        let b1 = _mm512_loadu_ps(pb.add(W));
        for (r, row) in acc.iter_mut().enumerate() {
            let ar = _mm512_set1_ps(*rows[r].add(off));
            row[0] = _mm512_fmadd_ps(ar, b0, row[0]);
            row[1] = _mm512_fmadd_ps(ar, b1, row[1]);
        }
        off += csa;
        pb = pb.add(ldb);
    }
    for (r, row) in acc.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            let dst = t.c.add(r * t.ldc + h * W);
            let v = if accumulate { _mm512_add_ps(_mm512_loadu_ps(dst), *v) } else { *v };
            _mm512_storeu_ps(dst, v);
        }
    }
}

/// C[MR×NR] (+)= A·B over `kc` steps with the addressing of `t` (see `Tile`).
///
/// # Safety
/// The host supports AVX-512F and FMA; every address `t` describes for r < MR, p < kc, j < NR
/// is valid (A, B readable, C writable) and C does not overlap A or B.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn gemm_tile(kc: usize, t: &Tile, accumulate: bool) {
    if t.rsa == 1 && t.csa == MR && t.ldb == NR {
        micro_body(kc, t, 1, MR, NR, accumulate) // packed panels: constant strides
    } else {
        micro_body(kc, t, t.rsa, t.csa, t.ldb, accumulate)
    }
}

/// `gemm_tile` on packed panels given as slices (a: kc×MR, b: kc×NR; C row stride `ldc`).
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn gemm_micro(kc: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize, accumulate: bool) {
    assert!(a.len() >= kc * MR && b.len() >= kc * NR && c.len() >= (MR - 1) * ldc + NR);
    let t = Tile { a: a.as_ptr(), rsa: 1, csa: MR, b: b.as_ptr(), ldb: NR, c: c.as_mut_ptr(), ldc };
    // SAFETY: the asserts bound every address of the packed panels and of C.
    gemm_tile(kc, &t, accumulate)
}
