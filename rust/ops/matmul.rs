//! Packed GEMM: C (+)= op(A) · op(B) with op = identity or transpose, FP32.
//!
//! B is packed per KC block into NR-column panels shared by all threads; each task packs its own
//! MC×KC block of A into MR-row panels and runs the ISA's microkernel over the tiles (BLIS loop
//! order). Every C element sums k in the same order whatever the thread count, so results are
//! bit-identical across thread counts. The speed issue tunes block sizes; this is the correct core.

use crate::cpu::{self, Isa};
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

const KC: usize = 256;
const MC: usize = 96; // multiple of every MR (4, 6, 8)
/// Below this many multiply-adds the problem stays on the calling thread.
const PARALLEL_MIN_FLOPS: usize = 64 * 64 * 64;

/// A strided read-only matrix view: element (i, j) = data[i*rs + j*cs].
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl View<'_> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

fn tile(isa: Isa) -> (usize, usize) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (cpu::avx512::MR, cpu::avx512::NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (cpu::avx2::MR, cpu::avx2::NR),
        _ => (cpu::scalar::MR, cpu::scalar::NR),
    }
}

fn micro(isa: Isa, kc: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize, acc: bool) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers pass an `isa` the host supports (cpu::isa() or a checked test value).
        Isa::Avx512 => unsafe { cpu::avx512::gemm_micro(kc, a, b, c, ldc, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { cpu::avx2::gemm_micro(kc, a, b, c, ldc, acc) },
        _ => cpu::scalar::gemm_micro(kc, a, b, c, ldc, acc),
    }
}

/// Packs rows [i0, i0+mc) × cols [p0, p0+kc) of A into MR-row panels, zero-padded:
/// panel q holds, for each p, the MR values A(i0+q*MR+r, p0+p).
fn pack_a(a: View, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, out: &mut Vec<f32>) {
    let panels = mc.div_ceil(mr);
    out.clear();
    out.resize(panels * kc * mr, 0.0);
    for q in 0..panels {
        let dst = &mut out[q * kc * mr..(q + 1) * kc * mr];
        let rows = mr.min(mc - q * mr);
        for p in 0..kc {
            for r in 0..rows {
                dst[p * mr + r] = a.at(i0 + q * mr + r, p0 + p);
            }
        }
    }
}

/// Packs rows [p0, p0+kc) × all n columns of B into NR-column panels, zero-padded.
fn pack_b(b: View, p0: usize, kc: usize, n: usize, nr: usize, out: &mut Vec<f32>) {
    let panels = n.div_ceil(nr);
    out.clear();
    out.resize(panels * kc * nr, 0.0);
    out.par_chunks_mut(kc * nr).enumerate().for_each(|(q, dst)| {
        let cols = nr.min(n - q * nr);
        for p in 0..kc {
            for j in 0..cols {
                dst[p * nr + j] = b.at(p0 + p, q * nr + j);
            }
        }
    });
}

/// C[m×n] (row-major, contiguous) = op(A)·op(B), or += when `accumulate`.
/// `a` is stored [m,k] (or [k,m] when `trans_a`); `b` is stored [k,n] (or [n,k] when `trans_b`).
#[allow(clippy::too_many_arguments)]
pub fn gemm_with(isa: Isa, m: usize, n: usize, k: usize, a: &[f32], trans_a: bool, b: &[f32], trans_b: bool, c: &mut [f32], accumulate: bool) {
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n, "gemm: slice lengths do not match m, n, k");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let av = if trans_a { View { data: a, rs: 1, cs: m } } else { View { data: a, rs: k, cs: 1 } };
    let bv = if trans_b { View { data: b, rs: 1, cs: k } } else { View { data: b, rs: n, cs: 1 } };
    let (mr, nr) = tile(isa);
    let parallel = m * n * k >= PARALLEL_MIN_FLOPS;
    let mut bpack = Vec::new();
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        let acc = accumulate || p0 > 0;
        pack_b(bv, p0, kc, n, nr, &mut bpack);
        let bpack = &bpack;
        let block = |(bi, cblock): (usize, &mut [f32])| {
            let i0 = bi * MC;
            let mc = cblock.len() / n;
            let mut apack = Vec::new();
            pack_a(av, i0, mc, p0, kc, mr, &mut apack);
            let mut tmp = vec![0.0f32; mr * nr];
            for jq in 0..n.div_ceil(nr) {
                let bp = &bpack[jq * kc * nr..(jq + 1) * kc * nr];
                let j0 = jq * nr;
                let cols = nr.min(n - j0);
                for iq in 0..mc.div_ceil(mr) {
                    let ap = &apack[iq * kc * mr..(iq + 1) * kc * mr];
                    let r0 = iq * mr;
                    let rows = mr.min(mc - r0);
                    if rows == mr && cols == nr {
                        micro(isa, kc, ap, bp, &mut cblock[r0 * n + j0..], n, acc);
                    } else {
                        micro(isa, kc, ap, bp, &mut tmp, nr, false);
                        for r in 0..rows {
                            let dst = &mut cblock[(r0 + r) * n + j0..(r0 + r) * n + j0 + cols];
                            for (d, s) in dst.iter_mut().zip(&tmp[r * nr..r * nr + cols]) {
                                *d = if acc { *d + s } else { *s };
                            }
                        }
                    }
                }
            }
        };
        if parallel {
            c.par_chunks_mut(MC * n).enumerate().for_each(block);
        } else {
            c.chunks_mut(MC * n).enumerate().for_each(block);
        }
    }
}

