//! Scalar kernels: the specification every SIMD twin is tested against, and the fallback on
//! hosts without AVX2+FMA. Plain loops in index order; no tricks.

use super::{AdamParams, Tile};

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// y += alpha * x
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

pub fn scale(alpha: f32, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    for (o, xi) in out.iter_mut().zip(x) {
        *o = alpha * xi;
    }
}

pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(a.len() == b.len() && a.len() == out.len());
    for i in 0..out.len() {
        out[i] = a[i] + b[i];
    }
}

pub fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(a.len() == b.len() && a.len() == out.len());
    for i in 0..out.len() {
        out[i] = a[i] * b[i];
    }
}

/// out = alpha * x * w (the normalise-and-scale step of RMSNorm)
pub fn scale_mul(alpha: f32, x: &[f32], w: &[f32], out: &mut [f32]) {
    assert!(x.len() == w.len() && x.len() == out.len());
    for i in 0..out.len() {
        out[i] = alpha * x[i] * w[i];
    }
}

pub fn sum(x: &[f32]) -> f32 {
    x.iter().sum()
}

pub fn sumsq(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum()
}

/// Largest element; -inf for an empty slice.
pub fn max(x: &[f32]) -> f32 {
    x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// out = exp(x - shift); returns the sum of out.
pub fn exp_shift_sum(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    assert_eq!(x.len(), out.len());
    let mut s = 0.0;
    for (o, xi) in out.iter_mut().zip(x) {
        *o = (xi - shift).exp();
        s += *o;
    }
    s
}

/// x[i] = exp(x[i] - shift[i]): softmax numerators with a per-lane shift (attention tiles).
pub fn exp_sub(x: &mut [f32], shift: &[f32]) {
    assert_eq!(x.len(), shift.len());
    for (v, s) in x.iter_mut().zip(shift) {
        *v = (*v - s).exp();
    }
}

#[inline]
pub fn sigmoid1(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// silu(x) = x * sigmoid(x)
pub fn silu(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    for (o, &xi) in out.iter_mut().zip(x) {
        *o = xi * sigmoid1(xi);
    }
}

/// dx = dy * s * (1 + x * (1 - s)), s = sigmoid(x)
pub fn silu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert!(x.len() == dy.len() && x.len() == dx.len());
    for i in 0..x.len() {
        let s = sigmoid1(x[i]);
        dx[i] = dy[i] * s * (1.0 + x[i] * (1.0 - s));
    }
}

pub const GELU_K: f32 = 0.797_884_6; // sqrt(2/pi)
pub const GELU_C: f32 = 0.044_715;

/// GELU, tanh approximation: 0.5x(1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi)(x + 0.044715x^3).
pub fn gelu(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    for (o, &xi) in out.iter_mut().zip(x) {
        let u = GELU_K * (xi + GELU_C * xi * xi * xi);
        *o = xi * sigmoid1(2.0 * u);
    }
}

/// d/dx [x s(2u)] = s + x * s(1-s) * 2u', u' = sqrt(2/pi)(1 + 3*0.044715x^2)
pub fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert!(x.len() == dy.len() && x.len() == dx.len());
    for i in 0..x.len() {
        let xi = x[i];
        let u = GELU_K * (xi + GELU_C * xi * xi * xi);
        let s = sigmoid1(2.0 * u);
        let du = 2.0 * GELU_K * (1.0 + 3.0 * GELU_C * xi * xi);
        dx[i] = dy[i] * (s + xi * s * (1.0 - s) * du);
    }
}

/// One AdamW step in place, in PyTorch's operation order:
/// p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamParams) {
    let n = p.len();
    assert!(g.len() == n && m.len() == n && v.len() == n);
    let decay = 1.0 - h.lr * h.weight_decay;
    let step = h.lr / h.bias1;
    for i in 0..n {
        let gi = g[i];
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * gi;
        v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * gi * gi;
        let denom = v[i].sqrt() / h.bias2_sqrt + h.eps;
        p[i] = p[i] * decay - step * (m[i] / denom);
    }
}

/// The GEMM microkernel's tile for this path.
pub const MR: usize = 4;
pub const NR: usize = 8;

/// dst[c·ldd + r] = scale·src[r·lds + c] for r, c < 8.
pub fn transpose8x8(src: &[f32], lds: usize, dst: &mut [f32], ldd: usize, scale: f32) {
    assert!(src.len() >= 7 * lds + 8 && dst.len() >= 7 * ldd + 8);
    for r in 0..8 {
        for c in 0..8 {
            dst[c * ldd + r] = scale * src[r * lds + c];
        }
    }
}

/// C[MR×NR] (+)= A·B over `kc` steps with the addressing of `t` (see `Tile`): the
/// specification of every SIMD `gemm_tile` (each C element sums its k products in k order).
///
/// # Safety
/// Every address `t` describes for r < MR, p < kc, j < NR is valid (A, B readable, C writable)
/// and C does not overlap A or B.
pub unsafe fn gemm_tile(kc: usize, t: &Tile, accumulate: bool) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..kc {
        // SAFETY: r < MR, p < kc, j < NR: addresses `t` describes (this function's contract).
        unsafe {
            let bp = t.b.add(p * t.ldb);
            for (r, row) in acc.iter_mut().enumerate() {
                let ar = *t.a.add(r * t.rsa + p * t.csa);
                for (j, v) in row.iter_mut().enumerate() {
                    *v += ar * *bp.add(j);
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            // SAFETY: r < MR, j < NR: a C element of the tile, writable and apart from A and B.
            unsafe {
                let dst = t.c.add(r * t.ldc + j);
                *dst = if accumulate { *dst + v } else { *v };
            }
        }
    }
}

/// The specification of `simd::softmax_step` (one online-softmax step over a block of scores,
/// one column per query), with libm's exp.
pub fn softmax_step(st: &mut [f32], nr: usize, m: &mut [f32], l: &mut [f32], corr: &mut [f32]) {
    for c in 0..nr {
        let mx = st.chunks_exact(nr).fold(m[c], |a, row| if row[c] > a { row[c] } else { a });
        let base = mx.max(f32::MIN);
        corr[c] = (m[c] - base).exp();
        let mut sum = l[c] * corr[c];
        for row in st.chunks_exact_mut(nr) {
            row[c] = (row[c] - base).exp();
            sum += row[c];
        }
        (l[c], m[c]) = (sum, mx);
    }
}

/// The specification of `simd::attn_ds_row`: s = P = exp(s − lse), dp = P·(dp − delta)·scale.
pub fn attn_ds_row(s: &mut [f32], dp: &mut [f32], lse: f32, delta: f32, scale: f32) {
    for (p, g) in s.iter_mut().zip(dp.iter_mut()) {
        *p = (*p - lse).exp();
        *g = *p * (*g - delta) * scale;
    }
}
