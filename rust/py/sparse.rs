//! Bindings of the sparse ops: router, dispatch plan, gather/combine, expert bank (`moe`), metric
//! attention and its regularisers, and the small ops of the MoA block. Same pattern as
//! `functions.rs`: extract, release the GIL around the work, convert errors to typed exceptions.

use super::convert::{ids_from_numpy, run, PyTensor};
use crate::moe::{self, dispatch, experts, router, Plan, DROPPED};
use crate::ops::metric_attention::{metric_attention_backward as ma_bwd, metric_attention_forward as ma_fwd, MetricInputs};
use crate::ops::{dwconv, gating, metric_reg, rope_angles};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn};
use pyo3::prelude::*;

type T = PyTensor;
fn w(t: crate::Tensor) -> T {
    PyTensor::wrap(t)
}

fn int_array<'py>(py: Python<'py>, v: Vec<i64>, shape: &[usize]) -> Bound<'py, PyArrayDyn<i64>> {
    ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape matches data").into_pyarray(py)
}

fn rows_arg(py: Python<'_>, rows: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Vec<u32>>> {
    rows.map(|r| ids_from_numpy(py, r, what).map(|(v, _)| v)).transpose()
}

/// The grouping of tokens by expert: which slots each expert owns and what was dropped.
#[pyclass(name = "RoutePlan", module = "sos_rs._core", frozen)]
pub struct PyRoutePlan {
    pub inner: Plan,
}

#[pymethods]
impl PyRoutePlan {
    #[getter]
    fn n_tokens(&self) -> usize {
        self.inner.n_tokens
    }
    #[getter]
    fn k(&self) -> usize {
        self.inner.k
    }
    #[getter]
    fn n_experts(&self) -> usize {
        self.inner.n_experts
    }
    /// Most assignments an expert accepts; None when unlimited.
    #[getter]
    fn capacity(&self) -> Option<usize> {
        (self.inner.capacity != usize::MAX).then_some(self.inner.capacity)
    }
    /// Assignments refused because their expert was full.
    #[getter]
    fn dropped(&self) -> usize {
        self.inner.dropped
    }
    #[getter]
    fn n_slots(&self) -> usize {
        self.inner.n_slots()
    }
    #[getter]
    fn offsets(&self) -> Vec<usize> {
        self.inner.offsets.clone()
    }
    /// Assignments kept per expert.
    #[getter]
    fn counts(&self) -> Vec<usize> {
        self.inner.counts()
    }
    /// Assignments asked of each expert before the capacity limit.
    #[getter]
    fn demand(&self) -> Vec<usize> {
        self.inner.demand.clone()
    }
    /// Tokens routed to expert e, ascending (int64).
    fn rows<'py>(&self, py: Python<'py>, e: usize) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
        if e >= self.inner.n_experts {
            return Err(super::convert::to_py(crate::Error::value("RoutePlan.rows", format!("expert {e} of {}", self.inner.n_experts))));
        }
        let v: Vec<i64> = self.inner.tokens_of(e).iter().map(|&x| x as i64).collect();
        let n = v.len();
        Ok(int_array(py, v, &[n]))
    }
    /// Slot of each (token, choice) [N, k], -1 where dropped.
    fn token_slot<'py>(&self, py: Python<'py>) -> Bound<'py, PyArrayDyn<i64>> {
        let v = self.inner.token_slot.iter().map(|&s| if s == DROPPED { -1 } else { s as i64 }).collect();
        int_array(py, v, &[self.inner.n_tokens, self.inner.k])
    }
    fn __repr__(&self) -> String {
        format!("RoutePlan(tokens={}, k={}, experts={}, counts={:?}, dropped={})", self.inner.n_tokens, self.inner.k, self.inner.n_experts, self.inner.counts(), self.inner.dropped)
    }
}

#[pyfunction]
fn router_probs_forward(py: Python<'_>, logits: PyRef<T>, tau: f32) -> PyResult<T> {
    let l = &logits.inner;
    run(py, || router::router_probs_forward(l, tau)).map(w)
}

#[pyfunction]
fn router_probs_backward(py: Python<'_>, probs: PyRef<T>, dprobs: PyRef<T>, tau: f32) -> PyResult<T> {
    let (p, d) = (&probs.inner, &dprobs.inner);
    run(py, || router::router_probs_backward(p, d, tau)).map(w)
}

