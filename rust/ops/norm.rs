//! RMSNorm and LayerNorm over the last dimension, forward and backward.
//! Forward returns the per-row statistics (rstd, and mean for LayerNorm) that backward reads.
//! Weight gradients are reduced over fixed row blocks in block order (thread-count independent).

use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use crate::threads;

const ROW_BLOCK: usize = 64;

fn rows_dim(op: &'static str, x: &Tensor, w: &Tensor) -> Result<(usize, usize)> {
    let d = x.last_dim();
    ensure_shape!(
        x.ndim() >= 1 && w.shape() == [d],
        op,
        "weight {:?} must be [{}] for input {:?}",
        w.shape(),
        d,
        x.shape()
    );
    Ok((x.numel() / d.max(1), d))
}

/// y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps).  x: [..., D], w: [D] -> (y, rstd [rows])
pub fn rmsnorm_forward(x: &Tensor, w: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let (n, d) = rows_dim("rmsnorm", x, w)?;
    let mut y = Tensor::zeros(x.shape());
    let mut rstd = Tensor::zeros(&[n]);
    if d == 0 {
        return Ok((y, rstd));
    }
    let (xd, wd) = (x.data(), w.data());
    for_rows(y.data_mut(), rstd.data_mut(), d, |r, yr, rs| {
        let xr = &xd[r * d..(r + 1) * d];
        let s = 1.0 / (cpu::sumsq(xr) / d as f32 + eps).sqrt();
        *rs = s;
        cpu::scale_mul(s, xr, wd, yr);
    });
    Ok((y, rstd))
}

/// dx = rstd * (w*dy - xhat * mean(w*dy*xhat)), dw = sum_rows dy * xhat.
/// One pass: each block of ROW_BLOCK rows writes its dx rows and its dw partial (per row, after
/// w·dy and its dot with x, one SIMD pass: `cpu::fused::rms_backward_row`), and the partials are
/// summed in block order (thread-count independent).
pub fn rmsnorm_backward(x: &Tensor, w: &Tensor, rstd: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    rmsnorm_backward_acc(x, w, rstd, dy, None)
}

/// `rmsnorm_backward` with dx returned as `acc` + dx when `acc` (x's shape) is given: the
/// gradient x already received from its other consumers (the residual stream), added in the
/// same pass instead of by a separate `add` over both buffers. The bits of add(acc, dx).
pub fn rmsnorm_backward_acc(
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    acc: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    use rayon::prelude::*;
    let (n, d) = rows_dim("rmsnorm_backward", x, w)?;
    ensure_shape!(
        dy.shape() == x.shape() && rstd.shape() == [n] && acc.is_none_or(|a| a.shape() == x.shape()),
        "rmsnorm_backward",
        "x {:?}, dy {:?}, rstd {:?}, acc {:?}",
        x.shape(),
        dy.shape(),
        rstd.shape(),
        acc.map(|a| a.shape())
    );
    let (xd, wd, sd, dyd) = (x.data(), w.data(), rstd.data(), dy.data());
    let accd = acc.map(|a| a.data());
    let mut dx = Tensor::for_overwrite(x.shape());
    if n == 0 || d == 0 {
        return Ok((dx, Tensor::zeros(&[d])));
    }
    let partials: Vec<Vec<f32>> = dx
        .data_mut()
        .par_chunks_mut(ROW_BLOCK * d)
        .enumerate()
        .map(|(b, dxb)| {
            let mut acc = vec![0.0f32; d];
            let mut wdy = vec![0.0f32; d];
            for (j, dxr) in dxb.chunks_mut(d).enumerate() {
                let r = b * ROW_BLOCK + j;
                let (xr, dyr, s) = (&xd[r * d..(r + 1) * d], &dyd[r * d..(r + 1) * d], sd[r]);
                cpu::mul(wd, dyr, &mut wdy);
                let c = s * cpu::dot(&wdy, xr) / d as f32; // mean(wdy * xhat), xhat = s*x
                cpu::fused::rms_backward_row(s, c, xr, &wdy, dyr, dxr, &mut acc);
                if let Some(ad) = accd {
                    // 1·a + dx in one rounding: a + dx exactly as `add` gives it.
                    cpu::axpy(1.0, &ad[r * d..(r + 1) * d], dxr);
                }
            }
            acc
        })
        .collect();
    let mut dw = vec![0.0f32; d];
    for p in &partials {
        for (t, v) in dw.iter_mut().zip(p) {
            *t += v;
        }
    }
    Ok((dx, Tensor::from_slice(&[d], &dw)?))
}

