//! Bindings of `moe`: the router (probabilities, top-k gates, load-balance and z-losses), the
//! `RoutePlan` that groups tokens by expert, dispatch/combine and the SwiGLU expert bank.

use super::convert::{ids_from_numpy, run, to_py};
use super::tensor::{w, T};
use crate::moe::{self, dispatch, experts, fused, router, Plan, DROPPED};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyReadonlyArrayDyn};
use pyo3::prelude::*;

fn int_array<'py>(py: Python<'py>, v: Vec<i64>, shape: &[usize]) -> Bound<'py, PyArrayDyn<i64>> {
    ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape matches data").into_pyarray(py)
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
            return Err(to_py(crate::Error::value(
                "RoutePlan.rows",
                format!("expert {e} of {}", self.inner.n_experts),
            )));
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
        format!(
            "RoutePlan(tokens={}, k={}, experts={}, counts={:?}, dropped={})",
            self.inner.n_tokens,
            self.inner.k,
            self.inner.n_experts,
            self.inner.counts(),
            self.inner.dropped
        )
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
fn topk_gates_forward<'py>(
    py: Python<'py>,
    probs: PyRef<T>,
    k: usize,
    renormalize: bool,
) -> PyResult<(T, Bound<'py, PyArrayDyn<i64>>)> {
    let p = &probs.inner;
    let (g, idx) = run(py, || router::topk_gates_forward(p, k, renormalize))?;
    let n = g.shape()[0];
    Ok((w(g), int_array(py, idx.into_iter().map(i64::from).collect(), &[n, k])))
}

