//! AdamW in place, global gradient norm and clipping. The norm sums squares over fixed chunks of
//! each tensor and combines the partials in order (f64), so it is thread-count independent.

use crate::cpu::{self, AdamParams};
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

pub fn adamw_step(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step: u64,
) -> Result<()> {
    ensure_shape!(
        p.shape() == g.shape() && p.shape() == m.shape() && p.shape() == v.shape(),
        "adamw",
        "param {:?}, grad {:?}, m {:?}, v {:?} must match",
        p.shape(),
        g.shape(),
        m.shape(),
        v.shape()
    );
    if step == 0 {
        return Err(crate::Error::value("adamw", "step counts from 1"));
    }
    let h = AdamParams {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        bias1: 1.0 - beta1.powi(step.min(i32::MAX as u64) as i32),
        bias2_sqrt: (1.0 - beta2.powi(step.min(i32::MAX as u64) as i32)).sqrt(),
    };
    let gd = g.data();
    p.data_mut()
        .par_chunks_mut(CHUNK)
        .zip(m.data_mut().par_chunks_mut(CHUNK))
        .zip(v.data_mut().par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(i, ((pc, mc), vc))| cpu::adamw(pc, &gd[i * CHUNK..i * CHUNK + pc.len()], mc, vc, &h));
    Ok(())
}

/// Per-tensor f64 sums of the f32 sums of squares of its CHUNK-sized pieces, all pieces of all
/// tensors in one parallel pass; the partials are combined in order, so the bits do not depend on
/// the thread count (the same bits as summing tensor by tensor).
fn sumsq_per_tensor(data: &[&[f32]]) -> Vec<f64> {
    let pieces: Vec<(usize, &[f32])> =
        data.iter().enumerate().flat_map(|(i, d)| d.chunks(CHUNK).map(move |c| (i, c))).collect();
    let parts: Vec<f32> = pieces.par_iter().map(|(_, c)| cpu::sumsq(c)).collect();
    let mut per = vec![Vec::new(); data.len()];
    for ((i, _), p) in pieces.iter().zip(parts) {
        per[*i].push(p);
    }
    per.iter().map(|ps| ps.iter().map(|&x| x as f64).sum::<f64>()).collect()
}

fn norm_of(sums: &[f64]) -> f32 {
    let mut total = 0.0f64;
    for s in sums {
        total += s;
    }
    total.sqrt() as f32
}

/// sqrt(sum over tensors of sum g^2).
pub fn global_norm(grads: &[&Tensor]) -> f32 {
    norm_of(&sumsq_per_tensor(&grads.iter().map(|g| g.data()).collect::<Vec<_>>()))
}

/// The factor clipping to max_norm applies to gradients of norm `norm` (PyTorch's
/// clip_grad_norm_ rule: max_norm / (norm + 1e-6) when below 1), or None when it does not clip.
fn clip_coef(norm: f32, max_norm: f32) -> Option<f32> {
    let coef = max_norm / (norm + 1e-6);
    (coef < 1.0).then_some(coef)
}

/// Scales every gradient by max_norm / (norm + 1e-6) when the norm exceeds max_norm (PyTorch's
/// clip_grad_norm_ rule). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [&mut Tensor], max_norm: f32) -> f32 {
    let norm = global_norm(&grads.iter().map(|g| &**g).collect::<Vec<_>>());
    if let Some(coef) = clip_coef(norm, max_norm) {
        let mut pieces: Vec<&mut [f32]> = grads.iter_mut().flat_map(|g| g.data_mut().chunks_mut(CHUNK)).collect();
        pieces.par_iter_mut().for_each(|c| {
            for x in c.iter_mut() {
                *x *= coef;
            }
        });
    }
    norm
}

/// The hyper-parameters `adamw_multi` shares over all its tensors.
#[derive(Debug, Clone, Copy)]
pub struct AdamHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub step: u64,
}

