//! Metric attention (SPEC §6.2), causal and memory-efficient, forward and backward:
//!   s_ij = -α_h · Σ_c w_hc (q_ic - k_jc)² + kb_jh,   o_i = softmax_j≤i(s_ij) · v_j
//! with w > 0 (the caller applies softplus) and an optional per-key bias kb (the ball penalty).
//! Expanding the square gives one GEMM-like product plus norms,
//!   s_ij = α (2 (w⊙q_i)·k_j − ‖k_j‖²_w − ‖q_i‖²_w),
//! where the last term is constant along a row, cancels in the softmax, and is left out.
//! Like `attention`, each query row walks its keys in blocks with an online softmax, so no
//! B·H·T·T buffer exists; backward recomputes the probabilities in a query pass (dq, dα, half of
//! dw) and a key pass (dk, dv, dkb, the rest of dw), each writing disjoint rows.
//!
//! Layouts: k, v [B, T, Hkv, hd] (MQA: Hkv = 1); q and o [B, T, H, hd], or with `rows` (routed
//! queries) [M, H, hd] where rows[m] = b·T + i lists the M query positions in strictly ascending
//! order; lse [M, H] (M = B·T without rows); α [H]; w [H, hd]; kb [B, T, H].
//! `hard`: inference-time ball pruning — key j is skipped for query i ≠ j when kb_jh < 0 (outside
//! the ball), and kb adds nothing; a query always keeps itself, so no row is empty.

use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

const KEY_BLOCK: usize = 64;
/// Rows per parallel task; fixed so results never depend on the thread count.
const ROWS_PER_TASK: usize = 16;

/// The operands of one metric attention call.
#[derive(Clone, Copy)]
pub struct MetricInputs<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub alpha: &'a Tensor,
    pub w: &'a Tensor,
    pub kb: Option<&'a Tensor>,
    pub rows: Option<&'a [u32]>,
    pub hard: bool,
}

/// Gradients of every differentiable operand (dkb only when kb was given).
pub struct MetricGrads {
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    pub dalpha: Tensor,
    pub dw: Tensor,
    pub dkb: Option<Tensor>,
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    hkv: usize,
    hd: usize,
    m: usize,
}

impl Dims {
    fn kv_at(&self, b: usize, j: usize, g: usize) -> usize {
        ((b * self.t + j) * self.hkv + g) * self.hd
    }
    fn q_at(&self, r: usize, h: usize) -> usize {
        (r * self.h + h) * self.hd
    }
    fn group(&self) -> usize {
        self.h / self.hkv
    }
}

fn dims(op: &'static str, a: &MetricInputs) -> Result<Dims> {
    let (q, k) = (a.q, a.k);
    ensure_shape!(k.ndim() == 4 && a.v.shape() == k.shape() && k.shape()[2] > 0, op, "k {:?} and v {:?} must both be [B, T, Hkv, hd]", k.shape(), a.v.shape());
    let (b, t, hkv, hd) = (k.shape()[0], k.shape()[1], k.shape()[2], k.shape()[3]);
    let (h, m) = match a.rows {
        None => {
            ensure_shape!(q.ndim() == 4 && q.shape()[..2] == [b, t] && q.shape()[3] == hd, op, "q {:?} must be [{}, {}, H, {}]", q.shape(), b, t, hd);
            (q.shape()[2], b * t)
        }
        Some(rows) => {
            ensure_shape!(q.ndim() == 3 && q.shape()[0] == rows.len() && q.shape()[2] == hd, op, "q {:?} must be [{}, H, {}] for {} rows", q.shape(), rows.len(), hd, rows.len());
            if !rows.windows(2).all(|w| w[0] < w[1]) || rows.last().is_some_and(|&r| r as usize >= b * t) {
                return Err(crate::Error::value(op, format!("rows must ascend strictly and lie below B·T = {}", b * t)));
            }
            (q.shape()[1], rows.len())
        }
    };
    ensure_shape!(h > 0 && h % hkv == 0, op, "{} query heads are not a multiple of {} kv heads", h, hkv);
    ensure_shape!(a.alpha.shape() == [h] && a.w.shape() == [h, hd], op, "alpha {:?} must be [{}], w {:?} must be [{}, {}]", a.alpha.shape(), h, a.w.shape(), h, hd);
    if let Some(kb) = a.kb {
        ensure_shape!(kb.shape() == [b, t, h], op, "kb {:?} must be [{}, {}, {}]", kb.shape(), b, t, h);
    }
    Ok(Dims { b, t, h, hkv, hd, m })
}

/// Precomputed per call: u = w ⊙ q [M, H, hd], the key norms kn [B, T, H] = Σ_c w_hc k_c².
struct Prep<'a> {
    a: MetricInputs<'a>,
    d: Dims,
    u: Vec<f32>,
    kn: Vec<f32>,
}

