//! Small differentiable pieces of the sparse blocks, forward and backward:
//! softplus (positive metric weights), a sigmoid bounded to [lo, hi] (the BlackHoleRoPE value
//! gate), per-column scaling (LayerScale, gates), and row gather / concat / split (routing a
//! subset of tokens through a path and stacking the paths' outputs).

use crate::cpu;
use crate::error::{ensure_shape, Error, Result};
use crate::tensor::{copy_par, Tensor};
use crate::threads;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

fn map2(x: &Tensor, dy: Option<&Tensor>, f: impl Fn(f32, f32) -> f32 + Sync) -> Tensor {
    let mut y = Tensor::zeros(x.shape());
    let (xd, dd) = (x.data(), dy.map(|t| t.data()));
    y.data_mut().par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        for (j, v) in o.iter_mut().enumerate() {
            let at = i * CHUNK + j;
            *v = f(xd[at], dd.map_or(0.0, |d| d[at]));
        }
    });
    y
}

fn same(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    ensure_shape!(a.shape() == b.shape(), op, "{:?} vs {:?}", a.shape(), b.shape());
    Ok(())
}

/// softplus(x) = ln(1 + eˣ), computed as max(x, 0) + ln(1 + e^-|x|) so it never overflows.
pub fn softplus_forward(x: &Tensor) -> Tensor {
    map2(x, None, |v, _| v.max(0.0) + (-v.abs()).exp().ln_1p())
}
/// dx = dy · sigmoid(x)
pub fn softplus_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    same("softplus_backward", x, dy)?;
    Ok(map2(x, Some(dy), |v, g| g * cpu::scalar::sigmoid1(v)))
}

/// y = lo + (hi - lo) · sigmoid(x)
pub fn sigmoid_range_forward(x: &Tensor, lo: f32, hi: f32) -> Tensor {
    map2(x, None, move |v, _| lo + (hi - lo) * cpu::scalar::sigmoid1(v))
}
pub fn sigmoid_range_backward(x: &Tensor, dy: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    same("sigmoid_range_backward", x, dy)?;
    Ok(map2(x, Some(dy), move |v, g| {
        let s = cpu::scalar::sigmoid1(v);
        g * (hi - lo) * s * (1.0 - s)
    }))
}

/// y = x ⊙ s over the last dimension.  x: [..., D], s: [D]
pub fn col_scale_forward(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    let d = x.last_dim();
    ensure_shape!(s.shape() == [d], "col_scale", "scale {:?} must be [{}] for x {:?}", s.shape(), d, x.shape());
    let mut y = Tensor::zeros(x.shape());
    let (xd, sd) = (x.data(), s.data());
    threads::for_row_chunks(y.data_mut(), d, threads::rows_per_task(d), |r0, out| {
        for (j, row) in out.chunks_mut(d).enumerate() {
            cpu::mul(&xd[(r0 + j) * d..(r0 + j + 1) * d], sd, row);
        }
    });
    Ok(y)
}

/// dx = dy ⊙ s;  ds = Σ_rows dy ⊙ x, reduced over fixed row blocks in block order.
pub fn col_scale_backward(x: &Tensor, s: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    same("col_scale_backward", x, dy)?;
    let dx = col_scale_forward(dy, s)?;
    let d = x.last_dim();
    let rows = x.numel() / d.max(1);
    let block = threads::rows_per_task(d);
    let (xd, dyd) = (x.data(), dy.data());
    let ds = threads::ordered_sum(rows.div_ceil(block), d, |c| {
        let mut part = vec![0.0f32; d];
        let mut tmp = vec![0.0f32; d];
        for r in c * block..((c + 1) * block).min(rows) {
            cpu::mul(&xd[r * d..(r + 1) * d], &dyd[r * d..(r + 1) * d], &mut tmp);
            cpu::axpy(1.0, &tmp, &mut part);
        }
        part
    });
    Ok((dx, Tensor::from_slice(&[d], &ds)?))
}

