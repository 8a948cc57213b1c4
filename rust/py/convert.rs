//! Conversions at the boundary: numpy arrays in and out, token ids, errors to exceptions.

use crate::error::Error;
use crate::tensor::Tensor;
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

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

/// An opaque handle on a Rust-owned f32 tensor.
#[pyclass(name = "Tensor", module = "sos_rs._core")]
pub struct PyTensor {
    pub inner: Tensor,
}

impl PyTensor {
    pub fn wrap(inner: Tensor) -> Self {
        PyTensor { inner }
    }
}

fn dtype_name(arr: &Bound<'_, PyUntypedArray>) -> String {
    arr.dtype().str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into())
}

/// Copies a float32 numpy array (any strides) into a new tensor. Other dtypes are refused with
/// DTypeError (convert explicitly with `astype(np.float32)`); NaN and inf with InvalidValueError.
pub fn tensor_from_numpy(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Tensor> {
    let arr = obj.downcast::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!("{what}: expected a numpy array, got {}", obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()))
    })?;
    let Ok(f) = obj.downcast::<PyArrayDyn<f32>>() else {
        return Err(raise(py, "DTypeError", format!("{what}: expected float32 data, got dtype {} (use .astype(numpy.float32))", dtype_name(arr))));
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
        return Err(raise(py, "InvalidValueError", format!("{what}: non-finite value {} at flat index {i}", t.data()[i])));
    }
    Ok(t)
}

pub fn tensor_to_numpy<'py>(py: Python<'py>, t: &Tensor) -> Bound<'py, PyArrayDyn<f32>> {
    ArrayD::from_shape_vec(IxDyn(t.shape()), t.data().to_vec()).expect("tensor shape matches its data").into_pyarray(py)
}

/// Token ids from any integer numpy array, as u32 with the array's shape. Floats are refused;
/// negative ids or ids above u32 are InvalidValueError.
pub fn ids_from_numpy(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<(Vec<u32>, Vec<usize>)> {
    let arr = obj.downcast::<PyUntypedArray>().map_err(|_| PyTypeError::new_err(format!("{what}: expected a numpy integer array")))?;
    let kind = arr.dtype().kind();
    if kind != b'i' && kind != b'u' {
        return Err(raise(py, "DTypeError", format!("{what}: token ids must be an integer array, got dtype {}", dtype_name(arr))));
    }
    let as64 = obj.call_method1("astype", ("int64",))?;
    let a = as64.downcast::<PyArrayDyn<i64>>()?.readonly();
    let view = a.as_array();
    let shape = view.shape().to_vec();
    let mut ids = Vec::with_capacity(view.len());
    for (i, &x) in view.iter().enumerate() {
        if x < 0 || x > u32::MAX as i64 {
            return Err(raise(py, "InvalidValueError", format!("{what}: token id {x} at flat index {i} is negative or too large")));
        }
        ids.push(x as u32);
    }
    Ok((ids, shape))
}

#[pymethods]
impl PyTensor {
    /// Tensor(array): copies a float32 numpy array into a Rust-owned tensor.
    #[new]
    fn py_new(py: Python<'_>, array: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(PyTensor::wrap(tensor_from_numpy(py, array, "Tensor")?))
    }

    #[staticmethod]
    fn zeros(shape: Vec<usize>) -> Self {
        PyTensor::wrap(Tensor::zeros(&shape))
    }

    #[staticmethod]
    fn full(shape: Vec<usize>, value: f32) -> Self {
        PyTensor::wrap(Tensor::full(&shape, value))
    }

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.inner.shape())
    }

    #[getter]
    fn ndim(&self) -> usize {
        self.inner.ndim()
    }

    fn numel(&self) -> usize {
        self.inner.numel()
    }

    /// A float32 numpy copy.
    fn numpy<'py>(&self, py: Python<'py>) -> Bound<'py, PyArrayDyn<f32>> {
        tensor_to_numpy(py, &self.inner)
    }

    /// The value of a one-element tensor.
    fn item(&self) -> PyResult<f32> {
        if self.inner.numel() != 1 {
            return Err(to_py(Error::shape("item", format!("only one-element tensors have an item, got {:?}", self.inner.shape()))));
        }
        Ok(self.inner.data()[0])
    }

    /// Same data, new shape (shares the buffer; copy-on-write).
    fn reshape(&self, shape: Vec<usize>) -> PyResult<Self> {
        self.inner.clone().reshape(&shape).map(PyTensor::wrap).map_err(to_py)
    }

    /// Overwrites this tensor's values with `src` (same shape), in place.
    fn copy_(&mut self, src: PyRef<'_, PyTensor>) -> PyResult<()> {
        if src.inner.shape() != self.inner.shape() {
            return Err(to_py(Error::shape("copy_", format!("destination {:?} vs source {:?}", self.inner.shape(), src.inner.shape()))));
        }
        let s = src.inner.clone();
        self.inner.data_mut().copy_from_slice(s.data());
        Ok(())
    }

    /// True when every value is finite.
    fn is_finite(&self) -> bool {
        self.inner.data().iter().all(|x| x.is_finite())
    }

    fn __repr__(&self) -> String {
        format!("Tensor(shape={:?}, dtype=float32)", self.inner.shape())
    }
}
