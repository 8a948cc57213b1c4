//! The Python module `sos_rs._core`: the only code that names pyo3 or numpy. Each binding
//! extracts its arguments, releases the GIL while the op runs on the sos_rs pool, and turns the
//! core's `Error` into a typed exception from `sos_rs.errors`.

mod belt;
mod convert;
mod functions;
mod speed;

use pyo3::prelude::*;

pub use convert::PyTensor;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTensor>()?;
    functions::register(m)?;
    belt::register(m)?;
    speed::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
