//! SiLU, GELU (tanh form) and SwiGLU = silu(gate) * up, forward and backward, elementwise in
//! parallel chunks of fixed size.

use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

fn unary(x: &Tensor, f: fn(&[f32], &mut [f32])) -> Tensor {
    let mut y = Tensor::zeros(x.shape());
    let xd = x.data();
    y.data_mut().par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| f(&xd[i * CHUNK..i * CHUNK + o.len()], o));
    y
}

fn unary_backward(op: &'static str, x: &Tensor, dy: &Tensor, f: fn(&[f32], &[f32], &mut [f32])) -> Result<Tensor> {
    ensure_shape!(x.shape() == dy.shape(), op, "x {:?} vs dy {:?}", x.shape(), dy.shape());
    let mut dx = Tensor::zeros(x.shape());
    let (xd, dyd) = (x.data(), dy.data());
    dx.data_mut().par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        let s = i * CHUNK;
        f(&xd[s..s + o.len()], &dyd[s..s + o.len()], o)
    });
    Ok(dx)
}

pub fn silu_forward(x: &Tensor) -> Tensor {
    unary(x, cpu::silu)
}
pub fn silu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    unary_backward("silu_backward", x, dy, cpu::silu_backward)
}
pub fn gelu_forward(x: &Tensor) -> Tensor {
    unary(x, cpu::gelu)
}
pub fn gelu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    unary_backward("gelu_backward", x, dy, cpu::gelu_backward)
}

/// y = silu(gate) * up.  gate, up: same shape.
pub fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    ensure_shape!(gate.shape() == up.shape(), "swiglu", "gate {:?} vs up {:?}", gate.shape(), up.shape());
    let mut y = Tensor::zeros(gate.shape());
    let (gd, ud) = (gate.data(), up.data());
    y.data_mut().par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        let s = i * CHUNK;
        cpu::silu(&gd[s..s + o.len()], o);
        let tmp = o.to_vec();
        cpu::mul(&tmp, &ud[s..s + o.len()], o);
    });
    Ok(y)
}

/// dgate = dy * up * silu'(gate), dup = dy * silu(gate).
pub fn swiglu_backward(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    ensure_shape!(
        gate.shape() == up.shape() && gate.shape() == dy.shape(),
        "swiglu_backward",
        "gate {:?}, up {:?}, dy {:?}",
        gate.shape(),
        up.shape(),
        dy.shape()
    );
    let mut dg = Tensor::zeros(gate.shape());
    let mut du = Tensor::zeros(gate.shape());
    let (gd, ud, dyd) = (gate.data(), up.data(), dy.data());
    dg.data_mut().par_chunks_mut(CHUNK).zip(du.data_mut().par_chunks_mut(CHUNK)).enumerate().for_each(
        |(i, (dgo, duo))| {
            let s = i * CHUNK;
            let r = s..s + dgo.len();
            cpu::silu(&gd[r.clone()], duo);
            let act = duo.to_vec();
            cpu::mul(&act, &dyd[r.clone()], duo);
            let mut dyu = vec![0.0; dgo.len()];
            cpu::mul(&dyd[r.clone()], &ud[r.clone()], &mut dyu);
            cpu::silu_backward(&gd[r], &dyu, dgo);
        },
    );
    Ok((dg, du))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_values() {
        // silu(0) = 0, silu(1) = 1/(1+e^-1) = 0.7310586; gelu(1) = sigmoid(2*0.7978846*1.044715) = 0.8411920
        let x = Tensor::from_slice(&[2], &[0.0, 1.0]).unwrap();
        let s = silu_forward(&x);
        assert!((s.data()[0]).abs() < 1e-7 && (s.data()[1] - 0.731_058_6).abs() < 1e-6);
        assert!((gelu_forward(&x).data()[1] - 0.841_192).abs() < 1e-5);
        let up = Tensor::from_slice(&[2], &[5.0, 2.0]).unwrap();
        assert!((swiglu_forward(&x, &up).unwrap().data()[1] - 1.462_117_2).abs() < 1e-5);
        assert!(swiglu_forward(&x, &Tensor::zeros(&[3])).is_err());
    }
}