/// `gemm_with` on the active instruction set.
#[allow(clippy::too_many_arguments)]
pub fn gemm(m: usize, n: usize, k: usize, a: &[f32], trans_a: bool, b: &[f32], trans_b: bool, c: &mut [f32], accumulate: bool) {
    gemm_with(cpu::isa(), m, n, k, a, trans_a, b, trans_b, c, accumulate)
}

/// Rows and columns of a tensor seen as a matrix: leading dims flattened into rows.
fn as_matrix(t: &Tensor) -> (usize, usize) {
    let cols = t.last_dim();
    let rows = if t.ndim() == 0 { 1 } else { t.numel() / cols.max(1) };
    (rows, cols)
}

/// op(a) · op(b). Each operand is read as a matrix with its leading dims flattened into rows.
/// Without `trans_a` the output keeps a's leading dims: [..., M] · [M, N] -> [..., N].
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    ensure_shape!(a.ndim() >= 2 && b.ndim() >= 2, "matmul", "operands must have at least 2 dims: a {:?}, b {:?}", a.shape(), b.shape());
    let (ar, ac) = as_matrix(a);
    let (br, bc) = as_matrix(b);
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
    ensure_shape!(k == k2, "matmul", "inner dims differ: a {:?}{} · b {:?}{}", a.shape(), if trans_a { "ᵀ" } else { "" }, b.shape(), if trans_b { "ᵀ" } else { "" });
    let mut shape: Vec<usize> = if trans_a { vec![m] } else { a.shape()[..a.ndim() - 1].to_vec() };
    shape.push(n);
    let mut c = Tensor::zeros(&shape);
    gemm(m, n, k, a.data(), trans_a, b.data(), trans_b, c.data_mut(), false);
    Ok(c)
}

/// Triple-loop reference, f64 accumulation: the specification `gemm` is tested against.
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference(m: usize, n: usize, k: usize, a: &[f32], trans_a: bool, b: &[f32], trans_b: bool) -> Vec<f32> {
    let av = if trans_a { View { data: a, rs: 1, cs: m } } else { View { data: a, rs: k, cs: 1 } };
    let bv = if trans_b { View { data: b, rs: 1, cs: k } } else { View { data: b, rs: n, cs: 1 } };
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| av.at(i, p) as f64 * bv.at(p, j) as f64).sum();
            c[i * n + j] = s as f32;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{assert_close, rand_vec, run_threads};

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        for isa in [Isa::Avx2, Isa::Avx512] {
            if cpu::supports(isa) {
                v.push(isa);
            } else {
                eprintln!("SKIP gemm {}: not supported on this host", isa.name());
            }
        }
        v
    }

    fn check(isa: Isa, m: usize, n: usize, k: usize, ta: bool, tb: bool) {
        let a = rand_vec(m * k, 1);
        let b = rand_vec(k * n, 2);
        let want = gemm_reference(m, n, k, &a, ta, &b, tb);
        let mut c = rand_vec(m * n, 3);
        let c0 = c.clone();
        gemm_with(isa, m, n, k, &a, ta, &b, tb, &mut c, false);
        assert_close(&c, &want, 1e-4, 1e-4, &format!("gemm {} {m}x{n}x{k} ta={ta} tb={tb}", isa.name()));
        gemm_with(isa, m, n, k, &a, ta, &b, tb, &mut c, true);
        let want2: Vec<f32> = c0.iter().zip(&want).map(|(_, w)| 2.0 * w).collect();
        assert_close(&c, &want2, 1e-4, 1e-4, "gemm accumulate");
    }

    #[test]
    fn parity_every_dim_1_to_67_and_transposes() {
        for isa in isas() {
            for d in (1..=67).chain([127, 128, 129]) {
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    check(isa, d, 67 - (d % 67) + 1, (d * 7) % 67 + 1, ta, tb);
                }
            }
            for &(m, n, k) in &[(0, 5, 3), (5, 0, 3), (5, 4, 0), (1, 1, 1), (300, 70, 513), (97, 1000, 33)] {
                check(isa, m, n, k, false, false);
                check(isa, m, n, k, true, true);
            }
        }
    }

    #[test]
    fn one_and_two_threads_same_bits() {
        let (m, n, k) = (257, 190, 600);
        let a = rand_vec(m * k, 4);
        let b = rand_vec(k * n, 5);
        for (ta, tb) in [(false, false), (false, true), (true, false)] {
            let outs = run_threads(|| {
                let mut c = vec![0.0; m * n];
                gemm(m, n, k, &a, ta, &b, tb, &mut c, false);
                c
            });
            assert!(outs[0].iter().zip(&outs[1]).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    #[test]
    fn matmul_shapes() {
        let a = Tensor::from_slice(&[2, 3, 4], &rand_vec(24, 6)).unwrap();
        let w = Tensor::from_slice(&[5, 4], &rand_vec(20, 7)).unwrap();
        assert_eq!(matmul(&a, &w, false, true).unwrap().shape(), &[2, 3, 5]);
        assert!(matmul(&a, &w, false, false).is_err());
        let dy = Tensor::from_slice(&[2, 3, 5], &rand_vec(30, 8)).unwrap();
        assert_eq!(matmul(&dy, &a.clone().reshape(&[6, 4]).unwrap(), true, false).unwrap().shape(), &[5, 4]);
    }
}
