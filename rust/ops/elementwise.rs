//! Elementwise add, mul and scale on equal shapes. Their backward passes are these same ops
//! (d(a+b) = dy, d(a*b) = dy*b and dy*a), so no separate backward kernels exist.

use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

const CHUNK: usize = 1 << 15;

fn binary(op: &'static str, a: &Tensor, b: &Tensor, f: fn(&[f32], &[f32], &mut [f32])) -> Result<Tensor> {
    ensure_shape!(a.shape() == b.shape(), op, "operands differ: {:?} vs {:?}", a.shape(), b.shape());
    let mut out = Tensor::zeros(a.shape());
    let (ad, bd) = (a.data(), b.data());
    out.data_mut().par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        let s = i * CHUNK;
        f(&ad[s..s + o.len()], &bd[s..s + o.len()], o)
    });
    Ok(out)
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", a, b, cpu::add)
}

pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("mul", a, b, cpu::mul)
}

pub fn scale(a: &Tensor, alpha: f32) -> Tensor {
    let mut out = Tensor::zeros(a.shape());
    let ad = a.data();
    out.data_mut().par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        let s = i * CHUNK;
        cpu::scale(alpha, &ad[s..s + o.len()], o)
    });
    out
}

/// a += b in place (gradient accumulation).
pub fn add_assign(a: &mut Tensor, b: &Tensor) -> Result<()> {
    ensure_shape!(a.shape() == b.shape(), "add_", "operands differ: {:?} vs {:?}", a.shape(), b.shape());
    let bd = b.data();
    a.data_mut().par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        let s = i * CHUNK;
        cpu::axpy(1.0, &bd[s..s + o.len()], o)
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_mul_scale_small_case() {
        // [1,2,3] + [4,5,6] = [5,7,9]; * = [4,10,18]; 0.5*[1,2,3] = [0.5,1,1.5]
        let a = Tensor::from_slice(&[3], &[1.0, 2.0, 3.0]).unwrap();
        let b = Tensor::from_slice(&[3], &[4.0, 5.0, 6.0]).unwrap();
        assert_eq!(add(&a, &b).unwrap().data(), &[5.0, 7.0, 9.0]);
        assert_eq!(mul(&a, &b).unwrap().data(), &[4.0, 10.0, 18.0]);
        assert_eq!(scale(&a, 0.5).data(), &[0.5, 1.0, 1.5]);
        let mut c = a.clone();
        add_assign(&mut c, &b).unwrap();
        assert_eq!(c.data(), &[5.0, 7.0, 9.0]);
        assert!(add(&a, &Tensor::zeros(&[4])).is_err());
    }
}
