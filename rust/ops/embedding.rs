//! Embedding gather (forward) and scatter-add (backward). Token ids are validated against the
//! table size so an out-of-range id is an error, never an out-of-bounds read.

use crate::error::{ensure_shape, Error, Result};
use crate::tensor::Tensor;
use crate::threads;
use rayon::prelude::*;

/// Vocabulary rows per backward task: each task owns a disjoint row range of dW.
const VOCAB_ROWS_PER_TASK: usize = 256;

pub fn check_ids(op: &'static str, ids: &[u32], vocab: usize) -> Result<()> {
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(Error::value(
            op,
            format!("token id {id} at position {i} is out of range for vocabulary size {vocab}"),
        ));
    }
    Ok(())
}

/// weight: [V, D], ids: [N] (any batch shape `ids_shape`) -> [*ids_shape, D]
pub fn embedding_forward(weight: &Tensor, ids: &[u32], ids_shape: &[usize]) -> Result<Tensor> {
    ensure_shape!(weight.ndim() == 2, "embedding", "weight must be [V, D], got {:?}", weight.shape());
    ensure_shape!(
        ids_shape.iter().product::<usize>() == ids.len(),
        "embedding",
        "ids shape {:?} does not hold {} ids",
        ids_shape,
        ids.len()
    );
    let (v, d) = (weight.shape()[0], weight.shape()[1]);
    check_ids("embedding", ids, v)?;
    let mut shape = ids_shape.to_vec();
    shape.push(d);
    let mut y = Tensor::zeros(&shape);
    let wd = weight.data();
    threads::for_row_chunks(y.data_mut(), d, threads::rows_per_task(d), |r0, out| {
        for (j, row) in out.chunks_mut(d).enumerate() {
            let id = ids[r0 + j] as usize;
            row.copy_from_slice(&wd[id * d..(id + 1) * d]);
        }
    });
    Ok(y)
}

/// dW[id] += dy[n] for each n, in increasing n for every row (thread-count independent).
pub fn embedding_backward(ids: &[u32], dy: &Tensor, vocab: usize) -> Result<Tensor> {
    let d = dy.last_dim();
    ensure_shape!(
        dy.numel() == ids.len() * d,
        "embedding_backward",
        "dy {:?} does not match {} ids",
        dy.shape(),
        ids.len()
    );
    check_ids("embedding_backward", ids, vocab)?;
    let mut dw = Tensor::zeros(&[vocab, d]);
    let dyd = dy.data();
    if d == 0 {
        return Ok(dw);
    }
    dw.data_mut().par_chunks_mut(d * VOCAB_ROWS_PER_TASK).enumerate().for_each(|(task, chunk)| {
        let lo = task * VOCAB_ROWS_PER_TASK;
        let hi = lo + chunk.len() / d;
        for (n, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= lo && id < hi {
                crate::cpu::axpy(1.0, &dyd[n * d..(n + 1) * d], &mut chunk[(id - lo) * d..(id - lo + 1) * d]);
            }
        }
    });
    Ok(dw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_and_scatter_add() {
        let w = Tensor::from_slice(&[3, 2], &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0]).unwrap();
        let y = embedding_forward(&w, &[2, 0, 2], &[3]).unwrap();
        assert_eq!(y.data(), &[20.0, 21.0, 0.0, 1.0, 20.0, 21.0]);
        let dy = Tensor::from_slice(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        // row 2 gets dy[0] + dy[2] = [6, 8]; row 0 gets dy[1]; row 1 nothing
        assert_eq!(embedding_backward(&[2, 0, 2], &dy, 3).unwrap().data(), &[3.0, 4.0, 0.0, 0.0, 6.0, 8.0]);
        assert!(matches!(embedding_forward(&w, &[3], &[1]), Err(Error::Value { .. })));
    }
}
