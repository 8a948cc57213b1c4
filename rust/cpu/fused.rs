//! Fused elementwise kernels of the training step's backward passes: each reads its operands
//! once and writes every output in the same loop, where the unfused sequence of primitives made
//! one pass per primitive (and computed the same sigmoid twice). Every kernel performs, per
//! element, exactly the operations of the primitive sequence it replaces on the same instruction
//! set, so its results carry the same bits. `scalar` is the specification; AVX-512 hosts run the
//! AVX2 body (these passes are memory-bound, as for the other elementwise primitives).

use super::{isa, Isa};

/// SwiGLU backward for one row: s = sigmoid(g); du = (g·s)·dy; dg = ((dy·u)·s)·(1 + g·(1 − s)).
/// The values of `silu`, `mul`, `mul`, `silu_backward` in that order, one sigmoid per element.
pub fn swiglu_backward(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
    let n = g.len();
    assert!(u.len() == n && dy.len() == n && dg.len() == n && du.len() == n);
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() reports Avx2 or Avx512 only when avx2 and fma are present.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::swiglu_backward(g, u, dy, dg, du) },
        _ => scalar::swiglu_backward(g, u, dy, dg, du),
    }
}

/// RMSNorm backward's per-row tail, given rstd `s` and c = s·mean(w·dy·x):
/// dx = s·(wdy − (c·s)·x) and acc += dy·(s·x) (the dw partial of the row's block).
pub fn rms_backward_row(s: f32, c: f32, x: &[f32], wdy: &[f32], dy: &[f32], dx: &mut [f32], acc: &mut [f32]) {
    let n = x.len();
    assert!(wdy.len() == n && dy.len() == n && dx.len() == n && acc.len() == n);
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() reports Avx2 or Avx512 only when avx2 and fma are present.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::rms_backward_row(s, c, x, wdy, dy, dx, acc) },
        _ => scalar::rms_backward_row(s, c, x, wdy, dy, dx, acc),
    }
}

/// RoPE ("rotate_half" layout) of consecutive heads of size hd = 2·c.len(): in each head, lanes
/// i and i + hd/2 become (x1·c − x2·(sign·s), x2·c + x1·(sign·s)) for table entries c[i], s[i].
pub fn rope_heads(x: &[f32], y: &mut [f32], c: &[f32], s: &[f32], sign: f32) {
    let half = c.len();
    if half == 0 {
        return;
    }
    assert!(s.len() == half && x.len() == y.len() && x.len().is_multiple_of(2 * half));
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() reports Avx2 or Avx512 only when avx2 and fma are present.
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::rope_heads(x, y, c, s, sign) },
        _ => scalar::rope_heads(x, y, c, s, sign),
    }
}

/// The specification (and the tails of the SIMD bodies).
pub mod scalar {
    use crate::cpu::scalar::sigmoid1;

    pub fn swiglu_backward(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        for i in 0..g.len() {
            let s = sigmoid1(g[i]);
            du[i] = g[i] * s * dy[i];
            dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        }
    }

    pub fn rms_backward_row(s: f32, c: f32, x: &[f32], wdy: &[f32], dy: &[f32], dx: &mut [f32], acc: &mut [f32]) {
        for i in 0..x.len() {
            dx[i] = s * (wdy[i] - c * s * x[i]);
            acc[i] += dy[i] * (s * x[i]);
        }
    }

    pub fn rope_heads(x: &[f32], y: &mut [f32], c: &[f32], s: &[f32], sign: f32) {
        let half = c.len();
        for (xr, yr) in x.chunks(2 * half).zip(y.chunks_mut(2 * half)) {
            rope_lanes(xr, yr, c, s, sign, 0);
        }
    }

    /// Lanes [i0, half) of one head.
    pub fn rope_lanes(xr: &[f32], yr: &mut [f32], c: &[f32], s: &[f32], sign: f32, i0: usize) {
        let half = c.len();
        for i in i0..half {
            let (x1, x2, si) = (xr[i], xr[i + half], sign * s[i]);
            yr[i] = x1 * c[i] - x2 * si;
            yr[i + half] = x2 * c[i] + x1 * si;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::scalar;
    use crate::cpu::avx2::sigmoid8;
    use std::arch::x86_64::*;

    const W: usize = 8;

    /// # Safety
    /// The host supports AVX2 and FMA; all slices have g's length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn swiglu_backward(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        let n = g.len();
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + W <= n {
            // SAFETY: i + W <= n, the length of every slice (checked by the caller).
            unsafe {
                let gv = _mm256_loadu_ps(g.as_ptr().add(i));
                let dv = _mm256_loadu_ps(dy.as_ptr().add(i));
                let s = sigmoid8(gv);
                _mm256_storeu_ps(du.as_mut_ptr().add(i), _mm256_mul_ps(_mm256_mul_ps(gv, s), dv));
                let t = _mm256_fmadd_ps(gv, _mm256_sub_ps(one, s), one);
                let dyu = _mm256_mul_ps(dv, _mm256_loadu_ps(u.as_ptr().add(i)));
                _mm256_storeu_ps(dg.as_mut_ptr().add(i), _mm256_mul_ps(_mm256_mul_ps(dyu, s), t));
            }
            i += W;
        }
        // The tail as the primitives' tails: silu, mul, mul, silu_backward in scalar code.
        scalar::swiglu_backward(&g[i..], &u[i..], &dy[i..], &mut dg[i..], &mut du[i..]);
    }

    /// # Safety
    /// The host supports AVX2 and FMA; all slices have x's length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rms_backward_row(
        s: f32,
        c: f32,
        x: &[f32],
        wdy: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        acc: &mut [f32],
    ) {
        let n = x.len();
        let (vs, vcs) = (_mm256_set1_ps(s), _mm256_set1_ps(c * s));
        let mut i = 0;
        while i + W <= n {
            // SAFETY: i + W <= n, the length of every slice (checked by the caller).
            unsafe {
                let xv = _mm256_loadu_ps(x.as_ptr().add(i));
                let wv = _mm256_loadu_ps(wdy.as_ptr().add(i));
                let d = _mm256_mul_ps(vs, _mm256_sub_ps(wv, _mm256_mul_ps(vcs, xv)));
                _mm256_storeu_ps(dx.as_mut_ptr().add(i), d);
                let xhat = _mm256_mul_ps(vs, xv);
                let a = _mm256_loadu_ps(acc.as_ptr().add(i));
                let p = _mm256_mul_ps(_mm256_loadu_ps(dy.as_ptr().add(i)), xhat);
                _mm256_storeu_ps(acc.as_mut_ptr().add(i), _mm256_add_ps(a, p));
            }
            i += W;
        }
        scalar::rms_backward_row(s, c, &x[i..], &wdy[i..], &dy[i..], &mut dx[i..], &mut acc[i..]);
    }

