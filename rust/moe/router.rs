//! The router of sparse dispatch: softmax with temperature, top-k with renormalised gates, the
//! Switch load-balance loss and the router z-loss, each a forward/backward pair.
//!
//! Split into separate ops so the autograd tape composes them: logits -> probs -> gates, and the
//! auxiliary losses read probs (load balance) or logits (z-loss). Top-k indices carry no gradient.

use crate::cpu;
use crate::error::{ensure_shape, Error, Result};
use crate::tensor::Tensor;
use crate::threads;

fn rows_cols(op: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    ensure_shape!(t.ndim() == 2 && t.shape()[1] > 0, op, "need [N, E] with E > 0, got {:?}", t.shape());
    Ok((t.shape()[0], t.shape()[1]))
}

/// probs = softmax(logits / tau) per row.  logits: [N, E]
pub fn router_probs_forward(logits: &Tensor, tau: f32) -> Result<Tensor> {
    let (_, e) = rows_cols("router_probs", logits)?;
    if !(tau > 0.0 && tau.is_finite()) {
        return Err(Error::value("router_probs", format!("temperature must be positive and finite, got {tau}")));
    }
    let mut p = Tensor::zeros(logits.shape());
    let (ld, inv_tau) = (logits.data(), 1.0 / tau);
    threads::for_row_chunks(p.data_mut(), e, threads::rows_per_task(e), |r0, out| {
        let mut z = vec![0.0f32; e];
        for (j, pr) in out.chunks_mut(e).enumerate() {
            cpu::scale(inv_tau, &ld[(r0 + j) * e..(r0 + j + 1) * e], &mut z);
            let s = cpu::exp_shift_sum(&z, cpu::max(&z), pr);
            let inv = 1.0 / s;
            pr.iter_mut().for_each(|v| *v *= inv);
        }
    });
    Ok(p)
}

/// dlogits = p * (dp - Σ p·dp) / tau.
pub fn router_probs_backward(probs: &Tensor, dprobs: &Tensor, tau: f32) -> Result<Tensor> {
    let (_, e) = rows_cols("router_probs_backward", probs)?;
    ensure_shape!(
        dprobs.shape() == probs.shape(),
        "router_probs_backward",
        "probs {:?} vs dprobs {:?}",
        probs.shape(),
        dprobs.shape()
    );
    let mut dl = Tensor::zeros(probs.shape());
    let (pd, dd, inv_tau) = (probs.data(), dprobs.data(), 1.0 / tau);
    threads::for_row_chunks(dl.data_mut(), e, threads::rows_per_task(e), |r0, out| {
        for (j, dr) in out.chunks_mut(e).enumerate() {
            let r = (r0 + j) * e..(r0 + j + 1) * e;
            let (p, dp) = (&pd[r.clone()], &dd[r]);
            let c = cpu::dot(p, dp);
            for i in 0..e {
                dr[i] = p[i] * (dp[i] - c) * inv_tau;
            }
        }
    });
    Ok(dl)
}

/// The k largest entries of `row` in descending order; ties go to the lower index.
fn top_k(row: &[f32], k: usize, out: &mut [u32]) {
    let mut n = 0;
    for (i, &v) in row.iter().enumerate() {
        // Insertion into the sorted prefix: strict `>` keeps an earlier equal entry ahead.
        let mut pos = n;
        while pos > 0 && v > row[out[pos - 1] as usize] {
            pos -= 1;
        }
        if pos < k {
            let end = n.min(k - 1);
            for q in (pos..end).rev() {
                out[q + 1] = out[q];
            }
            out[pos] = i as u32;
            n = (n + 1).min(k);
        }
    }
}

/// Top-k experts per token and their gates.  probs: [N, E] -> (gates [N, k], idx [N*k]).
/// With `renormalize` the gates are the chosen probabilities divided by their sum (they sum to 1);
/// without, the raw probabilities (Switch's k = 1 convention, where renormalising would give the
/// constant 1 and no gradient to the router).
pub fn topk_gates_forward(probs: &Tensor, k: usize, renormalize: bool) -> Result<(Tensor, Vec<u32>)> {
    let (n, e) = rows_cols("topk_gates", probs)?;
    if k == 0 || k > e {
        return Err(Error::value("topk_gates", format!("k must be in 1..={e}, got {k}")));
    }
    let pd = probs.data();
    let mut idx = vec![0u32; n * k];
    let mut gates = Tensor::zeros(&[n, k]);
    let gd = gates.data_mut();
    for r in 0..n {
        let row = &pd[r * e..(r + 1) * e];
        let ir = &mut idx[r * k..(r + 1) * k];
        top_k(row, k, ir);
        let s: f32 = if renormalize { ir.iter().map(|&i| row[i as usize]).sum() } else { 1.0 };
        for j in 0..k {
            gd[r * k + j] = row[ir[j] as usize] / s;
        }
    }
    Ok((gates, idx))
}

