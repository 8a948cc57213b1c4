//! The direct kernel: each query row walks its keys in blocks with an online softmax and
//! dispatched dot/axpy primitives, and only routed rows are computed. It serves hard ball
//! pruning (whose "a query keeps its own key" rule is not a per-key bias) and is the reference
//! the tiled path is tested against. Backward recomputes the probabilities in a query pass (dq,
//! dα, the q-side of dw) and a key pass (dk, dv, dkb, the k-side of dw), each writing disjoint
//! rows, with per-task partials of dα, dw summed in task order.

use super::{check_backward, dims, Dims, MetricGrads, MetricInputs};
use crate::cpu;
use crate::error::Result;
use crate::tensor::Tensor;
use rayon::prelude::*;

const KEY_BLOCK: usize = 64;
/// Rows per parallel task; fixed so results never depend on the thread count.
const ROWS_PER_TASK: usize = 16;

/// Precomputed per call, so a score is one dot product plus one lookup:
/// u2 = 2α_h w_h ⊙ q [M, H, hd]; kn [B, T, H] = ‖k‖²_w; kbias = -α_h kn (+ kb when soft);
/// `mask` is kb when pruning is hard.
struct Prep<'a> {
    a: MetricInputs<'a>,
    d: Dims,
    u2: Vec<f32>,
    kn: Vec<f32>,
    kbias: Vec<f32>,
    mask: Option<&'a [f32]>,
}

impl<'a> Prep<'a> {
    fn new(op: &'static str, a: MetricInputs<'a>) -> Result<Self> {
        let d = dims(op, &a)?;
        let (qd, kd, wd, ald) = (a.q.data(), a.k.data(), a.w.data(), a.alpha.data());
        let mut u2 = vec![0.0f32; d.m * d.h * d.hd];
        u2.par_chunks_mut(d.hd.max(1)).enumerate().for_each(|(x, ur)| {
            let hh = x % d.h;
            cpu::scale_mul(2.0 * ald[hh], &qd[x * d.hd..(x + 1) * d.hd], &wd[hh * d.hd..(hh + 1) * d.hd], ur)
        });
        let (mut kn, mut kbias) = (vec![0.0f32; d.b * d.t * d.h], vec![0.0f32; d.b * d.t * d.h]);
        let soft = a.kb.filter(|_| !a.hard).map(|t| t.data());
        kn.par_chunks_mut(d.h).zip(kbias.par_chunks_mut(d.h)).enumerate().for_each(|(bt, (row, brow))| {
            let mut tmp = vec![0.0f32; d.hd];
            for hh in 0..d.h {
                let kj = &kd[(bt * d.hkv + hh / d.group()) * d.hd..][..d.hd];
                cpu::mul(kj, &wd[hh * d.hd..(hh + 1) * d.hd], &mut tmp);
                row[hh] = cpu::dot(&tmp, kj);
                brow[hh] = -ald[hh] * row[hh] + soft.map_or(0.0, |kb| kb[bt * d.h + hh]);
            }
        });
        let mask = a.kb.filter(|_| a.hard).map(|t| t.data());
        Ok(Prep { a, d, u2, kn, kbias, mask })
    }

    /// (batch, position) of query row r.
    fn pos(&self, r: usize) -> (usize, usize) {
        let p = self.a.rows.map_or(r, |rows| rows[r] as usize);
        (p / self.d.t, p % self.d.t)
    }

    /// Whether query i sees key j (j ≤ i) under hard pruning.
    #[inline]
    fn allowed(&self, b: usize, j: usize, hh: usize, i: usize) -> bool {
        self.mask.is_none_or(|kb| j == i || kb[(b * self.d.t + j) * self.d.h + hh] >= 0.0)
    }

    /// The scaled query row u2 of row r, head hh.
    #[inline]
    fn uq(&self, r: usize, hh: usize) -> &[f32] {
        &self.u2[self.d.q_at(r, hh)..][..self.d.hd]
    }

    /// s_ij given the scaled query `ui` of row i (head hh, kv head g) and key j of batch b.
    #[inline]
    fn score(&self, ui: &[f32], b: usize, j: usize, g: usize, hh: usize) -> f32 {
        let d = &self.d;
        cpu::dot(ui, &self.a.k.data()[d.kv_at(b, j, g)..][..d.hd]) + self.kbias[(b * d.t + j) * d.h + hh]
    }

    /// Query rows (indices into q) at positions b·T + [j, T): the queries that can see key j.
    fn queries_seeing(&self, b: usize, j: usize) -> std::ops::Range<usize> {
        let (lo, hi) = ((b * self.d.t + j) as u32, ((b + 1) * self.d.t) as u32);
        match self.a.rows {
            None => lo as usize..hi as usize,
            Some(rows) => rows.partition_point(|&x| x < lo)..rows.partition_point(|&x| x < hi),
        }
    }
}