fn check_rows(op: &'static str, rows: &[u32], n: usize) -> Result<()> {
    if let Some((i, &r)) = rows.iter().enumerate().find(|(_, &r)| r as usize >= n) {
        return Err(Error::value(op, format!("row {r} at position {i} is out of range for {n} rows")));
    }
    Ok(())
}

/// y[m] = x[rows[m]].  x: [N, D] -> [M, D]
pub fn gather_rows_forward(x: &Tensor, rows: &[u32]) -> Result<Tensor> {
    ensure_shape!(x.ndim() == 2, "gather_rows", "x must be [N, D], got {:?}", x.shape());
    let (n, d) = (x.shape()[0], x.shape()[1]);
    check_rows("gather_rows", rows, n)?;
    let mut y = Tensor::zeros(&[rows.len(), d]);
    let xd = x.data();
    threads::for_row_chunks(y.data_mut(), d, threads::rows_per_task(d), |r0, out| {
        for (j, row) in out.chunks_mut(d).enumerate() {
            let r = rows[r0 + j] as usize;
            row.copy_from_slice(&xd[r * d..(r + 1) * d]);
        }
    });
    Ok(y)
}

/// dx[n] = Σ_{m: rows[m] = n} dy[m] in increasing m (rows may repeat).  dy: [M, D] -> [N, D]
pub fn gather_rows_backward(dy: &Tensor, rows: &[u32], n: usize) -> Result<Tensor> {
    ensure_shape!(
        dy.ndim() == 2 && dy.shape()[0] == rows.len(),
        "gather_rows_backward",
        "dy {:?} must be [{}, D]",
        dy.shape(),
        rows.len()
    );
    check_rows("gather_rows_backward", rows, n)?;
    let d = dy.shape()[1];
    // Counting sort of m by target row, so each dx row is written by one task.
    let mut start = vec![0usize; n + 1];
    rows.iter().for_each(|&r| start[r as usize + 1] += 1);
    (0..n).for_each(|i| start[i + 1] += start[i]);
    let mut cur = start.clone();
    let mut order = vec![0usize; rows.len()];
    for (m, &r) in rows.iter().enumerate() {
        order[cur[r as usize]] = m;
        cur[r as usize] += 1;
    }
    // Each row is written once (zeros where nothing was gathered): no zeroing pass first.
    let mut dx = Tensor::for_overwrite(&[n, d]);
    let dyd = dy.data();
    threads::for_row_chunks(dx.data_mut(), d, threads::rows_per_task(d), |r0, out| {
        for (j, row) in out.chunks_mut(d).enumerate() {
            match &order[start[r0 + j]..start[r0 + j + 1]] {
                [] => row.fill(0.0),
                [first, rest @ ..] => {
                    row.copy_from_slice(&dyd[first * d..(first + 1) * d]);
                    for &m in rest {
                        cpu::axpy(1.0, &dyd[m * d..(m + 1) * d], row);
                    }
                }
            }
        }
    });
    Ok(dx)
}

/// Stacks [M_i, D] tensors into [Σ M_i, D].
pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor> {
    ensure_shape!(!parts.is_empty(), "concat_rows", "nothing to concatenate");
    let d = parts[0].last_dim();
    for p in parts {
        ensure_shape!(
            p.ndim() == 2 && p.shape()[1] == d,
            "concat_rows",
            "every part must be [M, {}], got {:?}",
            d,
            p.shape()
        );
    }
    let total: usize = parts.iter().map(|p| p.shape()[0]).sum();
    // Every element is written by the copies: no zeroing pass first.
    let mut y = Tensor::for_overwrite(&[total, d]);
    let mut at = 0;
    for p in parts {
        copy_par(p.data(), &mut y.data_mut()[at..at + p.numel()]);
        at += p.numel();
    }
    Ok(y)
}

