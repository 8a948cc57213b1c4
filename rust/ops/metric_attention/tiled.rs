//! Metric attention on the tiled dot-product attention kernels (`ops::attention`). With
//!   q̃_i = [2α_h w_h ⊙ q_i, 1],   k̃_jh = [k_j, −α_h ‖k_j‖²_{w_h} + kb_jh],   ṽ_jh = [v_j, 0]
//! q̃_i·k̃_jh = s_ij + α_h ‖q_i‖²_{w_h}: the metric score up to the row constant that cancels in the
//! softmax, so attention(q̃, k̃, ṽ, scale 1) is metric attention, computed as GEMM tiles with an
//! online softmax. k̃ and ṽ hold one head per query head (the bias depends on h), so MQA keys are
//! expanded. Routed queries sit at their positions in a dense q̃ (zero elsewhere): those rows cost
//! a dense head, which the tiled kernel repays many times over, and add nothing to any gradient
//! (their dout is zero). Gradients map back through q̃ and k̃ by the chain rule.
//!
//! Where the attention kernels take a per-key score bias (`attention::bias_supported`: the row
//! layout, AVX2 and scalar with hd a multiple of NR), `biased` runs the same math without the
//! bias lane (hd lanes instead of hd + 1 padded to NR); this path serves the rest (AVX-512,
//! other head sizes).

use super::{check_backward, dims, Dims, MetricGrads, MetricInputs};
use crate::cpu;
use crate::error::Result;
use crate::ops::attention::{attention_backward, attention_forward, bias_supported};
use crate::tensor::Tensor;
use crate::threads;
use rayon::prelude::*;

const NONE: u32 = u32::MAX;
/// Positions per task of the dα, dw reduction (fixed: thread-count independent).
const BLOCK: usize = 64;

struct Aug {
    qt: Tensor,
    kt: Tensor,
    vt: Tensor,
    /// ‖k_p‖²_{w_h} [B·T, H]
    kn: Vec<f32>,
    /// The query row computed at each position, or NONE.
    row_of: Vec<u32>,
}

/// Lanes of q̃, k̃, ṽ: hd + 1 (the bias lane), zero-padded up to a multiple of the microkernel's
/// NR where the attention kernels run the row layout for such widths (AVX2, scalar): hd 32 runs
/// as 48 lanes in the row layout, which measured faster than 33 in the panel layout (whose
/// value panels pad to 48 anyway). AVX-512 runs the panel layout for any width: no padding.
fn aug_width(hd: usize) -> usize {
    let isa = cpu::isa();
    if isa == cpu::Isa::Avx512 {
        return hd + 1;
    }
    let nr = cpu::gemm_shape(isa).1;
    (hd + 1).div_ceil(nr) * nr
}

/// Position (b·T + t) of query row m.
pub(super) fn pos(a: &MetricInputs, m: usize) -> usize {
    a.rows.map_or(m, |r| r[m] as usize)
}

/// q̃, k̃, ṽ as [B, T, H, aug_width(hd)].
fn augment(a: &MetricInputs, d: &Dims) -> Aug {
    let (h, hd, ha, n) = (d.h, d.hd, aug_width(d.hd), d.b * d.t);
    let mut row_of = vec![NONE; n];
    (0..d.m).for_each(|m| row_of[pos(a, m)] = m as u32);
    let (qd, kd, vd, wd, ald) = (a.q.data(), a.k.data(), a.v.data(), a.w.data(), a.alpha.data());
    let soft = a.kb.filter(|_| !a.hard).map(|t| t.data());
    // q̃ (zero at positions without a query row), k̃ and ṽ are written whole (padding lanes
    // explicitly), so they come from recycled buffers without a zeroing pass.
    let (mut qt, mut kt, mut vt) = (
        Tensor::for_overwrite(&[d.b, d.t, h, ha]),
        Tensor::for_overwrite(&[d.b, d.t, h, ha]),
        Tensor::for_overwrite(&[d.b, d.t, h, ha]),
    );
    let mut kn = vec![0.0f32; n * h];
    let rows = qt
        .data_mut()
        .par_chunks_mut(h * ha)
        .zip(kt.data_mut().par_chunks_mut(h * ha))
        .zip(vt.data_mut().par_chunks_mut(h * ha));
    rows.zip(kn.par_chunks_mut(h)).enumerate().for_each(|(p, (((qr, kr), vr), knr))| {
        for hh in 0..h {
            let (w, al, g) = (&wd[hh * hd..(hh + 1) * hd], ald[hh], hh / d.group());
            let (qh, kh, vh) =
                (&mut qr[hh * ha..(hh + 1) * ha], &mut kr[hh * ha..(hh + 1) * ha], &mut vr[hh * ha..(hh + 1) * ha]);
            if row_of[p] != NONE {
                let q = &qd[d.q_at(row_of[p] as usize, hh)..][..hd];
                (0..hd).for_each(|c| qh[c] = 2.0 * al * w[c] * q[c]);
                qh[hd] = 1.0;
                qh[hd + 1..].fill(0.0);
            } else {
                qh.fill(0.0);
            }
            let (k, v) = (&kd[(p * d.hkv + g) * hd..][..hd], &vd[(p * d.hkv + g) * hd..][..hd]);
            kh[..hd].copy_from_slice(k);
            vh[..hd].copy_from_slice(v);
            vh[hd..].fill(0.0);
            kh[hd + 1..].fill(0.0);
            knr[hh] = (0..hd).map(|c| w[c] * k[c] * k[c]).sum();
            kh[hd] = -al * knr[hh] + soft.map_or(0.0, |kb| kb[p * h + hh]);
        }
    });
    Aug { qt, kt, vt, kn, row_of }
}

