//! One binding per op: forward and backward pairs as the Python autograd calls them.

use super::convert::{ids_from_numpy, run, PyTensor};
use crate::ops::{activation, attention, cross_entropy, elementwise, embedding, kv_attention, matmul as mm, norm, optim, rope, softmax};
use crate::{cpu, threads};
use pyo3::prelude::*;

type T = PyTensor;
fn w(t: crate::Tensor) -> T {
    PyTensor::wrap(t)
}

#[pyfunction]
#[pyo3(signature = (a, b, trans_a=false, trans_b=false))]
fn matmul(py: Python<'_>, a: PyRef<T>, b: PyRef<T>, trans_a: bool, trans_b: bool) -> PyResult<T> {
    let (a, b) = (&a.inner, &b.inner);
    run(py, || mm::matmul(a, b, trans_a, trans_b)).map(w)
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
fn rmsnorm_backward(py: Python<'_>, x: PyRef<T>, weight: PyRef<T>, rstd: PyRef<T>, dy: PyRef<T>) -> PyResult<(T, T)> {
    let (x, wt, r, dy) = (&x.inner, &weight.inner, &rstd.inner, &dy.inner);
    run(py, || norm::rmsnorm_backward(x, wt, r, dy)).map(|(a, b)| (w(a), w(b)))
}

#[pyfunction]
fn layernorm_forward(py: Python<'_>, x: PyRef<T>, weight: PyRef<T>, bias: PyRef<T>, eps: f32) -> PyResult<(T, T, T)> {
    let (x, wt, b) = (&x.inner, &weight.inner, &bias.inner);
    run(py, || norm::layernorm_forward(x, wt, b, eps)).map(|(y, m, r)| (w(y), w(m), w(r)))
}

#[pyfunction]
fn layernorm_backward(py: Python<'_>, x: PyRef<T>, weight: PyRef<T>, mean: PyRef<T>, rstd: PyRef<T>, dy: PyRef<T>) -> PyResult<(T, T, T)> {
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

fn positions(py: Python<'_>, p: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<u32>>> {
    p.map(|p| ids_from_numpy(py, p, "positions").map(|(v, _)| v)).transpose()
}

#[pyfunction]
#[pyo3(signature = (x, base, positions=None))]
fn rope_forward(py: Python<'_>, x: PyRef<T>, base: f32, positions: Option<&Bound<'_, PyAny>>) -> PyResult<T> {
    let pos = self::positions(py, positions)?;
    let x = &x.inner;
    run(py, || rope::rope_forward(x, pos.as_deref(), base)).map(w)
}

#[pyfunction]
#[pyo3(signature = (dy, base, positions=None))]
fn rope_backward(py: Python<'_>, dy: PyRef<T>, base: f32, positions: Option<&Bound<'_, PyAny>>) -> PyResult<T> {
    let pos = self::positions(py, positions)?;
    let dy = &dy.inner;
    run(py, || rope::rope_backward(dy, pos.as_deref(), base)).map(w)
}

#[pyfunction]
fn attention_forward(py: Python<'_>, q: PyRef<T>, k: PyRef<T>, v: PyRef<T>, scale: f32) -> PyResult<(T, T)> {
    let (q, k, v) = (&q.inner, &k.inner, &v.inner);
    run(py, || attention::attention_forward(q, k, v, scale)).map(|(o, l)| (w(o), w(l)))
}

#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn attention_backward(py: Python<'_>, q: PyRef<T>, k: PyRef<T>, v: PyRef<T>, o: PyRef<T>, lse: PyRef<T>, dout: PyRef<T>, scale: f32) -> PyResult<(T, T, T)> {
    let (q, k, v, o, l, d) = (&q.inner, &k.inner, &v.inner, &o.inner, &lse.inner, &dout.inner);
    run(py, || attention::attention_backward(q, k, v, o, l, d, scale)).map(|(a, b, c)| (w(a), w(b), w(c)))
}

/// Queries [B,Tq,Hq,hd] against a cache k/v [B,Tk,Hkv,hd] (Tk >= Tq); query i sees keys up to
/// Tk - Tq + i. Forward only (sampling).
#[pyfunction]
fn attention_with_cache(py: Python<'_>, q: PyRef<T>, k: PyRef<T>, v: PyRef<T>, scale: f32) -> PyResult<T> {
    let (q, k, v) = (&q.inner, &k.inner, &v.inner);
    run(py, || kv_attention::attention_with_cache(q, k, v, scale)).map(w)
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
fn cross_entropy_backward(py: Python<'_>, logits: PyRef<T>, targets: &Bound<'_, PyAny>, lse: PyRef<T>, dloss: f32) -> PyResult<T> {
    let (t, _) = ids_from_numpy(py, targets, "targets")?;
    let (l, s) = (&logits.inner, &lse.inner);
    run(py, || cross_entropy::cross_entropy_backward(l, &t, s, dloss)).map(w)
}

#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn adamw_step(py: Python<'_>, mut param: PyRefMut<T>, grad: PyRef<T>, mut m: PyRefMut<T>, mut v: PyRefMut<T>, lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, step: u64) -> PyResult<()> {
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

/// Resizes the sos_rs thread pool (0 = SOS_NUM_THREADS or every CPU).
#[pyfunction]
fn set_num_threads(n: usize) {
    threads::set_num_threads(n)
}

#[pyfunction]
fn num_threads() -> usize {
    threads::num_threads()
}

/// The instruction set in use ("scalar", "avx2" or "avx512").
#[pyfunction]
fn isa() -> &'static str {
    cpu::isa().name()
}

/// The best instruction set of this CPU, ignoring SOS_ISA.
#[pyfunction]
fn detected_isa() -> &'static str {
    cpu::detected().name()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    macro_rules! add {
        ($($f:ident),*) => { $( m.add_function(wrap_pyfunction!($f, m)?)?; )* };
    }
    add!(matmul, add, mul, scale, add_, rmsnorm_forward, rmsnorm_backward, layernorm_forward, layernorm_backward,
         silu_forward, silu_backward, gelu_forward, gelu_backward, swiglu_forward, swiglu_backward,
         softmax_forward, softmax_backward, rope_forward, rope_backward, attention_forward, attention_backward, attention_with_cache,
         embedding_forward, embedding_backward, cross_entropy_forward, cross_entropy_fused, cross_entropy_backward,
         adamw_step, global_norm, clip_grad_norm, set_num_threads, num_threads, isa, detected_isa);
    Ok(())
}
