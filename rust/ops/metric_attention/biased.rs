//! Metric attention on the tiled attention kernels with a per-key score bias (where
//! `attention::bias_supported(hd)`: the row layout, AVX2 and scalar). With
//!   q̃_i = 2α_h w_h ⊙ q_i,   bias_jh = −α_h ‖k_j‖²_{w_h} + kb_jh
//! q̃_i·k_j + bias_jh = s_ij + α_h ‖q_i‖²_{w_h}: the metric score up to the row constant that
//! cancels in the softmax, so attention_bias(q̃, k, v, bias, scale 1) is metric attention. The
//! math of `tiled`'s bias lane, at hd lanes instead of hd + 1 padded to NR (32 instead of 48 on
//! AVX2), and k, v are read as they are (GQA in the kernels, no per-head copies). Routed queries
//! sit at their positions in a dense q̃ (zero elsewhere; lse +∞ there in backward, so their P
//! and every gradient they could add is zero). Gradients map back through q̃ and the bias by the
//! chain rule.

use super::{check_backward, dims, MetricGrads, MetricInputs};
use crate::error::Result;
use crate::ops::attention::{attention_backward_bias, attention_forward_bias};
use crate::tensor::Tensor;
use crate::threads;
use rayon::prelude::*;

const NONE: u32 = u32::MAX;
/// Positions per task of the dα, dw reduction (fixed: thread-count independent).
const BLOCK: usize = 64;

struct Prep {
    /// q̃ [B, T, H, hd], zero at positions without a query row.
    qt: Tensor,
    /// bias [B, T, H]
    bias: Tensor,
    /// ‖k_p‖²_{w_h} [B·T, H]
    kn: Vec<f32>,
    /// The query row computed at each position, or NONE.
    row_of: Vec<u32>,
}

fn prepare(a: &MetricInputs, d: &super::Dims) -> Prep {
    let (h, hd, n) = (d.h, d.hd, d.b * d.t);
    let mut row_of = vec![NONE; n];
    (0..d.m).for_each(|m| row_of[super::tiled::pos(a, m)] = m as u32);
    let (qd, kd, wd, ald) = (a.q.data(), a.k.data(), a.w.data(), a.alpha.data());
    let soft = a.kb.filter(|_| !a.hard).map(|t| t.data());
    // Every value of q̃ and the bias is written below, so they need no zeroing pass.
    let (mut qt, mut bias) = (Tensor::for_overwrite(&[d.b, d.t, h, hd]), Tensor::for_overwrite(&[d.b, d.t, h]));
    let mut kn = vec![0.0f32; n * h];
    let rows = qt.data_mut().par_chunks_mut(h * hd).zip(bias.data_mut().par_chunks_mut(h));
    rows.zip(kn.par_chunks_mut(h)).enumerate().for_each(|(p, ((qr, br), knr))| {
        for hh in 0..h {
            let (w, al, g) = (&wd[hh * hd..(hh + 1) * hd], ald[hh], hh / d.group());
            let qh = &mut qr[hh * hd..(hh + 1) * hd];
            if row_of[p] != NONE {
                let q = &qd[d.q_at(row_of[p] as usize, hh)..][..hd];
                (0..hd).for_each(|c| qh[c] = 2.0 * al * w[c] * q[c]);
            } else {
                qh.fill(0.0);
            }
            let k = &kd[(p * d.hkv + g) * hd..][..hd];
            knr[hh] = (0..hd).map(|c| w[c] * k[c] * k[c]).sum();
            br[hh] = -al * knr[hh] + soft.map_or(0.0, |kb| kb[p * h + hh]);
        }
    });
    Prep { qt, bias, kn, row_of }
}

/// Returns (o, lse) in the layouts of `metric_attention_forward`.
pub fn forward(a: MetricInputs) -> Result<(Tensor, Tensor)> {
    let d = dims("metric_attention", &a)?;
    if d.m == 0 || d.h * d.hd == 0 {
        return Ok((Tensor::zeros(a.q.shape()), Tensor::zeros(&[d.m, d.h])));
    }
    let (h, hd) = (d.h, d.hd);
    let pr = prepare(&a, &d);
    let (ot, lt) = attention_forward_bias(&pr.qt, a.k, a.v, &pr.bias, 1.0)?;
    if a.rows.is_none() {
        // Dense: o is q's layout already, lse [B, T, H] is [B·T, H].
        return Ok((ot, lt.reshape(&[d.m, h])?));
    }
    let (mut o, mut lse) = (Tensor::for_overwrite(a.q.shape()), Tensor::for_overwrite(&[d.m, d.h]));
    let (otd, ltd) = (ot.data(), lt.data());
    o.data_mut().par_chunks_mut(h * hd).zip(lse.data_mut().par_chunks_mut(h)).enumerate().for_each(
        |(m, (orow, lrow))| {
            let p = super::tiled::pos(&a, m);
            orow.copy_from_slice(&otd[p * h * hd..(p + 1) * h * hd]);
            lrow.copy_from_slice(&ltd[p * h..(p + 1) * h]);
        },
    );
    Ok((o, lse))
}

