//! The output projection fused with cross-entropy: mean CE of x · wᵀ against one target per row,
//! computed so the [N, V] logits never exist at once.
//!
//! Two ways to cut the logits, both within `CHUNK_BYTES`:
//! - **Row blocks** (the default whenever a block of at least `MIN_BLOCK_ROWS` rows fits): each
//!   block's logits over the whole vocabulary come from one packed GEMM, then every row takes its
//!   log-sum-exp and turns its logits into dlogits = (softmax - onehot) / N in place, then the
//!   block writes its rows of dx = dlogits · w and adds dlogitsᵀ · x into dw. Every logit is
//!   computed once. Per row this is exactly `cross_entropy_fused`, and row blocks that are a
//!   multiple of the GEMM's k block split dw's sum over rows where the GEMM splits it anyway:
//!   the result is bit-identical to the unfused path (linear, then cross-entropy).
//! - **Vocabulary chunks** (a vocabulary so large that not even `MIN_BLOCK_ROWS` rows fit, or a
//!   chunk asked for): each chunk's logits [N, Vc] from one GEMM, every row folding them into
//!   its running max and sum of exponentials (an online log-sum-exp) and picking its target
//!   logit; with a gradient requested, a second walk recomputes each chunk's logits (the same
//!   GEMM, hence the same bits), turns them into dlogits in place and writes dx += dlogits · w_c
//!   and dw_c = dlogitsᵀ · x. Within 1e-6 of the unfused path; costs one more logits GEMM.
//!
//! The gradient is taken for dloss = 1 during the forward: the loss is the root of the graph, so
//! only that scalar is missing, and backward scales by it. Rows are processed by one task each,
//! blocks and chunks depend on the shapes and the host's k block only, and every GEMM is
//! deterministic, so any thread count gives the same bits.

use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::ops::embedding::check_ids;
use crate::ops::matmul::{gemm, k_block};
use crate::scratch;
use crate::tensor::Tensor;
use rayon::prelude::*;

const ROWS_PER_TASK: usize = 8;

/// Bytes of the logits buffer at most (one row block or one vocabulary chunk): 64 MiB keeps the
/// small and medium bench models in one block and cuts a 32k vocabulary at 2k tokens into four
/// row blocks of 512.
pub const CHUNK_BYTES: usize = 64 << 20;

/// Fewest rows a row block may have. Each block reads and writes all of dw (8·V·D bytes) for
/// 6·rows·V·D FLOPs of GEMM: at memory bandwidth ~1/10 of the FMA rate in bytes, that costs
/// about 13/rows of the GEMM time (10% at 128 rows), while the vocabulary walk costs a third
/// more GEMM work. Short blocks also make short GEMMs. So a vocabulary over 128k entries (a
/// 128-row block would pass 64 MiB) walks the vocabulary instead.
const MIN_BLOCK_ROWS: usize = 128;

/// Vocabulary rows per chunk for `n` rows: the whole vocabulary `v` when row blocks apply (a
/// block of `MIN_BLOCK_ROWS` rows, or all `n`, fits in `CHUNK_BYTES`); otherwise chunks whose
/// [n, chunk] logits take at most `CHUNK_BYTES`, a multiple of 64 (at least 64).
pub fn vocab_chunk(n: usize, v: usize) -> usize {
    let floats = CHUNK_BYTES / size_of::<f32>();
    if floats / v.max(1) >= n.clamp(1, MIN_BLOCK_ROWS) {
        return v.max(1);
    }
    let fit = floats / n.max(1);
    (fit / 64 * 64).max(64).min(v)
}

/// Rows per block when the whole vocabulary is taken at once: all `n` when their logits fit in
/// `CHUNK_BYTES`, else as many as fit, rounded down to a multiple of the GEMM's k block when at
/// least one fits (dw then keeps the bits of one GEMM), to a multiple of 8 otherwise.
pub fn row_block(n: usize, v: usize) -> usize {
    let fit = (CHUNK_BYTES / size_of::<f32>() / v.max(1)).max(1);
    if fit >= n {
        return n.max(1);
    }
    let kb = k_block();
    if fit >= kb {
        fit / kb * kb
    } else {
        (fit / 8 * 8).max(1)
    }
}