/// -> (gates [N, k], idx [N, k] int64)
#[pyfunction]
fn topk_gates_forward<'py>(py: Python<'py>, probs: PyRef<T>, k: usize, renormalize: bool) -> PyResult<(T, Bound<'py, PyArrayDyn<i64>>)> {
    let p = &probs.inner;
    let (g, idx) = run(py, || router::topk_gates_forward(p, k, renormalize))?;
    let n = g.shape()[0];
    Ok((w(g), int_array(py, idx.into_iter().map(i64::from).collect(), &[n, k])))
}

#[pyfunction]
fn topk_gates_backward(py: Python<'_>, probs: PyRef<T>, idx: &Bound<'_, PyAny>, gates: PyRef<T>, dgates: PyRef<T>, renormalize: bool) -> PyResult<T> {
    let (idx, _) = ids_from_numpy(py, idx, "expert ids")?;
    let (p, g, d) = (&probs.inner, &gates.inner, &dgates.inner);
    run(py, || router::topk_gates_backward(p, &idx, g, d, renormalize)).map(w)
}

/// -> (loss, f): f = share of routing choices per expert.
#[pyfunction]
fn load_balance_forward(py: Python<'_>, probs: PyRef<T>, idx: &Bound<'_, PyAny>) -> PyResult<(f32, Vec<f32>)> {
    let (idx, _) = ids_from_numpy(py, idx, "expert ids")?;
    let p = &probs.inner;
    run(py, || router::load_balance_forward(p, &idx))
}

#[pyfunction]
fn load_balance_backward(n_tokens: usize, f: Vec<f32>, dloss: f32) -> T {
    w(router::load_balance_backward(n_tokens, &f, dloss))
}

#[pyfunction]
fn z_loss_forward(py: Python<'_>, logits: PyRef<T>) -> PyResult<(f32, T)> {
    let l = &logits.inner;
    run(py, || router::z_loss_forward(l)).map(|(z, lse)| (z, w(lse)))
}

#[pyfunction]
fn z_loss_backward(py: Python<'_>, logits: PyRef<T>, lse: PyRef<T>, dloss: f32) -> PyResult<T> {
    let (l, s) = (&logits.inner, &lse.inner);
    run(py, || router::z_loss_backward(l, s, dloss)).map(w)
}

/// Groups tokens by expert. idx: [N, k] expert ids (best first); capacity = ceil(factor·N·k/E)
/// (factor <= 0: unlimited) unless `capacity` is given.
#[pyfunction]
#[pyo3(signature = (idx, n_experts, capacity_factor=0.0, capacity=None))]
fn moe_plan(py: Python<'_>, idx: &Bound<'_, PyAny>, n_experts: usize, capacity_factor: f32, capacity: Option<usize>) -> PyResult<PyRoutePlan> {
    let (ids, shape) = ids_from_numpy(py, idx, "expert ids")?;
    if shape.len() != 2 {
        return Err(super::convert::to_py(crate::Error::shape("moe_plan", format!("expert ids must be [N, k], got {shape:?}"))));
    }
    let (n, k) = (shape[0], shape[1]);
    let cap = capacity.unwrap_or_else(|| moe::capacity_for(n, k, n_experts, capacity_factor));
    run(py, || moe::build_plan(&ids, n, k, n_experts, cap)).map(|inner| PyRoutePlan { inner })
}

#[pyfunction]
fn dispatch_forward(py: Python<'_>, x: PyRef<T>, plan: PyRef<PyRoutePlan>) -> PyResult<T> {
    let (x, p) = (&x.inner, &plan.inner);
    run(py, || dispatch::dispatch_forward(x, p)).map(w)
}

#[pyfunction]
fn dispatch_backward(py: Python<'_>, dxs: PyRef<T>, plan: PyRef<PyRoutePlan>) -> PyResult<T> {
    let (d, p) = (&dxs.inner, &plan.inner);
    run(py, || dispatch::dispatch_backward(d, p)).map(w)
}

#[pyfunction]
fn combine_forward(py: Python<'_>, ys: PyRef<T>, gates: PyRef<T>, plan: PyRef<PyRoutePlan>) -> PyResult<T> {
    let (y, g, p) = (&ys.inner, &gates.inner, &plan.inner);
    run(py, || dispatch::combine_forward(y, g, p)).map(w)
}

