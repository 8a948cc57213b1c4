//! Bindings of `ops`: the dense ops (GEMM and the fused Linear, elementwise, norms,
//! activations, softmax, RoPE, attention, embedding, cross-entropy, AdamW) and the small ops of
//! the sparse blocks (`gating`, `dwconv`, `rope_angles`), one binding per forward and backward
//! as the Python autograd calls them.

use super::convert::{ids_from_numpy, optional_ids, raise, run};
use super::tensor::{w, T};
use crate::ops::matmul::{self as mm, Activation};
use crate::ops::{
    activation, attention, cross_entropy, dwconv, elementwise, embedding, gating, kv_attention, norm, optim, rope,
};
use crate::ops::{linear_ce, rope_angles, softmax};
use pyo3::prelude::*;

#[pyfunction]
#[pyo3(signature = (a, b, trans_a=false, trans_b=false))]
fn matmul(py: Python<'_>, a: PyRef<T>, b: PyRef<T>, trans_a: bool, trans_b: bool) -> PyResult<T> {
    let (a, b) = (&a.inner, &b.inner);
    run(py, || mm::matmul(a, b, trans_a, trans_b)).map(w)
}

/// x · wᵀ (+ bias), then `activation` ("none", "relu", "silu", "gelu"), in one pass over the
/// output. x [..., in], w [out, in], bias [out].
#[pyfunction]
#[pyo3(signature = (x, w, bias=None, activation="none"))]
fn linear(py: Python<'_>, x: PyRef<T>, w: PyRef<T>, bias: Option<PyRef<T>>, activation: &str) -> PyResult<T> {
    let act = Activation::parse(activation).ok_or_else(|| {
        raise(
            py,
            "InvalidValueError",
            format!("linear: activation {activation:?} is not one of none, relu, silu, gelu"),
        )
    })?;
    let (x, w, b) = (&x.inner, &w.inner, bias.as_ref().map(|b| &b.inner));
    run(py, || mm::linear(x, w, b, act)).map(T::wrap)
}

#[pyfunction]
fn add(py: Python<'_>, a: PyRef<T>, b: PyRef<T>) -> PyResult<T> {
    let (a, b) = (&a.inner, &b.inner);
    run(py, || elementwise::add(a, b)).map(w)
}

#[pyfunction]
fn mul(py: Python<'_>, a: PyRef<T>, b: PyRef<T>) -> PyResult<T> {
    let (a, b) = (&a.inner, &b.inner);
    run(py, || elementwise::mul(a, b)).map(w)
}

#[pyfunction]
fn scale(py: Python<'_>, a: PyRef<T>, alpha: f32) -> PyResult<T> {
    let a = &a.inner;
    run(py, || Ok(elementwise::scale(a, alpha))).map(w)
}

/// a += b in place.
#[pyfunction]
fn add_(py: Python<'_>, mut a: PyRefMut<T>, b: PyRef<T>) -> PyResult<()> {
    let b = b.inner.clone();
    let a = &mut a.inner;
    run(py, || elementwise::add_assign(a, &b))
}

#[pyfunction]
fn rmsnorm_forward(py: Python<'_>, x: PyRef<T>, weight: PyRef<T>, eps: f32) -> PyResult<(T, T)> {
    let (x, wt) = (&x.inner, &weight.inner);
    run(py, || norm::rmsnorm_forward(x, wt, eps)).map(|(y, r)| (w(y), w(r)))
}

#[pyfunction]
#[pyo3(signature = (x, weight, rstd, dy, acc=None))]
fn rmsnorm_backward(
    py: Python<'_>,
    x: PyRef<T>,
    weight: PyRef<T>,
    rstd: PyRef<T>,
    dy: PyRef<T>,
    acc: Option<PyRef<T>>,
) -> PyResult<(T, T)> {
    let (x, wt, r, dy) = (&x.inner, &weight.inner, &rstd.inner, &dy.inner);
    let acc = acc.as_ref().map(|a| &a.inner);
    run(py, || norm::rmsnorm_backward_acc(x, wt, r, dy, acc)).map(|(a, b)| (w(a), w(b)))
}