/// One pass of AdamW over many tensors (the whole model in one call), with the global gradient-
/// norm clip fused in: with `max_norm` set, the norm of all grads is taken first and, when it
/// exceeds max_norm, each gradient is scaled (in place, as `clip_grad_norm` leaves it) in the same
/// pass that updates its parameter. Tensor i decays by `weight_decay[i]`. The results are those
/// of `clip_grad_norm` followed by `adamw_step` per tensor, bit for bit, for any thread count.
/// Returns the gradient norm before clipping (0 when max_norm is None: it is not taken).
pub fn adamw_multi(
    params: &mut [&mut Tensor],
    grads: &mut [&mut Tensor],
    ms: &mut [&mut Tensor],
    vs: &mut [&mut Tensor],
    weight_decay: &[f32],
    hp: AdamHyper,
    max_norm: Option<f32>,
) -> Result<f32> {
    let n = params.len();
    ensure_shape!(
        grads.len() == n && ms.len() == n && vs.len() == n && weight_decay.len() == n,
        "adamw_multi",
        "{} params, {} grads, {} m, {} v, {} weight decays: one of each per parameter",
        n,
        grads.len(),
        ms.len(),
        vs.len(),
        weight_decay.len()
    );
    for i in 0..n {
        let (p, g, m, v) = (&params[i], &grads[i], &ms[i], &vs[i]);
        ensure_shape!(
            p.shape() == g.shape() && p.shape() == m.shape() && p.shape() == v.shape(),
            "adamw_multi",
            "parameter {}: param {:?}, grad {:?}, m {:?}, v {:?} must match",
            i,
            p.shape(),
            g.shape(),
            m.shape(),
            v.shape()
        );
    }
    if hp.step == 0 {
        return Err(crate::Error::value("adamw_multi", "step counts from 1"));
    }
    let (norm, coef) = match max_norm {
        Some(max) => {
            let norm = global_norm(&grads.iter().map(|g| &**g).collect::<Vec<_>>());
            (norm, clip_coef(norm, max))
        }
        None => (0.0, None),
    };
    let t = hp.step.min(i32::MAX as u64) as i32;
    let base = AdamParams {
        lr: hp.lr,
        beta1: hp.beta1,
        beta2: hp.beta2,
        eps: hp.eps,
        weight_decay: 0.0,
        bias1: 1.0 - hp.beta1.powi(t),
        bias2_sqrt: (1.0 - hp.beta2.powi(t)).sqrt(),
    };
    // Gradients are only written when clipping scales them; read-only otherwise (no copy of a
    // gradient buffer another tensor shares).
    let grad_data: Vec<GradChunks<'_>> = grads
        .iter_mut()
        .map(|g| match coef {
            Some(_) => GradChunks::Mut(g.data_mut().chunks_mut(CHUNK).collect()),
            None => GradChunks::Ref(g.data().chunks(CHUNK).collect()),
        })
        .collect();
    let mut tasks: Vec<AdamTask<'_>> = Vec::new();
    for ((((p, g), m), v), &wd) in
        params.iter_mut().zip(grad_data).zip(ms.iter_mut()).zip(vs.iter_mut()).zip(weight_decay)
    {
        let h = AdamParams { weight_decay: wd, ..base };
        let pieces =
            p.data_mut().chunks_mut(CHUNK).zip(m.data_mut().chunks_mut(CHUNK)).zip(v.data_mut().chunks_mut(CHUNK));
        match g {
            GradChunks::Mut(gs) => {
                for (((pc, mc), vc), gc) in pieces.zip(gs) {
                    tasks.push(AdamTask { p: pc, m: mc, v: vc, g: GradChunk::Mut(gc), h });
                }
            }
            GradChunks::Ref(gs) => {
                for (((pc, mc), vc), gc) in pieces.zip(gs) {
                    tasks.push(AdamTask { p: pc, m: mc, v: vc, g: GradChunk::Ref(gc), h });
                }
            }
        }
    }
    tasks.into_par_iter().for_each(|t| match t.g {
        GradChunk::Mut(g) => {
            let c = coef.unwrap_or(1.0);
            for x in g.iter_mut() {
                *x *= c;
            }
            cpu::adamw(t.p, g, t.m, t.v, &t.h)
        }
        GradChunk::Ref(g) => cpu::adamw(t.p, g, t.m, t.v, &t.h),
    });
    Ok(norm)
}