#[pyfunction]
fn combine_backward(py: Python<'_>, ys: PyRef<T>, gates: PyRef<T>, plan: PyRef<PyRoutePlan>, dy: PyRef<T>) -> PyResult<(T, T)> {
    let (y, g, p, d) = (&ys.inner, &gates.inner, &plan.inner, &dy.inner);
    run(py, || dispatch::combine_backward(y, g, p, d)).map(|(a, b)| (w(a), w(b)))
}

/// -> (ys, g, u); g and u are the cache experts_backward reads.
#[pyfunction]
fn experts_forward(py: Python<'_>, xs: PyRef<T>, plan: PyRef<PyRoutePlan>, w_gate: PyRef<T>, w_up: PyRef<T>, w_down: PyRef<T>) -> PyResult<(T, T, T)> {
    let (x, p, a, b, c) = (&xs.inner, &plan.inner, &w_gate.inner, &w_up.inner, &w_down.inner);
    run(py, || experts::experts_forward(x, &p.offsets, a, b, c)).map(|(y, g, u)| (w(y), w(g), w(u)))
}

#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn experts_backward(py: Python<'_>, xs: PyRef<T>, plan: PyRef<PyRoutePlan>, w_gate: PyRef<T>, w_up: PyRef<T>, w_down: PyRef<T>, g: PyRef<T>, u: PyRef<T>, dys: PyRef<T>) -> PyResult<(T, T, T, T)> {
    let (x, p, a, b, c, g, u, d) = (&xs.inner, &plan.inner, &w_gate.inner, &w_up.inner, &w_down.inner, &g.inner, &u.inner, &dys.inner);
    run(py, || experts::experts_backward(x, &p.offsets, a, b, c, g, u, d)).map(|(a, b, c, d)| (w(a), w(b), w(c), w(d)))
}

#[pyfunction]
#[pyo3(signature = (q, k, v, alpha, w, kb=None, rows=None, hard=false))]
#[allow(clippy::too_many_arguments)]
fn metric_attention_forward(py: Python<'_>, q: PyRef<T>, k: PyRef<T>, v: PyRef<T>, alpha: PyRef<T>, w: PyRef<T>, kb: Option<PyRef<T>>, rows: Option<&Bound<'_, PyAny>>, hard: bool) -> PyResult<(T, T)> {
    let rows = rows_arg(py, rows, "query rows")?;
    let a = MetricInputs { q: &q.inner, k: &k.inner, v: &v.inner, alpha: &alpha.inner, w: &w.inner, kb: kb.as_ref().map(|t| &t.inner), rows: rows.as_deref(), hard };
    run(py, || ma_fwd(a)).map(|(o, l)| (self::w(o), self::w(l)))
}

/// -> (dq, dk, dv, dalpha, dw, dkb or None)
#[pyfunction]
#[pyo3(signature = (q, k, v, alpha, w, kb, rows, hard, o, lse, dout))]
#[allow(clippy::too_many_arguments)]
fn metric_attention_backward(py: Python<'_>, q: PyRef<T>, k: PyRef<T>, v: PyRef<T>, alpha: PyRef<T>, w: PyRef<T>, kb: Option<PyRef<T>>, rows: Option<&Bound<'_, PyAny>>, hard: bool, o: PyRef<T>, lse: PyRef<T>, dout: PyRef<T>) -> PyResult<(T, T, T, T, T, Option<T>)> {
    let rows = rows_arg(py, rows, "query rows")?;
    let a = MetricInputs { q: &q.inner, k: &k.inner, v: &v.inner, alpha: &alpha.inner, w: &w.inner, kb: kb.as_ref().map(|t| &t.inner), rows: rows.as_deref(), hard };
    let (o, l, d) = (&o.inner, &lse.inner, &dout.inner);
    let g = run(py, || ma_bwd(a, o, l, d))?;
    Ok((self::w(g.dq), self::w(g.dk), self::w(g.dv), self::w(g.dalpha), self::w(g.dw), g.dkb.map(self::w)))
}

#[pyfunction]
fn ball_penalty_forward(py: Python<'_>, k: PyRef<T>, o: PyRef<T>, r: PyRef<T>, w: PyRef<T>, beta: f32) -> PyResult<T> {
    let (k, o, r, wt) = (&k.inner, &o.inner, &r.inner, &w.inner);
    run(py, || metric_reg::ball_penalty_forward(k, o, r, wt, beta)).map(self::w)
}

