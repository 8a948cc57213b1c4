//! Packed GEMM: C (+)= op(A) · op(B) with op = identity or transpose, FP32, with an optional
//! fused epilogue (bias, activation) applied to each tile while it is still in cache.
//!
//! `driver` holds the loop nest and the parallel split, `pack` the panel packing; the
//! microkernels are `cpu::gemm_tile` (the scalar specification and one SIMD body in `cpu::simd`,
//! instantiated for AVX2 and AVX-512). Results are bit-identical for any thread count (see
//! `driver`). Not here: strided or batched C (callers flatten leading dims).

mod driver;
mod pack;

use crate::cpu::{self, Isa};
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use pack::View;

/// Elementwise function applied by the epilogue after the bias.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Activation {
    #[default]
    Identity,
    Relu,
    Silu,
    Gelu,
}

impl Activation {
    pub fn parse(s: &str) -> Option<Activation> {
        match s {
            "" | "none" | "identity" => Some(Activation::Identity),
            "relu" => Some(Activation::Relu),
            "silu" => Some(Activation::Silu),
            "gelu" => Some(Activation::Gelu),
            _ => None,
        }
    }
}

/// What happens to each finished C tile: C = act(C + bias), bias indexed by column.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub activation: Activation,
}

impl Epilogue<'_> {
    fn is_identity(&self) -> bool {
        self.bias.is_none() && self.activation == Activation::Identity
    }

    /// Applies the epilogue to `row`, the part of one C row starting at column `j0`.
    fn apply(&self, row: &mut [f32], j0: usize) {
        if let Some(bias) = self.bias {
            cpu::axpy(1.0, &bias[j0..j0 + row.len()], row);
        }
        let mut buf = [0.0f32; 64];
        for chunk in row.chunks_mut(64) {
            let x = &mut buf[..chunk.len()];
            match self.activation {
                Activation::Identity => {}
                Activation::Relu => chunk.iter_mut().for_each(|v| *v = v.max(0.0)),
                Activation::Silu => {
                    x.copy_from_slice(chunk);
                    cpu::silu(x, chunk);
                }
                Activation::Gelu => {
                    x.copy_from_slice(chunk);
                    cpu::gelu(x, chunk);
                }
            }
        }
    }
}

fn views<'a>(
    m: usize,
    n: usize,
    k: usize,
    a: &'a [f32],
    trans_a: bool,
    b: &'a [f32],
    trans_b: bool,
) -> (View<'a>, View<'a>) {
    let av = if trans_a { View { data: a, rs: 1, cs: m } } else { View { data: a, rs: k, cs: 1 } };
    let bv = if trans_b { View { data: b, rs: 1, cs: k } } else { View { data: b, rs: n, cs: 1 } };
    (av, bv)
}

/// C[m×n] (row-major, contiguous) = act(op(A)·op(B) (+ C when `accumulate`) + bias).
/// `a` is stored [m,k] (or [k,m] when `trans_a`); `b` is stored [k,n] (or [n,k] when `trans_b`);
/// `epi.bias`, when given, has n values. Panics on slice lengths that do not match (callers with
/// user input check shapes first, as `matmul` does).
pub fn gemm_ex(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    c: &mut [f32],
    accumulate: bool,
    epi: &Epilogue,
) {
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n, "gemm: slice lengths do not match m, n, k");
    assert!(epi.bias.is_none_or(|bias| bias.len() == n), "gemm: bias length must be n");
    assert!(cpu::supports(isa), "gemm: {} is not supported by this host", isa.name());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        if !epi.is_identity() {
            c.chunks_mut(n).for_each(|row| epi.apply(row, 0));
        }
        return;
    }
    let (av, bv) = views(m, n, k, a, trans_a, b, trans_b);
    driver::run(&driver::Problem { isa, m, n, k, a: av, b: bv, accumulate, epi: *epi }, c);
}

/// C[m×n] (row-major, contiguous) = op(A)·op(B), or += when `accumulate`.
/// `a` is stored [m,k] (or [k,m] when `trans_a`); `b` is stored [k,n] (or [n,k] when `trans_b`).
pub fn gemm_with(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    c: &mut [f32],
    accumulate: bool,
) {
    gemm_ex(isa, m, n, k, a, trans_a, b, trans_b, c, accumulate, &Epilogue::default())
}

/// The k block of `gemm` on this host: each C element sums its products in blocks of this many
/// k steps, in increasing k, so splitting k at multiples of it (the later parts accumulating)
/// gives the bits of one call.
pub fn k_block() -> usize {
    driver::kc_for(cpu::isa())
}

/// `gemm_with` on the active instruction set.
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    c: &mut [f32],
    accumulate: bool,
) {
    gemm_with(cpu::isa(), m, n, k, a, trans_a, b, trans_b, c, accumulate)
}

/// Rows and columns of a tensor seen as a matrix: leading dims flattened into rows.
fn as_matrix(t: &Tensor) -> (usize, usize) {
    let cols = t.last_dim();
    // The product of the leading dims, not numel / cols: with cols = 0 that quotient lost the
    // rows (a [5, 5, 0] operand read as 0 rows), and the GEMM panicked (found by fuzzing).
    let rows = t.shape()[..t.ndim().saturating_sub(1)].iter().product();
    (rows, cols)
}

/// op(a) · op(b). Each operand is read as a matrix with its leading dims flattened into rows.
/// Without `trans_a` the output keeps a's leading dims: [..., M] · [M, N] -> [..., N].
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    ensure_shape!(
        a.ndim() >= 2 && b.ndim() >= 2,
        "matmul",
        "operands must have at least 2 dims: a {:?}, b {:?}",
        a.shape(),
        b.shape()
    );
    let (ar, ac) = as_matrix(a);
    let (br, bc) = as_matrix(b);
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
    ensure_shape!(
        k == k2,
        "matmul",
        "inner dims differ: a {:?}{} · b {:?}{}",
        a.shape(),
        if trans_a { "ᵀ" } else { "" },
        b.shape(),
        if trans_b { "ᵀ" } else { "" }
    );
    let mut shape: Vec<usize> = if trans_a { vec![m] } else { a.shape()[..a.ndim() - 1].to_vec() };
    shape.push(n);
    let mut c = Tensor::for_overwrite(&shape);
    gemm(m, n, k, a.data(), trans_a, b.data(), trans_b, c.data_mut(), false);
    Ok(c)
}

/// x · wᵀ + bias, then `act`: a Linear layer (w [out, in] as in PyTorch) in one pass over the
/// output. x is [..., in]; the result is [..., out].
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    ensure_shape!(
        x.ndim() >= 1 && w.ndim() == 2 && x.last_dim() == w.shape()[1],
        "linear",
        "need x [..., in] and w [out, in]; got x {:?}, w {:?}",
        x.shape(),
        w.shape()
    );
    let (n, k) = (w.shape()[0], w.shape()[1]);
    if let Some(b) = bias {
        ensure_shape!(b.shape() == [n], "linear", "bias {:?} must be [out] = [{n}]", b.shape());
    }
    let m = as_matrix(x).0; // the leading dims' product, also when k = 0
    let mut shape = x.shape()[..x.ndim() - 1].to_vec();
    shape.push(n);
    let mut y = Tensor::zeros(&shape);
    let epi = Epilogue { bias: bias.map(|b| b.data()), activation: act };
    gemm_ex(cpu::isa(), m, n, k, x.data(), false, w.data(), true, y.data_mut(), false, &epi);
    Ok(y)
}

#[cfg(test)]
mod tests;
