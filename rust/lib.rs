//! sos_rs: FP32 tensors, SIMD kernels and their backward passes for training small language
//! models on CPUs.
//!
//! - `tensor`, `error`: the contiguous f32 `Tensor` and the one `Error` type.
//! - `cpu`: instruction-set detection and the primitive kernels (scalar specification, AVX2,
//!   AVX-512; shared SIMD bodies in `cpu/simd.rs`), the GEMM microkernels, the FMA-peak probe.
//! - `ops`: forward/backward ops on tensors (GEMM, norms, attention, metric attention, ...).
//! - `moe`: routing, the expert dispatch plan and the expert bank.
//! - `threads`: core-group topology, pinned pools, the process-wide pool and deterministic
//!   parallel loops.
//! - `scratch`: reusable aligned per-thread buffers.
//! - `belt`: token shards and the batch belt.
//! - `governor`: the squared L2-star discrepancy behind the governor's temperature.
//! - `py` (feature `python`): the `sos_rs._core` extension module, one file per part bound.

pub mod belt;
pub mod cpu;
pub mod error;
pub mod governor;
pub mod moe;
pub mod ops;
pub mod scratch;
pub mod tensor;
pub mod threads;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};
pub use tensor::Tensor;
