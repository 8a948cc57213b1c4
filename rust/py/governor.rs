//! Binding of `governor`: the squared L2-star discrepancy (`sos_rs.governor.l2star_sq`).

use super::convert::{raise, run};
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

/// points: float64 [N, d] in [0, 1] -> D² (f64). Bad points raise InvalidValueError, a wrong
/// rank ShapeError, another dtype DTypeError.
#[pyfunction]
fn l2star_sq(py: Python<'_>, points: &Bound<'_, PyAny>) -> PyResult<f64> {
    let arr =
        points.downcast::<PyUntypedArray>().map_err(|_| PyTypeError::new_err("l2star_sq: expected a numpy array"))?;
    if arr.ndim() != 2 {
        return Err(raise(py, "ShapeError", format!("l2star_sq: expected points [N, d], got shape {:?}", arr.shape())));
    }
    let Ok(f) = points.downcast::<PyArrayDyn<f64>>() else {
        return Err(raise(py, "DTypeError", "l2star_sq: expected float64 points (use .astype(numpy.float64))".into()));
    };
    let ro = f.readonly();
    let view = ro.as_array();
    let (n, d) = (view.shape()[0], view.shape()[1]);
    let data: Vec<f64> = match view.as_slice() {
        Some(s) => s.to_vec(),
        None => view.iter().copied().collect(), // strided: logical (row-major) order
    };
    run(py, || crate::governor::l2star_sq(&data, n, d))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(l2star_sq, m)?)?;
    Ok(())
}
