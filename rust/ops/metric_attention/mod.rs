//! Metric attention (SPEC §6.2), causal and memory-efficient, forward and backward:
//!   s_ij = -α_h · Σ_c w_hc (q_ic - k_jc)² + kb_jh,   o_i = softmax_j≤i(s_ij) · v_j
//! with w > 0 (the caller applies softplus) and an optional per-key bias kb (the ball penalty).
//! Expanding the square gives one GEMM-like product plus norms,
//!   s_ij = α (2 (w⊙q_i)·k_j − ‖k_j‖²_w − ‖q_i‖²_w),
//! where the last term is constant along a row, cancels in the softmax, and is left out.
//! Two kernels compute it, neither forming a B·H·T·T buffer: `tiled` (the default) runs it as
//! dot-product attention through the tiled GEMM-microkernel attention (`biased`: the norm and
//! kb terms as the kernels' per-key score bias, where they take one; else as an augmented lane), and
//! `direct` walks each routed query row's keys with an online softmax (hard pruning, reference).
//!
//! Layouts: k, v [B, T, Hkv, hd] (MQA: Hkv = 1); q and o [B, T, H, hd], or with `rows` (routed
//! queries) [M, H, hd] where rows[m] = b·T + i lists the M query positions in strictly ascending
//! order; lse [M, H] (M = B·T without rows); α [H]; w [H, hd]; kb [B, T, H].
//! `hard`: inference-time ball pruning — key j is skipped for query i ≠ j when kb_jh < 0 (outside
//! the ball), and kb adds nothing; a query always keeps itself, so no row is empty.

mod biased;
mod direct;
mod tiled;

use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;

pub use direct::{backward as metric_attention_backward_direct, forward as metric_attention_forward_direct};

/// The operands of one metric attention call.
#[derive(Clone, Copy)]
pub struct MetricInputs<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub alpha: &'a Tensor,
    pub w: &'a Tensor,
    pub kb: Option<&'a Tensor>,
    pub rows: Option<&'a [u32]>,
    pub hard: bool,
}

/// Gradients of every differentiable operand (dkb only when kb was given).
pub struct MetricGrads {
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    pub dalpha: Tensor,
    pub dw: Tensor,
    pub dkb: Option<Tensor>,
}

#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub hkv: usize,
    pub hd: usize,
    pub m: usize,
}

impl Dims {
    pub fn kv_at(&self, b: usize, j: usize, g: usize) -> usize {
        ((b * self.t + j) * self.hkv + g) * self.hd
    }
    pub fn q_at(&self, r: usize, h: usize) -> usize {
        (r * self.h + h) * self.hd
    }
    pub fn group(&self) -> usize {
        self.h / self.hkv
    }
}

impl MetricGrads {
    /// All-zero gradients for the operands of `a`.
    pub(super) fn zeros(a: &MetricInputs, d: &Dims) -> Self {
        MetricGrads {
            dq: Tensor::zeros(a.q.shape()),
            dk: Tensor::zeros(a.k.shape()),
            dv: Tensor::zeros(a.k.shape()),
            dalpha: Tensor::zeros(&[d.h]),
            dw: Tensor::zeros(&[d.h, d.hd]),
            dkb: a.kb.map(|kb| Tensor::zeros(kb.shape())),
        }
    }
}

/// Checks the backward's o, dout (q's layout) and lse [m, H] against the inputs' dims.
pub(super) fn check_backward(a: &MetricInputs, d: &Dims, o: &Tensor, lse: &Tensor, dout: &Tensor) -> Result<()> {
    ensure_shape!(
        o.shape() == a.q.shape() && dout.shape() == a.q.shape() && lse.shape() == [d.m, d.h],
        "metric_attention_backward",
        "o {:?}, dout {:?} must match q {:?}; lse {:?} must be [{}, {}]",
        o.shape(),
        dout.shape(),
        a.q.shape(),
        lse.shape(),
        d.m,
        d.h
    );
    Ok(())
}

pub(super) fn dims(op: &'static str, a: &MetricInputs) -> Result<Dims> {
    let (q, k) = (a.q, a.k);
    ensure_shape!(
        k.ndim() == 4 && a.v.shape() == k.shape() && k.shape()[2] > 0,
        op,
        "k {:?} and v {:?} must both be [B, T, Hkv, hd]",
        k.shape(),
        a.v.shape()
    );
    let (b, t, hkv, hd) = (k.shape()[0], k.shape()[1], k.shape()[2], k.shape()[3]);
    let (h, m) = match a.rows {
        None => {
            ensure_shape!(
                q.ndim() == 4 && q.shape()[..2] == [b, t] && q.shape()[3] == hd,
                op,
                "q {:?} must be [{}, {}, H, {}]",
                q.shape(),
                b,
                t,
                hd
            );
            (q.shape()[2], b * t)
        }
        Some(rows) => {
            ensure_shape!(
                q.ndim() == 3 && q.shape()[0] == rows.len() && q.shape()[2] == hd,
                op,
                "q {:?} must be [{}, H, {}] for {} rows",
                q.shape(),
                rows.len(),
                hd,
                rows.len()
            );
            if !rows.windows(2).all(|w| w[0] < w[1]) || rows.last().is_some_and(|&r| r as usize >= b * t) {
                return Err(crate::Error::value(
                    op,
                    format!("rows must ascend strictly and lie below B·T = {}", b * t),
                ));
            }
            (q.shape()[1], rows.len())
        }
    };
    ensure_shape!(h > 0 && h % hkv == 0, op, "{} query heads are not a multiple of {} kv heads", h, hkv);
    ensure_shape!(
        a.alpha.shape() == [h] && a.w.shape() == [h, hd],
        op,
        "alpha {:?} must be [{}], w {:?} must be [{}, {}]",
        a.alpha.shape(),
        h,
        a.w.shape(),
        h,
        hd
    );
    if let Some(kb) = a.kb {
        ensure_shape!(kb.shape() == [b, t, h], op, "kb {:?} must be [{}, {}, {}]", kb.shape(), b, t, h);
    }
    Ok(Dims { b, t, h, hkv, hd, m })
}

/// Returns (o, lse): o in q's layout, lse [M, H] (M = B·T without rows).
pub fn metric_attention_forward(a: MetricInputs) -> Result<(Tensor, Tensor)> {
    if a.hard && a.kb.is_some() {
        direct::forward(a)
    } else {
        tiled::forward(a)
    }
}

/// Gradients of metric_attention_forward given its outputs o, lse and dout (the layout of o).
pub fn metric_attention_backward(a: MetricInputs, o: &Tensor, lse: &Tensor, dout: &Tensor) -> Result<MetricGrads> {
    if a.hard && a.kb.is_some() {
        direct::backward(a, o, lse, dout)
    } else {
        tiled::backward(a, o, lse, dout)
    }
}

#[cfg(test)]
mod tests;