#[pyfunction]
fn layernorm_forward(py: Python<'_>, x: PyRef<T>, weight: PyRef<T>, bias: PyRef<T>, eps: f32) -> PyResult<(T, T, T)> {
    let (x, wt, b) = (&x.inner, &weight.inner, &bias.inner);
    run(py, || norm::layernorm_forward(x, wt, b, eps)).map(|(y, m, r)| (w(y), w(m), w(r)))
}

#[pyfunction]
fn layernorm_backward(
    py: Python<'_>,
    x: PyRef<T>,
    weight: PyRef<T>,
    mean: PyRef<T>,
    rstd: PyRef<T>,
    dy: PyRef<T>,
) -> PyResult<(T, T, T)> {
    let (x, wt, m, r, dy) = (&x.inner, &weight.inner, &mean.inner, &rstd.inner, &dy.inner);
    run(py, || norm::layernorm_backward(x, wt, m, r, dy)).map(|(a, b, c)| (w(a), w(b), w(c)))
}

#[pyfunction]
fn silu_forward(py: Python<'_>, x: PyRef<T>) -> PyResult<T> {
    let x = &x.inner;
    run(py, || Ok(activation::silu_forward(x))).map(w)
}

#[pyfunction]
fn silu_backward(py: Python<'_>, x: PyRef<T>, dy: PyRef<T>) -> PyResult<T> {
    let (x, dy) = (&x.inner, &dy.inner);
    run(py, || activation::silu_backward(x, dy)).map(w)
}

#[pyfunction]
fn gelu_forward(py: Python<'_>, x: PyRef<T>) -> PyResult<T> {
    let x = &x.inner;
    run(py, || Ok(activation::gelu_forward(x))).map(w)
}

#[pyfunction]
fn gelu_backward(py: Python<'_>, x: PyRef<T>, dy: PyRef<T>) -> PyResult<T> {
    let (x, dy) = (&x.inner, &dy.inner);
    run(py, || activation::gelu_backward(x, dy)).map(w)
}

#[pyfunction]
fn swiglu_forward(py: Python<'_>, gate: PyRef<T>, up: PyRef<T>) -> PyResult<T> {
    let (g, u) = (&gate.inner, &up.inner);
    run(py, || activation::swiglu_forward(g, u)).map(w)
}

#[pyfunction]
fn swiglu_backward(py: Python<'_>, gate: PyRef<T>, up: PyRef<T>, dy: PyRef<T>) -> PyResult<(T, T)> {
    let (g, u, dy) = (&gate.inner, &up.inner, &dy.inner);
    run(py, || activation::swiglu_backward(g, u, dy)).map(|(a, b)| (w(a), w(b)))
}

#[pyfunction]
fn softmax_forward(py: Python<'_>, x: PyRef<T>) -> PyResult<T> {
    let x = &x.inner;
    run(py, || Ok(softmax::softmax_forward(x))).map(w)
}

#[pyfunction]
fn softmax_backward(py: Python<'_>, y: PyRef<T>, dy: PyRef<T>) -> PyResult<T> {
    let (y, dy) = (&y.inner, &dy.inner);
    run(py, || softmax::softmax_backward(y, dy)).map(w)
}

#[pyfunction]
#[pyo3(signature = (x, base, positions=None))]
fn rope_forward(py: Python<'_>, x: PyRef<T>, base: f32, positions: Option<&Bound<'_, PyAny>>) -> PyResult<T> {
    let pos = optional_ids(py, positions, "positions")?;
    let x = &x.inner;
    run(py, || rope::rope_forward(x, pos.as_deref(), base)).map(w)
}

#[pyfunction]
#[pyo3(signature = (dy, base, positions=None))]
fn rope_backward(py: Python<'_>, dy: PyRef<T>, base: f32, positions: Option<&Bound<'_, PyAny>>) -> PyResult<T> {
    let pos = optional_ids(py, positions, "positions")?;
    let dy = &dy.inner;
    run(py, || rope::rope_backward(dy, pos.as_deref(), base)).map(w)
}

