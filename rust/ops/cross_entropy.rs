//! Cross-entropy over the vocabulary fused with its softmax: forward gives the mean loss and the
//! per-row log-sum-exp; backward writes (softmax - onehot) * dloss / N without a probability
//! tensor ever being stored.

use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::ops::embedding::check_ids;
use crate::tensor::Tensor;
use crate::threads;
use rayon::prelude::*;

const ROWS_PER_TASK: usize = 8;

/// (rows N, vocabulary V) of logits [..., V] after checking one in-range target per row.
fn checked_rows(logits: &Tensor, targets: &[u32]) -> Result<(usize, usize)> {
    let v = logits.last_dim();
    let n = logits.numel().checked_div(v).unwrap_or(0);
    ensure_shape!(
        logits.ndim() >= 2 && n == targets.len(),
        "cross_entropy",
        "logits {:?} need one target per row; got {} targets",
        logits.shape(),
        targets.len()
    );
    ensure_shape!(n > 0, "cross_entropy", "no rows in logits {:?}", logits.shape());
    check_ids("cross_entropy", targets, v)?;
    Ok((n, v))
}

/// logits: [..., V], targets: [N] with N = rows of logits -> (mean loss, lse [N])
pub fn cross_entropy_forward(logits: &Tensor, targets: &[u32]) -> Result<(f32, Tensor)> {
    let (n, v) = checked_rows(logits, targets)?;
    let ld = logits.data();
    let mut lse = Tensor::zeros(&[n]);
    // Per-row losses, summed in fixed row order (not a parallel reduction) for determinism.
    let mut losses = vec![0.0f32; n];
    lse.data_mut().par_chunks_mut(ROWS_PER_TASK).zip(losses.par_chunks_mut(ROWS_PER_TASK)).enumerate().for_each(
        |(t, (lc, lo))| {
            let mut tmp = vec![0.0f32; v];
            for j in 0..lc.len() {
                let r = t * ROWS_PER_TASK + j;
                let row = &ld[r * v..(r + 1) * v];
                let m = cpu::max(row);
                let l = m + cpu::exp_shift_sum(row, m, &mut tmp).ln();
                lc[j] = l;
                lo[j] = l - row[targets[r] as usize];
            }
        },
    );
    let total: f64 = losses.iter().map(|&x| x as f64).sum();
    Ok(((total / n as f64) as f32, lse))
}

/// Loss and the gradient for dloss = 1 in one pass over the logits: the exponentials computed for
/// the loss become the softmax of the gradient, so training reads the [N, V] logits once.
/// Returns (mean loss, dlogits = (softmax - onehot) / N).
pub fn cross_entropy_fused(logits: &Tensor, targets: &[u32]) -> Result<(f32, Tensor)> {
    let (n, v) = checked_rows(logits, targets)?;
    let ld = logits.data();
    let g = 1.0 / n as f32;
    let mut dl = Tensor::for_overwrite(logits.shape());
    let mut losses = vec![0.0f32; n];
    dl.data_mut().par_chunks_mut(v * ROWS_PER_TASK).zip(losses.par_chunks_mut(ROWS_PER_TASK)).enumerate().for_each(
        |(t, (dc, lo))| {
            for (j, drow) in dc.chunks_mut(v).enumerate() {
                let r = t * ROWS_PER_TASK + j;
                let row = &ld[r * v..(r + 1) * v];
                let m = cpu::max(row);
                let s = cpu::exp_shift_sum(row, m, drow);
                lo[j] = m + s.ln() - row[targets[r] as usize];
                let scale = g / s;
                for x in drow.iter_mut() {
                    *x *= scale;
                }
                drow[targets[r] as usize] -= g;
            }
        },
    );
    let total: f64 = losses.iter().map(|&x| x as f64).sum();
    Ok(((total / n as f64) as f32, dl))
}

/// dlogits = (softmax(logits) - onehot(target)) * dloss / N
pub fn cross_entropy_backward(logits: &Tensor, targets: &[u32], lse: &Tensor, dloss: f32) -> Result<Tensor> {
    let v = logits.last_dim();
    let n = logits.numel().checked_div(v).unwrap_or(0);
    ensure_shape!(
        n == targets.len() && lse.shape() == [n],
        "cross_entropy_backward",
        "logits {:?}, {} targets, lse {:?}",
        logits.shape(),
        targets.len(),
        lse.shape()
    );
    check_ids("cross_entropy_backward", targets, v)?;
    let (ld, sd) = (logits.data(), lse.data());
    let g = dloss / n as f32;
    let mut dl = Tensor::for_overwrite(logits.shape());
    threads::for_row_chunks(dl.data_mut(), v, ROWS_PER_TASK, |r0, out| {
        for (j, drow) in out.chunks_mut(v).enumerate() {
            let r = r0 + j;
            cpu::exp_shift_sum(&ld[r * v..(r + 1) * v], sd[r], drow);
            for x in drow.iter_mut() {
                *x *= g;
            }
            drow[targets[r] as usize] -= g;
        }
    });
    Ok(dl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_case() {
        // logits [0, ln 3], target 1: p = [1/4, 3/4], loss = -ln(3/4) = 0.2876821
        let l = Tensor::from_slice(&[1, 2], &[0.0, 3.0f32.ln()]).unwrap();
        let (loss, lse) = cross_entropy_forward(&l, &[1]).unwrap();
        assert!((loss - 0.287_682_1).abs() < 1e-6);
        let d = cross_entropy_backward(&l, &[1], &lse, 1.0).unwrap();
        assert!((d.data()[0] - 0.25).abs() < 1e-6 && (d.data()[1] + 0.25).abs() < 1e-6);
        let (loss2, d2) = cross_entropy_fused(&l, &[1]).unwrap();
        assert!((loss2 - loss).abs() < 1e-7);
        for (a, b) in d2.data().iter().zip(d.data()) {
            assert!((a - b).abs() < 1e-7);
        }
        assert!(cross_entropy_forward(&l, &[2]).is_err());
        assert!(cross_entropy_forward(&l, &[0, 1]).is_err());
    }
}