enum GradChunks<'a> {
    Mut(Vec<&'a mut [f32]>),
    Ref(Vec<&'a [f32]>),
}

enum GradChunk<'a> {
    Mut(&'a mut [f32]),
    Ref(&'a [f32]),
}

struct AdamTask<'a> {
    p: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    g: GradChunk<'a>,
    h: AdamParams,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_and_clip() {
        // ||[3, 4]|| = 5; clip to 1 -> [0.6, 0.8]
        let mut g = Tensor::from_slice(&[2], &[3.0, 4.0]).unwrap();
        assert!((global_norm(&[&g]) - 5.0).abs() < 1e-6);
        let n = clip_grad_norm(&mut [&mut g], 1.0);
        assert!((n - 5.0).abs() < 1e-6);
        assert!((g.data()[0] - 0.6).abs() < 1e-5 && (g.data()[1] - 0.8).abs() < 1e-5);
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        // step 1: mhat = g, vhat = g^2, update = lr * g/|g| = lr*sign(g) (eps tiny)
        let mut p = Tensor::from_slice(&[2], &[1.0, 1.0]).unwrap();
        let g = Tensor::from_slice(&[2], &[0.5, -2.0]).unwrap();
        let (mut m, mut v) = (Tensor::zeros(&[2]), Tensor::zeros(&[2]));
        adamw_step(&mut p, &g, &mut m, &mut v, 0.1, 0.9, 0.999, 1e-12, 0.0, 1).unwrap();
        assert!((p.data()[0] - 0.9).abs() < 1e-6 && (p.data()[1] - 1.1).abs() < 1e-6);
    }

    fn model_like() -> Vec<Tensor> {
        // sizes around CHUNK so pieces split mid-tensor; values deterministic
        [(40_000usize, 1.0f32), (7, 2.0), (CHUNK, 0.5), (3 * CHUNK + 5, 1.5)]
            .iter()
            .map(|&(n, a)| {
                let d: Vec<f32> = (0..n).map(|i| a * ((i as f32 * 0.37).sin() + 0.1)).collect();
                Tensor::from_slice(&[n], &d).unwrap()
            })
            .collect()
    }

    /// The multi-tensor pass equals clip_grad_norm then adamw_step per tensor, bit for bit,
    /// clipping or not, at 1 and 3 threads.
    #[test]
    fn adamw_multi_matches_per_tensor_steps() {
        for max_norm in [None, Some(1.0), Some(1e6)] {
            let grads = model_like();
            let params: Vec<Tensor> = grads.iter().map(|g| crate::ops::elementwise::scale(g, -0.3)).collect();
            let wds: Vec<f32> = (0..params.len()).map(|i| if i % 2 == 0 { 0.1 } else { 0.0 }).collect();
            // reference: per tensor, two steps
            let (mut rp, mut rg) = (params.clone(), grads.clone());
            let mut rm: Vec<Tensor> = params.iter().map(|p| Tensor::zeros(p.shape())).collect();
            let mut rv = rm.clone();
            let mut ref_norms = Vec::new();
            for step in 1..=2 {
                let mut rg2 = rg.clone();
                let norm = match max_norm {
                    Some(mx) => clip_grad_norm(&mut rg2.iter_mut().collect::<Vec<_>>(), mx),
                    None => 0.0,
                };
                ref_norms.push(norm);
                for i in 0..rp.len() {
                    adamw_step(&mut rp[i], &rg2[i], &mut rm[i], &mut rv[i], 1e-2, 0.9, 0.95, 1e-8, wds[i], step)
                        .unwrap();
                }
                rg = rg2;
            }
            for threads in [1, 3] {
                rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
                    let (mut p, mut g) = (params.clone(), grads.clone());
                    let mut m: Vec<Tensor> = p.iter().map(|t| Tensor::zeros(t.shape())).collect();
                    let mut v = m.clone();
                    for step in 1..=2u64 {
                        let hp = AdamHyper { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, step };
                        let norm = adamw_multi(
                            &mut p.iter_mut().collect::<Vec<_>>(),
                            &mut g.iter_mut().collect::<Vec<_>>(),
                            &mut m.iter_mut().collect::<Vec<_>>(),
                            &mut v.iter_mut().collect::<Vec<_>>(),
                            &wds,
                            hp,
                            max_norm,
                        )
                        .unwrap();
                        assert_eq!(norm.to_bits(), ref_norms[step as usize - 1].to_bits());
                    }
                    for i in 0..p.len() {
                        assert_eq!(p[i].data(), rp[i].data(), "param {i}, max_norm {max_norm:?}, {threads} threads");
                        assert_eq!(g[i].data(), rg[i].data());
                        assert_eq!(m[i].data(), rm[i].data());
                        assert_eq!(v[i].data(), rv[i].data());
                    }
                });
            }
        }
    }

    #[test]
    fn adamw_multi_rejects_mismatched_lists() {
        let mut p = [Tensor::zeros(&[3])];
        let mut g = [Tensor::zeros(&[4])];
        let (mut m, mut v) = ([Tensor::zeros(&[3])], [Tensor::zeros(&[3])]);
        let hp = AdamHyper { lr: 1e-3, beta1: 0.9, beta2: 0.99, eps: 1e-8, step: 1 };
        let r = |p: &mut [Tensor], g: &mut [Tensor], m: &mut [Tensor], v: &mut [Tensor], wd: &[f32]| {
            adamw_multi(
                &mut p.iter_mut().collect::<Vec<_>>(),
                &mut g.iter_mut().collect::<Vec<_>>(),
                &mut m.iter_mut().collect::<Vec<_>>(),
                &mut v.iter_mut().collect::<Vec<_>>(),
                wd,
                hp,
                None,
            )
        };
        assert!(r(&mut p, &mut g, &mut m, &mut v, &[0.0]).is_err());
        let mut g = [Tensor::zeros(&[3])];
        assert!(r(&mut p, &mut g, &mut m, &mut v, &[]).is_err());
        assert!(r(&mut p, &mut g, &mut m, &mut v, &[0.0]).is_ok());
    }
}