/// g_j = p_{e_j} / S, S = Σ_j p_{e_j}:  dp_{e_j} = (dg_j - Σ_i dg_i g_i) / S; zero elsewhere.
pub fn topk_gates_backward(
    probs: &Tensor,
    idx: &[u32],
    gates: &Tensor,
    dgates: &Tensor,
    renormalize: bool,
) -> Result<Tensor> {
    let (n, e) = rows_cols("topk_gates_backward", probs)?;
    let k = gates.last_dim();
    ensure_shape!(
        gates.shape() == [n, k] && dgates.shape() == gates.shape() && idx.len() == n * k,
        "topk_gates_backward",
        "probs {:?}, gates {:?}, dgates {:?}, {} ids",
        probs.shape(),
        gates.shape(),
        dgates.shape(),
        idx.len()
    );
    check_ids("topk_gates_backward", idx, e)?;
    let (pd, gd, dgd) = (probs.data(), gates.data(), dgates.data());
    let mut dp = Tensor::zeros(probs.shape());
    let dpd = dp.data_mut();
    for r in 0..n {
        let ir = &idx[r * k..(r + 1) * k];
        if renormalize {
            let s: f32 = ir.iter().map(|&i| pd[r * e + i as usize]).sum();
            let c: f32 = (0..k).map(|j| dgd[r * k + j] * gd[r * k + j]).sum();
            for j in 0..k {
                dpd[r * e + ir[j] as usize] += (dgd[r * k + j] - c) / s;
            }
        } else {
            for j in 0..k {
                dpd[r * e + ir[j] as usize] += dgd[r * k + j];
            }
        }
    }
    Ok(dp)
}

pub(crate) fn check_ids(op: &'static str, idx: &[u32], e: usize) -> Result<()> {
    if let Some((i, &x)) = idx.iter().enumerate().find(|(_, &x)| x as usize >= e) {
        return Err(Error::value(op, format!("expert id {x} at position {i} is out of range for {e} experts")));
    }
    Ok(())
}

/// Fraction of the N·k routing choices that went to each expert (before any capacity limit).
pub fn expert_fractions(idx: &[u32], n_experts: usize) -> Result<Vec<f32>> {
    check_ids("expert_fractions", idx, n_experts)?;
    let mut f = vec![0.0f32; n_experts];
    for &i in idx {
        f[i as usize] += 1.0;
    }
    let inv = 1.0 / idx.len().max(1) as f32;
    f.iter_mut().for_each(|v| *v *= inv);
    Ok(f)
}

/// Switch load-balance loss  L = E · Σ_e f_e · P_e,  f_e = share of routing choices to e (no
/// gradient), P_e = mean router probability of e. Normalised so perfect balance gives 1 for any k.
/// probs: [N, E], idx: [N*k] -> (L, f)
pub fn load_balance_forward(probs: &Tensor, idx: &[u32]) -> Result<(f32, Vec<f32>)> {
    let (n, e) = rows_cols("load_balance", probs)?;
    ensure_shape!(
        n > 0 && idx.len().is_multiple_of(n) && !idx.is_empty(),
        "load_balance",
        "{} ids for {} tokens",
        idx.len(),
        n
    );
    let f = expert_fractions(idx, e)?;
    let pd = probs.data();
    let mut mean_p = vec![0.0f32; e];
    for r in 0..n {
        cpu::axpy(1.0, &pd[r * e..(r + 1) * e], &mut mean_p);
    }
    let loss = e as f32 * f.iter().zip(&mean_p).map(|(a, b)| a * b).sum::<f32>() / n as f32;
    Ok((loss, f))
}