#[pyfunction]
fn rope_angles_forward(py: Python<'_>, x: PyRef<T>, ang: PyRef<T>, pos: &Bound<'_, PyAny>) -> PyResult<T> {
    let (p, _) = ids_from_numpy(py, pos, "positions")?;
    let (x, a) = (&x.inner, &ang.inner);
    run(py, || rope_angles::rope_angles_forward(x, a, &p)).map(w)
}

#[pyfunction]
fn rope_angles_backward(
    py: Python<'_>,
    x: PyRef<T>,
    ang: PyRef<T>,
    pos: &Bound<'_, PyAny>,
    dy: PyRef<T>,
) -> PyResult<(T, T)> {
    let (p, _) = ids_from_numpy(py, pos, "positions")?;
    let (x, a, d) = (&x.inner, &ang.inner, &dy.inner);
    run(py, || rope_angles::rope_angles_backward(x, a, &p, d)).map(|(a, b)| (w(a), w(b)))
}

/// Segment ids [B, T] (non-negative ints) as the attention kernels take them.
fn segment_ids(py: Python<'_>, segments: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<i64>>> {
    Ok(optional_ids(py, segments, "segments")?.map(|v| v.into_iter().map(i64::from).collect()))
}

/// Causal attention; `window` = W keeps the last W keys of each query (itself included);
/// `segments` [B, T] (non-decreasing along each row) keeps each query within its document.
#[pyfunction]
#[pyo3(signature = (q, k, v, scale, window=None, segments=None))]
fn attention_forward(
    py: Python<'_>,
    q: PyRef<T>,
    k: PyRef<T>,
    v: PyRef<T>,
    scale: f32,
    window: Option<usize>,
    segments: Option<&Bound<'_, PyAny>>,
) -> PyResult<(T, T)> {
    let seg = segment_ids(py, segments)?;
    let (q, k, v) = (&q.inner, &k.inner, &v.inner);
    run(py, || attention::attention_forward_segments(q, k, v, scale, window, seg.as_deref())).map(|(o, l)| (w(o), w(l)))
}

#[pyfunction]
#[pyo3(signature = (q, k, v, o, lse, dout, scale, window=None, segments=None))]
fn attention_backward(
    py: Python<'_>,
    q: PyRef<T>,
    k: PyRef<T>,
    v: PyRef<T>,
    o: PyRef<T>,
    lse: PyRef<T>,
    dout: PyRef<T>,
    scale: f32,
    window: Option<usize>,
    segments: Option<&Bound<'_, PyAny>>,
) -> PyResult<(T, T, T)> {
    let seg = segment_ids(py, segments)?;
    let (q, k, v, o, l, d) = (&q.inner, &k.inner, &v.inner, &o.inner, &lse.inner, &dout.inner);
    run(py, || attention::attention_backward_segments(q, k, v, o, l, d, scale, window, seg.as_deref()))
        .map(|(a, b, c)| (w(a), w(b), w(c)))
}

/// Queries [B,Tq,Hq,hd] against a cache k/v [B,Tk,Hkv,hd] (Tk >= Tq); query i sees keys up to
/// Tk - Tq + i, the last `window` of them when given. Forward only (sampling).
#[pyfunction]
#[pyo3(signature = (q, k, v, scale, window=None))]
fn attention_with_cache(
    py: Python<'_>,
    q: PyRef<T>,
    k: PyRef<T>,
    v: PyRef<T>,
    scale: f32,
    window: Option<usize>,
) -> PyResult<T> {
    let (q, k, v) = (&q.inner, &k.inner, &v.inner);
    run(py, || kv_attention::attention_with_cache(q, k, v, scale, window)).map(w)
}

#[pyfunction]
fn embedding_forward(py: Python<'_>, weight: PyRef<T>, ids: &Bound<'_, PyAny>) -> PyResult<T> {
    let (ids, shape) = ids_from_numpy(py, ids, "embedding ids")?;
    let wt = &weight.inner;
    run(py, || embedding::embedding_forward(wt, &ids, &shape)).map(w)
}

