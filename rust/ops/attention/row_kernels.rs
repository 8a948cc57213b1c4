//! The elementwise row passes of the row-layout attention path (`row_forward`, `row_backward`):
//! one score row per query, keys along the row, the visible keys a range `lo..hi` of it.
//!
//! Each kernel has an AVX2 body (8 lanes, `simd::exp`) and a scalar twin with the same
//! operations in the same places (libm's exp, sums in key order instead of per lane); the
//! tests below hold them to each other. Masked keys are exact zeros in both.

use crate::cpu::Isa;

/// Softmax numerator of one row, in place: s[j] = exp(scale·s[j] − m) for lo ≤ j < hi and 0
/// elsewhere, m = max of scale·s over lo..hi. Returns (m, Σ s). Needs lo < hi ≤ s.len() and
/// s.len() a multiple of 8.
#[inline(always)]
pub(super) fn softmax_row(isa: Isa, s: &mut [f32], lo: usize, hi: usize, scale: f32) -> (f32, f32) {
    assert!(lo < hi && hi <= s.len() && s.len().is_multiple_of(8));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the plan's isa passed a supported-isa check, and AVX2 is below every SIMD set
        // this path runs on (Avx512 plans never take it); the shape is asserted above.
        Isa::Avx2 => unsafe { x86::softmax_row(s, lo, hi, scale) },
        _ => softmax_row_scalar(s, lo, hi, scale),
    }
}

/// Backward of one row, in place: s[j] = P = exp(scale·s[j] − lse), dp[j] = P·(dp[j] − delta)·scale
/// for lo ≤ j < hi; both 0 elsewhere (and everywhere when lo ≥ hi). Needs s.len() == dp.len(),
/// a multiple of 8, and hi ≤ s.len().
#[inline(always)]
pub(super) fn ds_row(isa: Isa, s: &mut [f32], dp: &mut [f32], lo: usize, hi: usize, lse: f32, delta: f32, scale: f32) {
    assert!(s.len() == dp.len() && hi <= s.len() && s.len().is_multiple_of(8));
    if lo >= hi {
        s.fill(0.0);
        dp.fill(0.0);
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `softmax_row`.
        Isa::Avx2 => unsafe { x86::ds_row(s, dp, lo, hi, lse, delta, scale) },
        _ => ds_row_scalar(s, dp, lo, hi, lse, delta, scale),
    }
}

/// The specification of `softmax_row`.
pub(super) fn softmax_row_scalar(s: &mut [f32], lo: usize, hi: usize, scale: f32) -> (f32, f32) {
    s[..lo].fill(0.0);
    s[hi..].fill(0.0);
    let mut m = f32::NEG_INFINITY;
    for x in &mut s[lo..hi] {
        *x *= scale;
        m = x.max(m);
    }
    let mut sum = 0.0;
    for x in &mut s[lo..hi] {
        *x = (*x - m).exp();
        sum += *x;
    }
    (m, sum)
}

