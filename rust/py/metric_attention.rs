//! Bindings of `ops::metric_attention` and of its regularisers (`ops::metric_reg`: the ball
//! penalty and the triangle-inequality loss).

use super::convert::{ids_from_numpy, optional_ids, run};
use super::tensor::{w, T};
use crate::ops::metric_attention::{
    metric_attention_backward as ma_bwd, metric_attention_forward as ma_fwd, MetricInputs,
};
use crate::ops::metric_reg;
use pyo3::prelude::*;

#[pyfunction]
#[pyo3(signature = (q, k, v, alpha, w, kb=None, rows=None, hard=false))]
fn metric_attention_forward(
    py: Python<'_>,
    q: PyRef<T>,
    k: PyRef<T>,
    v: PyRef<T>,
    alpha: PyRef<T>,
    w: PyRef<T>,
    kb: Option<PyRef<T>>,
    rows: Option<&Bound<'_, PyAny>>,
    hard: bool,
) -> PyResult<(T, T)> {
    let rows = optional_ids(py, rows, "query rows")?;
    let a = MetricInputs {
        q: &q.inner,
        k: &k.inner,
        v: &v.inner,
        alpha: &alpha.inner,
        w: &w.inner,
        kb: kb.as_ref().map(|t| &t.inner),
        rows: rows.as_deref(),
        hard,
    };
    run(py, || ma_fwd(a)).map(|(o, l)| (self::w(o), self::w(l)))
}

/// -> (dq, dk, dv, dalpha, dw, dkb or None)
#[pyfunction]
#[pyo3(signature = (q, k, v, alpha, w, kb, rows, hard, o, lse, dout))]
fn metric_attention_backward(
    py: Python<'_>,
    q: PyRef<T>,
    k: PyRef<T>,
    v: PyRef<T>,
    alpha: PyRef<T>,
    w: PyRef<T>,
    kb: Option<PyRef<T>>,
    rows: Option<&Bound<'_, PyAny>>,
    hard: bool,
    o: PyRef<T>,
    lse: PyRef<T>,
    dout: PyRef<T>,
) -> PyResult<(T, T, T, T, T, Option<T>)> {
    let rows = optional_ids(py, rows, "query rows")?;
    let a = MetricInputs {
        q: &q.inner,
        k: &k.inner,
        v: &v.inner,
        alpha: &alpha.inner,
        w: &w.inner,
        kb: kb.as_ref().map(|t| &t.inner),
        rows: rows.as_deref(),
        hard,
    };
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
fn ball_penalty_backward(
    py: Python<'_>,
    k: PyRef<T>,
    o: PyRef<T>,
    r: PyRef<T>,
    w: PyRef<T>,
    beta: f32,
    dkb: PyRef<T>,
) -> PyResult<(T, T, T, T)> {
    let (k, o, r, wt, d) = (&k.inner, &o.inner, &r.inner, &w.inner, &dkb.inner);
    run(py, || metric_reg::ball_penalty_backward(k, o, r, wt, beta, d))
        .map(|(a, b, c, e)| (self::w(a), self::w(b), self::w(c), self::w(e)))
}

/// -> (loss, violations)
#[pyfunction]
fn ti_loss_forward(
    py: Python<'_>,
    k: PyRef<T>,
    w: PyRef<T>,
    triples: &Bound<'_, PyAny>,
    lam: f32,
) -> PyResult<(f32, usize)> {
    let (tr, _) = ids_from_numpy(py, triples, "triples")?;
    let (k, wt) = (&k.inner, &w.inner);
    run(py, || metric_reg::ti_loss_forward(k, wt, &tr, lam))
}

#[pyfunction]
fn ti_loss_backward(
    py: Python<'_>,
    k: PyRef<T>,
    w: PyRef<T>,
    triples: &Bound<'_, PyAny>,
    lam: f32,
    dloss: f32,
) -> PyResult<(T, T)> {
    let (tr, _) = ids_from_numpy(py, triples, "triples")?;
    let (k, wt) = (&k.inner, &w.inner);
    run(py, || metric_reg::ti_loss_backward(k, wt, &tr, lam, dloss)).map(|(a, b)| (self::w(a), self::w(b)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(metric_attention_forward, m)?)?;
    m.add_function(wrap_pyfunction!(metric_attention_backward, m)?)?;
    m.add_function(wrap_pyfunction!(ball_penalty_forward, m)?)?;
    m.add_function(wrap_pyfunction!(ball_penalty_backward, m)?)?;
    m.add_function(wrap_pyfunction!(ti_loss_forward, m)?)?;
    m.add_function(wrap_pyfunction!(ti_loss_backward, m)?)?;
    Ok(())
}
