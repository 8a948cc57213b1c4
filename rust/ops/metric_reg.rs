//! Regularisers of metric attention (SPEC §6.2), forward and backward:
//! - ball penalty: kb[b,t,h] = -β · relu(‖k_{b,t} - o_h‖_w - r_h), ‖x‖_w = sqrt(Σ_c w_hc x_c² + ε),
//!   the per-key score bias that lets the radius r learn (hard masking at inference reads its sign);
//! - triangle-inequality loss on the squared distances D(x, y) = Σ_c w_hc (x_c - y_c)² the scores
//!   use, over given key triples: λ · mean over triples × heads of relu(2·max(D) - ΣD), i.e. the
//!   hinge on the longest side exceeding the sum of the other two. The count of violations is
//!   returned so training can log the violation rate.
//!
//! Keys k: [B, T, Hkv, hd] (any leading dims, flattened to N rows); o, w: [H, hd]; r: [H].

use crate::cpu;
use crate::error::{ensure_shape, Error, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Keeps the distance's gradient finite when a key sits on the origin.
const DIST_EPS: f32 = 1e-6;
const ROWS_PER_TASK: usize = 64;

#[derive(Clone, Copy)]
struct KDims {
    n: usize,
    hkv: usize,
    hd: usize,
    h: usize,
}

fn kdims(op: &'static str, k: &Tensor, w: &Tensor) -> Result<KDims> {
    ensure_shape!(
        k.ndim() >= 3 && w.ndim() == 2,
        op,
        "k {:?} must be [..., Hkv, hd] and w {:?} [H, hd]",
        k.shape(),
        w.shape()
    );
    let (hkv, hd, h) = (k.shape()[k.ndim() - 2], k.last_dim(), w.shape()[0]);
    ensure_shape!(
        hkv > 0 && hd > 0 && w.shape()[1] == hd && h % hkv == 0,
        op,
        "w {:?} does not fit keys {:?} (H must be a multiple of Hkv)",
        w.shape(),
        k.shape()
    );
    Ok(KDims { n: k.numel() / (hkv * hd), hkv, hd, h })
}

/// Returns kb [..., H] (k's leading dims, then H).
pub fn ball_penalty_forward(k: &Tensor, o: &Tensor, r: &Tensor, w: &Tensor, beta: f32) -> Result<Tensor> {
    let d = kdims("ball_penalty", k, w)?;
    ensure_shape!(
        o.shape() == w.shape() && r.shape() == [d.h],
        "ball_penalty",
        "o {:?} must be [{}, {}] and r {:?} [{}]",
        o.shape(),
        d.h,
        d.hd,
        r.shape(),
        d.h
    );
    let mut shape = k.shape()[..k.ndim() - 2].to_vec();
    shape.push(d.h);
    let mut kb = Tensor::zeros(&shape);
    let (kd, od, rd, wd) = (k.data(), o.data(), r.data(), w.data());
    kb.data_mut().par_chunks_mut(d.h).enumerate().for_each(|(n, row)| {
        for (hh, out) in row.iter_mut().enumerate() {
            let dist = distance(
                &kd[(n * d.hkv + hh / (d.h / d.hkv)) * d.hd..][..d.hd],
                &od[hh * d.hd..][..d.hd],
                &wd[hh * d.hd..][..d.hd],
            );
            *out = -beta * (dist - rd[hh]).max(0.0);
        }
    });
    Ok(kb)
}

fn distance(x: &[f32], o: &[f32], w: &[f32]) -> f32 {
    let s: f32 = (0..x.len()).map(|c| w[c] * (x[c] - o[c]) * (x[c] - o[c])).sum();
    (s + DIST_EPS).sqrt()
}

/// Gradients (dk, do, dr, dw) of ball_penalty_forward given dkb.
pub fn ball_penalty_backward(
    k: &Tensor,
    o: &Tensor,
    r: &Tensor,
    w: &Tensor,
    beta: f32,
    dkb: &Tensor,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let d = kdims("ball_penalty_backward", k, w)?;
    ensure_shape!(
        o.shape() == w.shape() && r.shape() == [d.h] && dkb.numel() == d.n * d.h && dkb.last_dim() == d.h,
        "ball_penalty_backward",
        "o {:?}, r {:?}, dkb {:?} do not fit keys {:?} with {} heads",
        o.shape(),
        r.shape(),
        dkb.shape(),
        k.shape(),
        d.h
    );
    let (kd, od, rd, wd, gd) = (k.data(), o.data(), r.data(), w.data(), dkb.data());
    let mut dk = Tensor::zeros(k.shape());
    let group = d.h / d.hkv;
    // Partials [do (H·hd) | dw (H·hd) | dr (H)] per task of ROWS_PER_TASK keys, summed in order.
    let plen = 2 * d.h * d.hd + d.h;
    let parts: Vec<Vec<f32>> = dk
        .data_mut()
        .par_chunks_mut(d.hkv * d.hd * ROWS_PER_TASK)
        .enumerate()
        .map(|(task, chunk)| {
            let mut part = vec![0.0f32; plen];
            for (jr, dkrow) in chunk.chunks_mut(d.hkv * d.hd).enumerate() {
                let n = task * ROWS_PER_TASK + jr;
                for hh in 0..d.h {
                    let g = hh / group;
                    let (x, oh, wh) =
                        (&kd[(n * d.hkv + g) * d.hd..][..d.hd], &od[hh * d.hd..][..d.hd], &wd[hh * d.hd..][..d.hd]);
                    let dist = distance(x, oh, wh);
                    if dist <= rd[hh] {
                        continue;
                    }
                    // kb = -β (dist - r):  dkb/ddist = -β, dkb/dr = β
                    let gdist = -beta * gd[n * d.h + hh];
                    part[2 * d.h * d.hd + hh] -= gdist;
                    for c in 0..d.hd {
                        let diff = x[c] - oh[c];
                        let gx = gdist * wh[c] * diff / dist;
                        dkrow[g * d.hd + c] += gx;
                        part[hh * d.hd + c] -= gx;
                        part[d.h * d.hd + hh * d.hd + c] += gdist * diff * diff / (2.0 * dist);
                    }
                }
            }
            part
        })
        .collect();
    let mut total = vec![0.0f32; plen];
    for p in &parts {
        cpu::axpy(1.0, p, &mut total);
    }
    let (hd2, h) = (d.h * d.hd, d.h);
    Ok((
        dk,
        Tensor::from_slice(&[h, d.hd], &total[..hd2])?,
        Tensor::from_slice(&[h], &total[2 * hd2..])?,
        Tensor::from_slice(&[h, d.hd], &total[hd2..2 * hd2])?,
    ))
}

fn check_triples(op: &'static str, triples: &[u32], n: usize) -> Result<()> {
    ensure_shape!(triples.len().is_multiple_of(3), op, "{} indices do not form triples", triples.len());
    if let Some(&x) = triples.iter().find(|&&x| x as usize >= n) {
        return Err(Error::value(op, format!("triple index {x} is out of range for {n} keys")));
    }
    Ok(())
}

/// The three squared distances (ab, bc, ac) of one triple under head hh.
fn sides(k: &[f32], d: &KDims, w: &[f32], t: &[u32], hh: usize) -> ([f32; 3], [usize; 3]) {
    let g = hh / (d.h / d.hkv);
    let at = |i: u32| (i as usize * d.hkv + g) * d.hd;
    let (a, b, c) = (at(t[0]), at(t[1]), at(t[2]));
    let wh = &w[hh * d.hd..(hh + 1) * d.hd];
    let sq = |x: usize, y: usize| (0..d.hd).map(|i| wh[i] * (k[x + i] - k[y + i]) * (k[x + i] - k[y + i])).sum::<f32>();
    ([sq(a, b), sq(b, c), sq(a, c)], [a, b, c])
}

/// Returns (loss, violations); violations counts (triple, head) pairs with 2·max(D) > ΣD.
pub fn ti_loss_forward(k: &Tensor, w: &Tensor, triples: &[u32], lam: f32) -> Result<(f32, usize)> {
    let d = kdims("ti_loss", k, w)?;
    check_triples("ti_loss", triples, d.n)?;
    let (mut sum, mut viol) = (0.0f32, 0usize);
    for t in triples.chunks(3) {
        for hh in 0..d.h {
            let (s, _) = sides(k.data(), &d, w.data(), t, hh);
            let excess = 2.0 * s[0].max(s[1]).max(s[2]) - (s[0] + s[1] + s[2]);
            if excess > 0.0 {
                sum += excess;
                viol += 1;
            }
        }
    }
    let checks = (triples.len() / 3 * d.h).max(1);
    Ok((lam * sum / checks as f32, viol))
}

/// Gradients (dk, dw) of ti_loss_forward scaled by dloss. Sequential: 64 triples are tiny work.
pub fn ti_loss_backward(k: &Tensor, w: &Tensor, triples: &[u32], lam: f32, dloss: f32) -> Result<(Tensor, Tensor)> {
    let d = kdims("ti_loss_backward", k, w)?;
    check_triples("ti_loss_backward", triples, d.n)?;
    let (mut dk, mut dw) = (Tensor::zeros(k.shape()), Tensor::zeros(w.shape()));
    let scale = dloss * lam / (triples.len() / 3 * d.h).max(1) as f32;
    let (kd, wd) = (k.data(), w.data());
    let (dkd, dwd) = (dk.data_mut(), dw.data_mut());
    for t in triples.chunks(3) {
        for hh in 0..d.h {
            let (s, [a, b, c]) = sides(kd, &d, wd, t, hh);
            if 2.0 * s[0].max(s[1]).max(s[2]) - (s[0] + s[1] + s[2]) <= 0.0 {
                continue;
            }
            // The longest side (first on ties) has coefficient +1, the other two -1.
            let top = if s[0] >= s[1] && s[0] >= s[2] {
                0
            } else if s[1] >= s[2] {
                1
            } else {
                2
            };
            for (side, (x, y)) in [(a, b), (b, c), (a, c)].into_iter().enumerate() {
                let coef = scale * if side == top { 1.0 } else { -1.0 };
                for i in 0..d.hd {
                    let diff = kd[x + i] - kd[y + i];
                    let wh = wd[hh * d.hd + i];
                    dkd[x + i] += coef * 2.0 * wh * diff;
                    dkd[y + i] -= coef * 2.0 * wh * diff;
                    dwd[hh * d.hd + i] += coef * diff * diff;
                }
            }
        }
    }
    Ok((dk, dw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{rand_vec, run_threads, same_bits};

    #[test]
    fn ti_hand_case() {
        // Collinear keys 0, 1, 2 on one axis, w = 1: D = 1, 1, 4; 2·4 - 6 = 2 > 0 (squared distances
        // break the triangle inequality); λ = 0.5, one triple, one head -> loss 1.
        let k = Tensor::from_slice(&[3, 1, 1], &[0.0, 1.0, 2.0]).unwrap();
        let w = Tensor::full(&[1, 1], 1.0);
        assert_eq!(ti_loss_forward(&k, &w, &[0, 1, 2], 0.5).unwrap(), (1.0, 1));
        // A right angle (0,0), (1,0), (1,1): D = 1, 1, 2 -> 4 - 4 = 0, no violation.
        let k = Tensor::from_slice(&[3, 1, 2], &[0.0, 0.0, 1.0, 0.0, 1.0, 1.0]).unwrap();
        assert_eq!(ti_loss_forward(&k, &Tensor::full(&[1, 2], 1.0), &[0, 1, 2], 0.5).unwrap(), (0.0, 0));
        assert!(ti_loss_forward(&k, &Tensor::full(&[1, 2], 1.0), &[0, 1, 3], 0.5).is_err());
    }

    #[test]
    fn ball_penalty_hand_case() {
        // key (3, 4), origin 0, w = 1: distance ≈ 5; r = 2, β = 0.5 -> kb = -1.5
        let k = Tensor::from_slice(&[1, 1, 2], &[3.0, 4.0]).unwrap();
        let kb = ball_penalty_forward(
            &k,
            &Tensor::zeros(&[1, 2]),
            &Tensor::full(&[1], 2.0),
            &Tensor::full(&[1, 2], 1.0),
            0.5,
        )
        .unwrap();
        assert!((kb.data()[0] + 1.5).abs() < 1e-5);
    }

    #[test]
    fn ball_backward_one_and_two_threads_same_bits() {
        let (n, hkv, h, hd) = (300, 1, 4, 8);
        let k = Tensor::from_slice(&[n, hkv, hd], &rand_vec(n * hkv * hd, 1)).unwrap();
        let o = Tensor::from_slice(&[h, hd], &rand_vec(h * hd, 2)).unwrap();
        let r = Tensor::full(&[h], 0.8);
        let w = Tensor::full(&[h, hd], 0.7);
        let dkb = Tensor::from_slice(&[n, h], &rand_vec(n * h, 3)).unwrap();
        let outs = run_threads(|| {
            let (a, b, c, e) = ball_penalty_backward(&k, &o, &r, &w, 1.0, &dkb).unwrap();
            [a, b, c, e].map(|t| t.data().to_vec())
        });
        for (a, b) in outs[0].iter().zip(&outs[1]) {
            assert!(same_bits(a, b));
        }
    }
}
