//! The Python module `sos_rs._core`: the only code that names pyo3 or numpy. One file per part
//! of the crate it binds: `tensor` (the `Tensor` class), `ops`, `moe`, `metric_attention`,
//! `routed` (ops of the routed sublayers), `belt`, `governor` and `runtime` (threads,
//! instruction set, FMA peak); `convert` holds the conversions they share. Each binding extracts
//! its arguments, releases the GIL while the op runs on the sos_rs pool, and turns the core's
//! `Error` into a typed exception from `sos_rs.errors`.

mod belt;
mod convert;
mod governor;
mod metric_attention;
mod moe;
mod ops;
mod routed;
mod runtime;
mod tensor;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    tensor::register(m)?;
    ops::register(m)?;
    moe::register(m)?;
    metric_attention::register(m)?;
    routed::register(m)?;
    belt::register(m)?;
    governor::register(m)?;
    runtime::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