#[pyfunction]
fn embedding_backward(py: Python<'_>, ids: &Bound<'_, PyAny>, dy: PyRef<T>, vocab: usize) -> PyResult<T> {
    let (ids, _) = ids_from_numpy(py, ids, "embedding ids")?;
    let dy = &dy.inner;
    run(py, || embedding::embedding_backward(&ids, dy, vocab)).map(w)
}

#[pyfunction]
fn cross_entropy_forward(py: Python<'_>, logits: PyRef<T>, targets: &Bound<'_, PyAny>) -> PyResult<(f32, T)> {
    let (t, _) = ids_from_numpy(py, targets, "targets")?;
    let l = &logits.inner;
    run(py, || cross_entropy::cross_entropy_forward(l, &t)).map(|(loss, lse)| (loss, w(lse)))
}

/// (mean loss, dlogits for dloss = 1) in one pass: training's loss and gradient together.
#[pyfunction]
fn cross_entropy_fused(py: Python<'_>, logits: PyRef<T>, targets: &Bound<'_, PyAny>) -> PyResult<(f32, T)> {
    let (t, _) = ids_from_numpy(py, targets, "targets")?;
    let l = &logits.inner;
    run(py, || cross_entropy::cross_entropy_fused(l, &t)).map(|(loss, d)| (loss, w(d)))
}

#[pyfunction]
fn cross_entropy_backward(
    py: Python<'_>,
    logits: PyRef<T>,
    targets: &Bound<'_, PyAny>,
    lse: PyRef<T>,
    dloss: f32,
) -> PyResult<T> {
    let (t, _) = ids_from_numpy(py, targets, "targets")?;
    let (l, s) = (&logits.inner, &lse.inner);
    run(py, || cross_entropy::cross_entropy_backward(l, &t, s, dloss)).map(w)
}

#[pyfunction]
fn adamw_step(
    py: Python<'_>,
    mut param: PyRefMut<T>,
    grad: PyRef<T>,
    mut m: PyRefMut<T>,
    mut v: PyRefMut<T>,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step: u64,
) -> PyResult<()> {
    let g = grad.inner.clone();
    let (p, m, v) = (&mut param.inner, &mut m.inner, &mut v.inner);
    run(py, || optim::adamw_step(p, &g, m, v, lr, beta1, beta2, eps, weight_decay, step))
}

#[pyfunction]
fn global_norm(py: Python<'_>, grads: Vec<PyRef<T>>) -> PyResult<f32> {
    let gs: Vec<&crate::Tensor> = grads.iter().map(|g| &g.inner).collect();
    run(py, || Ok(optim::global_norm(&gs)))
}

/// Clips the gradients in place; returns the norm before clipping.
#[pyfunction]
fn clip_grad_norm(py: Python<'_>, mut grads: Vec<PyRefMut<T>>, max_norm: f32) -> PyResult<f32> {
    let mut gs: Vec<&mut crate::Tensor> = grads.iter_mut().map(|g| &mut g.inner).collect();
    run(py, || Ok(optim::clip_grad_norm(&mut gs, max_norm)))
}

#[pyfunction]
fn softplus_forward(py: Python<'_>, x: PyRef<T>) -> PyResult<T> {
    let x = &x.inner;
    run(py, || Ok(gating::softplus_forward(x))).map(w)
}

#[pyfunction]
fn softplus_backward(py: Python<'_>, x: PyRef<T>, dy: PyRef<T>) -> PyResult<T> {
    let (x, d) = (&x.inner, &dy.inner);
    run(py, || gating::softplus_backward(x, d)).map(w)
}

#[pyfunction]
fn sigmoid_range_forward(py: Python<'_>, x: PyRef<T>, lo: f32, hi: f32) -> PyResult<T> {
    let x = &x.inner;
    run(py, || Ok(gating::sigmoid_range_forward(x, lo, hi))).map(w)
}

