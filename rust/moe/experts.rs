//! A bank of SwiGLU experts run over grouped rows: one dense GEMM per expert and projection over
//! that expert's contiguous block of slots, so the work is proportional to N·k, not to E·N.
//! Empty experts cost nothing in forward and get zero weight gradients.
//!
//! Weights (PyTorch Linear layout, stacked):  w_gate, w_up: [E, H, D]   w_down: [E, D, H]

use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::ops::matmul::gemm;
use crate::tensor::{AlignedBuf, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub h: usize,
    pub d: usize,
    pub s: usize,
}

/// Checks the weights against each other and the rows `xs` [S, D] against them and `offsets`.
pub(super) fn dims(
    op: &'static str,
    xs: &[usize],
    offsets: &[usize],
    wg: &Tensor,
    wu: &Tensor,
    wd: &Tensor,
) -> Result<Dims> {
    ensure_shape!(
        wg.ndim() == 3 && wu.shape() == wg.shape(),
        op,
        "w_gate {:?} and w_up {:?} must both be [E, H, D]",
        wg.shape(),
        wu.shape()
    );
    let (e, h, d) = (wg.shape()[0], wg.shape()[1], wg.shape()[2]);
    ensure_shape!(wd.shape() == [e, d, h], op, "w_down {:?} must be [{}, {}, {}]", wd.shape(), e, d, h);
    ensure_shape!(xs.len() == 2 && xs[1] == d, op, "rows {:?} must be [S, {}]", xs, d);
    let s = xs[0];
    ensure_shape!(
        offsets.len() == e + 1 && offsets[0] == 0 && offsets[e] == s && offsets.windows(2).all(|w| w[0] <= w[1]),
        op,
        "offsets must rise from 0 to {} over {} experts, got {:?}",
        s,
        e,
        offsets
    );
    Ok(Dims { h, d, s })
}

/// a = silu(g) * u over matching chunks (elementwise, fixed chunking).
fn swiglu(g: &[f32], u: &[f32], a: &mut [f32]) {
    a.par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        let r = i * CHUNK..i * CHUNK + o.len();
        cpu::silu(&g[r.clone()], o);
        for (v, uu) in o.iter_mut().zip(&u[r]) {
            *v *= uu;
        }
    });
}

/// Splits `buf` (rows of `width`) into one mutable block per expert along `offsets`.
fn split_rows<'a>(buf: &'a mut [f32], offsets: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    let mut parts = Vec::with_capacity(offsets.len() - 1);
    let mut rest = buf;
    for w in offsets.windows(2) {
        let (head, tail) = rest.split_at_mut((w[1] - w[0]) * width);
        parts.push(head);
        rest = tail;
    }
    parts
}

/// Runs `f(expert, rows r0..r0+m, parts)` for every non-empty expert as parallel tasks. Experts
/// write disjoint blocks and each GEMM is deterministic, so the result does not depend on the
/// schedule; running experts side by side keeps both threads busy when groups are small.
fn per_expert<P: Send>(offsets: &[usize], parts: Vec<P>, f: impl Fn(usize, usize, usize, P) + Sync + Send) {
    parts.into_par_iter().enumerate().for_each(|(ex, p)| {
        let (r0, m) = (offsets[ex], offsets[ex + 1] - offsets[ex]);
        if m > 0 {
            f(ex, r0, m, p);
        }
    });
}