/// The specification of `ds_row` (for lo < hi).
pub(super) fn ds_row_scalar(s: &mut [f32], dp: &mut [f32], lo: usize, hi: usize, lse: f32, delta: f32, scale: f32) {
    for row in [&mut *s, &mut *dp] {
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
    }
    for (p, g) in s[lo..hi].iter_mut().zip(&mut dp[lo..hi]) {
        *p = (*p * scale - lse).exp();
        *g = *p * (*g - delta) * scale;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::cpu::simd::exp;
    use std::arch::x86_64::*;

    const W: usize = 8;

    /// Lanes j..j+8 that lie in lo..hi, as an all-ones mask.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn inside(j: usize, lo: usize, hi: usize) -> __m256 {
        let idx = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(j as i32));
        let ok = _mm256_and_si256(
            _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(lo as i32 - 1)),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(hi as i32), idx),
        );
        _mm256_castsi256_ps(ok)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hmax(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hmin(v: __m256) -> f32 {
        let s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_min_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_min_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// See `super::softmax_row` (whose asserts this relies on).
    ///
    /// The max pass reads the raw scores only: for scale ≥ 0, rounding is monotonic, so
    /// max(scale·s) = scale·max(s) exactly (for scale < 0, scale·min(s)), and the scaled scores
    /// need no store. The exp pass computes scale·s − m as the twin does (two roundings). Only
    /// the first and the last vector can hold lanes outside lo..hi: they are masked apart from
    /// the loop over the others (no branch per vector; short rows mispredict it).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn softmax_row(s: &mut [f32], lo: usize, hi: usize, scale: f32) -> (f32, f32) {
        // Whole vectors from the one holding lo (a) to the one holding hi − 1 (last), inside s:
        // its length is a multiple of 8.
        let (a, b) = (lo / W * W, hi.div_ceil(W) * W);
        let last = b - W;
        s[..a].fill(0.0);
        s[b..].fill(0.0);
        let p = s.as_mut_ptr();
        let (vs, ninf, pinf) =
            (_mm256_set1_ps(scale), _mm256_set1_ps(f32::NEG_INFINITY), _mm256_set1_ps(f32::INFINITY));
        let (ok_a, ok_l) = (inside(a, lo, hi), inside(last, lo, hi));
        // SAFETY: a ≤ j ≤ last, j + 8 ≤ b ≤ s.len().
        unsafe {
            let x = _mm256_loadu_ps(p.add(a));
            let (mut mx, mut mn) = (_mm256_blendv_ps(ninf, x, ok_a), _mm256_blendv_ps(pinf, x, ok_a));
            for j in (a + W..last).step_by(W) {
                let x = _mm256_loadu_ps(p.add(j));
                mx = _mm256_max_ps(mx, x);
                mn = _mm256_min_ps(mn, x);
            }
            if last > a {
                let x = _mm256_loadu_ps(p.add(last));
                mx = _mm256_max_ps(mx, _mm256_blendv_ps(ninf, x, ok_l));
                mn = _mm256_min_ps(mn, _mm256_blendv_ps(pinf, x, ok_l));
            }
            let m = if scale >= 0.0 { scale * hmax(mx) } else { scale * hmin(mn) };
            let (vm, zero) = (_mm256_set1_ps(m), _mm256_setzero_ps());
            let e_at = |j: usize| exp(_mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(p.add(j)), vs), vm));
            let e = _mm256_blendv_ps(zero, e_at(a), ok_a);
            _mm256_storeu_ps(p.add(a), e);
            let mut sum = e;
            for j in (a + W..last).step_by(W) {
                let e = e_at(j);
                _mm256_storeu_ps(p.add(j), e);
                sum = _mm256_add_ps(sum, e);
            }
            if last > a {
                let e = _mm256_blendv_ps(zero, e_at(last), ok_l);
                _mm256_storeu_ps(p.add(last), e);
                sum = _mm256_add_ps(sum, e);
            }
            (m, hsum(sum))
        }
    }

    /// See `super::ds_row` (whose asserts this relies on; lo < hi). As in `softmax_row`, only
    /// the first and the last vector are masked.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn ds_row(s: &mut [f32], dp: &mut [f32], lo: usize, hi: usize, lse: f32, delta: f32, scale: f32) {
        let (a, b) = (lo / W * W, hi.div_ceil(W) * W);
        let last = b - W;
        for row in [&mut *s, &mut *dp] {
            row[..a].fill(0.0);
            row[b..].fill(0.0);
        }
        let (ps, pd) = (s.as_mut_ptr(), dp.as_mut_ptr());
        let (vs, vl, vd, zero) =
            (_mm256_set1_ps(scale), _mm256_set1_ps(lse), _mm256_set1_ps(delta), _mm256_setzero_ps());
        // SAFETY: a ≤ j ≤ last, j + 8 ≤ b ≤ len of both rows.
        unsafe {
            let step = |j: usize, ok: Option<__m256>| {
                let e = exp(_mm256_fmsub_ps(_mm256_loadu_ps(ps.add(j)), vs, vl));
                let pr = ok.map_or(e, |ok| _mm256_blendv_ps(zero, e, ok));
                _mm256_storeu_ps(ps.add(j), pr);
                let g = _mm256_sub_ps(_mm256_loadu_ps(pd.add(j)), vd);
                _mm256_storeu_ps(pd.add(j), _mm256_mul_ps(_mm256_mul_ps(pr, g), vs));
            };
            step(a, Some(inside(a, lo, hi)));
            for j in (a + W..last).step_by(W) {
                step(j, None);
            }
            if last > a {
                step(last, Some(inside(last, lo, hi)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;
    use crate::ops::testutil::{assert_close, rand_vec};

    #[test]
    fn avx2_rows_match_scalar_twins() {
        if !cpu::supports(Isa::Avx2) {
            eprintln!("SKIP attention row kernels avx2: not supported on this host");
            return;
        }
        for len in [8usize, 16, 48, 64] {
            for (lo, hi) in [(0, len), (0, 1), (3, len - 2), (len - 1, len), (5.min(len - 1), len.min(13))] {
                let x = rand_vec(len, len as u64 + lo as u64);
                // A negative scale takes the max from the raw minimum.
                for sc in [0.37f32, -0.6] {
                    let (mut a, mut b) = (x.clone(), x.clone());
                    let (ma, la) = softmax_row(Isa::Avx2, &mut a, lo, hi, sc);
                    let (mb, lb) = softmax_row_scalar(&mut b, lo, hi, sc);
                    let tag = format!("softmax_row len={len} lo={lo} hi={hi} scale={sc}");
                    assert_eq!(ma, mb, "{tag}: max");
                    assert!((la - lb).abs() <= 1e-6 * lb, "{tag}: sum {la} vs {lb}");
                    assert_close(&a, &b, 1e-6, 0.0, &tag);
                    // Masked keys are exact zeros.
                    assert!(a[..lo].iter().chain(&a[hi..]).all(|v| *v == 0.0), "{tag}: masked keys");
                }

                let g = rand_vec(len, 7 + len as u64);
                let (mut s1, mut s2, mut d1, mut d2) = (x.clone(), x.clone(), g.clone(), g.clone());
                ds_row(Isa::Avx2, &mut s1, &mut d1, lo, hi, 0.8, 0.1, 0.25);
                ds_row(Isa::Scalar, &mut s2, &mut d2, lo, hi, 0.8, 0.1, 0.25);
                let tag = format!("ds_row len={len} lo={lo} hi={hi}");
                assert_close(&s1, &s2, 1e-6, 0.0, &format!("{tag} P"));
                assert_close(&d1, &d2, 1e-6, 1e-7, &format!("{tag} dS"));
                assert!(d1[..lo].iter().chain(&d1[hi..]).all(|v| *v == 0.0), "{tag}: masked keys");
            }
        }
        // An empty range zeroes both rows.
        let (mut s, mut d) = (vec![1.0f32; 16], vec![1.0f32; 16]);
        ds_row(Isa::Avx2, &mut s, &mut d, 9, 9, 0.0, 0.0, 1.0);
        assert!(s.iter().chain(&d).all(|v| *v == 0.0));
    }
}
