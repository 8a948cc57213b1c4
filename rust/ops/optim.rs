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

/// sqrt(sum over tensors of sum g^2).
pub fn global_norm(grads: &[&Tensor]) -> f32 {
    let mut total = 0.0f64;
    for g in grads {
        let parts: Vec<f32> = g.data().par_chunks(CHUNK).map(cpu::sumsq).collect();
        total += parts.iter().map(|&x| x as f64).sum::<f64>();
    }
    total.sqrt() as f32
}

/// Scales every gradient by max_norm / (norm + 1e-6) when the norm exceeds max_norm (PyTorch's
/// clip_grad_norm_ rule). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [&mut Tensor], max_norm: f32) -> f32 {
    let norm = global_norm(&grads.iter().map(|g| &**g).collect::<Vec<_>>());
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            g.data_mut().par_chunks_mut(CHUNK).for_each(|c| {
                for x in c.iter_mut() {
                    *x *= coef;
                }
            });
        }
    }
    norm
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
}
