//! Ops on whole tensors: forward and backward pairs built from the `cpu` primitives, run on the
//! sos_rs pool, with shape checks that return `Error` instead of panicking.

pub mod activation;
pub mod attention;
pub mod cross_entropy;
pub mod dwconv;
pub mod elementwise;
pub mod embedding;
pub mod gating;
pub mod kv_attention;
pub mod linear_ce;
pub mod matmul;
pub mod metric_attention;
pub mod metric_reg;
pub mod norm;
pub mod optim;
pub mod residual_scale;
pub mod rope;
pub mod rope_angles;
pub mod softmax;

#[cfg(test)]
pub(crate) mod testutil;
