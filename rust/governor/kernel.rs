//! The pair-sum kernel of the L2-star discrepancy: for one block of ROWS rows i, the sum over
//! columns j ≥ (the block's first column block) of w(i, j) · Π_k min(y_ik, y_jk), where y = 1 − x
//! and w is 2 above the diagonal, 1 on it and 0 below (each unordered pair once, doubled).
//!
//! Register layout of the AVX2 body, per column block of COLS = 8 points and per coordinate k:
//!
//! ```text
//!            columns j0..j0+4   j0+4..j0+8      (two loads from the packed block)
//!   row i0   pr[0][0]           pr[0][1]        pr[r][h] *= min(broadcast(y_{i0+r,k}), col_h)
//!   row i0+1 pr[1][0]           pr[1][1]
//!   row i0+2 pr[2][0]           pr[2][1]
//!   row i0+3 pr[3][0]           pr[3][1]        eight independent product chains
//! ```
//!
//! The scalar twin performs the same IEEE operations (min, mul, weight mul, add; no FMA) on the
//! same lanes in the same order, so the two give identical bits. AVX-512 hosts run the AVX2 body:
//! the kernel is bound by min/mul throughput, which the wider vectors would not change much on
//! the 2-port cores this targets.

use super::Packed;
use crate::cpu::Isa;

/// Rows per block (broadcast operands).
pub const ROWS: usize = 4;
/// Columns per block (two 4-lane f64 vectors).
pub const COLS: usize = 8;

/// w(i, j) of the pair sum: 2 for j > i, 1 for j = i, 0 for j < i.
#[inline(always)]
fn weight(i: usize, j: usize) -> f64 {
    match j.cmp(&i) {
        std::cmp::Ordering::Greater => 2.0,
        std::cmp::Ordering::Equal => 1.0,
        std::cmp::Ordering::Less => 0.0,
    }
}

/// y_{i0+r, k} laid out [k][r], the broadcast operands of one row block.
fn row_values(p: &Packed, i0: usize) -> Vec<f64> {
    let mut yi = vec![0.0f64; p.d * ROWS];
    for k in 0..p.d {
        for r in 0..ROWS {
            yi[k * ROWS + r] = p.y(i0 + r, k);
        }
    }
    yi
}

/// Σ over the rows of block `rb` of the weighted pair products, on `isa`.
pub(super) fn row_block(isa: Isa, p: &Packed, rb: usize) -> f64 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is Avx2 or Avx512 only when cpu::isa()/supports() found avx2 and fma.
        Isa::Avx2 | Isa::Avx512 => unsafe { row_block_avx2(p, rb) },
        _ => row_block_scalar(p, rb),
    }
}

/// Sums the ROWS × COLS lane accumulators: each row's lanes in order, then the rows in order.
#[inline(always)]
fn finish(acc: &[[f64; COLS]; ROWS]) -> f64 {
    acc.iter().fold(0.0f64, |total, row| total + row.iter().fold(0.0f64, |s, v| s + v))
}

/// The specification: the same lanes and operation order as the AVX2 body.
pub(super) fn row_block_scalar(p: &Packed, rb: usize) -> f64 {
    let i0 = rb * ROWS;
    let jb0 = i0 / COLS;
    let yi = row_values(p, i0);
    let mut acc = [[0.0f64; COLS]; ROWS];
    for jb in jb0..p.blocks {
        let blk = p.block(jb);
        let mut pr = [[1.0f64; COLS]; ROWS];
        for k in 0..p.d {
            let col = &blk[k * COLS..][..COLS];
            for r in 0..ROWS {
                let b = yi[k * ROWS + r];
                for l in 0..COLS {
                    let m = if b < col[l] { b } else { col[l] }; // minpd(b, col)
                    pr[r][l] *= m;
                }
            }
        }
        for r in 0..ROWS {
            for l in 0..COLS {
                let w = if jb == jb0 { weight(i0 + r, jb * COLS + l) } else { 2.0 };
                acc[r][l] += w * pr[r][l];
            }
        }
    }
    finish(&acc)
}

/// # Safety
/// The host supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_block_avx2(p: &Packed, rb: usize) -> f64 {
    use std::arch::x86_64::*;
    let i0 = rb * ROWS;
    let jb0 = i0 / COLS;
    let yi = row_values(p, i0);
    let mut acc = [[_mm256_setzero_pd(); 2]; ROWS];
    let two = _mm256_set1_pd(2.0);
    for jb in jb0..p.blocks {
        let blk = p.block(jb);
        let mut pr = [[_mm256_set1_pd(1.0); 2]; ROWS];
        for k in 0..p.d {
            let col = &blk[k * COLS..][..COLS];
            // SAFETY: `col` holds COLS = 8 f64, so both 4-lane loads are in bounds.
            let (lo, hi) = unsafe { (_mm256_loadu_pd(col.as_ptr()), _mm256_loadu_pd(col.as_ptr().add(4))) };
            for r in 0..ROWS {
                let b = _mm256_set1_pd(yi[k * ROWS + r]);
                pr[r][0] = _mm256_mul_pd(pr[r][0], _mm256_min_pd(b, lo));
                pr[r][1] = _mm256_mul_pd(pr[r][1], _mm256_min_pd(b, hi));
            }
        }
        for r in 0..ROWS {
            let (wlo, whi) = if jb == jb0 {
                let w: [f64; COLS] = std::array::from_fn(|l| weight(i0 + r, jb * COLS + l));
                // SAFETY: `w` holds 8 f64.
                unsafe { (_mm256_loadu_pd(w.as_ptr()), _mm256_loadu_pd(w.as_ptr().add(4))) }
            } else {
                (two, two)
            };
            acc[r][0] = _mm256_add_pd(acc[r][0], _mm256_mul_pd(wlo, pr[r][0]));
            acc[r][1] = _mm256_add_pd(acc[r][1], _mm256_mul_pd(whi, pr[r][1]));
        }
    }
    let mut out = [[0.0f64; COLS]; ROWS];
    for r in 0..ROWS {
        // SAFETY: each row of `out` holds 8 f64.
        unsafe {
            _mm256_storeu_pd(out[r].as_mut_ptr(), acc[r][0]);
            _mm256_storeu_pd(out[r].as_mut_ptr().add(4), acc[r][1]);
        }
    }
    finish(&out)
}