/// Returns (o, lse) in the layouts of `metric_attention_forward`.
pub fn forward(a: MetricInputs) -> Result<(Tensor, Tensor)> {
    let d = dims("metric_attention", &a)?;
    if bias_supported(d.hd) {
        return super::biased::forward(a);
    }
    let (mut o, mut lse) = (Tensor::zeros(a.q.shape()), Tensor::zeros(&[d.m, d.h]));
    if d.m == 0 || d.h * d.hd == 0 {
        return Ok((o, lse));
    }
    let (h, hd, ha) = (d.h, d.hd, aug_width(d.hd));
    let aug = augment(&a, &d);
    let (ot, lt) = attention_forward(&aug.qt, &aug.kt, &aug.vt, 1.0, None)?;
    let (otd, ltd) = (ot.data(), lt.data());
    o.data_mut().par_chunks_mut(h * hd).zip(lse.data_mut().par_chunks_mut(h)).enumerate().for_each(
        |(m, (orow, lrow))| {
            let p = pos(&a, m);
            for hh in 0..h {
                orow[hh * hd..(hh + 1) * hd].copy_from_slice(&otd[(p * h + hh) * ha..][..hd]);
                lrow[hh] = ltd[p * h + hh];
            }
        },
    );
    Ok((o, lse))
}

