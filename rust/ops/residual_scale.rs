//! The LayerScaled residual add of the MoA block, y = x + a ⊙ s (s over the last dimension), as
//! one pass: `add(x, col_scale(a, s))` wrote a ⊙ s to a buffer of its own and read it back.
//! Each row computes a ⊙ s with `cpu::mul` and adds it to x with `cpu::add`, the kernels of the
//! two ops, so the bits are theirs. The backward is col_scale's (`gating::col_scale_backward`)
//! plus dy passed through to x.

use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use crate::threads;

/// y = x + a ⊙ s.  x, a: [..., D] (same shape), s: [D]
pub fn add_col_scale_forward(x: &Tensor, a: &Tensor, s: &Tensor) -> Result<Tensor> {
    ensure_shape!(x.shape() == a.shape(), "add_col_scale", "x {:?} and a {:?} must match", x.shape(), a.shape());
    let d = x.last_dim();
    ensure_shape!(s.shape() == [d], "add_col_scale", "scale {:?} must be [{}] for x {:?}", s.shape(), d, x.shape());
    let mut y = Tensor::for_overwrite(x.shape()); // every row written below
    if d == 0 {
        return Ok(y);
    }
    let (xd, ad, sd) = (x.data(), a.data(), s.data());
    threads::for_row_chunks(y.data_mut(), d, threads::rows_per_task(d), |r0, out| {
        let mut tmp = vec![0.0f32; d];
        for (j, row) in out.chunks_mut(d).enumerate() {
            let r = r0 + j;
            cpu::mul(&ad[r * d..(r + 1) * d], sd, &mut tmp);
            cpu::add(&xd[r * d..(r + 1) * d], &tmp, row);
        }
    });
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::elementwise::add;
    use crate::ops::gating::col_scale_forward;
    use crate::ops::testutil::{rand_vec, run_threads_split, same_bits};

    #[test]
    fn same_bits_as_add_of_col_scale() {
        for (n, d) in [(1, 1), (7, 13), (300, 37)] {
            let x = Tensor::from_slice(&[n, d], &rand_vec(n * d, 1)).unwrap();
            let a = Tensor::from_slice(&[n, d], &rand_vec(n * d, 2)).unwrap();
            let s = Tensor::from_slice(&[d], &rand_vec(d, 3)).unwrap();
            let want = add(&x, &col_scale_forward(&a, &s).unwrap()).unwrap();
            assert!(same_bits(add_col_scale_forward(&x, &a, &s).unwrap().data(), want.data()));
        }
    }

    #[test]
    fn one_and_two_threads_agree() {
        // 2000 rows of 40: rows_per_task(40) = 819, so the loop splits.
        let (n, d) = (2000, 40);
        let x = Tensor::from_slice(&[n, d], &rand_vec(n * d, 4)).unwrap();
        let a = Tensor::from_slice(&[n, d], &rand_vec(n * d, 5)).unwrap();
        let s = Tensor::from_slice(&[d], &rand_vec(d, 6)).unwrap();
        let (outs, chunks) = run_threads_split(|| add_col_scale_forward(&x, &a, &s).unwrap().data().to_vec());
        assert!(chunks >= 2, "the work must split to test anything: {chunks} chunk(s)");
        assert!(same_bits(&outs[0], &outs[1]));
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let x = Tensor::zeros(&[3, 4]);
        assert!(add_col_scale_forward(&x, &Tensor::zeros(&[3, 5]), &Tensor::zeros(&[4])).is_err());
        assert!(add_col_scale_forward(&x, &Tensor::zeros(&[3, 4]), &Tensor::zeros(&[5])).is_err());
    }
}