    /// # Safety
    /// The host supports AVX2 and FMA; s has c's length and x, y a multiple of 2·c.len().
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rope_heads(x: &[f32], y: &mut [f32], c: &[f32], s: &[f32], sign: f32) {
        let half = c.len();
        let vsign = _mm256_set1_ps(sign);
        for (xr, yr) in x.chunks(2 * half).zip(y.chunks_mut(2 * half)) {
            let mut i = 0;
            while i + W <= half {
                // SAFETY: i + W <= half: lanes i.. and i + half.. lie in the head (2·half long)
                // and i.. in the tables (half long).
                unsafe {
                    let cv = _mm256_loadu_ps(c.as_ptr().add(i));
                    let si = _mm256_mul_ps(vsign, _mm256_loadu_ps(s.as_ptr().add(i)));
                    let x1 = _mm256_loadu_ps(xr.as_ptr().add(i));
                    let x2 = _mm256_loadu_ps(xr.as_ptr().add(i + half));
                    let y1 = _mm256_sub_ps(_mm256_mul_ps(x1, cv), _mm256_mul_ps(x2, si));
                    let y2 = _mm256_add_ps(_mm256_mul_ps(x2, cv), _mm256_mul_ps(x1, si));
                    _mm256_storeu_ps(yr.as_mut_ptr().add(i), y1);
                    _mm256_storeu_ps(yr.as_mut_ptr().add(i + half), y2);
                }
                i += W;
            }
            scalar::rope_lanes(xr, yr, c, s, sign, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{rand_vec, same_bits};

    /// Each fused kernel against the primitive sequence it replaces: the same bits on this host's
    /// instruction set, for lengths with and without a tail; and the SIMD body against the
    /// scalar specification within rounding.
    #[test]
    fn fused_kernels_match_the_primitive_sequences() {
        for n in [1usize, 7, 8, 13, 64, 100, 1408] {
            let g: Vec<f32> = rand_vec(n, 1).iter().map(|v| 6.0 * v).collect();
            let (u, dy) = (rand_vec(n, 2), rand_vec(n, 3));
            let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
            swiglu_backward(&g, &u, &dy, &mut dg, &mut du);
            let (mut act, mut du0, mut dyu, mut dg0) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            crate::cpu::silu(&g, &mut act);
            crate::cpu::mul(&act, &dy, &mut du0);
            crate::cpu::mul(&dy, &u, &mut dyu);
            crate::cpu::silu_backward(&g, &dyu, &mut dg0);
            assert!(same_bits(&du, &du0) && same_bits(&dg, &dg0), "swiglu n={n}");
            let (mut sdg, mut sdu) = (vec![0.0; n], vec![0.0; n]);
            scalar::swiglu_backward(&g, &u, &dy, &mut sdg, &mut sdu);
            crate::ops::testutil::assert_close(&dg, &sdg, 1e-5, 1e-6, "dg vs scalar");
            crate::ops::testutil::assert_close(&du, &sdu, 1e-5, 1e-6, "du vs scalar");

            let (x, wdy) = (rand_vec(n, 4), rand_vec(n, 5));
            let (s, c) = (1.7f32, -0.3f32);
            let (mut dx, mut acc) = (vec![0.0; n], rand_vec(n, 6));
            let mut acc0 = acc.clone();
            rms_backward_row(s, c, &x, &wdy, &dy, &mut dx, &mut acc);
            let mut dx0 = vec![0.0; n];
            scalar::rms_backward_row(s, c, &x, &wdy, &dy, &mut dx0, &mut acc0);
            assert!(same_bits(&dx, &dx0) && same_bits(&acc, &acc0), "rms n={n}: no fma, same bits as scalar");
        }
        for half in [1usize, 3, 8, 16, 20] {
            let (c, s) = (rand_vec(half, 7), rand_vec(half, 8));
            let x = rand_vec(3 * 2 * half, 9);
            for sign in [1.0f32, -1.0] {
                let (mut y, mut y0) = (vec![0.0; x.len()], vec![0.0; x.len()]);
                rope_heads(&x, &mut y, &c, &s, sign);
                scalar::rope_heads(&x, &mut y0, &c, &s, sign);
                assert!(same_bits(&y, &y0), "rope half={half}: no fma, same bits as scalar");
            }
        }
    }
}