#[pyfunction]
fn sigmoid_range_backward(py: Python<'_>, x: PyRef<T>, dy: PyRef<T>, lo: f32, hi: f32) -> PyResult<T> {
    let (x, d) = (&x.inner, &dy.inner);
    run(py, || gating::sigmoid_range_backward(x, d, lo, hi)).map(w)
}

#[pyfunction]
fn col_scale_forward(py: Python<'_>, x: PyRef<T>, s: PyRef<T>) -> PyResult<T> {
    let (x, s) = (&x.inner, &s.inner);
    run(py, || gating::col_scale_forward(x, s)).map(w)
}

#[pyfunction]
fn col_scale_backward(py: Python<'_>, x: PyRef<T>, s: PyRef<T>, dy: PyRef<T>) -> PyResult<(T, T)> {
    let (x, s, d) = (&x.inner, &s.inner, &dy.inner);
    run(py, || gating::col_scale_backward(x, s, d)).map(|(a, b)| (w(a), w(b)))
}

#[pyfunction]
fn gather_rows_forward(py: Python<'_>, x: PyRef<T>, rows: &Bound<'_, PyAny>) -> PyResult<T> {
    let (r, _) = ids_from_numpy(py, rows, "rows")?;
    let x = &x.inner;
    run(py, || gating::gather_rows_forward(x, &r)).map(w)
}

#[pyfunction]
fn gather_rows_backward(py: Python<'_>, dy: PyRef<T>, rows: &Bound<'_, PyAny>, n: usize) -> PyResult<T> {
    let (r, _) = ids_from_numpy(py, rows, "rows")?;
    let d = &dy.inner;
    run(py, || gating::gather_rows_backward(d, &r, n)).map(w)
}

#[pyfunction]
fn concat_rows(py: Python<'_>, parts: Vec<PyRef<T>>) -> PyResult<T> {
    let ps: Vec<&crate::Tensor> = parts.iter().map(|p| &p.inner).collect();
    run(py, || gating::concat_rows(&ps)).map(w)
}

#[pyfunction]
fn split_rows(py: Python<'_>, x: PyRef<T>, sizes: Vec<usize>) -> PyResult<Vec<T>> {
    let x = &x.inner;
    run(py, || gating::split_rows(x, &sizes)).map(|v| v.into_iter().map(w).collect())
}

#[pyfunction]
#[pyo3(signature = (x, w, rows=None))]
fn dwconv_forward(py: Python<'_>, x: PyRef<T>, w: PyRef<T>, rows: Option<&Bound<'_, PyAny>>) -> PyResult<T> {
    let rows = optional_ids(py, rows, "rows")?;
    let (x, wt) = (&x.inner, &w.inner);
    run(py, || dwconv::dwconv_forward(x, wt, rows.as_deref())).map(self::w)
}

#[pyfunction]
#[pyo3(signature = (x, w, rows, dy))]
fn dwconv_backward(
    py: Python<'_>,
    x: PyRef<T>,
    w: PyRef<T>,
    rows: Option<&Bound<'_, PyAny>>,
    dy: PyRef<T>,
) -> PyResult<(T, T)> {
    let rows = optional_ids(py, rows, "rows")?;
    let (x, wt, d) = (&x.inner, &w.inner, &dy.inner);
    run(py, || dwconv::dwconv_backward(x, wt, rows.as_deref(), d)).map(|(a, b)| (self::w(a), self::w(b)))
}

/// silu(g) * u over gu [..., 2H] (gate columns, then up columns) -> [..., H].
#[pyfunction]
fn swiglu_packed_forward(py: Python<'_>, gu: PyRef<T>) -> PyResult<T> {
    let gu = &gu.inner;
    run(py, || activation::swiglu_packed_forward(gu)).map(w)
}

#[pyfunction]
fn swiglu_packed_backward(py: Python<'_>, gu: PyRef<T>, dy: PyRef<T>) -> PyResult<T> {
    let (gu, dy) = (&gu.inner, &dy.inner);
    run(py, || activation::swiglu_packed_backward(gu, dy)).map(w)
}

