//! Causal self-attention, multi-head and grouped-query, memory-efficient: scores are computed
//! per query row in key blocks with an online softmax, so memory is O(T) per row and no
//! B·H·T·T buffer exists. Forward saves the per-row log-sum-exp; backward recomputes scores.
//!
//! Layouts (no transposes needed around the projections):
//!   q: [B, T, Hq, hd]   k, v: [B, T, Hkv, hd]   o: [B, T, Hq, hd]   lse: [B, T, Hq]
//! Query head h reads key/value head h / (Hq / Hkv).

use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

const KEY_BLOCK: usize = 64;
/// Query (or key) rows per parallel task; fixed so results never depend on the thread count.
const ROWS_PER_TASK: usize = 16;

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    hq: usize,
    hkv: usize,
    hd: usize,
}

fn dims(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Dims> {
    ensure_shape!(q.ndim() == 4 && k.ndim() == 4 && v.shape() == k.shape(), op,
        "need q [B,T,Hq,hd], k = v [B,T,Hkv,hd]; got q {:?}, k {:?}, v {:?}", q.shape(), k.shape(), v.shape());
    let (s, ks) = (q.shape(), k.shape());
    ensure_shape!(s[0] == ks[0] && s[1] == ks[1] && s[3] == ks[3] && ks[2] > 0 && s[2] % ks[2] == 0, op,
        "q {:?} and k {:?} must share B, T, hd, and Hq must be a multiple of Hkv", s, ks);
    Ok(Dims { b: s[0], t: s[1], hq: s[2], hkv: ks[2], hd: s[3] })
}

impl Dims {
    #[inline]
    fn q_at(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.t + t) * self.hq + h) * self.hd
    }
    #[inline]
    fn kv_at(&self, b: usize, t: usize, g: usize) -> usize {
        ((b * self.t + t) * self.hkv + g) * self.hd
    }
    fn group(&self) -> usize {
        self.hq / self.hkv
    }
}

