//! Conversions at the boundary: numpy arrays in and out, token ids, errors to exceptions, and
//! `run`, which every op binding goes through.

use crate::error::Error;
use crate::tensor::Tensor;
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

/// Builds an instance of the exception class `name` defined in `sos_rs.errors`.
pub fn raise(py: Python<'_>, name: &str, msg: String) -> PyErr {
    match py.import("sos_rs.errors").and_then(|m| m.getattr(name)) {
        Ok(cls) => match cls.call1((msg.clone(),)) {
            Ok(inst) => PyErr::from_value(inst),
            Err(e) => e,
        },
        // Only when _core is used without its package: still a typed, named error.
        Err(_) => pyo3::exceptions::PyValueError::new_err(msg),
    }
}

pub fn to_py(e: Error) -> PyErr {
    Python::with_gil(|py| match &e {
        Error::Shape { .. } => raise(py, "ShapeError", e.to_string()),
        Error::Value { .. } => raise(py, "InvalidValueError", e.to_string()),
        Error::ShardFormat { .. } => raise(py, "ShardFormatError", e.to_string()),
    })
}

/// Releases the GIL and runs `f` on the sos_rs pool, converting its error.
pub fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> crate::Result<T> + Send) -> PyResult<T> {
    py.allow_threads(|| crate::threads::install(f)).map_err(to_py)
}

fn dtype_name(arr: &Bound<'_, PyUntypedArray>) -> String {
    arr.dtype().str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into())
}

/// Copies a float32 numpy array (any strides) into a new tensor. Other dtypes are refused with
/// DTypeError (convert explicitly with `astype(np.float32)`); NaN and inf with InvalidValueError.
pub fn tensor_from_numpy(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Tensor> {
    let arr = obj.downcast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what}: expected a numpy array, got {}",
            obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })?;
    let Ok(f) = obj.downcast::<PyArrayDyn<f32>>() else {
        return Err(raise(
            py,
            "DTypeError",
            format!("{what}: expected float32 data, got dtype {} (use .astype(numpy.float32))", dtype_name(arr)),
        ));
    };
    let ro = f.readonly();
    let view = ro.as_array();
    let shape = view.shape().to_vec();
    let mut t = Tensor::zeros(&shape);
    match view.as_slice() {
        Some(s) => t.data_mut().copy_from_slice(s),
        None => t.data_mut().iter_mut().zip(view.iter()).for_each(|(d, s)| *d = *s), // strided: copied in logical order
    }
    if let Some(i) = t.data().iter().position(|x| !x.is_finite()) {
        return Err(raise(
            py,
            "InvalidValueError",
            format!("{what}: non-finite value {} at flat index {i}", t.data()[i]),
        ));
    }
    Ok(t)
}

pub fn tensor_to_numpy<'py>(py: Python<'py>, t: &Tensor) -> Bound<'py, PyArrayDyn<f32>> {
    ArrayD::from_shape_vec(IxDyn(t.shape()), t.data().to_vec()).expect("tensor shape matches its data").into_pyarray(py)
}

/// Token ids from any integer numpy array, as u32 with the array's shape. Floats are refused;
/// negative ids or ids above u32 are InvalidValueError.
pub fn ids_from_numpy(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<(Vec<u32>, Vec<usize>)> {
    let arr = obj
        .downcast::<PyUntypedArray>()
        .map_err(|_| PyTypeError::new_err(format!("{what}: expected a numpy integer array")))?;
    let kind = arr.dtype().kind();
    if kind != b'i' && kind != b'u' {
        return Err(raise(
            py,
            "DTypeError",
            format!("{what}: token ids must be an integer array, got dtype {}", dtype_name(arr)),
        ));
    }
    let as64 = obj.call_method1("astype", ("int64",))?;
    let a = as64.downcast::<PyArrayDyn<i64>>()?.readonly();
    let view = a.as_array();
    let shape = view.shape().to_vec();
    let mut ids = Vec::with_capacity(view.len());
    for (i, &x) in view.iter().enumerate() {
        if x < 0 || x > u32::MAX as i64 {
            return Err(raise(
                py,
                "InvalidValueError",
                format!("{what}: token id {x} at flat index {i} is negative or too large"),
            ));
        }
        ids.push(x as u32);
    }
    Ok((ids, shape))
}

/// Optional token ids (positions, query rows): None stays None.
pub fn optional_ids(py: Python<'_>, obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Vec<u32>>> {
    obj.map(|o| ids_from_numpy(py, o, what).map(|(v, _)| v)).transpose()
}
