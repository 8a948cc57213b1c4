//! Sparse expert dispatch (SPEC §6.1): the router (softmax with temperature, top-k, renormalised
//! gates, load-balance and z-losses), the counting-sort `Plan` that groups tokens by expert under a
//! capacity limit, gather/scatter with gradients, and a SwiGLU expert bank run as one GEMM per
//! expert. Work grows with the number of routed assignments (N·k), not with the number of experts.
//!
//! Heterogeneous experts (the paths of an MoA block) use the same `Plan`: each path runs on
//! `Plan::tokens_of(e)` and `combine_forward` scatters the outputs back weighted
//! (`combine_parts` reads the paths' outputs in place of their concatenation).
//!
//! `fused` runs dispatch, the SwiGLU bank and combine as one op pair (the `MoELayer` path):
//! rows gathered per expert right before its GEMMs, gate-weighted outputs scattered straight to
//! their (token, choice) rows, no [S, D] buffer kept for backward.

pub mod combine_parts;
pub mod dispatch;
pub mod experts;
pub mod fused;
pub mod router;

pub use dispatch::{build_plan, build_plan_kept, capacity_for, Plan, DROPPED};