/// -> (dk, do, dr, dw)
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn ball_penalty_backward(py: Python<'_>, k: PyRef<T>, o: PyRef<T>, r: PyRef<T>, w: PyRef<T>, beta: f32, dkb: PyRef<T>) -> PyResult<(T, T, T, T)> {
    let (k, o, r, wt, d) = (&k.inner, &o.inner, &r.inner, &w.inner, &dkb.inner);
    run(py, || metric_reg::ball_penalty_backward(k, o, r, wt, beta, d)).map(|(a, b, c, e)| (self::w(a), self::w(b), self::w(c), self::w(e)))
}

/// -> (loss, violations)
#[pyfunction]
fn ti_loss_forward(py: Python<'_>, k: PyRef<T>, w: PyRef<T>, triples: &Bound<'_, PyAny>, lam: f32) -> PyResult<(f32, usize)> {
    let (tr, _) = ids_from_numpy(py, triples, "triples")?;
    let (k, wt) = (&k.inner, &w.inner);
    run(py, || metric_reg::ti_loss_forward(k, wt, &tr, lam))
}

#[pyfunction]
fn ti_loss_backward(py: Python<'_>, k: PyRef<T>, w: PyRef<T>, triples: &Bound<'_, PyAny>, lam: f32, dloss: f32) -> PyResult<(T, T)> {
    let (tr, _) = ids_from_numpy(py, triples, "triples")?;
    let (k, wt) = (&k.inner, &w.inner);
    run(py, || metric_reg::ti_loss_backward(k, wt, &tr, lam, dloss)).map(|(a, b)| (self::w(a), self::w(b)))
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
    let rows = rows_arg(py, rows, "rows")?;
    let (x, wt) = (&x.inner, &w.inner);
    run(py, || dwconv::dwconv_forward(x, wt, rows.as_deref())).map(self::w)
}

#[pyfunction]
#[pyo3(signature = (x, w, rows, dy))]
fn dwconv_backward(py: Python<'_>, x: PyRef<T>, w: PyRef<T>, rows: Option<&Bound<'_, PyAny>>, dy: PyRef<T>) -> PyResult<(T, T)> {
    let rows = rows_arg(py, rows, "rows")?;
    let (x, wt, d) = (&x.inner, &w.inner, &dy.inner);
    run(py, || dwconv::dwconv_backward(x, wt, rows.as_deref(), d)).map(|(a, b)| (self::w(a), self::w(b)))
}

#[pyfunction]
fn rope_angles_forward(py: Python<'_>, x: PyRef<T>, ang: PyRef<T>, pos: &Bound<'_, PyAny>) -> PyResult<T> {
    let (p, _) = ids_from_numpy(py, pos, "positions")?;
    let (x, a) = (&x.inner, &ang.inner);
    run(py, || rope_angles::rope_angles_forward(x, a, &p)).map(w)
}

#[pyfunction]
fn rope_angles_backward(py: Python<'_>, x: PyRef<T>, ang: PyRef<T>, pos: &Bound<'_, PyAny>, dy: PyRef<T>) -> PyResult<(T, T)> {
    let (p, _) = ids_from_numpy(py, pos, "positions")?;
    let (x, a, d) = (&x.inner, &ang.inner, &dy.inner);
    run(py, || rope_angles::rope_angles_backward(x, a, &p, d)).map(|(a, b)| (w(a), w(b)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRoutePlan>()?;
    macro_rules! add {
        ($($f:ident),*) => { $( m.add_function(wrap_pyfunction!($f, m)?)?; )* };
    }
    add!(router_probs_forward, router_probs_backward, topk_gates_forward, topk_gates_backward, load_balance_forward,
         load_balance_backward, z_loss_forward, z_loss_backward, moe_plan, dispatch_forward, dispatch_backward,
         combine_forward, combine_backward, experts_forward, experts_backward, metric_attention_forward,
         metric_attention_backward, ball_penalty_forward, ball_penalty_backward, ti_loss_forward, ti_loss_backward,
         softplus_forward, softplus_backward, sigmoid_range_forward, sigmoid_range_backward, col_scale_forward,
         col_scale_backward, gather_rows_forward, gather_rows_backward, concat_rows, split_rows, dwconv_forward,
         dwconv_backward, rope_angles_forward, rope_angles_backward);
    Ok(())
}
