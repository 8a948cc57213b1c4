//! Bindings of the speed work: the fused Linear (GEMM with bias/activation epilogue), the
//! thread-pool report and the FMA-throughput probe used by the benchmark scripts.

use super::convert::{raise, run, PyTensor};
use crate::cpu::{self, peak, Isa};
use crate::ops::matmul::{self as mm, Activation};
use crate::threads;
use pyo3::prelude::*;

/// x · wᵀ (+ bias), then `activation` ("none", "relu", "silu", "gelu"), in one pass over the
/// output. x [..., in], w [out, in], bias [out].
#[pyfunction]
#[pyo3(signature = (x, w, bias=None, activation="none"))]
fn linear(py: Python<'_>, x: PyRef<PyTensor>, w: PyRef<PyTensor>, bias: Option<PyRef<PyTensor>>, activation: &str) -> PyResult<PyTensor> {
    let act = Activation::parse(activation)
        .ok_or_else(|| raise(py, "InvalidValueError", format!("linear: activation {activation:?} is not one of none, relu, silu, gelu")))?;
    let (x, w, b) = (&x.inner, &w.inner, bias.as_ref().map(|b| &b.inner));
    run(py, || mm::linear(x, w, b, act)).map(PyTensor::wrap)
}

/// One line on the pools in use: threads, core groups (L3 domains), pinning.
#[pyfunction]
fn thread_info() -> String {
    threads::pools().describe()
}

/// Measured FP32 peak in GFLOP/s of `threads` threads of FMAs on `isa` (default: the one in
/// use), median of `reps` runs of about `ms` milliseconds.
#[pyfunction]
#[pyo3(signature = (isa=None, threads=1, reps=3, ms=50))]
fn fma_peak(py: Python<'_>, isa: Option<&str>, threads: usize, reps: usize, ms: u64) -> PyResult<f64> {
    let isa = match isa {
        None => cpu::isa(),
        Some("scalar") => Isa::Scalar,
        Some("avx2") => Isa::Avx2,
        Some("avx512") => Isa::Avx512,
        Some(other) => return Err(raise(py, "InvalidValueError", format!("fma_peak: isa {other:?} is not one of scalar, avx2, avx512"))),
    };
    Ok(py.allow_threads(|| peak::fma_peak_gflops(isa, threads, reps, ms)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(linear, m)?)?;
    m.add_function(wrap_pyfunction!(thread_info, m)?)?;
    m.add_function(wrap_pyfunction!(fma_peak, m)?)?;
    Ok(())
}