/// ys[slots of e] = (silu(xs W_gate[e]ᵀ) ⊙ xs W_up[e]ᵀ) W_down[e]ᵀ.
/// xs: [S, D] grouped by `offsets` (len E+1) -> (ys [S, D], g [S, H], u [S, H]); g, u are the
/// cache backward reads.
pub fn experts_forward(
    xs: &Tensor,
    offsets: &[usize],
    wg: &Tensor,
    wu: &Tensor,
    wd: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let Dims { h, d, s, .. } = dims("experts", xs.shape(), offsets, wg, wu, wd)?;
    // Every row belongs to one expert, whose GEMMs write it whole: recycled buffers, not zeroed.
    let (mut g, mut u, mut ys) =
        (Tensor::for_overwrite(&[s, h]), Tensor::for_overwrite(&[s, h]), Tensor::for_overwrite(&[s, d]));
    let mut a = AlignedBuf::for_overwrite(s * h);
    let a = a.as_mut_slice();
    let (x, wgd, wud, wdd) = (xs.data(), wg.data(), wu.data(), wd.data());
    let parts = split_rows(g.data_mut(), offsets, h).into_iter().zip(split_rows(u.data_mut(), offsets, h)).collect();
    per_expert(offsets, parts, |ex, r0, m, (ge, ue): (&mut [f32], &mut [f32])| {
        let xe = &x[r0 * d..(r0 + m) * d];
        gemm(m, h, d, xe, false, &wgd[ex * h * d..(ex + 1) * h * d], true, ge, false);
        gemm(m, h, d, xe, false, &wud[ex * h * d..(ex + 1) * h * d], true, ue, false);
    });
    swiglu(g.data(), u.data(), a);
    per_expert(offsets, split_rows(ys.data_mut(), offsets, d), |ex, r0, m, ye| {
        gemm(m, d, h, &a[r0 * h..(r0 + m) * h], false, &wdd[ex * d * h..(ex + 1) * d * h], true, ye, false);
    });
    Ok((ys, g, u))
}

