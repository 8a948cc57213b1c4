//! sos_rs: FP32 tensors, SIMD kernels and their backward passes for training small language
//! models on CPUs. Python bindings live in `py/` behind the `python` feature.

pub mod belt;
pub mod cpu;
pub mod error;
pub mod moe;
pub mod ops;
pub mod scratch;
pub mod tensor;
pub mod threads;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};
pub use tensor::Tensor;