impl<'a> Prep<'a> {
    fn new(op: &'static str, a: MetricInputs<'a>) -> Result<Self> {
        let d = dims(op, &a)?;
        let (qd, kd, wd) = (a.q.data(), a.k.data(), a.w.data());
        let mut u = vec![0.0f32; d.m * d.h * d.hd];
        u.par_chunks_mut(d.hd.max(1)).enumerate().for_each(|(x, ur)| cpu::mul(&qd[x * d.hd..(x + 1) * d.hd], &wd[(x % d.h) * d.hd..(x % d.h + 1) * d.hd], ur));
        let mut kn = vec![0.0f32; d.b * d.t * d.h];
        kn.par_chunks_mut(d.h).enumerate().for_each(|(bt, row)| {
            let mut tmp = vec![0.0f32; d.hd];
            for (hh, out) in row.iter_mut().enumerate() {
                let kj = &kd[(bt * d.hkv + hh / d.group()) * d.hd..][..d.hd];
                cpu::mul(kj, &wd[hh * d.hd..(hh + 1) * d.hd], &mut tmp);
                *out = cpu::dot(&tmp, kj);
            }
        });
        Ok(Prep { a, d, u, kn })
    }

    /// (batch, position) of query row r.
    fn pos(&self, r: usize) -> (usize, usize) {
        let p = self.a.rows.map_or(r, |rows| rows[r] as usize);
        (p / self.d.t, p % self.d.t)
    }

    fn kb(&self, b: usize, j: usize, hh: usize) -> f32 {
        self.a.kb.map_or(0.0, |kb| kb.data()[(b * self.d.t + j) * self.d.h + hh])
    }

    /// Whether query i sees key j (j ≤ i) under hard pruning.
    fn allowed(&self, b: usize, j: usize, hh: usize, i: usize) -> bool {
        !(self.a.hard && j != i && self.kb(b, j, hh) < 0.0)
    }