/// softmax(q·kᵀ·scale, causal) · v.  Returns (o, lse).
pub fn attention_forward(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<(Tensor, Tensor)> {
    let d = dims("attention", q, k, v)?;
    let mut o = Tensor::zeros(q.shape());
    let mut lse = Tensor::zeros(&[d.b, d.t, d.hq]);
    let (qd, kd, vd) = (q.data(), k.data(), v.data());
    let row = d.hq * d.hd;
    if row == 0 || d.t == 0 {
        return Ok((o, lse));
    }
    o.data_mut().par_chunks_mut(row * ROWS_PER_TASK).zip(lse.data_mut().par_chunks_mut(d.hq * ROWS_PER_TASK)).enumerate().for_each(
        |(task, (oc, lc))| {
            let mut s = vec![0.0f32; KEY_BLOCK];
            let mut p = vec![0.0f32; KEY_BLOCK];
            for (j, (orow, lrow)) in oc.chunks_mut(row).zip(lc.chunks_mut(d.hq)).enumerate() {
                let r = task * ROWS_PER_TASK + j;
                let (b, i) = (r / d.t, r % d.t);
                for h in 0..d.hq {
                    let g = h / d.group();
                    let qi = &qd[d.q_at(b, i, h)..d.q_at(b, i, h) + d.hd];
                    let acc = &mut orow[h * d.hd..(h + 1) * d.hd];
                    let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
                    for j0 in (0..=i).step_by(KEY_BLOCK) {
                        let n = KEY_BLOCK.min(i + 1 - j0);
                        for jj in 0..n {
                            let kj = d.kv_at(b, j0 + jj, g);
                            s[jj] = cpu::dot(qi, &kd[kj..kj + d.hd]) * scale;
                        }
                        let m_new = m.max(cpu::max(&s[..n]));
                        let corr = (m - m_new).exp(); // 0 on the first block (m = -inf)
                        let psum = cpu::exp_shift_sum(&s[..n], m_new, &mut p[..n]);
                        if corr != 1.0 {
                            for a in acc.iter_mut() {
                                *a *= corr;
                            }
                        }
                        l = l * corr + psum;
                        for jj in 0..n {
                            let vj = d.kv_at(b, j0 + jj, g);
                            cpu::axpy(p[jj], &vd[vj..vj + d.hd], acc);
                        }
                        m = m_new;
                    }
                    let inv = 1.0 / l;
                    for a in acc.iter_mut() {
                        *a *= inv;
                    }
                    lrow[h] = m + l.ln();
                }
            }
        },
    );
    Ok((o, lse))
}

/// Gradients of attention_forward. Two passes, each writing disjoint rows (no atomics):
/// dq over query rows, then dk and dv over key rows (summing the query heads of each group).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, lse: &Tensor, dout: &Tensor, scale: f32) -> Result<(Tensor, Tensor, Tensor)> {
    let d = dims("attention_backward", q, k, v)?;
    ensure_shape!(o.shape() == q.shape() && dout.shape() == q.shape() && lse.shape() == [d.b, d.t, d.hq], "attention_backward",
        "o {:?}, dout {:?} must match q {:?}; lse {:?} must be [B,T,Hq]", o.shape(), dout.shape(), q.shape(), lse.shape());
    let (qd, kd, vd, od, ld, dod) = (q.data(), k.data(), v.data(), o.data(), lse.data(), dout.data());
    let mut dq = Tensor::zeros(q.shape());
    let mut dk = Tensor::zeros(k.shape());
    let mut dv = Tensor::zeros(k.shape());
    let (qrow, kvrow) = (d.hq * d.hd, d.hkv * d.hd);
    if qrow == 0 || d.t == 0 {
        return Ok((dq, dk, dv));
    }
    // delta[b,t,h] = dout · o for that row: the softmax backward's row constant.
    let delta: Vec<f32> = (0..d.b * d.t * d.hq).map(|x| {
        let off = x * d.hd;
        cpu::dot(&dod[off..off + d.hd], &od[off..off + d.hd])
    }).collect();

    dq.data_mut().par_chunks_mut(qrow * ROWS_PER_TASK).enumerate().for_each(|(task, chunk)| {
        for (j, dqrow) in chunk.chunks_mut(qrow).enumerate() {
            let r = task * ROWS_PER_TASK + j;
            let (b, i) = (r / d.t, r % d.t);
            for h in 0..d.hq {
                let g = h / d.group();
                let (qo, x) = (d.q_at(b, i, h), (b * d.t + i) * d.hq + h);
                let (qi, doi) = (&qd[qo..qo + d.hd], &dod[qo..qo + d.hd]);
                let dqi = &mut dqrow[h * d.hd..(h + 1) * d.hd];
                for jk in 0..=i {
                    let kj = d.kv_at(b, jk, g);
                    let p = (cpu::dot(qi, &kd[kj..kj + d.hd]) * scale - ld[x]).exp();
                    let ds = p * (cpu::dot(doi, &vd[kj..kj + d.hd]) - delta[x]);
                    cpu::axpy(ds * scale, &kd[kj..kj + d.hd], dqi);
                }
            }
        }
    });

    dk.data_mut().par_chunks_mut(kvrow * ROWS_PER_TASK).zip(dv.data_mut().par_chunks_mut(kvrow * ROWS_PER_TASK)).enumerate().for_each(
        |(task, (dkc, dvc))| {
            for (j, (dkrow, dvrow)) in dkc.chunks_mut(kvrow).zip(dvc.chunks_mut(kvrow)).enumerate() {
                let r = task * ROWS_PER_TASK + j;
                let (b, jk) = (r / d.t, r % d.t);
                for g in 0..d.hkv {
                    let ko = d.kv_at(b, jk, g);
                    let (kj, vj) = (&kd[ko..ko + d.hd], &vd[ko..ko + d.hd]);
                    let dkj = &mut dkrow[g * d.hd..(g + 1) * d.hd];
                    let dvj = &mut dvrow[g * d.hd..(g + 1) * d.hd];
                    for h in g * d.group()..(g + 1) * d.group() {
                        for i in jk..d.t {
                            let (qo, x) = (d.q_at(b, i, h), (b * d.t + i) * d.hq + h);
                            let (qi, doi) = (&qd[qo..qo + d.hd], &dod[qo..qo + d.hd]);
                            let p = (cpu::dot(qi, kj) * scale - ld[x]).exp();
                            cpu::axpy(p, doi, dvj);
                            let ds = p * (cpu::dot(doi, vj) - delta[x]);
                            cpu::axpy(ds * scale, qi, dkj);
                        }
                    }
                }
            }
        },
    );
    Ok((dq, dk, dv))
}