/// Splits [Σ sizes, D] into [sizes_i, D] pieces (the backward of concat_rows).
pub fn split_rows(x: &Tensor, sizes: &[usize]) -> Result<Vec<Tensor>> {
    ensure_shape!(
        x.ndim() == 2 && x.shape()[0] == sizes.iter().sum::<usize>(),
        "split_rows",
        "{:?} cannot split into {:?} rows",
        x.shape(),
        sizes
    );
    let d = x.shape()[1];
    let mut at = 0;
    sizes
        .iter()
        .map(|&m| {
            let t = Tensor::from_slice(&[m, d], &x.data()[at * d..(at + m) * d]);
            at += m;
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{rand_vec, run_threads_split, same_bits};

    #[test]
    fn softplus_is_stable_and_hand_checked() {
        // softplus(0) = ln 2; softplus(100) = 100; softplus(-100) ≈ e^-100 > 0
        let y = softplus_forward(&Tensor::from_slice(&[3], &[0.0, 100.0, -100.0]).unwrap());
        assert!((y.data()[0] - 2f32.ln()).abs() < 1e-7 && y.data()[1] == 100.0 && y.data()[2] > 0.0);
    }

    #[test]
    fn gather_backward_sums_repeats_in_order() {
        let x = Tensor::from_slice(&[3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!(gather_rows_forward(&x, &[2, 0, 2]).unwrap().data(), &[4.0, 5.0, 0.0, 1.0, 4.0, 5.0]);
        let dy = Tensor::from_slice(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(gather_rows_backward(&dy, &[2, 0, 2], 3).unwrap().data(), &[3.0, 4.0, 0.0, 0.0, 6.0, 8.0]);
        assert!(gather_rows_forward(&x, &[3]).is_err());
    }

    #[test]
    fn gather_backward_zeroes_untouched_rows_of_recycled_buffers() {
        // [1024, 512] is over 1 MiB: its buffer is recycled, not zeroed. Fill one with every row,
        // then gather only the even rows: the odd rows of the gradient must be exact zeros.
        let (n, d) = (1024, 512);
        let all: Vec<u32> = (0..n as u32).collect();
        let even: Vec<u32> = (0..n as u32).step_by(2).collect();
        drop(gather_rows_backward(&Tensor::full(&[n, d], 3.0), &all, n).unwrap());
        let dx = gather_rows_backward(&Tensor::full(&[even.len(), d], 2.0), &even, n).unwrap();
        for (r, row) in dx.data().chunks(d).enumerate() {
            assert!(row.iter().all(|&v| v == if r % 2 == 0 { 2.0 } else { 0.0 }), "row {r}");
        }
    }

    #[test]
    fn concat_split_round_trip() {
        let a = Tensor::from_slice(&[2, 3], &rand_vec(6, 1)).unwrap();
        let b = Tensor::zeros(&[0, 3]);
        let c = Tensor::from_slice(&[1, 3], &rand_vec(3, 2)).unwrap();
        let y = concat_rows(&[&a, &b, &c]).unwrap();
        let parts = split_rows(&y, &[2, 0, 1]).unwrap();
        assert!(same_bits(parts[0].data(), a.data()) && parts[1].numel() == 0 && same_bits(parts[2].data(), c.data()));
        assert!(concat_rows(&[&a, &Tensor::zeros(&[1, 2])]).is_err());
    }

    #[test]
    fn col_scale_grad_one_and_two_threads_same_bits() {
        // 3000 rows of 33: rows_per_task(33) = 992, so the reduction splits into 4 chunks.
        let x = Tensor::from_slice(&[3000, 33], &rand_vec(3000 * 33, 3)).unwrap();
        let s = Tensor::from_slice(&[33], &rand_vec(33, 4)).unwrap();
        let (outs, chunks) = run_threads_split(|| col_scale_backward(&x, &s, &x).unwrap().1.data().to_vec());
        assert!(chunks >= 2, "the work must split to test anything: {chunks} chunk(s)");
        assert!(same_bits(&outs[0], &outs[1]));
    }
}
