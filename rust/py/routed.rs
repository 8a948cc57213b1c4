//! Bindings of the ops that serve the routed families' sublayers: `moe::combine_parts` (combine
//! over one output per path) and `ops::residual_scale` (the LayerScaled residual add).

use super::convert::run;
use super::moe::PyRoutePlan;
use super::tensor::{w, T};
use crate::moe::combine_parts;
use crate::ops::residual_scale;
use pyo3::prelude::*;

/// y[n] = Σ_j gates[n, j] · parts[e][slot(n, j) − offsets[e]] -> [N, D]
#[pyfunction]
fn combine_parts_forward(
    py: Python<'_>,
    parts: Vec<PyRef<T>>,
    gates: PyRef<T>,
    plan: PyRef<PyRoutePlan>,
) -> PyResult<T> {
    let ps: Vec<&crate::Tensor> = parts.iter().map(|p| &p.inner).collect();
    let (g, p) = (&gates.inner, &plan.inner);
    run(py, || combine_parts::combine_parts_forward(&ps, g, p)).map(w)
}

/// -> (one gradient per part, dgates)
#[pyfunction]
fn combine_parts_backward(
    py: Python<'_>,
    parts: Vec<PyRef<T>>,
    gates: PyRef<T>,
    plan: PyRef<PyRoutePlan>,
    dy: PyRef<T>,
) -> PyResult<(Vec<T>, T)> {
    let ps: Vec<&crate::Tensor> = parts.iter().map(|p| &p.inner).collect();
    let (g, p, d) = (&gates.inner, &plan.inner, &dy.inner);
    run(py, || combine_parts::combine_parts_backward(&ps, g, p, d))
        .map(|(dp, dg)| (dp.into_iter().map(w).collect(), w(dg)))
}

/// y = x + a ⊙ s
#[pyfunction]
fn add_col_scale_forward(py: Python<'_>, x: PyRef<T>, a: PyRef<T>, s: PyRef<T>) -> PyResult<T> {
    let (x, a, s) = (&x.inner, &a.inner, &s.inner);
    run(py, || residual_scale::add_col_scale_forward(x, a, s)).map(w)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(combine_parts_forward, m)?)?;
    m.add_function(wrap_pyfunction!(combine_parts_backward, m)?)?;
    m.add_function(wrap_pyfunction!(add_col_scale_forward, m)?)?;
    Ok(())
}