/// Floats of the logits buffer `linear_cross_entropy` uses for `n` rows and `v` entries with its
/// default cut (`vocab_chunk`): what the models' memory estimates count.
pub fn logits_floats(n: usize, v: usize) -> usize {
    let chunk = vocab_chunk(n, v);
    if chunk >= v {
        row_block(n, v) * v.max(1)
    } else {
        n * chunk
    }
}

/// Loss, and (dx, dw) for dloss = 1 when asked for.
pub struct LinearCe {
    pub loss: f32,
    pub grads: Option<(Tensor, Tensor)>,
}

/// (rows N, width D, vocabulary V) after checking x [..., D], w [V, D] and one target in
/// [0, V) per row.
fn checked(x: &Tensor, w: &Tensor, targets: &[u32]) -> Result<(usize, usize, usize)> {
    ensure_shape!(
        x.ndim() >= 2 && w.ndim() == 2 && x.last_dim() == w.shape()[1],
        "linear_cross_entropy",
        "x {:?} must be [..., D] and w {:?} [V, D]",
        x.shape(),
        w.shape()
    );
    let (d, v) = (w.shape()[1], w.shape()[0]);
    let n = x.shape()[..x.ndim() - 1].iter().product::<usize>();
    ensure_shape!(
        n == targets.len(),
        "linear_cross_entropy",
        "x {:?} needs one target per row; got {} targets",
        x.shape(),
        targets.len()
    );
    ensure_shape!(
        n > 0 && v > 0,
        "linear_cross_entropy",
        "no rows or no vocabulary: x {:?}, w {:?}",
        x.shape(),
        w.shape()
    );
    check_ids("linear_cross_entropy", targets, v)?;
    Ok((n, d, v))
}

/// Mean cross-entropy of x · wᵀ (x [..., D], w [V, D]) against `targets` (one per row of x).
/// `chunk` (clamped to [1, V]; `vocab_chunk` picks one): V takes the whole vocabulary in row
/// blocks of `row_block` rows, fewer walks the vocabulary in chunks of that many rows of w.
/// With `grad`, also dx [..., D] and dw [V, D] for dloss = 1.
pub fn linear_cross_entropy(x: &Tensor, w: &Tensor, targets: &[u32], chunk: usize, grad: bool) -> Result<LinearCe> {
    let (n, d, v) = checked(x, w, targets)?;
    if chunk.clamp(1, v) == v {
        return Ok(by_rows(x, w, targets, (n, d, v), row_block(n, v), grad));
    }
    Ok(by_vocab(x, w, targets, (n, d, v), chunk, grad))
}