/// Gradients of experts_forward given dys [S, D]: (dxs [S, D], dw_gate, dw_up, dw_down).
pub fn experts_backward(
    xs: &Tensor,
    offsets: &[usize],
    wg: &Tensor,
    wu: &Tensor,
    wd: &Tensor,
    g: &Tensor,
    u: &Tensor,
    dys: &Tensor,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let Dims { h, d, s, .. } = dims("experts_backward", xs.shape(), offsets, wg, wu, wd)?;
    ensure_shape!(
        g.shape() == [s, h] && u.shape() == [s, h] && dys.shape() == [s, d],
        "experts_backward",
        "g {:?}, u {:?} must be [{}, {}]; dys {:?} must be [{}, {}]",
        g.shape(),
        u.shape(),
        s,
        h,
        dys.shape(),
        s,
        d
    );
    let (x, gd, ud, dy) = (xs.data(), g.data(), u.data(), dys.data());
    let (wgd, wud, wdd) = (wg.data(), wu.data(), wd.data());
    // Scratch and gradients come from recycled buffers, not zeroed: every row of a, da, dg and
    // dxs is written whole by its expert, and only empty experts' weight gradients need zeros.
    let (mut abuf, mut dabuf, mut dgbuf) =
        (AlignedBuf::for_overwrite(s * h), AlignedBuf::for_overwrite(s * h), AlignedBuf::for_overwrite(s * h));
    let (a, da, dg) = (abuf.as_mut_slice(), dabuf.as_mut_slice(), dgbuf.as_mut_slice());
    swiglu(gd, ud, a);
    let (mut dwg, mut dwu, mut dwd) =
        (Tensor::for_overwrite(wg.shape()), Tensor::for_overwrite(wu.shape()), Tensor::for_overwrite(wd.shape()));
    for ex in (0..offsets.len() - 1).filter(|&ex| offsets[ex] == offsets[ex + 1]) {
        dwg.data_mut()[ex * h * d..(ex + 1) * h * d].fill(0.0);
        dwu.data_mut()[ex * h * d..(ex + 1) * h * d].fill(0.0);
        dwd.data_mut()[ex * d * h..(ex + 1) * d * h].fill(0.0);
    }
    // da = dy W_down[e];  dW_down[e] = dyᵀ a
    let parts = split_rows(&mut *da, offsets, h).into_iter().zip(dwd.data_mut().chunks_mut(d * h)).collect();
    per_expert(offsets, parts, |ex, r0, m, (dae, dwde): (&mut [f32], &mut [f32])| {
        let dye = &dy[r0 * d..(r0 + m) * d];
        gemm(m, h, d, dye, false, &wdd[ex * d * h..(ex + 1) * d * h], false, dae, false);
        gemm(d, h, m, dye, true, &a[r0 * h..(r0 + m) * h], false, dwde, false);
    });
    // dg = da ⊙ u ⊙ silu'(g);  du = da ⊙ silu(g)   (the buffer a becomes du)
    dg.par_chunks_mut(CHUNK).zip(a.par_chunks_mut(CHUNK)).enumerate().for_each(|(i, (dgo, duo))| {
        let r = i * CHUNK..i * CHUNK + dgo.len();
        let mut dau = vec![0.0f32; dgo.len()];
        cpu::mul(&da[r.clone()], &ud[r.clone()], &mut dau);
        cpu::silu_backward(&gd[r.clone()], &dau, dgo);
        cpu::silu(&gd[r.clone()], duo);
        for (v, dd) in duo.iter_mut().zip(&da[r]) {
            *v *= dd;
        }
    });
    let du = a;
    let mut dxs = Tensor::for_overwrite(&[s, d]);
    let parts = split_rows(dxs.data_mut(), offsets, d)
        .into_iter()
        .zip(dwg.data_mut().chunks_mut(h * d).zip(dwu.data_mut().chunks_mut(h * d)))
        .collect();
    per_expert(offsets, parts, |ex, r0, m, (dx, (dwge, dwue)): (&mut [f32], (&mut [f32], &mut [f32]))| {
        let (dge, due, xe) = (&dg[r0 * h..(r0 + m) * h], &du[r0 * h..(r0 + m) * h], &x[r0 * d..(r0 + m) * d]);
        gemm(m, d, h, dge, false, &wgd[ex * h * d..(ex + 1) * h * d], false, dx, false);
        gemm(m, d, h, due, false, &wud[ex * h * d..(ex + 1) * h * d], false, dx, true);
        gemm(h, d, m, dge, true, xe, false, dwge, false);
        gemm(h, d, m, due, true, xe, false, dwue, false);
    });
    Ok((dxs, dwg, dwu, dwd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{assert_close, rand_vec, run_threads, same_bits};

    fn silu64(x: f64) -> f64 {
        x / (1.0 + (-x).exp())
    }

    /// f64 loop reference of one expert row.
    fn reference_row(x: &[f32], wg: &[f32], wu: &[f32], wd: &[f32], h: usize, d: usize) -> Vec<f64> {
        let a: Vec<f64> = (0..h)
            .map(|j| {
                let g: f64 = (0..d).map(|c| x[c] as f64 * wg[j * d + c] as f64).sum();
                let u: f64 = (0..d).map(|c| x[c] as f64 * wu[j * d + c] as f64).sum();
                silu64(g) * u
            })
            .collect();
        (0..d).map(|c| (0..h).map(|j| a[j] * wd[c * h + j] as f64).sum()).collect()
    }

    fn setup(e: usize, h: usize, d: usize, offsets: &[usize]) -> (Tensor, Tensor, Tensor, Tensor) {
        let s = offsets[e];
        let xs = Tensor::from_slice(&[s, d], &rand_vec(s * d, 11)).unwrap();
        let wg = Tensor::from_slice(&[e, h, d], &rand_vec(e * h * d, 12)).unwrap();
        let wu = Tensor::from_slice(&[e, h, d], &rand_vec(e * h * d, 13)).unwrap();
        let wd = Tensor::from_slice(&[e, d, h], &rand_vec(e * d * h, 14)).unwrap();
        (xs, wg, wu, wd)
    }

    #[test]
    fn forward_matches_per_row_reference_with_empty_experts() {
        let (e, h, d) = (4, 7, 5);
        let offsets = [0, 3, 3, 10, 11]; // expert 1 is empty
        let (xs, wg, wu, wd) = setup(e, h, d, &offsets);
        let (ys, _, _) = experts_forward(&xs, &offsets, &wg, &wu, &wd).unwrap();
        for ex in 0..e {
            for r in offsets[ex]..offsets[ex + 1] {
                let want = reference_row(
                    &xs.data()[r * d..(r + 1) * d],
                    &wg.data()[ex * h * d..],
                    &wu.data()[ex * h * d..],
                    &wd.data()[ex * d * h..],
                    h,
                    d,
                );
                let want: Vec<f32> = want.iter().map(|v| *v as f32).collect();
                assert_close(&ys.data()[r * d..(r + 1) * d], &want, 1e-5, 1e-5, "expert row");
            }
        }
        assert!(experts_forward(&xs, &[0, 3, 3, 10], &wg, &wu, &wd).is_err());
        assert!(experts_forward(&xs, &[0, 3, 2, 10, 11], &wg, &wu, &wd).is_err());
    }

    #[test]
    fn backward_matches_finite_differences_of_a_row() {
        // loss = Σ dys ⊙ ys; check d/dxs and d/dW_gate at a few entries by central differences (f32, loose).
        let (e, h, d) = (2, 4, 3);
        let offsets = [0, 2, 5];
        let (xs, wg, wu, wd) = setup(e, h, d, &offsets);
        let dys = Tensor::from_slice(&[5, d], &rand_vec(5 * d, 15)).unwrap();
        let (_, g, u) = experts_forward(&xs, &offsets, &wg, &wu, &wd).unwrap();
        let (dxs, dwg, dwu, dwd) = experts_backward(&xs, &offsets, &wg, &wu, &wd, &g, &u, &dys).unwrap();
        let loss = |xs: &Tensor, wg: &Tensor, wu: &Tensor, wd: &Tensor| -> f64 {
            let (ys, _, _) = experts_forward(xs, &offsets, wg, wu, wd).unwrap();
            ys.data().iter().zip(dys.data()).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let eps = 1e-2f32;
        let check = |which: usize, i: usize, want: f32| {
            let mut ts = [xs.clone(), wg.clone(), wu.clone(), wd.clone()];
            ts[which].data_mut()[i] += eps;
            let fp = loss(&ts[0], &ts[1], &ts[2], &ts[3]);
            ts[which].data_mut()[i] -= 2.0 * eps;
            let fm = loss(&ts[0], &ts[1], &ts[2], &ts[3]);
            let num = ((fp - fm) / (2.0 * eps as f64)) as f32;
            assert!((num - want).abs() < 2e-3 * (1.0 + want.abs()), "input {which}[{i}]: numeric {num} vs {want}");
        };
        for i in [0, 4, 14] {
            check(0, i, dxs.data()[i]);
        }
        for i in [0, 13, 23] {
            check(1, i, dwg.data()[i]);
            check(2, i, dwu.data()[i]);
            check(3, i, dwd.data()[i]);
        }
    }

    #[test]
    fn one_and_two_threads_same_bits() {
        let (e, h, d) = (3, 96, 80);
        let offsets = [0, 70, 71, 200];
        let (xs, wg, wu, wd) = setup(e, h, d, &offsets);
        let outs = run_threads(|| {
            let (ys, g, u) = experts_forward(&xs, &offsets, &wg, &wu, &wd).unwrap();
            let (a, b, c, dd) = experts_backward(&xs, &offsets, &wg, &wu, &wd, &g, &u, &ys).unwrap();
            [ys, a, b, c, dd].map(|t| t.data().to_vec())
        });
        for (i, (a, b)) in outs[0].iter().zip(&outs[1]).enumerate() {
            assert!(same_bits(a, b), "output {i}");
        }
    }

    #[test]
    fn empty_experts_get_zero_weight_gradients_from_recycled_buffers() {
        // Weights over 1 MiB come from the recycling pool, not zeroed: run a step that fills every
        // expert's gradient, then one where expert 1 is empty, whose gradients must be exact zeros.
        let (e, h, d) = (3, 512, 256);
        for offsets in [[0, 40, 90, 130], [0, 40, 40, 130]] {
            let (xs, wg, wu, wd) = setup(e, h, d, &offsets);
            let (ys, g, u) = experts_forward(&xs, &offsets, &wg, &wu, &wd).unwrap();
            let (_, dwg, dwu, dwd) = experts_backward(&xs, &offsets, &wg, &wu, &wd, &g, &u, &ys).unwrap();
            let empty = offsets[1] == offsets[2];
            for t in [&dwg, &dwu, &dwd] {
                assert_eq!(t.data()[h * d..2 * h * d].iter().all(|&v| v == 0.0), empty);
            }
        }
    }
}