/// (dq, dk, dv) -> dqkv [B, T, (H + 2·Hkv)·hd], dq and dk rotated back.
#[pyfunction]
#[pyo3(signature = (dq, dk, dv, base, positions=None))]
fn qkv_rope_merge(
    py: Python<'_>,
    dq: PyRef<T>,
    dk: PyRef<T>,
    dv: PyRef<T>,
    base: f32,
    positions: Option<&Bound<'_, PyAny>>,
) -> PyResult<T> {
    let pos = optional_ids(py, positions, "positions")?;
    let (q, k, v) = (&dq.inner, &dk.inner, &dv.inner);
    run(py, || rope::qkv_rope_merge(q, k, v, pos.as_deref(), base)).map(w)
}

/// AdamW over all parameters in one call, the global-norm clip fused in (max_norm > 0); the
/// gradients are scaled in place when clipped. Returns the norm before clipping (0 without clip).
#[pyfunction]
#[pyo3(signature = (params, grads, m, v, weight_decay, lr, beta1, beta2, eps, step, max_norm=None))]
fn adamw_multi(
    py: Python<'_>,
    mut params: Vec<PyRefMut<T>>,
    mut grads: Vec<PyRefMut<T>>,
    mut m: Vec<PyRefMut<T>>,
    mut v: Vec<PyRefMut<T>>,
    weight_decay: Vec<f32>,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step: u64,
    max_norm: Option<f32>,
) -> PyResult<f32> {
    let mut ps: Vec<&mut crate::Tensor> = params.iter_mut().map(|t| &mut t.inner).collect();
    let mut gs: Vec<&mut crate::Tensor> = grads.iter_mut().map(|t| &mut t.inner).collect();
    let mut ms: Vec<&mut crate::Tensor> = m.iter_mut().map(|t| &mut t.inner).collect();
    let mut vs: Vec<&mut crate::Tensor> = v.iter_mut().map(|t| &mut t.inner).collect();
    let hp = optim::AdamHyper { lr, beta1, beta2, eps, step };
    run(py, || optim::adamw_multi(&mut ps, &mut gs, &mut ms, &mut vs, &weight_decay, hp, max_norm))
}