/// The whole vocabulary for `rows` rows at a time (see the module doc).
fn by_rows(
    x: &Tensor,
    w: &Tensor,
    targets: &[u32],
    (n, d, v): (usize, usize, usize),
    rows: usize,
    grad: bool,
) -> LinearCe {
    let rows = rows.clamp(1, n);
    let (xd, wd) = (x.data(), w.data());
    let g = 1.0 / n as f32;
    // The logits block (32 MiB for the small bench model) from the shared scratch pool, which
    // keeps it resident between steps: a fresh tensor mapping cost one page fault per 4 KiB on
    // every call. Every entry is written (by the GEMM) before it is read.
    let mut buf = scratch::take_shared(rows * v);
    let mut losses = vec![0.0f32; n];
    let mut grads = grad.then(|| (Tensor::for_overwrite(x.shape()), Tensor::for_overwrite(w.shape())));
    for r0 in (0..n).step_by(rows) {
        let nb = rows.min(n - r0);
        let xb = &xd[r0 * d..(r0 + nb) * d];
        let lg = &mut buf.as_mut_slice()[..nb * v];
        gemm(nb, v, d, xb, false, wd, true, lg, false);
        let tb = &targets[r0..r0 + nb];
        lg.par_chunks_mut(v * ROWS_PER_TASK)
            .zip(losses[r0..r0 + nb].par_chunks_mut(ROWS_PER_TASK))
            .enumerate()
            .for_each(|(task, (block, lo))| {
                let mut tmp = vec![0.0f32; v];
                for (j, row) in block.chunks_mut(v).enumerate() {
                    let t = tb[task * ROWS_PER_TASK + j] as usize;
                    let m = cpu::max(row);
                    let s = cpu::exp_shift_sum(row, m, &mut tmp);
                    lo[j] = m + s.ln() - row[t];
                    if grad {
                        // e·(g/s) for every entry, as cross_entropy_fused (scale: alpha·x, one rounding).
                        cpu::scale(g / s, &tmp, row);
                        row[t] -= g;
                    }
                }
            });
        if let Some((dx, dw)) = grads.as_mut() {
            // Linear's backward GEMMs on this block: its rows of dx, its share of dw's row sum.
            gemm(nb, d, v, lg, false, wd, false, &mut dx.data_mut()[r0 * d..(r0 + nb) * d], false);
            gemm(v, d, nb, lg, true, xb, false, dw.data_mut(), r0 > 0);
        }
    }
    LinearCe { loss: mean(&losses), grads }
}

/// The vocabulary in chunks of `chunk` rows of w, all rows at once (see the module doc).
fn by_vocab(
    x: &Tensor,
    w: &Tensor,
    targets: &[u32],
    (n, d, v): (usize, usize, usize),
    chunk: usize,
    grad: bool,
) -> LinearCe {
    let chunk = chunk.clamp(1, v);
    let (xd, wd) = (x.data(), w.data());
    let g = 1.0 / n as f32;
    let mut buf = scratch::take_shared(n * chunk);
    let mut losses = vec![0.0f32; n];
    // Walk 1: running max and sum of exp(logit - max) per row, and the target logits.
    let mut mx = vec![f32::NEG_INFINITY; n];
    let mut sm = vec![0.0f32; n];
    let mut tl = vec![0.0f32; n];
    for c0 in (0..v).step_by(chunk) {
        let vc = chunk.min(v - c0);
        let lg = &mut buf.as_mut_slice()[..n * vc];
        gemm(n, vc, d, xd, false, &wd[c0 * d..(c0 + vc) * d], true, lg, false);
        let lg = &*lg;
        mx.par_chunks_mut(ROWS_PER_TASK)
            .zip(sm.par_chunks_mut(ROWS_PER_TASK))
            .zip(tl.par_chunks_mut(ROWS_PER_TASK))
            .enumerate()
            .for_each(|(task, ((mc, sc), tc))| {
                let mut tmp = vec![0.0f32; vc];
                for j in 0..mc.len() {
                    let r = task * ROWS_PER_TASK + j;
                    let row = &lg[r * vc..(r + 1) * vc];
                    let m = mc[j].max(cpu::max(row));
                    // exp(-inf - m) = 0 folds in the empty start (sum 0, max -inf).
                    sc[j] = sc[j] * (mc[j] - m).exp() + cpu::exp_shift_sum(row, m, &mut tmp);
                    mc[j] = m;
                    let t = targets[r] as usize;
                    if (c0..c0 + vc).contains(&t) {
                        tc[j] = row[t - c0];
                    }
                }
            });
    }
    let lse: Vec<f32> = mx.iter().zip(&sm).map(|(&m, &s)| m + s.ln()).collect();
    for (lo, (&l, &t)) in losses.iter_mut().zip(lse.iter().zip(&tl)) {
        *lo = l - t;
    }
    if !grad {
        return LinearCe { loss: mean(&losses), grads: None };
    }
    // Walk 2: each chunk's logits again, turned into dlogits in place (cross_entropy_backward's
    // arithmetic), then its share of dx and its rows of dw.
    let mut dx = Tensor::for_overwrite(x.shape());
    let mut dw = Tensor::for_overwrite(w.shape());
    for c0 in (0..v).step_by(chunk) {
        let vc = chunk.min(v - c0);
        let wc = &wd[c0 * d..(c0 + vc) * d];
        let dl = &mut buf.as_mut_slice()[..n * vc];
        gemm(n, vc, d, xd, false, wc, true, dl, false);
        dl.par_chunks_mut(vc * ROWS_PER_TASK).enumerate().for_each(|(task, rows)| {
            let mut tmp = vec![0.0f32; vc];
            for (j, row) in rows.chunks_mut(vc).enumerate() {
                let r = task * ROWS_PER_TASK + j;
                cpu::exp_shift_sum(row, lse[r], &mut tmp);
                cpu::scale(g, &tmp, row);
                let t = targets[r] as usize;
                if (c0..c0 + vc).contains(&t) {
                    row[t - c0] -= g;
                }
            }
        });
        gemm(n, d, vc, dl, false, wc, false, dx.data_mut(), c0 > 0);
        gemm(vc, d, n, dl, true, xd, false, &mut dw.data_mut()[c0 * d..(c0 + vc) * d], false);
    }
    LinearCe { loss: mean(&losses), grads: Some((dx, dw)) }
}

