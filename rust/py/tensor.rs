//! The `Tensor` class: an opaque handle on a Rust-owned f32 tensor, built from and copied back
//! to numpy.

use super::convert::{tensor_from_numpy, tensor_to_numpy, to_py};
use crate::error::Error;
use crate::tensor::Tensor;
use numpy::PyArrayDyn;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// Short names for the op bindings: `T` in signatures, `w` to wrap a result.
pub type T = PyTensor;

pub fn w(t: Tensor) -> T {
    PyTensor::wrap(t)
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
            return Err(to_py(Error::shape(
                "item",
                format!("only one-element tensors have an item, got {:?}", self.inner.shape()),
            )));
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
            return Err(to_py(Error::shape(
                "copy_",
                format!("destination {:?} vs source {:?}", self.inner.shape(), src.inner.shape()),
            )));
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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTensor>()
}