/// Gradients given forward's o, lse and dout (q's layout).
pub fn backward(a: MetricInputs, o: &Tensor, lse: &Tensor, dout: &Tensor) -> Result<MetricGrads> {
    let d = dims("metric_attention_backward", &a)?;
    if bias_supported(d.hd) {
        return super::biased::backward(a, o, lse, dout);
    }
    check_backward(&a, &d, o, lse, dout)?;
    let empty = d.m == 0 || d.h * d.hd == 0;
    // dk, dv rows are zeroed in the pass that sums into them (zero tensors when nothing runs).
    let kv_grad = || if empty { Tensor::zeros(a.k.shape()) } else { Tensor::for_overwrite(a.k.shape()) };
    let mut g = MetricGrads {
        dq: Tensor::for_overwrite(a.q.shape()), // every row written below (zero-size when m = 0)
        dk: kv_grad(),
        dv: kv_grad(),
        dalpha: Tensor::zeros(&[d.h]),
        dw: Tensor::zeros(&[d.h, d.hd]),
        dkb: a.kb.map(|kb| Tensor::zeros(kb.shape())),
    };
    if empty {
        return Ok(g);
    }
    let (h, hd, ha, n) = (d.h, d.hd, aug_width(d.hd), d.b * d.t);
    let aug = augment(&a, &d);
    // Dense õ = [o, 0], lse and dõ = [dout, 0]; zero at positions without a query row. Every
    // row is written below, padding included, so no zeroing pass runs first.
    let (mut ot, mut lt, mut dot) = (
        Tensor::for_overwrite(aug.qt.shape()),
        Tensor::for_overwrite(&[d.b, d.t, h]),
        Tensor::for_overwrite(aug.qt.shape()),
    );
    let (od, ld, dod) = (o.data(), lse.data(), dout.data());
    let dense = ot
        .data_mut()
        .par_chunks_mut(h * ha)
        .zip(dot.data_mut().par_chunks_mut(h * ha))
        .zip(lt.data_mut().par_chunks_mut(h));
    dense.enumerate().for_each(|(p, ((orow, drow), lrow))| {
        if aug.row_of[p] == NONE {
            orow.fill(0.0);
            drow.fill(0.0);
            lrow.fill(0.0);
            return;
        }
        let m = aug.row_of[p] as usize;
        for hh in 0..h {
            orow[hh * ha..hh * ha + hd].copy_from_slice(&od[d.q_at(m, hh)..][..hd]);
            drow[hh * ha..hh * ha + hd].copy_from_slice(&dod[d.q_at(m, hh)..][..hd]);
            orow[hh * ha + hd..(hh + 1) * ha].fill(0.0);
            drow[hh * ha + hd..(hh + 1) * ha].fill(0.0);
            lrow[hh] = ld[m * h + hh];
        }
    });
    let (dqt, dkt, dvt) = attention_backward(&aug.qt, &aug.kt, &aug.vt, &ot, &lt, &dot, 1.0, None)?;
    let (qd, kd, wd, ald, dqd, dkd, dvd) =
        (a.q.data(), a.k.data(), a.w.data(), a.alpha.data(), dqt.data(), dkt.data(), dvt.data());
    // dq = 2α w ⊙ dq̃[:hd]
    g.dq.data_mut().par_chunks_mut(h * hd).enumerate().for_each(|(m, row)| {
        let p = pos(&a, m);
        for hh in 0..h {
            let (w, at) = (&wd[hh * hd..(hh + 1) * hd], (p * h + hh) * ha);
            (0..hd).for_each(|c| row[hh * hd + c] = 2.0 * ald[hh] * w[c] * dqd[at + c]);
        }
    });
    // dk = Σ_h (dk̃[:hd] - 2α w ⊙ k · db), dv = Σ_h dṽ[:hd], dkb = db, with db = dk̃[hd] (heads in order)
    let kvrow = d.hkv * hd;
    g.dk.data_mut().par_chunks_mut(kvrow).zip(g.dv.data_mut().par_chunks_mut(kvrow)).enumerate().for_each(
        |(p, (dkr, dvr))| {
            dkr.fill(0.0);
            dvr.fill(0.0);
            for hh in 0..h {
                let (w, at, gk) = (&wd[hh * hd..(hh + 1) * hd], (p * h + hh) * ha, hh / d.group());
                let (db, k) = (dkd[at + hd], &kd[(p * d.hkv + gk) * hd..][..hd]);
                for c in 0..hd {
                    dkr[gk * hd + c] += dkd[at + c] - 2.0 * ald[hh] * w[c] * k[c] * db;
                    dvr[gk * hd + c] += dvd[at + c];
                }
            }
        },
    );
    if let Some(dkb) = g.dkb.as_mut() {
        dkb.data_mut()
            .par_chunks_mut(h)
            .enumerate()
            .for_each(|(p, row)| (0..h).for_each(|hh| row[hh] = dkd[(p * h + hh) * ha + hd]));
    }
    // dα = Σ_q 2 (w⊙q)·dq̃ - Σ_k ‖k‖²_w db;  dw = Σ_q 2α q ⊙ dq̃ - Σ_k α k² db   (blocks in order)
    let tot = threads::ordered_sum(n.div_ceil(BLOCK), h + h * hd, |blk| {
        let mut part = vec![0.0f32; h + h * hd];
        for p in blk * BLOCK..((blk + 1) * BLOCK).min(n) {
            for hh in 0..h {
                let (w, al, at, gk) = (&wd[hh * hd..(hh + 1) * hd], ald[hh], (p * h + hh) * ha, hh / d.group());
                let (db, k) = (dkd[at + hd], &kd[(p * d.hkv + gk) * hd..][..hd]);
                part[hh] -= aug.kn[p * h + hh] * db;
                let dw = &mut part[h + hh * hd..h + (hh + 1) * hd];
                (0..hd).for_each(|c| dw[c] -= al * k[c] * k[c] * db);
                if aug.row_of[p] != NONE {
                    let q = &qd[d.q_at(aug.row_of[p] as usize, hh)..][..hd];
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
    g.dalpha.data_mut().copy_from_slice(&tot[..h]);
    g.dw.data_mut().copy_from_slice(&tot[h..]);
    Ok(g)
}