    /// s_ij for row r (head hh) at key j of batch b.
    fn score(&self, r: usize, hh: usize, b: usize, j: usize) -> f32 {
        let d = &self.d;
        let ui = &self.u[d.q_at(r, hh)..d.q_at(r, hh) + d.hd];
        let kj = &self.a.k.data()[d.kv_at(b, j, hh / d.group())..][..d.hd];
        let s = self.a.alpha.data()[hh] * (2.0 * cpu::dot(ui, kj) - self.kn[(b * d.t + j) * d.h + hh]);
        if self.a.hard { s } else { s + self.kb(b, j, hh) }
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
pub fn metric_attention_forward(a: MetricInputs) -> Result<(Tensor, Tensor)> {
    let p = Prep::new("metric_attention", a)?;
    let d = p.d;
    let mut o = Tensor::zeros(a.q.shape());
    let mut lse = Tensor::zeros(&[d.m, d.h]);
    let row = d.h * d.hd;
    if d.m == 0 || row == 0 {
        return Ok((o, lse));
    }
    let vd = a.v.data();
    o.data_mut().par_chunks_mut(row * ROWS_PER_TASK).zip(lse.data_mut().par_chunks_mut(d.h * ROWS_PER_TASK)).enumerate().for_each(|(task, (oc, lc))| {
        let (mut s, mut e, mut keys) = (vec![0.0f32; KEY_BLOCK], vec![0.0f32; KEY_BLOCK], vec![0usize; KEY_BLOCK]);
        for (jr, (orow, lrow)) in oc.chunks_mut(row).zip(lc.chunks_mut(d.h)).enumerate() {
            let r = task * ROWS_PER_TASK + jr;
            let (b, i) = p.pos(r);
            for hh in 0..d.h {
                let g = hh / d.group();
                let acc = &mut orow[hh * d.hd..(hh + 1) * d.hd];
                let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
                for j0 in (0..=i).step_by(KEY_BLOCK) {
                    let mut n = 0;
                    for j in j0..(j0 + KEY_BLOCK).min(i + 1) {
                        if p.allowed(b, j, hh, i) {
                            s[n] = p.score(r, hh, b, j);
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
pub fn metric_attention_backward(a: MetricInputs, o: &Tensor, lse: &Tensor, dout: &Tensor) -> Result<MetricGrads> {
    let p = Prep::new("metric_attention_backward", a)?;
    let d = p.d;
    ensure_shape!(o.shape() == a.q.shape() && dout.shape() == a.q.shape() && lse.shape() == [d.m, d.h], "metric_attention_backward",
        "o {:?}, dout {:?} must match q {:?}; lse {:?} must be [{}, {}]", o.shape(), dout.shape(), a.q.shape(), lse.shape(), d.m, d.h);
    let (qd, kd, vd, wd, ald, ld, dod) = (a.q.data(), a.k.data(), a.v.data(), a.w.data(), a.alpha.data(), lse.data(), dout.data());
    let mut g = MetricGrads {
        dq: Tensor::zeros(a.q.shape()),
        dk: Tensor::zeros(a.k.shape()),
        dv: Tensor::zeros(a.k.shape()),
        dalpha: Tensor::zeros(&[d.h]),
        dw: Tensor::zeros(&[d.h, d.hd]),
        dkb: a.kb.map(|kb| Tensor::zeros(kb.shape())),
    };
    let (qrow, kvrow, hd) = (d.h * d.hd, d.hkv * d.hd, d.hd);
    if d.m == 0 || qrow == 0 {
        return Ok(g);
    }
    // delta[r, h] = dout · o: the softmax backward's row constant.
    let od = o.data();
    let delta: Vec<f32> = (0..d.m * d.h).into_par_iter().map(|x| cpu::dot(&dod[x * hd..(x + 1) * hd], &od[x * hd..(x + 1) * hd])).collect();
    let ds_at = |r: usize, hh: usize, b: usize, j: usize| -> (f32, f32) {
        let x = r * d.h + hh;
        let pr = (p.score(r, hh, b, j) - ld[x]).exp();
        let dp = cpu::dot(&dod[x * hd..(x + 1) * hd], &vd[d.kv_at(b, j, hh / d.group())..][..hd]);
        (pr, pr * (dp - delta[x]))
    };
    // Partials [dα (H) | dw (H·hd)] per task, summed in task order below.
    let plen = d.h + d.h * hd;

    // Query pass: A = Σ_j ds_ij k_j, ρ = Σ_j ds_ij (≈ 0), κ = Σ_j ds_ij kn_j.
    //   dq_i = 2α w ⊙ (A - ρ q_i);  dα += 2 u_i·A - ρ ‖q_i‖²_w - κ;  dw += -α (ρ q_i² - 2 q_i ⊙ A)
    let qparts: Vec<Vec<f32>> = g.dq.data_mut().par_chunks_mut(qrow * ROWS_PER_TASK).enumerate().map(|(task, chunk)| {
        let mut part = vec![0.0f32; plen];
        let mut acc = vec![0.0f32; hd];
        for (jr, dqrow) in chunk.chunks_mut(qrow).enumerate() {
            let r = task * ROWS_PER_TASK + jr;
            let (b, i) = p.pos(r);
            for hh in 0..d.h {
                let g_kv = hh / d.group();
                acc.fill(0.0);
                let (mut rho, mut kappa) = (0.0f32, 0.0f32);
                for j in 0..=i {
                    if !p.allowed(b, j, hh, i) {
                        continue;
                    }
                    let (_, ds) = ds_at(r, hh, b, j);
                    cpu::axpy(ds, &kd[d.kv_at(b, j, g_kv)..][..hd], &mut acc);
                    rho += ds;
                    kappa += ds * p.kn[(b * d.t + j) * d.h + hh];
                }
                let (al, w, qi, ui) = (ald[hh], &wd[hh * hd..(hh + 1) * hd], &qd[d.q_at(r, hh)..][..hd], &p.u[d.q_at(r, hh)..][..hd]);
                let dqi = &mut dqrow[hh * hd..(hh + 1) * hd];
                let qn = cpu::dot(ui, qi);
                part[hh] += 2.0 * cpu::dot(ui, &acc) - rho * qn - kappa;
                let dwp = &mut part[d.h + hh * hd..d.h + (hh + 1) * hd];
                for c in 0..hd {
                    dqi[c] = 2.0 * al * w[c] * (acc[c] - rho * qi[c]);
                    dwp[c] -= al * (rho * qi[c] * qi[c] - 2.0 * qi[c] * acc[c]);
                }
            }
        }
        part
    }).collect();

    // Key pass: Bv = Σ_i ds_ij q_i, c = Σ_i ds_ij (= dkb).  dk_j = Σ_h 2α w ⊙ (Bv - c k_j);
    //   dv_j = Σ_i p_ij dout_i;  dw += -α c k_j².
    let dkb_len = if a.kb.is_some() { d.h } else { 0 };
    let mut dkb_buf = vec![0.0f32; d.b * d.t * dkb_len];
    let mut dkb_chunks: Vec<&mut [f32]> = if dkb_len > 0 { dkb_buf.chunks_mut(dkb_len * ROWS_PER_TASK).collect() } else { Vec::new() };
    let n_tasks = (d.b * d.t).div_ceil(ROWS_PER_TASK);
    dkb_chunks.resize_with(n_tasks, Default::default);
    let kparts: Vec<Vec<f32>> = g.dk.data_mut().par_chunks_mut(kvrow * ROWS_PER_TASK).zip(g.dv.data_mut().par_chunks_mut(kvrow * ROWS_PER_TASK)).zip(dkb_chunks.into_par_iter()).enumerate().map(
        |(task, ((dkc, dvc), dkbc))| {
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
                            let (pr, ds) = ds_at(r, hh, b, j);
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
        },
    ).collect();

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

#[cfg(test)]
#[path = "metric_attention_tests.rs"]
mod tests;