/// s = x + a and y = rmsnorm(s) in one pass -> (s, y, rstd).
#[pyfunction]
fn add_rmsnorm_forward(py: Python<'_>, x: PyRef<T>, a: PyRef<T>, weight: PyRef<T>, eps: f32) -> PyResult<(T, T, T)> {
    let (x, a, wt) = (&x.inner, &a.inner, &weight.inner);
    run(py, || norm::add_rmsnorm_forward(x, a, wt, eps)).map(|(s, y, r)| (w(s), w(y), w(r)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(matmul, m)?)?;
    m.add_function(wrap_pyfunction!(linear, m)?)?;
    m.add_function(wrap_pyfunction!(add, m)?)?;
    m.add_function(wrap_pyfunction!(mul, m)?)?;
    m.add_function(wrap_pyfunction!(scale, m)?)?;
    m.add_function(wrap_pyfunction!(add_, m)?)?;
    m.add_function(wrap_pyfunction!(rmsnorm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(rmsnorm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(layernorm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(layernorm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(silu_forward, m)?)?;
    m.add_function(wrap_pyfunction!(silu_backward, m)?)?;
    m.add_function(wrap_pyfunction!(gelu_forward, m)?)?;
    m.add_function(wrap_pyfunction!(gelu_backward, m)?)?;
    m.add_function(wrap_pyfunction!(swiglu_forward, m)?)?;
    m.add_function(wrap_pyfunction!(swiglu_backward, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_forward, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_backward, m)?)?;
    m.add_function(wrap_pyfunction!(rope_forward, m)?)?;
    m.add_function(wrap_pyfunction!(rope_backward, m)?)?;
    m.add_function(wrap_pyfunction!(rope_angles_forward, m)?)?;
    m.add_function(wrap_pyfunction!(rope_angles_backward, m)?)?;
    m.add_function(wrap_pyfunction!(attention_forward, m)?)?;
    m.add_function(wrap_pyfunction!(attention_backward, m)?)?;
    m.add_function(wrap_pyfunction!(attention_with_cache, m)?)?;
    m.add_function(wrap_pyfunction!(embedding_forward, m)?)?;
    m.add_function(wrap_pyfunction!(embedding_backward, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy_forward, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy_fused, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy_backward, m)?)?;
    m.add_function(wrap_pyfunction!(adamw_step, m)?)?;
    m.add_function(wrap_pyfunction!(global_norm, m)?)?;
    m.add_function(wrap_pyfunction!(clip_grad_norm, m)?)?;
    m.add_function(wrap_pyfunction!(softplus_forward, m)?)?;
    m.add_function(wrap_pyfunction!(softplus_backward, m)?)?;
    m.add_function(wrap_pyfunction!(sigmoid_range_forward, m)?)?;
    m.add_function(wrap_pyfunction!(sigmoid_range_backward, m)?)?;
    m.add_function(wrap_pyfunction!(col_scale_forward, m)?)?;
    m.add_function(wrap_pyfunction!(col_scale_backward, m)?)?;
    m.add_function(wrap_pyfunction!(gather_rows_forward, m)?)?;
    m.add_function(wrap_pyfunction!(gather_rows_backward, m)?)?;
    m.add_function(wrap_pyfunction!(concat_rows, m)?)?;
    m.add_function(wrap_pyfunction!(split_rows, m)?)?;
    m.add_function(wrap_pyfunction!(dwconv_forward, m)?)?;
    m.add_function(wrap_pyfunction!(dwconv_backward, m)?)?;
    m.add_function(wrap_pyfunction!(linear_cross_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(linear_cross_entropy_chunk, m)?)?;
    m.add_function(wrap_pyfunction!(linear_cross_entropy_logits, m)?)?;
    m.add_function(wrap_pyfunction!(swiglu_packed_forward, m)?)?;
    m.add_function(wrap_pyfunction!(swiglu_packed_backward, m)?)?;
    m.add_function(wrap_pyfunction!(qkv_rope_merge, m)?)?;
    m.add_function(wrap_pyfunction!(adamw_multi, m)?)?;
    m.add_function(wrap_pyfunction!(add_rmsnorm_forward, m)?)?;
    Ok(())
}

/// Mean cross-entropy of x · wᵀ (x [..., D], w [V, D]) against one target per row, never holding
/// all logits: in row blocks over the whole vocabulary (`chunk` ≥ V), or over vocabulary chunks
/// of `chunk` rows of w (0: `linear_cross_entropy_chunk`). Returns (loss, None) or, with `grad`, (loss, (dx, dw)) for dloss = 1.
#[pyfunction]
#[pyo3(signature = (x, w, targets, chunk=0, grad=false))]
fn linear_cross_entropy(
    py: Python<'_>,
    x: PyRef<T>,
    w: PyRef<T>,
    targets: &Bound<'_, PyAny>,
    chunk: usize,
    grad: bool,
) -> PyResult<(f32, Option<(T, T)>)> {
    let (t, _) = ids_from_numpy(py, targets, "targets")?;
    let (x, wt) = (&x.inner, &w.inner);
    let chunk =
        if chunk == 0 { linear_ce::vocab_chunk(t.len(), wt.shape().first().copied().unwrap_or(0)) } else { chunk };
    run(py, || linear_ce::linear_cross_entropy(x, wt, &t, chunk, grad))
        .map(|o| (o.loss, o.grads.map(|(a, b)| (self::w(a), self::w(b)))))
}

/// Vocabulary rows per chunk `linear_cross_entropy` uses for `rows` rows and `vocab` entries.
#[pyfunction]
fn linear_cross_entropy_chunk(rows: usize, vocab: usize) -> usize {
    linear_ce::vocab_chunk(rows, vocab)
}

/// Floats of the logits buffer `linear_cross_entropy` holds for `rows` rows and `vocab` entries
/// (one row block or one vocabulary chunk, at most 64 MiB): what memory estimates count.
#[pyfunction]
fn linear_cross_entropy_logits(rows: usize, vocab: usize) -> usize {
    linear_ce::logits_floats(rows, vocab)
}