#[pyfunction]
fn topk_gates_backward(
    py: Python<'_>,
    probs: PyRef<T>,
    idx: &Bound<'_, PyAny>,
    gates: PyRef<T>,
    dgates: PyRef<T>,
    renormalize: bool,
) -> PyResult<T> {
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
/// (factor <= 0: unlimited) unless `capacity` is given. `keep` (bool [N, k]): choices marked
/// False are left out before capacity counts (no slot, not counted as dropped).
#[pyfunction]
#[pyo3(signature = (idx, n_experts, capacity_factor=0.0, capacity=None, keep=None))]
fn moe_plan(
    py: Python<'_>,
    idx: &Bound<'_, PyAny>,
    n_experts: usize,
    capacity_factor: f32,
    capacity: Option<usize>,
    keep: Option<PyReadonlyArrayDyn<'_, bool>>,
) -> PyResult<PyRoutePlan> {
    let (ids, shape) = ids_from_numpy(py, idx, "expert ids")?;
    if shape.len() != 2 {
        return Err(to_py(crate::Error::shape("moe_plan", format!("expert ids must be [N, k], got {shape:?}"))));
    }
    let (n, k) = (shape[0], shape[1]);
    let keep: Option<Vec<bool>> = match keep.as_ref().map(|m| m.as_array()) {
        Some(m) if m.shape() != shape.as_slice() => {
            let msg = format!("keep {:?} must have the shape of the expert ids {shape:?}", m.shape());
            return Err(to_py(crate::Error::shape("moe_plan", msg)));
        }
        Some(m) => Some(m.iter().copied().collect()),
        None => None,
    };
    let cap = capacity.unwrap_or_else(|| moe::capacity_for(n, k, n_experts, capacity_factor));
    run(py, || moe::build_plan_kept(&ids, keep.as_deref(), n, k, n_experts, cap)).map(|inner| PyRoutePlan { inner })
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
fn combine_backward(
    py: Python<'_>,
    ys: PyRef<T>,
    gates: PyRef<T>,
    plan: PyRef<PyRoutePlan>,
    dy: PyRef<T>,
) -> PyResult<(T, T)> {
    let (y, g, p, d) = (&ys.inner, &gates.inner, &plan.inner, &dy.inner);
    run(py, || dispatch::combine_backward(y, g, p, d)).map(|(a, b)| (w(a), w(b)))
}

/// -> (ys, g, u); g and u are the cache experts_backward reads.
#[pyfunction]
fn experts_forward(
    py: Python<'_>,
    xs: PyRef<T>,
    plan: PyRef<PyRoutePlan>,
    w_gate: PyRef<T>,
    w_up: PyRef<T>,
    w_down: PyRef<T>,
) -> PyResult<(T, T, T)> {
    let (x, p, a, b, c) = (&xs.inner, &plan.inner, &w_gate.inner, &w_up.inner, &w_down.inner);
    run(py, || experts::experts_forward(x, &p.offsets, a, b, c)).map(|(y, g, u)| (w(y), w(g), w(u)))
}

#[pyfunction]
fn experts_backward(
    py: Python<'_>,
    xs: PyRef<T>,
    plan: PyRef<PyRoutePlan>,
    w_gate: PyRef<T>,
    w_up: PyRef<T>,
    w_down: PyRef<T>,
    g: PyRef<T>,
    u: PyRef<T>,
    dys: PyRef<T>,
) -> PyResult<(T, T, T, T)> {
    let (x, p, a, b, c, g, u, d) =
        (&xs.inner, &plan.inner, &w_gate.inner, &w_up.inner, &w_down.inner, &g.inner, &u.inner, &dys.inner);
    run(py, || experts::experts_backward(x, &p.offsets, a, b, c, g, u, d)).map(|(a, b, c, d)| (w(a), w(b), w(c), w(d)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRoutePlan>()?;
    m.add_function(wrap_pyfunction!(router_probs_forward, m)?)?;
    m.add_function(wrap_pyfunction!(router_probs_backward, m)?)?;
    m.add_function(wrap_pyfunction!(topk_gates_forward, m)?)?;
    m.add_function(wrap_pyfunction!(topk_gates_backward, m)?)?;
    m.add_function(wrap_pyfunction!(load_balance_forward, m)?)?;
    m.add_function(wrap_pyfunction!(load_balance_backward, m)?)?;
    m.add_function(wrap_pyfunction!(z_loss_forward, m)?)?;
    m.add_function(wrap_pyfunction!(z_loss_backward, m)?)?;
    m.add_function(wrap_pyfunction!(moe_plan, m)?)?;
    m.add_function(wrap_pyfunction!(dispatch_forward, m)?)?;
    m.add_function(wrap_pyfunction!(dispatch_backward, m)?)?;
    m.add_function(wrap_pyfunction!(combine_forward, m)?)?;
    m.add_function(wrap_pyfunction!(combine_backward, m)?)?;
    m.add_function(wrap_pyfunction!(experts_forward, m)?)?;
    m.add_function(wrap_pyfunction!(experts_backward, m)?)?;
    m.add_function(wrap_pyfunction!(moe_swiglu_forward, m)?)?;
    m.add_function(wrap_pyfunction!(moe_swiglu_backward, m)?)?;
    Ok(())
}

/// dispatch -> SwiGLU experts -> combine in one op: x [N, D], gates [N, k] -> (y [N, D], g, u);
/// g and u [S, H] are the cache moe_swiglu_backward reads.
#[pyfunction]
fn moe_swiglu_forward(
    py: Python<'_>,
    x: PyRef<T>,
    gates: PyRef<T>,
    plan: PyRef<PyRoutePlan>,
    w_gate: PyRef<T>,
    w_up: PyRef<T>,
    w_down: PyRef<T>,
) -> PyResult<(T, T, T)> {
    let (x, gt, p, a, b, c) = (&x.inner, &gates.inner, &plan.inner, &w_gate.inner, &w_up.inner, &w_down.inner);
    run(py, || fused::moe_swiglu_forward(x, gt, p, a, b, c)).map(|(y, g, u)| (w(y), w(g), w(u)))
}

/// -> (dx, dgates, dw_gate, dw_up, dw_down)
#[pyfunction]
fn moe_swiglu_backward(
    py: Python<'_>,
    x: PyRef<T>,
    gates: PyRef<T>,
    plan: PyRef<PyRoutePlan>,
    w_gate: PyRef<T>,
    w_up: PyRef<T>,
    w_down: PyRef<T>,
    g: PyRef<T>,
    u: PyRef<T>,
    dy: PyRef<T>,
) -> PyResult<(T, T, T, T, T)> {
    let (x, gt, p) = (&x.inner, &gates.inner, &plan.inner);
    let (a, b, c, g, u, d) = (&w_gate.inner, &w_up.inner, &w_down.inner, &g.inner, &u.inner, &dy.inner);
    run(py, || fused::moe_swiglu_backward(x, gt, p, a, b, c, g, u, d))
        .map(|(dx, dg, dwg, dwu, dwd)| (w(dx), w(dg), w(dwg), w(dwu), w(dwd)))
}