/// dL/dp[n, e] = dloss · E · f_e / N.
pub fn load_balance_backward(n_tokens: usize, f: &[f32], dloss: f32) -> Tensor {
    let e = f.len();
    let c = dloss * e as f32 / n_tokens.max(1) as f32;
    let row: Vec<f32> = f.iter().map(|v| v * c).collect();
    let mut dp = Tensor::zeros(&[n_tokens, e]);
    dp.data_mut().chunks_mut(e.max(1)).for_each(|r| r.copy_from_slice(&row));
    dp
}

/// Router z-loss (ST-MoE)  L = mean_n logsumexp(logits_n)²  on the raw logits.  -> (L, lse [N])
pub fn z_loss_forward(logits: &Tensor) -> Result<(f32, Tensor)> {
    let (n, e) = rows_cols("z_loss", logits)?;
    let mut lse = Tensor::zeros(&[n]);
    let ld = logits.data();
    let mut tmp = vec![0.0f32; e];
    for (r, l) in lse.data_mut().iter_mut().enumerate() {
        let row = &ld[r * e..(r + 1) * e];
        let m = cpu::max(row);
        *l = m + cpu::exp_shift_sum(row, m, &mut tmp).ln();
    }
    let loss = lse.data().iter().map(|v| v * v).sum::<f32>() / n.max(1) as f32;
    Ok((loss, lse))
}

/// dlogits[n] = dloss · 2 · lse_n · softmax(logits_n) / N.
pub fn z_loss_backward(logits: &Tensor, lse: &Tensor, dloss: f32) -> Result<Tensor> {
    let (n, e) = rows_cols("z_loss_backward", logits)?;
    ensure_shape!(lse.shape() == [n], "z_loss_backward", "lse {:?} for logits {:?}", lse.shape(), logits.shape());
    let mut dl = Tensor::zeros(logits.shape());
    let (ld, sd) = (logits.data(), lse.data());
    for (r, out) in dl.data_mut().chunks_mut(e).enumerate() {
        let c = dloss * 2.0 * sd[r] / n as f32;
        for i in 0..e {
            out[i] = c * (ld[r * e + i] - sd[r]).exp();
        }
    }
    Ok(dl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::rand_vec;

    #[test]
    fn top_k_orders_and_breaks_ties_low() {
        let mut out = [0u32; 3];
        top_k(&[0.1, 0.5, 0.2, 0.5, 0.05], 3, &mut out);
        assert_eq!(out, [1, 3, 2]);
        let mut one = [0u32; 1];
        top_k(&[0.3, 0.3], 1, &mut one);
        assert_eq!(one, [0]);
    }

    #[test]
    fn gates_renormalise_to_one() {
        // probs row [0.1, 0.6, 0.3]: top-2 = experts 1, 2 with gates 0.6/0.9, 0.3/0.9
        let p = Tensor::from_slice(&[1, 3], &[0.1, 0.6, 0.3]).unwrap();
        let (g, idx) = topk_gates_forward(&p, 2, true).unwrap();
        assert_eq!(idx, vec![1, 2]);
        assert!((g.data()[0] - 2.0 / 3.0).abs() < 1e-6 && (g.data()[1] - 1.0 / 3.0).abs() < 1e-6);
        assert!(topk_gates_forward(&p, 4, true).is_err());
    }

    #[test]
    fn balanced_routing_gives_load_balance_one() {
        // 4 tokens, 2 experts, uniform probs and each expert chosen twice: E·Σ f·P = 2·(0.5·0.5·2) = 1
        let p = Tensor::full(&[4, 2], 0.5);
        let (l, f) = load_balance_forward(&p, &[0, 1, 0, 1]).unwrap();
        assert_eq!(f, vec![0.5, 0.5]);
        assert!((l - 1.0).abs() < 1e-6);
    }

    #[test]
    fn probs_sum_to_one_and_temperature_flattens() {
        let x = Tensor::from_slice(&[3, 5], &rand_vec(15, 4)).unwrap();
        let (p1, p4) = (router_probs_forward(&x, 1.0).unwrap(), router_probs_forward(&x, 4.0).unwrap());
        for r in 0..3 {
            assert!((p1.data()[r * 5..r * 5 + 5].iter().sum::<f32>() - 1.0).abs() < 1e-6);
            let spread = |p: &Tensor| cpu::scalar::max(&p.data()[r * 5..r * 5 + 5]);
            assert!(spread(&p4) < spread(&p1));
        }
        assert!(router_probs_forward(&x, 0.0).is_err());
    }
}