/// Gradients given forward's o, lse and dout (q's layout).
pub fn backward(a: MetricInputs, o: &Tensor, lse: &Tensor, dout: &Tensor) -> Result<MetricGrads> {
    let d = dims("metric_attention_backward", &a)?;
    check_backward(&a, &d, o, lse, dout)?;
    if d.m == 0 || d.h * d.hd == 0 {
        return Ok(MetricGrads::zeros(&a, &d));
    }
    let (h, hd, n) = (d.h, d.hd, d.b * d.t);
    let pr = prepare(&a, &d);
    let (dqt, mut dk, dv, db) = if a.rows.is_none() {
        let lt = lse.clone().reshape(&[d.b, d.t, h])?;
        attention_backward_bias(&pr.qt, a.k, a.v, &pr.bias, o, &lt, dout, 1.0)?
    } else {
        // Dense o, lse, dout: zero (lse +∞) at positions without a query row; all written.
        let (mut ot, mut lt, mut dot) = (
            Tensor::for_overwrite(pr.qt.shape()),
            Tensor::for_overwrite(&[d.b, d.t, h]),
            Tensor::for_overwrite(pr.qt.shape()),
        );
        let (od, ld, dod) = (o.data(), lse.data(), dout.data());
        let dense = ot
            .data_mut()
            .par_chunks_mut(h * hd)
            .zip(dot.data_mut().par_chunks_mut(h * hd))
            .zip(lt.data_mut().par_chunks_mut(h));
        dense.enumerate().for_each(|(p, ((orow, drow), lrow))| {
            if pr.row_of[p] == NONE {
                orow.fill(0.0);
                drow.fill(0.0);
                lrow.fill(f32::INFINITY);
                return;
            }
            let m = pr.row_of[p] as usize;
            orow.copy_from_slice(&od[m * h * hd..(m + 1) * h * hd]);
            drow.copy_from_slice(&dod[m * h * hd..(m + 1) * h * hd]);
            lrow.copy_from_slice(&ld[m * h..(m + 1) * h]);
        });
        attention_backward_bias(&pr.qt, a.k, a.v, &pr.bias, &ot, &lt, &dot, 1.0)?
    };
    let (qd, kd, wd, ald, dqd, dbd) = (a.q.data(), a.k.data(), a.w.data(), a.alpha.data(), dqt.data(), db.data());
    // dq = 2α w ⊙ dq̃
    let mut dq = Tensor::for_overwrite(a.q.shape());
    dq.data_mut().par_chunks_mut(h * hd).enumerate().for_each(|(m, row)| {
        let p = super::tiled::pos(&a, m);
        for hh in 0..h {
            let (w, at) = (&wd[hh * hd..(hh + 1) * hd], (p * h + hh) * hd);
            (0..hd).for_each(|c| row[hh * hd + c] = 2.0 * ald[hh] * w[c] * dqd[at + c]);
        }
    });
    // dk -= Σ_h 2α w ⊙ k · db (heads of each group in order); dv is the kernels'; dkb = db.
    let kvrow = d.hkv * hd;
    dk.data_mut().par_chunks_mut(kvrow).enumerate().for_each(|(p, dkr)| {
        for hh in 0..h {
            let (w, gk, dbv) = (&wd[hh * hd..(hh + 1) * hd], hh / d.group(), dbd[p * h + hh]);
            let k = &kd[(p * d.hkv + gk) * hd..][..hd];
            (0..hd).for_each(|c| dkr[gk * hd + c] -= 2.0 * ald[hh] * w[c] * k[c] * dbv);
        }
    });
    // dα = Σ_q 2 (w⊙q)·dq̃ - Σ_k ‖k‖²_w db;  dw = Σ_q 2α q ⊙ dq̃ - Σ_k α k² db   (blocks in order)
    let tot = threads::ordered_sum(n.div_ceil(BLOCK), h + h * hd, |blk| {
        let mut part = vec![0.0f32; h + h * hd];
        for p in blk * BLOCK..((blk + 1) * BLOCK).min(n) {
            for hh in 0..h {
                let (w, al, at, gk) = (&wd[hh * hd..(hh + 1) * hd], ald[hh], (p * h + hh) * hd, hh / d.group());
                let (dbv, k) = (dbd[p * h + hh], &kd[(p * d.hkv + gk) * hd..][..hd]);
                part[hh] -= pr.kn[p * h + hh] * dbv;
                let dw = &mut part[h + hh * hd..h + (hh + 1) * hd];
                (0..hd).for_each(|c| dw[c] -= al * k[c] * k[c] * dbv);
                if pr.row_of[p] != NONE {
                    let q = &qd[d.q_at(pr.row_of[p] as usize, hh)..][..hd];
                    let mut da = 0.0f32;
                    for c in 0..hd {
                        da += 2.0 * w[c] * q[c] * dqd[at + c];
                        dw[c] += 2.0 * al * q[c] * dqd[at + c];
                    }
                    part[hh] += da;
                }
            }
        }
        part
    });
    let mut g =
        MetricGrads { dq, dk, dv, dalpha: Tensor::zeros(&[h]), dw: Tensor::zeros(&[h, hd]), dkb: a.kb.map(|_| db) };
    g.dalpha.data_mut().copy_from_slice(&tot[..h]);
    g.dw.data_mut().copy_from_slice(&tot[h..]);
    Ok(g)
}