/// The residual add fused with the RMSNorm after it: s = x + a, y = rmsnorm(s) (the bits of
/// `add` then `rmsnorm_forward`) in one pass. -> (s, y, rstd [rows])
pub fn add_rmsnorm_forward(x: &Tensor, a: &Tensor, w: &Tensor, eps: f32) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, d) = rows_dim("add_rmsnorm", x, w)?;
    ensure_shape!(x.shape() == a.shape(), "add_rmsnorm", "x {:?} vs residual branch {:?}", x.shape(), a.shape());
    use rayon::prelude::*;
    let mut sum = Tensor::for_overwrite(x.shape());
    let mut y = Tensor::for_overwrite(x.shape());
    let mut rstd = Tensor::for_overwrite(&[n]);
    if n == 0 || d == 0 {
        return Ok((sum, y, rstd));
    }
    let (xd, ad, wd) = (x.data(), a.data(), w.data());
    let rpt = threads::rows_per_task(d);
    sum.data_mut()
        .par_chunks_mut(rpt * d)
        .zip(y.data_mut().par_chunks_mut(rpt * d))
        .zip(rstd.data_mut().par_chunks_mut(rpt))
        .enumerate()
        .for_each(|(t, ((sc, yc), rc))| {
            for (j, ((sr, yr), rs)) in sc.chunks_mut(d).zip(yc.chunks_mut(d)).zip(rc.iter_mut()).enumerate() {
                let r = t * rpt + j;
                cpu::add(&xd[r * d..(r + 1) * d], &ad[r * d..(r + 1) * d], sr);
                let s = 1.0 / (cpu::sumsq(sr) / d as f32 + eps).sqrt();
                *rs = s;
                cpu::scale_mul(s, sr, wd, yr);
            }
        });
    Ok((sum, y, rstd))
}

/// y = (x - mean) * rstd * w + b.  -> (y, mean [rows], rstd [rows])
pub fn layernorm_forward(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, d) = rows_dim("layernorm", x, w)?;
    ensure_shape!(b.shape() == w.shape(), "layernorm", "bias {:?} must match weight {:?}", b.shape(), w.shape());
    let mut y = Tensor::zeros(x.shape());
    let mut mean = Tensor::zeros(&[n]);
    let mut rstd = Tensor::zeros(&[n]);
    if d == 0 {
        return Ok((y, mean, rstd));
    }
    let (xd, wd, bd) = (x.data(), w.data(), b.data());
    for_rows(y.data_mut(), mean.data_mut(), d, |r, yr, mu| {
        let xr = &xd[r * d..(r + 1) * d];
        *mu = cpu::sum(xr) / d as f32;
        for i in 0..d {
            yr[i] = xr[i] - *mu;
        }
        let s = 1.0 / (cpu::sumsq(yr) / d as f32 + eps).sqrt();
        for i in 0..d {
            yr[i] = yr[i] * s * wd[i] + bd[i];
        }
    });
    for (r, rs) in rstd.data_mut().iter_mut().enumerate() {
        let mu = mean.data()[r];
        let xr = &xd[r * d..(r + 1) * d];
        let var: f32 = xr.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / d as f32;
        *rs = 1.0 / (var + eps).sqrt();
    }
    Ok((y, mean, rstd))
}