/// Returns (o, lse).
pub fn forward(a: MetricInputs) -> Result<(Tensor, Tensor)> {
    let p = Prep::new("metric_attention", a)?;
    let d = p.d;
    let mut o = Tensor::zeros(a.q.shape());
    let mut lse = Tensor::zeros(&[d.m, d.h]);
    let row = d.h * d.hd;
    if d.m == 0 || row == 0 {
        return Ok((o, lse));
    }
    let vd = a.v.data();
    o.data_mut()
        .par_chunks_mut(row * ROWS_PER_TASK)
        .zip(lse.data_mut().par_chunks_mut(d.h * ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, (oc, lc))| {
            let (mut s, mut e, mut keys) = (vec![0.0f32; KEY_BLOCK], vec![0.0f32; KEY_BLOCK], vec![0usize; KEY_BLOCK]);
            for (jr, (orow, lrow)) in oc.chunks_mut(row).zip(lc.chunks_mut(d.h)).enumerate() {
                let r = task * ROWS_PER_TASK + jr;
                let (b, i) = p.pos(r);
                for hh in 0..d.h {
                    let g = hh / d.group();
                    let ui = p.uq(r, hh);
                    let acc = &mut orow[hh * d.hd..(hh + 1) * d.hd];
                    let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
                    for j0 in (0..=i).step_by(KEY_BLOCK) {
                        let mut n = 0;
                        for j in j0..(j0 + KEY_BLOCK).min(i + 1) {
                            if p.allowed(b, j, hh, i) {
                                s[n] = p.score(ui, b, j, g, hh);
                                keys[n] = j;
                                n += 1;
                            }
                        }
                        if n == 0 {
                            continue;
                        }
                        let m_new = m.max(cpu::max(&s[..n]));
                        let corr = (m - m_new).exp(); // 0 on the first block (m = -inf)
                        let esum = cpu::exp_shift_sum(&s[..n], m_new, &mut e[..n]);
                        if corr != 1.0 {
                            acc.iter_mut().for_each(|x| *x *= corr);
                        }
                        l = l * corr + esum;
                        for q in 0..n {
                            cpu::axpy(e[q], &vd[d.kv_at(b, keys[q], g)..][..d.hd], acc);
                        }
                        m = m_new;
                    }
                    let inv = 1.0 / l;
                    acc.iter_mut().for_each(|x| *x *= inv);
                    lrow[hh] = m + l.ln();
                }
            }
        });
    Ok((o, lse))
}