/// Materialised reference (B·H·T·T), for tests only.
pub fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Vec<f32> {
    let d = dims("attention", q, k, v).unwrap();
    let mut o = vec![0.0f32; q.numel()];
    for b in 0..d.b {
        for h in 0..d.hq {
            let g = h / d.group();
            for i in 0..d.t {
                let qi = &q.data()[d.q_at(b, i, h)..][..d.hd];
                let s: Vec<f64> = (0..=i).map(|j| {
                    let kj = &k.data()[d.kv_at(b, j, g)..][..d.hd];
                    qi.iter().zip(kj).map(|(a, c)| *a as f64 * *c as f64).sum::<f64>() * scale as f64
                }).collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for (j, sj) in s.iter().enumerate() {
                    let p = (sj - m).exp() / z;
                    let vj = &v.data()[d.kv_at(b, j, g)..][..d.hd];
                    for c in 0..d.hd {
                        o[d.q_at(b, i, h) + c] += (p * vj[c] as f64) as f32;
                    }
                }
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{assert_close, rand_vec, run_threads, same_bits};

    fn inputs(b: usize, t: usize, hq: usize, hkv: usize, hd: usize) -> (Tensor, Tensor, Tensor) {
        let q = Tensor::from_slice(&[b, t, hq, hd], &rand_vec(b * t * hq * hd, 1)).unwrap();
        let k = Tensor::from_slice(&[b, t, hkv, hd], &rand_vec(b * t * hkv * hd, 2)).unwrap();
        let v = Tensor::from_slice(&[b, t, hkv, hd], &rand_vec(b * t * hkv * hd, 3)).unwrap();
        (q, k, v)
    }

    #[test]
    fn matches_materialised_reference_mha_and_gqa() {
        for &(b, t, hq, hkv, hd) in &[(2, 1, 2, 2, 8), (2, 70, 4, 4, 16), (1, 130, 4, 2, 8), (1, 33, 6, 1, 12)] {
            let (q, k, v) = inputs(b, t, hq, hkv, hd);
            let (o, _) = attention_forward(&q, &k, &v, 0.3).unwrap();
            assert_close(o.data(), &attention_reference(&q, &k, &v, 0.3), 1e-4, 1e-5, "attention");
        }
        let (q, _, v) = inputs(1, 4, 3, 2, 8);
        assert!(attention_forward(&q, &q, &v, 1.0).is_err());
    }

    #[test]
    fn one_and_two_threads_same_bits() {
        let (q, k, v) = inputs(2, 40, 4, 2, 16);
        let dout = Tensor::from_slice(q.shape(), &rand_vec(q.numel(), 9)).unwrap();
        let outs = run_threads(|| {
            let (o, l) = attention_forward(&q, &k, &v, 0.25).unwrap();
            let (a, b, c) = attention_backward(&q, &k, &v, &o, &l, &dout, 0.25).unwrap();
            [o, a, b, c].map(|t| t.data().to_vec())
        });
        for i in 0..4 {
            assert!(same_bits(&outs[0][i], &outs[1][i]));
        }
    }
}
