//! Causal depthwise 1-D convolution over time, forward and backward, optionally evaluated only at
//! selected positions (the tokens a router sent to a conv path):
//!   y[b, t, c] = Σ_{s<K} w[c, s] · x[b, t - (K-1) + s, c]     (x is zero before t = 0)
//! which is PyTorch's Conv1d(groups=D, padding=K-1) with weight [D, 1, K], truncated to T outputs.
//! Layouts: x [B, T, D]; w [D, K]; rows (flattened b·T + t, strictly ascending) -> y [M, D],
//! or without rows y [B, T, D].

use crate::cpu;
use crate::error::{ensure_shape, Error, Result};
use crate::tensor::Tensor;
use crate::threads;
use rayon::prelude::*;

#[derive(Clone, Copy)]
struct Dims {
    t: usize,
    d: usize,
    k: usize,
    n: usize,
}

fn dims(op: &'static str, x: &Tensor, w: &Tensor, rows: Option<&[u32]>) -> Result<Dims> {
    ensure_shape!(
        x.ndim() == 3 && w.ndim() == 2 && w.shape()[0] == x.shape()[2] && w.shape()[1] > 0,
        op,
        "need x [B, T, D] and w [D, K], got x {:?}, w {:?}",
        x.shape(),
        w.shape()
    );
    let (b, t, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    if let Some(rows) = rows {
        if !rows.windows(2).all(|p| p[0] < p[1]) || rows.last().is_some_and(|&r| r as usize >= b * t) {
            return Err(Error::value(op, format!("rows must ascend strictly and lie below B·T = {}", b * t)));
        }
    }
    Ok(Dims { t, d, k: w.shape()[1], n: b * t })
}

/// w [D, K] -> [K, D], so each tap is a contiguous row.
fn taps(w: &Tensor, d: &Dims) -> Vec<f32> {
    let mut wt = vec![0.0f32; d.k * d.d];
    for c in 0..d.d {
        for s in 0..d.k {
            wt[s * d.d + c] = w.data()[c * d.k + s];
        }
    }
    wt
}

pub fn dwconv_forward(x: &Tensor, w: &Tensor, rows: Option<&[u32]>) -> Result<Tensor> {
    let dm = dims("dwconv", x, w, rows)?;
    let (t, d, k) = (dm.t, dm.d, dm.k);
    let wt = taps(w, &dm);
    let mut y = match rows {
        Some(r) => Tensor::zeros(&[r.len(), d]),
        None => Tensor::zeros(x.shape()),
    };
    let xd = x.data();
    threads::for_row_chunks(y.data_mut(), d, threads::rows_per_task(d * k), |r0, out| {
        let mut tmp = vec![0.0f32; d];
        for (j, row) in out.chunks_mut(d).enumerate() {
            let p = rows.map_or(r0 + j, |r| r[r0 + j] as usize);
            let tt = p % t;
            for s in (k - 1).saturating_sub(tt)..k {
                let src = p + s + 1 - k;
                cpu::mul(&wt[s * d..(s + 1) * d], &xd[src * d..(src + 1) * d], &mut tmp);
                cpu::axpy(1.0, &tmp, row);
            }
        }
    });
    Ok(y)
}

/// Gradients (dx [B, T, D], dw [D, K]) given dy in the layout of the forward output.
pub fn dwconv_backward(x: &Tensor, w: &Tensor, rows: Option<&[u32]>, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let dm = dims("dwconv_backward", x, w, rows)?;
    let (t, d, k) = (dm.t, dm.d, dm.k);
    let m = rows.map_or(dm.n, |r| r.len());
    ensure_shape!(
        dy.numel() == m * d && dy.last_dim() == d,
        "dwconv_backward",
        "dy {:?} must hold {} rows of {}",
        dy.shape(),
        m,
        d
    );
    let wt = taps(w, &dm);
    // out_of[p] = output row computed at position p, if any.
    let mut out_of = vec![u32::MAX; dm.n];
    match rows {
        Some(r) => r.iter().enumerate().for_each(|(i, &p)| out_of[p as usize] = i as u32),
        None => out_of.iter_mut().enumerate().for_each(|(i, o)| *o = i as u32),
    }
    let (xd, dyd) = (x.data(), dy.data());
    let mut dx = Tensor::zeros(x.shape());
    // dx[p'] = Σ_s w[:, s] ⊙ dy[out at p' + (K-1) - s], within the same sequence.
    threads::for_row_chunks(dx.data_mut(), d, threads::rows_per_task(d * k), |r0, out| {
        let mut tmp = vec![0.0f32; d];
        for (j, row) in out.chunks_mut(d).enumerate() {
            let p = r0 + j;
            for s in 0..k {
                let q = p + k - 1 - s;
                if q / t != p / t || q >= dm.n || out_of[q] == u32::MAX {
                    continue;
                }
                let o = out_of[q] as usize;
                cpu::mul(&wt[s * d..(s + 1) * d], &dyd[o * d..(o + 1) * d], &mut tmp);
                cpu::axpy(1.0, &tmp, row);
            }
        }
    });
    // dw[c, s] = Σ_out dy[out, c] · x[p - (K-1) + s, c]: partials over fixed output blocks.
    let block = threads::rows_per_task(d * k);
    let part = threads::ordered_sum(m.div_ceil(block), k * d, |bi| {
        let mut acc = vec![0.0f32; k * d];
        let mut tmp = vec![0.0f32; d];
        for o in bi * block..((bi + 1) * block).min(m) {
            let p = rows.map_or(o, |r| r[o] as usize);
            for s in (k - 1).saturating_sub(p % t)..k {
                let src = p + s + 1 - k;
                cpu::mul(&dyd[o * d..(o + 1) * d], &xd[src * d..(src + 1) * d], &mut tmp);
                cpu::axpy(1.0, &tmp, &mut acc[s * d..(s + 1) * d]);
            }
        }
        acc
    });
    let mut dw = Tensor::zeros(w.shape());
    dw.data_mut().par_chunks_mut(k).enumerate().for_each(|(c, row)| (0..k).for_each(|s| row[s] = part[s * d + c]));
    Ok((dx, dw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{rand_vec, run_threads_split, same_bits};

    #[test]
    fn hand_case_and_causality() {
        // One channel, K = 3, w = [1, 10, 100] (oldest tap first), x = [1, 2, 3]:
        // y0 = 100·1; y1 = 10·1 + 100·2 = 210; y2 = 1·1 + 10·2 + 100·3 = 321
        let x = Tensor::from_slice(&[1, 3, 1], &[1.0, 2.0, 3.0]).unwrap();
        let w = Tensor::from_slice(&[1, 3], &[1.0, 10.0, 100.0]).unwrap();
        assert_eq!(dwconv_forward(&x, &w, None).unwrap().data(), &[100.0, 210.0, 321.0]);
        assert_eq!(dwconv_forward(&x, &w, Some(&[2])).unwrap().data(), &[321.0]);
        // Two sequences never mix: the second starts fresh.
        let x2 = Tensor::from_slice(&[2, 2, 1], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(dwconv_forward(&x2, &w, None).unwrap().data(), &[100.0, 210.0, 300.0, 430.0]);
        assert!(dwconv_forward(&x, &w, Some(&[2, 1])).is_err());
    }

    #[test]
    fn routed_rows_equal_dense_rows_and_threads_agree() {
        // 900 routed rows of 20 channels × 5 taps: rows_per_task(100) = 327, so the loops split.
        let (b, t, d, k) = (3, 400, 20, 5);
        let x = Tensor::from_slice(&[b, t, d], &rand_vec(b * t * d, 1)).unwrap();
        let w = Tensor::from_slice(&[d, k], &rand_vec(d * k, 2)).unwrap();
        let rows: Vec<u32> = (0..(b * t) as u32).filter(|r| r % 4 != 0).collect();
        let dense = dwconv_forward(&x, &w, None).unwrap();
        let sel = dwconv_forward(&x, &w, Some(&rows)).unwrap();
        for (m, &r) in rows.iter().enumerate() {
            assert!(same_bits(&sel.data()[m * d..(m + 1) * d], &dense.data()[r as usize * d..(r as usize + 1) * d]));
        }
        let (outs, chunks) = run_threads_split(|| {
            let (a, c) = dwconv_backward(&x, &w, Some(&rows), &sel).unwrap();
            [a, c].map(|z| z.data().to_vec())
        });
        assert!(chunks >= 2, "the work must split to test anything: {chunks} chunk(s)");
        assert!(same_bits(&outs[0][0], &outs[1][0]) && same_bits(&outs[0][1], &outs[1][1]));
    }
}
