//! AVX-512F kernels, 16 lanes, for the compute-bound primitives (GEMM, dot, axpy, exp). The
//! memory-bound elementwise kernels gain nothing from wider vectors and use `avx2` instead.
//! Tails use masked loads and stores, which never touch lanes outside the mask.

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

pub const MR: usize = 8;
pub const NR: usize = 32;

/// GEMM microkernel, 8×32 tile in 16 accumulators.
///
/// ```text
///            b: 2 zmm per k step (32 columns)
///          [ b0 (cols 0..16) ][ b1 (cols 16..32) ]
/// a[0] ->  [ c00             ][ c01              ]
///  ...          (one broadcast of a[r] per row, 2 FMAs)
/// a[7] ->  [ c70             ][ c71              ]
/// ```
/// 16 accumulators + 2 B vectors + 1 broadcast = 19 of 32 zmm registers.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn gemm_micro(kc: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize, accumulate: bool) {
    assert!(a.len() >= kc * MR && b.len() >= kc * NR && c.len() >= (MR - 1) * ldc + NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    for p in 0..kc {
        // SAFETY: p < kc and the asserts above bound both panels.
        let b0 = _mm512_loadu_ps(pb.add(p * NR));
        let b1 = _mm512_loadu_ps(pb.add(p * NR + W));
        for r in 0..MR {
            let ar = _mm512_set1_ps(*pa.add(p * MR + r));
            acc[r][0] = _mm512_fmadd_ps(ar, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(ar, b1, acc[r][1]);
        }
    }
    let pc = c.as_mut_ptr();
    for r in 0..MR {
        for h in 0..2 {
            // SAFETY: row r < MR and column h*16+16 <= NR are within the asserted extent of c.
            let dst = pc.add(r * ldc + h * W);
            let v = if accumulate { _mm512_add_ps(_mm512_loadu_ps(dst), acc[r][h]) } else { acc[r][h] };
            _mm512_storeu_ps(dst, v);
        }
    }
}