/// Mean of the per-row losses, summed in f64 in row order (as `cross_entropy_forward`).
fn mean(losses: &[f32]) -> f32 {
    let total: f64 = losses.iter().map(|&x| x as f64).sum();
    (total / losses.len() as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cross_entropy::{cross_entropy_backward, cross_entropy_forward, cross_entropy_fused};
    use crate::ops::matmul::matmul;
    use crate::ops::testutil::{assert_close, rand_vec, run_threads, same_bits};

    /// The scalar specification in f64: loss, dx, dw for dloss = 1.
    fn reference(x: &[f32], w: &[f32], t: &[u32], d: usize) -> (f64, Vec<f64>, Vec<f64>) {
        let (n, v) = (t.len(), w.len() / d);
        let (mut loss, mut dx, mut dw) = (0.0, vec![0.0; n * d], vec![0.0; v * d]);
        for r in 0..n {
            let z: Vec<f64> =
                (0..v).map(|c| (0..d).map(|k| x[r * d + k] as f64 * w[c * d + k] as f64).sum::<f64>()).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|&zi| (zi - m).exp()).sum::<f64>().ln();
            loss += lse - z[t[r] as usize];
            for c in 0..v {
                let dz = ((z[c] - lse).exp() - if c == t[r] as usize { 1.0 } else { 0.0 }) / n as f64;
                for k in 0..d {
                    dx[r * d + k] += dz * w[c * d + k] as f64;
                    dw[c * d + k] += dz * x[r * d + k] as f64;
                }
            }
        }
        (loss / n as f64, dx, dw)
    }

    fn case(n: usize, d: usize, v: usize, seed: u64) -> (Tensor, Tensor, Vec<u32>) {
        let x = Tensor::from_slice(&[n, d], &rand_vec(n * d, seed)).unwrap();
        let w = Tensor::from_slice(&[v, d], &rand_vec(v * d, seed + 1)).unwrap();
        let t = (0..n).map(|i| ((i * 7919 + seed as usize) % v) as u32).collect();
        (x, w, t)
    }

    fn f32s(x: &[f64]) -> Vec<f32> {
        x.iter().map(|&v| v as f32).collect()
    }

    #[test]
    fn matches_the_scalar_reference_for_any_chunk() {
        let (n, d, v) = (37, 24, 203);
        let (x, w, t) = case(n, d, v, 3);
        let (loss, dx, dw) = reference(x.data(), w.data(), &t, d);
        for chunk in [1, 7, 64, 100, 202, 203, 10_000] {
            let out = linear_cross_entropy(&x, &w, &t, chunk, true).unwrap();
            assert!((out.loss as f64 - loss).abs() < 1e-5, "chunk {chunk}: loss {} vs {loss}", out.loss);
            let (gx, gw) = out.grads.unwrap();
            assert_close(gx.data(), &f32s(&dx), 1e-4, 1e-6, "dx");
            assert_close(gw.data(), &f32s(&dw), 1e-4, 1e-6, "dw");
            let fwd = linear_cross_entropy(&x, &w, &t, chunk, false).unwrap();
            assert!(fwd.grads.is_none());
            assert_eq!(fwd.loss.to_bits(), out.loss.to_bits(), "chunk {chunk}: forward-only loss");
        }
    }

    #[test]
    fn one_chunk_is_the_unfused_path_bit_for_bit() {
        let (x, w, t) = case(50, 40, 300, 5);
        let logits = matmul(&x, &w, false, true).unwrap();
        let (loss, dl) = cross_entropy_fused(&logits, &t).unwrap();
        let dx = matmul(&dl, &w, false, false).unwrap();
        let dw = matmul(&dl, &x, true, false).unwrap();
        let out = linear_cross_entropy(&x, &w, &t, 300, true).unwrap();
        let (gx, gw) = out.grads.unwrap();
        assert_eq!(out.loss.to_bits(), loss.to_bits());
        assert!(same_bits(gx.data(), dx.data()) && same_bits(gw.data(), dw.data()));
        // Forward only, one chunk: cross_entropy_forward's loss exactly.
        let (floss, _) = cross_entropy_forward(&logits, &t).unwrap();
        assert_eq!(linear_cross_entropy(&x, &w, &t, 300, false).unwrap().loss.to_bits(), floss.to_bits());
    }

    #[test]
    fn chunks_agree_with_the_unfused_path_within_1e_6() {
        let (n, d, v) = (64, 48, 1000);
        let (x, w, t) = case(n, d, v, 11);
        let logits = matmul(&x, &w, false, true).unwrap();
        let (loss, lse) = cross_entropy_forward(&logits, &t).unwrap();
        let dl = cross_entropy_backward(&logits, &t, &lse, 1.0).unwrap();
        let dx = matmul(&dl, &w, false, false).unwrap();
        let dw = matmul(&dl, &x, true, false).unwrap();
        for chunk in [64, 128, 333] {
            let out = linear_cross_entropy(&x, &w, &t, chunk, true).unwrap();
            assert!((out.loss - loss).abs() <= 1e-6 * loss.abs(), "chunk {chunk}: {} vs {loss}", out.loss);
            let (gx, gw) = out.grads.unwrap();
            assert_close(gx.data(), dx.data(), 1e-6, 1e-8, "dx");
            assert_close(gw.data(), dw.data(), 1e-6, 1e-8, "dw");
        }
    }

    #[test]
    fn bit_identical_for_1_and_2_threads() {
        // Large enough for the GEMMs to split across threads, several chunks.
        let (x, w, t) = case(160, 96, 700, 13);
        let outs = run_threads(|| {
            let o = linear_cross_entropy(&x, &w, &t, 192, true).unwrap();
            let (gx, gw) = o.grads.unwrap();
            (o.loss, gx, gw)
        });
        assert_eq!(outs[0].0.to_bits(), outs[1].0.to_bits());
        assert!(same_bits(outs[0].1.data(), outs[1].1.data()) && same_bits(outs[0].2.data(), outs[1].2.data()));
    }

    #[test]
    fn row_blocks_at_the_k_block_are_the_unfused_path_bit_for_bit() {
        // Three row blocks (the last one short): dw's sum over rows is split where the GEMM
        // splits its k anyway, so every output keeps the bits of the unfused path.
        let kb = k_block();
        let (n, d, v) = (2 * kb + 37, 24, 40);
        let (x, w, t) = case(n, d, v, 17);
        let logits = matmul(&x, &w, false, true).unwrap();
        let (loss, dl) = cross_entropy_fused(&logits, &t).unwrap();
        let dx = matmul(&dl, &w, false, false).unwrap();
        let dw = matmul(&dl, &x, true, false).unwrap();
        let out = by_rows(&x, &w, &t, (n, d, v), kb, true);
        let (gx, gw) = out.grads.unwrap();
        assert_eq!(out.loss.to_bits(), loss.to_bits());
        assert!(same_bits(gx.data(), dx.data()), "dx");
        assert!(same_bits(gw.data(), dw.data()), "dw");
        let fwd = by_rows(&x, &w, &t, (n, d, v), kb, false);
        assert!(fwd.grads.is_none());
        assert_eq!(fwd.loss.to_bits(), loss.to_bits());
    }

    #[test]
    fn any_row_block_matches_the_reference_and_any_thread_count() {
        let (n, d, v) = (53, 20, 90);
        let (x, w, t) = case(n, d, v, 19);
        let (loss, dx, dw) = reference(x.data(), w.data(), &t, d);
        for rows in [1, 8, 16, 52, 53, 1000] {
            let out = by_rows(&x, &w, &t, (n, d, v), rows, true);
            assert!((out.loss as f64 - loss).abs() < 1e-5, "rows {rows}: loss {} vs {loss}", out.loss);
            let (gx, gw) = out.grads.unwrap();
            assert_close(gx.data(), &f32s(&dx), 1e-4, 1e-6, "dx");
            assert_close(gw.data(), &f32s(&dw), 1e-4, 1e-6, "dw");
        }
        let outs = run_threads(|| {
            let o = by_rows(&x, &w, &t, (n, d, v), 16, true);
            let (gx, gw) = o.grads.unwrap();
            (o.loss, gx, gw)
        });
        assert_eq!(outs[0].0.to_bits(), outs[1].0.to_bits());
        assert!(same_bits(outs[0].1.data(), outs[1].1.data()) && same_bits(outs[0].2.data(), outs[1].2.data()));
    }

    #[test]
    fn chunk_sizes_and_bad_shapes() {
        assert_eq!(vocab_chunk(2048, 4096), 4096, "2048 x 4096 logits are 32 MiB: one block");
        assert_eq!(row_block(2048, 4096), 2048);
        assert_eq!(vocab_chunk(2048, 32768), 32768, "row blocks of 512 fit a 32k vocabulary");
        let kb = k_block();
        assert_eq!(row_block(2048, 32768), 512 / kb * kb);
        assert_eq!(logits_floats(2048, 32768), 512 / kb * kb * 32768);
        assert_eq!(vocab_chunk(1 << 30, 100), 100);
        assert_eq!(vocab_chunk(1, 10), 10);
        // 128 rows of a 256k vocabulary would take 128 MiB: the vocabulary walk, 64 MiB of logits.
        assert_eq!(vocab_chunk(2048, 1 << 18), 8192);
        assert_eq!(vocab_chunk(2048, 1 << 17), 1 << 17, "128 rows of a 128k vocabulary take 64 MiB");
        assert_eq!(vocab_chunk(100, 150_000), 150_000, "all 100 rows fit");
        assert_eq!(vocab_chunk(2048, 1 << 20), 8192);
        assert_eq!(logits_floats(2048, 1 << 20), 2048 * 8192);
        assert!(logits_floats(2048, 32768) * 4 <= CHUNK_BYTES && logits_floats(100, 1 << 20) * 4 <= CHUNK_BYTES);
        let (x, w, t) = case(4, 8, 20, 1);
        assert!(linear_cross_entropy(&x, &w, &t[..3], 8, false).is_err(), "one target per row");
        assert!(linear_cross_entropy(&x, &w, &[0, 1, 2, 20], 8, false).is_err(), "target out of range");
        let w2 = Tensor::zeros(&[20, 9]);
        assert!(linear_cross_entropy(&x, &w2, &t, 8, false).is_err(), "widths differ");
    }
}
