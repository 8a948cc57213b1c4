//! The output projection fused with cross-entropy: mean CE of x · wᵀ against one target per row,
//! computed over vocabulary chunks so the [N, V] logits never exist at once.
//!
//! Forward walks the chunks of w's rows: each chunk's logits [N, Vc] come from one packed GEMM,
//! then every row folds them into its running max and sum of exponentials (an online
//! log-sum-exp) and picks its target logit when the target falls in the chunk. With a gradient
//! requested, a second walk recomputes each chunk's logits (the same GEMM, hence the same bits),
//! turns them into dlogits = (softmax - onehot) / N in place, and writes dX += dlogits · w_c and
//! dW_c = dlogitsᵀ · x, chunk by chunk. The gradient is taken for dloss = 1 during the forward:
//! the loss is the root of the graph, so only that scalar is missing, and backward scales by it.
//!
//! When the whole vocabulary fits in one chunk, one pass does it all, with exactly the per-row
//! arithmetic of `cross_entropy_fused` and the GEMMs of a Linear layer's forward and backward:
//! the result is bit-identical to the unfused path (linear, then cross-entropy). With several
//! chunks the log-sum-exp is combined across chunks and dX summed chunk by chunk, within 1e-6 of
//! the unfused path. Rows are processed by one task each and every GEMM is
//! deterministic, so any thread count gives the same bits.

use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::ops::embedding::check_ids;
use crate::ops::matmul::gemm;
use crate::scratch;
use crate::tensor::Tensor;
use rayon::prelude::*;

const ROWS_PER_TASK: usize = 8;

/// Bytes of one chunk of logits [N, Vc] at most (`vocab_chunk`): 64 MiB keeps the small and
/// medium bench models in one chunk (no recomputation) and cuts a 32k vocabulary at 2k tokens
/// into four.
pub const CHUNK_BYTES: usize = 64 << 20;

/// Vocabulary rows per chunk for `n` rows: the [n, chunk] logits at most `CHUNK_BYTES`, a
/// multiple of 64 (at least 64), or the whole vocabulary `v` when that fits.
pub fn vocab_chunk(n: usize, v: usize) -> usize {
    let fit = CHUNK_BYTES / size_of::<f32>() / n.max(1);
    if fit >= v {
        return v.max(1);
    }
    (fit / 64 * 64).max(64).min(v)
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

/// Mean cross-entropy of x · wᵀ (x [..., D], w [V, D]) against `targets` (one per row of x),
/// over vocabulary chunks of `chunk` rows of w (clamped to [1, V]; `vocab_chunk` picks one).
/// With `grad`, also dx [..., D] and dw [V, D] for dloss = 1.
pub fn linear_cross_entropy(x: &Tensor, w: &Tensor, targets: &[u32], chunk: usize, grad: bool) -> Result<LinearCe> {
    let (n, d, v) = checked(x, w, targets)?;
    let chunk = chunk.clamp(1, v);
    let (xd, wd) = (x.data(), w.data());
    let g = 1.0 / n as f32;
    // The logits chunk (32 MiB for the small bench model) from the shared scratch pool, which
    // keeps it resident between steps: a fresh tensor mapping cost one page fault per 4 KiB on
    // every call (most of this op's time outside its GEMMs). Every entry is written (by the
    // GEMM) before it is read.
    let mut buf = scratch::take_shared(n * chunk);
    let mut losses = vec![0.0f32; n];
    if grad && chunk == v {
        // One chunk: cross_entropy_fused's per-row arithmetic on the logits, then the GEMMs of
        // Linear's backward (dx = dl · w, dw = dlᵀ · x), bit for bit the unfused path.
        let dl = buf.as_mut_slice();
        gemm(n, v, d, xd, false, wd, true, dl, false);
        dl.par_chunks_mut(v * ROWS_PER_TASK).zip(losses.par_chunks_mut(ROWS_PER_TASK)).enumerate().for_each(
            |(task, (rows, lo))| {
                let mut tmp = vec![0.0f32; v];
                for (j, row) in rows.chunks_mut(v).enumerate() {
                    let t = targets[task * ROWS_PER_TASK + j] as usize;
                    let m = cpu::max(row);
                    let s = cpu::exp_shift_sum(row, m, &mut tmp);
                    lo[j] = m + s.ln() - row[t];
                    // e·(g/s) for every entry, as cross_entropy_fused (scale: alpha·x, one rounding).
                    cpu::scale(g / s, &tmp, row);
                    row[t] -= g;
                }
            },
        );
        let mut dx = Tensor::for_overwrite(x.shape());
        let mut dw = Tensor::for_overwrite(w.shape());
        gemm(n, d, v, dl, false, wd, false, dx.data_mut(), false);
        gemm(v, d, n, dl, true, xd, false, dw.data_mut(), false);
        return Ok(LinearCe { loss: mean(&losses), grads: Some((dx, dw)) });
    }
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
        return Ok(LinearCe { loss: mean(&losses), grads: None });
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
    Ok(LinearCe { loss: mean(&losses), grads: Some((dx, dw)) })
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
    fn chunk_sizes_and_bad_shapes() {
        assert_eq!(vocab_chunk(2048, 4096), 4096, "2048 x 4096 logits are 32 MiB: one chunk");
        assert_eq!(vocab_chunk(2048, 32768), 8192);
        assert_eq!(vocab_chunk(1 << 30, 100), 64);
        assert_eq!(vocab_chunk(1, 10), 10);
        let (x, w, t) = case(4, 8, 20, 1);
        assert!(linear_cross_entropy(&x, &w, &t[..3], 8, false).is_err(), "one target per row");
        assert!(linear_cross_entropy(&x, &w, &[0, 1, 2, 20], 8, false).is_err(), "target out of range");
        let w2 = Tensor::zeros(&[20, 9]);
        assert!(linear_cross_entropy(&x, &w2, &t, 8, false).is_err(), "widths differ");
    }
}