/// dx = rstd * (g - mean(g) - xhat * mean(g*xhat)), g = w*dy; dw = sum dy*xhat; db = sum dy.
pub fn layernorm_backward(
    x: &Tensor,
    w: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, d) = rows_dim("layernorm_backward", x, w)?;
    ensure_shape!(
        dy.shape() == x.shape() && rstd.shape() == [n] && mean.shape() == [n],
        "layernorm_backward",
        "x {:?}, dy {:?}, mean {:?}, rstd {:?}",
        x.shape(),
        dy.shape(),
        mean.shape(),
        rstd.shape()
    );
    let (xd, wd, md, sd, dyd) = (x.data(), w.data(), mean.data(), rstd.data(), dy.data());
    let mut dx = Tensor::zeros(x.shape());
    let mut dummy = vec![0.0f32; n];
    for_rows(dx.data_mut(), &mut dummy, d, |r, dxr, _| {
        let (xr, dyr, mu, s) = (&xd[r * d..(r + 1) * d], &dyd[r * d..(r + 1) * d], md[r], sd[r]);
        let (mut g_mean, mut gx_mean) = (0.0f32, 0.0f32);
        for i in 0..d {
            let g = wd[i] * dyr[i];
            g_mean += g;
            gx_mean += g * (xr[i] - mu) * s;
        }
        g_mean /= d as f32;
        gx_mean /= d as f32;
        for i in 0..d {
            let xhat = (xr[i] - mu) * s;
            dxr[i] = s * (wd[i] * dyr[i] - g_mean - xhat * gx_mean);
        }
    });
    let sums = threads::ordered_sum(n.div_ceil(ROW_BLOCK), 2 * d, |b| {
        let mut acc = vec![0.0f32; 2 * d];
        for r in b * ROW_BLOCK..((b + 1) * ROW_BLOCK).min(n) {
            let (xr, dyr) = (&xd[r * d..(r + 1) * d], &dyd[r * d..(r + 1) * d]);
            for i in 0..d {
                acc[i] += dyr[i] * (xr[i] - md[r]) * sd[r];
                acc[d + i] += dyr[i];
            }
        }
        acc
    });
    Ok((dx, Tensor::from_slice(&[d], &sums[..d])?, Tensor::from_slice(&[d], &sums[d..])?))
}

