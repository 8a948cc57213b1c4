//! The governor's measure (SPEC §8): the squared L2-star discrepancy of N points in [0,1]^d by
//! Warnock's formula,
//!
//!   D² = 3^−d − (2^(1−d)/N)·Σ_i Π_k (1 − x_ik²) + (1/N²)·Σ_i Σ_j Π_k (1 − max(x_ik, x_jk)),
//!
//! in f64 throughout. The O(N²·d) pair sum is the work: it uses the symmetry of the pair term
//! (each pair once, doubled), `1 − max(a, b) = min(1 − a, 1 − b)` (exact: rounding is monotone),
//! 4 × 8 tiles of rows × columns (`kernel`), and parallel tasks of a fixed number of row blocks
//! whose partial sums are combined in task order, so every thread count gives the same bits.
//! Only the discrepancy lives here; temperatures and the control law are Python
//! (`python/sos_rs/governor.py`, `train/governor.py`).

mod kernel;
#[cfg(test)]
mod tests;

use crate::cpu::{self, Isa};
use crate::error::{Error, Result};
use rayon::prelude::*;

pub use kernel::{COLS, ROWS};

/// Row blocks per parallel task: fixed, so the reduction order never depends on the threads.
const BLOCKS_PER_TASK: usize = 4;

/// Points of one call, transposed into column blocks of `COLS` points:
/// `data[jb·d·COLS + k·COLS + l]` = 1 − x_{jb·COLS+l, k}. Points past N are padding with value
/// zero, whose pair products are zero (min(y, 0) = 0), so they add nothing.
pub(crate) struct Packed {
    pub data: Vec<f64>,
    pub d: usize,
    /// Column blocks (N rounded up to COLS, divided by COLS).
    pub blocks: usize,
}

impl Packed {
    fn new(points: &[f64], n: usize, d: usize) -> Packed {
        let blocks = n.div_ceil(COLS);
        let mut data = vec![0.0f64; blocks * d * COLS];
        for i in 0..n {
            let (jb, l) = (i / COLS, i % COLS);
            for k in 0..d {
                data[jb * d * COLS + k * COLS + l] = 1.0 - points[i * d + k];
            }
        }
        Packed { data, d, blocks }
    }

    /// 1 − x_{i,k} (0 for padding rows).
    #[inline(always)]
    pub fn y(&self, i: usize, k: usize) -> f64 {
        self.data[(i / COLS) * self.d * COLS + k * COLS + i % COLS]
    }

    /// The d·COLS values of column block `jb`.
    #[inline(always)]
    pub fn block(&self, jb: usize) -> &[f64] {
        &self.data[jb * self.d * COLS..][..self.d * COLS]
    }
}

/// Checks the points: N ≥ 1, d ≥ 1, `points.len() == n·d`, every value finite and in [0, 1].
fn validate(points: &[f64], n: usize, d: usize) -> Result<()> {
    const OP: &str = "l2star_sq";
    if n == 0 || d == 0 {
        return Err(Error::value(OP, format!("needs at least one point of at least one dimension, got N={n}, d={d}")));
    }
    if points.len() != n * d {
        return Err(Error::shape(OP, format!("{} values for N={n} points of d={d}", points.len())));
    }
    if let Some(at) = points.iter().position(|v| !(0.0..=1.0).contains(v)) {
        let (i, k) = (at / d, at % d);
        return Err(Error::value(
            OP,
            format!(
                "point {i}, coordinate {k} is {}: every coordinate must lie in [0, 1] (and not be NaN)",
                points[at]
            ),
        ));
    }
    Ok(())
}

/// D² of the N×d points (row-major) on the active instruction set.
pub fn l2star_sq(points: &[f64], n: usize, d: usize) -> Result<f64> {
    l2star_sq_with(cpu::isa(), points, n, d)
}

/// D² on `isa` (tests compare every supported set with the scalar twin, bit for bit).
pub fn l2star_sq_with(isa: Isa, points: &[f64], n: usize, d: usize) -> Result<f64> {
    validate(points, n, d)?;
    let p = Packed::new(points, n, d);
    // Σ_i Π_k (1 − x_ik²): O(N·d), sequential.
    let mut single = 0.0f64;
    for i in 0..n {
        let mut prod = 1.0f64;
        for &x in &points[i * d..][..d] {
            prod *= 1.0 - x * x;
        }
        single += prod;
    }
    // Σ_i Σ_j Π_k min(y_ik, y_jk), over row blocks of ROWS in fixed tasks, in task order.
    let row_blocks = n.div_ceil(ROWS);
    let tasks = row_blocks.div_ceil(BLOCKS_PER_TASK);
    let partials: Vec<f64> = (0..tasks)
        .into_par_iter()
        .map(|t| {
            let first = t * BLOCKS_PER_TASK;
            (first..(first + BLOCKS_PER_TASK).min(row_blocks))
                .fold(0.0f64, |acc, rb| acc + kernel::row_block(isa, &p, rb))
        })
        .collect();
    let pairs = partials.iter().fold(0.0f64, |acc, v| acc + v);
    let nf = n as f64;
    let di = d as i32;
    Ok(3f64.powi(-di) - 2f64.powi(1 - di) / nf * single + pairs / (nf * nf))
}