/// Gradients of metric_attention_forward given its outputs o, lse and dout (the layout of o).
pub fn backward(a: MetricInputs, o: &Tensor, lse: &Tensor, dout: &Tensor) -> Result<MetricGrads> {
    let p = Prep::new("metric_attention_backward", a)?;
    let d = p.d;
    check_backward(&a, &d, o, lse, dout)?;
    let (qd, kd, vd, wd, ald, ld, dod) =
        (a.q.data(), a.k.data(), a.v.data(), a.w.data(), a.alpha.data(), lse.data(), dout.data());
    let mut g = MetricGrads::zeros(&a, &d);
    let (qrow, kvrow, hd) = (d.h * d.hd, d.hkv * d.hd, d.hd);
    if d.m == 0 || qrow == 0 {
        return Ok(g);
    }
    // delta[r, h] = dout · o: the softmax backward's row constant.
    let od = o.data();
    let delta: Vec<f32> = (0..d.m * d.h)
        .into_par_iter()
        .map(|x| cpu::dot(&dod[x * hd..(x + 1) * hd], &od[x * hd..(x + 1) * hd]))
        .collect();
    let ds_at = |ui: &[f32], r: usize, hh: usize, b: usize, j: usize| -> (f32, f32) {
        let (x, g) = (r * d.h + hh, hh / d.group());
        let pr = (p.score(ui, b, j, g, hh) - ld[x]).exp();
        let dp = cpu::dot(&dod[x * hd..(x + 1) * hd], &vd[d.kv_at(b, j, g)..][..hd]);
        (pr, pr * (dp - delta[x]))
    };
    // Partials [dα (H) | dw (H·hd)] per task, summed in task order below.
    let plen = d.h + d.h * hd;

    // Query pass: A = Σ_j ds_ij k_j, ρ = Σ_j ds_ij (≈ 0), κ = Σ_j ds_ij kn_j.
    //   dq_i = 2α w ⊙ (A - ρ q_i);  dα += 2 u_i·A - ρ ‖q_i‖²_w - κ;  dw += -α (ρ q_i² - 2 q_i ⊙ A)
    let qparts: Vec<Vec<f32>> =
        g.dq.data_mut()
            .par_chunks_mut(qrow * ROWS_PER_TASK)
            .enumerate()
            .map(|(task, chunk)| {
                let mut part = vec![0.0f32; plen];
                let mut acc = vec![0.0f32; hd];
                for (jr, dqrow) in chunk.chunks_mut(qrow).enumerate() {
                    let r = task * ROWS_PER_TASK + jr;
                    let (b, i) = p.pos(r);
                    for hh in 0..d.h {
                        let g_kv = hh / d.group();
                        acc.fill(0.0);
                        let (mut rho, mut kappa) = (0.0f32, 0.0f32);
                        let ui = p.uq(r, hh);
                        for j in 0..=i {
                            if !p.allowed(b, j, hh, i) {
                                continue;
                            }
                            let (_, ds) = ds_at(ui, r, hh, b, j);
                            cpu::axpy(ds, &kd[d.kv_at(b, j, g_kv)..][..hd], &mut acc);
                            rho += ds;
                            kappa += ds * p.kn[(b * d.t + j) * d.h + hh];
                        }
                        let (al, w, qi) = (ald[hh], &wd[hh * hd..(hh + 1) * hd], &qd[d.q_at(r, hh)..][..hd]);
                        let dqi = &mut dqrow[hh * hd..(hh + 1) * hd];
                        // ‖q‖²_w and (w⊙q)·A, the q-side terms of dα
                        let (qn, wqa) = (0..hd)
                            .fold((0.0f32, 0.0f32), |(n, a), c| (n + w[c] * qi[c] * qi[c], a + w[c] * qi[c] * acc[c]));
                        part[hh] += 2.0 * wqa - rho * qn - kappa;
                        let dwp = &mut part[d.h + hh * hd..d.h + (hh + 1) * hd];
                        for c in 0..hd {
                            dqi[c] = 2.0 * al * w[c] * (acc[c] - rho * qi[c]);
                            dwp[c] -= al * (rho * qi[c] * qi[c] - 2.0 * qi[c] * acc[c]);
                        }
                    }
                }
                part
            })
            .collect();

    // Key pass: Bv = Σ_i ds_ij q_i, c = Σ_i ds_ij (= dkb).  dk_j = Σ_h 2α w ⊙ (Bv - c k_j);
    //   dv_j = Σ_i p_ij dout_i;  dw += -α c k_j².
    let dkb_len = if a.kb.is_some() { d.h } else { 0 };
    let mut dkb_buf = vec![0.0f32; d.b * d.t * dkb_len];
    let mut dkb_chunks: Vec<&mut [f32]> =
        if dkb_len > 0 { dkb_buf.chunks_mut(dkb_len * ROWS_PER_TASK).collect() } else { Vec::new() };
    let n_tasks = (d.b * d.t).div_ceil(ROWS_PER_TASK);
    dkb_chunks.resize_with(n_tasks, Default::default);
    let kparts: Vec<Vec<f32>> =
        g.dk.data_mut()
            .par_chunks_mut(kvrow * ROWS_PER_TASK)
            .zip(g.dv.data_mut().par_chunks_mut(kvrow * ROWS_PER_TASK))
            .zip(dkb_chunks.into_par_iter())
            .enumerate()
            .map(|(task, ((dkc, dvc), dkbc))| {
                let mut part = vec![0.0f32; plen];
                let mut bv = vec![0.0f32; hd];
                for (jr, (dkrow, dvrow)) in dkc.chunks_mut(kvrow).zip(dvc.chunks_mut(kvrow)).enumerate() {
                    let bt = task * ROWS_PER_TASK + jr;
                    let (b, j) = (bt / d.t, bt % d.t);
                    for g_kv in 0..d.hkv {
                        let kj = &kd[d.kv_at(b, j, g_kv)..][..hd];
                        let dkj = &mut dkrow[g_kv * hd..(g_kv + 1) * hd];
                        let dvj = &mut dvrow[g_kv * hd..(g_kv + 1) * hd];
                        for hh in g_kv * d.group()..(g_kv + 1) * d.group() {
                            bv.fill(0.0);
                            let mut c = 0.0f32;
                            for r in p.queries_seeing(b, j) {
                                if !p.allowed(b, j, hh, p.pos(r).1) {
                                    continue;
                                }
                                let (pr, ds) = ds_at(p.uq(r, hh), r, hh, b, j);
                                let x = r * d.h + hh;
                                cpu::axpy(pr, &dod[x * hd..(x + 1) * hd], dvj);
                                cpu::axpy(ds, &qd[x * hd..(x + 1) * hd], &mut bv);
                                c += ds;
                            }
                            let (al, w) = (ald[hh], &wd[hh * hd..(hh + 1) * hd]);
                            let dwp = &mut part[d.h + hh * hd..d.h + (hh + 1) * hd];
                            for cc in 0..hd {
                                dkj[cc] += 2.0 * al * w[cc] * (bv[cc] - c * kj[cc]);
                                dwp[cc] -= al * c * kj[cc] * kj[cc];
                            }
                            if !a.hard && !dkbc.is_empty() {
                                dkbc[jr * d.h + hh] = c;
                            }
                        }
                    }
                }
                part
            })
            .collect();

    let mut total = vec![0.0f32; plen];
    for part in qparts.iter().chain(&kparts) {
        cpu::axpy(1.0, part, &mut total);
    }
    g.dalpha.data_mut().copy_from_slice(&total[..d.h]);
    g.dw.data_mut().copy_from_slice(&total[d.h..]);
    if let Some(dkb) = g.dkb.as_mut() {
        dkb.data_mut().copy_from_slice(&dkb_buf);
    }
    Ok(g)
}