/// Runs `f(row, out_row, stat)` over rows in parallel chunks; `stat` is that row's slot.
fn for_rows<F>(out: &mut [f32], stats: &mut [f32], d: usize, f: F)
where
    F: Fn(usize, &mut [f32], &mut f32) + Sync + Send,
{
    use rayon::prelude::*;
    let rpt = threads::rows_per_task(d);
    out.par_chunks_mut(d * rpt).zip(stats.par_chunks_mut(rpt)).enumerate().for_each(|(t, (o, s))| {
        for (j, (row, st)) in o.chunks_mut(d).zip(s.iter_mut()).enumerate() {
            f(t * rpt + j, row, st);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{assert_close, rand_vec, run_threads, same_bits};

    #[test]
    fn rmsnorm_hand_case() {
        // x = [3, 4]: mean(x^2) = 12.5, rstd = 1/sqrt(12.5) = 0.2828427; w = [1, 2] -> [0.848528, 2.262742]
        let x = Tensor::from_slice(&[1, 2], &[3.0, 4.0]).unwrap();
        let w = Tensor::from_slice(&[2], &[1.0, 2.0]).unwrap();
        let (y, r) = rmsnorm_forward(&x, &w, 0.0).unwrap();
        assert_close(y.data(), &[0.848_528_1, 2.262_741_7], 1e-6, 0.0, "rmsnorm");
        assert_close(r.data(), &[0.282_842_7], 1e-6, 0.0, "rstd");
        assert!(rmsnorm_forward(&x, &Tensor::zeros(&[3]), 1e-5).is_err());
    }

    #[test]
    fn backward_threads_same_bits() {
        let (n, d) = (300, 48);
        let x = Tensor::from_slice(&[n, d], &rand_vec(n * d, 1)).unwrap();
        let w = Tensor::from_slice(&[d], &rand_vec(d, 2)).unwrap();
        let b = Tensor::from_slice(&[d], &rand_vec(d, 3)).unwrap();
        let dy = Tensor::from_slice(&[n, d], &rand_vec(n * d, 4)).unwrap();
        let outs = run_threads(|| {
            let (_, r) = rmsnorm_forward(&x, &w, 1e-5).unwrap();
            let (dx, dw) = rmsnorm_backward(&x, &w, &r, &dy).unwrap();
            let (_, mu, rs) = layernorm_forward(&x, &w, &b, 1e-5).unwrap();
            let (lx, lw, lb) = layernorm_backward(&x, &w, &mu, &rs, &dy).unwrap();
            [dx, dw, lx, lw, lb].map(|t| t.data().to_vec())
        });
        for (a, b) in outs[0].iter().zip(&outs[1]) {
            assert!(same_bits(a, b));
        }
    }

    /// Scalar twin of the fused residual add + RMSNorm: the bits of `add` then
    /// `rmsnorm_forward`, for 1 and 2 threads; and the one-pass backward against an f64
    /// reference of dx and dw.
    #[test]
    fn add_rmsnorm_is_add_then_rmsnorm_and_backward_matches_f64() {
        for &(n, d) in &[(1usize, 1usize), (5, 7), (300, 128), (1030, 48)] {
            let x = Tensor::from_slice(&[n, d], &rand_vec(n * d, 11)).unwrap();
            let a = Tensor::from_slice(&[n, d], &rand_vec(n * d, 12)).unwrap();
            let w = Tensor::from_slice(&[d], &rand_vec(d, 13)).unwrap();
            let dy = Tensor::from_slice(&[n, d], &rand_vec(n * d, 14)).unwrap();
            let s0 = crate::ops::elementwise::add(&x, &a).unwrap();
            let (y0, r0) = rmsnorm_forward(&s0, &w, 1e-5).unwrap();
            // (1030, 48): 2 tasks of rows forward, 17 row blocks backward
            let outs = run_threads(|| {
                let (s, y, r) = add_rmsnorm_forward(&x, &a, &w, 1e-5).unwrap();
                let (dx, dw) = rmsnorm_backward(&s, &w, &r, &dy).unwrap();
                [s, y, r, dx, dw].map(|t| t.data().to_vec())
            });
            for o in &outs {
                assert!(same_bits(&o[0], s0.data()) && same_bits(&o[1], y0.data()) && same_bits(&o[2], r0.data()));
                assert!(outs[0].iter().zip(o).all(|(p, q)| same_bits(p, q)));
            }
            // f64 reference of the backward
            let (sd, wd, dyd) = (s0.data(), w.data(), dy.data());
            let mut wdx = vec![0.0f32; n * d];
            let mut wdw = vec![0.0f64; d];
            for r in 0..n {
                let row: Vec<f64> = sd[r * d..(r + 1) * d].iter().map(|&v| v as f64).collect();
                let rs = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + 1e-5).sqrt();
                let g: Vec<f64> = (0..d).map(|i| dyd[r * d + i] as f64 * wd[i] as f64).collect();
                let c = (0..d).map(|i| g[i] * row[i] * rs).sum::<f64>() / d as f64;
                for i in 0..d {
                    wdx[r * d + i] = (rs * (g[i] - c * rs * row[i])) as f32;
                    wdw[i] += dyd[r * d + i] as f64 * row[i] * rs;
                }
            }
            assert_close(&outs[0][3], &wdx, 1e-4, 1e-5, "rmsnorm dx");
            assert_close(&outs[0][4], &wdw.iter().map(|&v| v as f32).collect::<Vec<_>>(), 1e-4, 1e-4, "rmsnorm dw");
        }
        assert!(
            add_rmsnorm_forward(&Tensor::zeros(&[2, 3]), &Tensor::zeros(&[3, 2]), &Tensor::zeros(&[3]), 1e-5).is_err()
        );
    }
}
