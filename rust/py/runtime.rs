//! Bindings of the runtime: the thread pools (`threads`), the instruction set in use (`cpu`)
//! and the FMA-throughput probe (`cpu::peak`) the benchmark scripts divide by.

use super::convert::raise;
use crate::cpu::{self, peak, Isa};
use crate::threads;
use pyo3::prelude::*;

/// Resizes the sos_rs thread pool (0 = SOS_NUM_THREADS or every CPU).
#[pyfunction]
fn set_num_threads(n: usize) {
    threads::set_num_threads(n)
}

#[pyfunction]
fn num_threads() -> usize {
    threads::num_threads()
}

/// One line on the pools in use: threads, core groups (L3 domains), pinning.
#[pyfunction]
fn thread_info() -> String {
    threads::pools().describe()
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
        Some(other) => {
            return Err(raise(
                py,
                "InvalidValueError",
                format!("fma_peak: isa {other:?} is not one of scalar, avx2, avx512"),
            ))
        }
    };
    Ok(py.allow_threads(|| peak::fma_peak_gflops(isa, threads, reps, ms)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(thread_info, m)?)?;
    m.add_function(wrap_pyfunction!(isa, m)?)?;
    m.add_function(wrap_pyfunction!(detected_isa, m)?)?;
    m.add_function(wrap_pyfunction!(fma_peak, m)?)?;
    Ok(())
}
