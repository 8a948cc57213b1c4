//! `combine` reading one output tensor per expert (path) instead of their row concatenation: the
//! heterogeneous paths of an MoA sublayer each produce [count_e, D], and stacking them into
//! [S, D] first (and splitting dys back afterwards) cost two full copies of the routed rows per
//! sublayer. Slot s of expert e is row s − offsets[e] of part e; the arithmetic is that of
//! `dispatch::combine_forward` / `combine_backward`, so the results are the same bits.

use super::dispatch::{check_gates, Plan, DROPPED};
use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::tensor::Tensor;
use crate::threads;
use rayon::prelude::*;

/// Checks parts (one per expert, [count_e, D]; an expert without rows still has its [0, D]) and
/// gates; returns D.
fn check(op: &'static str, parts: &[&Tensor], gates: &Tensor, plan: &Plan) -> Result<usize> {
    ensure_shape!(
        parts.len() == plan.n_experts,
        op,
        "need one part per expert ({}), got {}",
        plan.n_experts,
        parts.len()
    );
    let d = parts.first().map_or(0, |p| p.last_dim());
    for (e, p) in parts.iter().enumerate() {
        let rows = plan.offsets[e + 1] - plan.offsets[e];
        ensure_shape!(p.shape() == [rows, d], op, "part {} must be [{}, {}], got {:?}", e, rows, d, p.shape());
    }
    check_gates(op, gates, plan)?;
    Ok(d)
}

/// The expert owning each slot.
fn slot_expert(plan: &Plan) -> Vec<u32> {
    let mut of = vec![0u32; plan.n_slots()];
    for e in 0..plan.n_experts {
        of[plan.offsets[e]..plan.offsets[e + 1]].fill(e as u32);
    }
    of
}

/// Row `slot` of the parts.
#[inline]
fn row<'a>(parts: &[&'a [f32]], plan: &Plan, of: &[u32], slot: usize, d: usize) -> &'a [f32] {
    let e = of[slot] as usize;
    let r = slot - plan.offsets[e];
    &parts[e][r * d..(r + 1) * d]
}

/// y[n] = Σ_j gates[n, j] · part_e[slot(n, j) − offsets[e]] over kept choices -> [N, D]
pub fn combine_parts_forward(parts: &[&Tensor], gates: &Tensor, plan: &Plan) -> Result<Tensor> {
    let d = check("combine_parts", parts, gates, plan)?;
    let mut y = Tensor::zeros(&[plan.n_tokens, d]);
    if d == 0 {
        return Ok(y);
    }
    let of = slot_expert(plan);
    let pd: Vec<&[f32]> = parts.iter().map(|p| p.data()).collect();
    let (gd, k) = (gates.data(), plan.k);
    threads::for_row_chunks(y.data_mut(), d, threads::rows_per_task(d), |r0, out| {
        for (i, yr) in out.chunks_mut(d).enumerate() {
            let n = r0 + i;
            for j in 0..k {
                let slot = plan.token_slot[n * k + j];
                if slot != DROPPED {
                    cpu::axpy(gd[n * k + j], row(&pd, plan, &of, slot as usize, d), yr);
                }
            }
        }
    });
    Ok(y)
}

/// dpart_e[r] = gate · dy[token]; dgates[n, j] = dy[n] · part row of slot(n, j) (0 when dropped).
pub fn combine_parts_backward(
    parts: &[&Tensor],
    gates: &Tensor,
    plan: &Plan,
    dy: &Tensor,
) -> Result<(Vec<Tensor>, Tensor)> {
    let d = check("combine_parts_backward", parts, gates, plan)?;
    ensure_shape!(
        dy.shape() == [plan.n_tokens, d],
        "combine_parts_backward",
        "dy {:?} must be [{}, {}]",
        dy.shape(),
        plan.n_tokens,
        d
    );
    let (gd, dyd, k) = (gates.data(), dy.data(), plan.k);
    let mut dparts = Vec::with_capacity(parts.len());
    for (e, p) in parts.iter().enumerate() {
        let mut dp = Tensor::for_overwrite(p.shape()); // every row written below
        let base = plan.offsets[e];
        if d > 0 {
            threads::for_row_chunks(dp.data_mut(), d, threads::rows_per_task(d), |r0, out| {
                for (i, dr) in out.chunks_mut(d).enumerate() {
                    let s = base + r0 + i;
                    let (n, j) = (plan.slot_token[s] as usize, plan.slot_choice[s] as usize);
                    cpu::scale(gd[n * k + j], &dyd[n * d..(n + 1) * d], dr);
                }
            });
        }
        dparts.push(dp);
    }
    let of = slot_expert(plan);
    let pd: Vec<&[f32]> = parts.iter().map(|p| p.data()).collect();
    let mut dg = Tensor::zeros(gates.shape());
    if d > 0 {
        dg.data_mut().par_chunks_mut(k.max(1)).enumerate().for_each(|(n, gr)| {
            for (g, &slot) in gr.iter_mut().zip(&plan.token_slot[n * k..(n + 1) * k]) {
                if slot != DROPPED {
                    *g = cpu::dot(&dyd[n * d..(n + 1) * d], row(&pd, plan, &of, slot as usize, d));
                }
            }
        });
    }
    Ok((dparts, dg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::dispatch::{build_plan, combine_backward, combine_forward};
    use crate::ops::gating::{concat_rows, split_rows};
    use crate::ops::testutil::{rand_vec, run_threads_split, same_bits};

    fn case(n: usize, d: usize, cap: usize) -> (Plan, Vec<Tensor>, Tensor, Tensor) {
        let (k, e) = (2, 4);
        let r = rand_vec(n * e, 7);
        let mut idx = vec![0u32; n * k];
        for t in 0..n {
            let mut order: Vec<u32> = (0..e as u32).collect();
            order.sort_by(|a, b| r[t * e + *b as usize].total_cmp(&r[t * e + *a as usize]));
            idx[t * k..(t + 1) * k].copy_from_slice(&order[..k]);
        }
        let plan = build_plan(&idx, n, k, e, cap).unwrap();
        let parts = plan
            .counts()
            .iter()
            .enumerate()
            .map(|(i, &c)| Tensor::from_slice(&[c, d], &rand_vec(c * d, 10 + i as u64)).unwrap())
            .collect();
        let gates = Tensor::from_slice(&[n, k], &rand_vec(n * k, 3)).unwrap();
        let dy = Tensor::from_slice(&[n, d], &rand_vec(n * d, 4)).unwrap();
        (plan, parts, gates, dy)
    }

    #[test]
    fn parts_give_the_bits_of_combine_over_the_concatenation() {
        for cap in [usize::MAX, 20, 5] {
            let (plan, parts, gates, dy) = case(53, 11, cap);
            let refs: Vec<&Tensor> = parts.iter().collect();
            let ys = concat_rows(&refs).unwrap();
            let y = combine_parts_forward(&refs, &gates, &plan).unwrap();
            assert!(same_bits(y.data(), combine_forward(&ys, &gates, &plan).unwrap().data()));
            let (dparts, dg) = combine_parts_backward(&refs, &gates, &plan, &dy).unwrap();
            let (dys, dg_ref) = combine_backward(&ys, &gates, &plan, &dy).unwrap();
            assert!(same_bits(dg.data(), dg_ref.data()));
            for (a, b) in dparts.iter().zip(split_rows(&dys, &plan.counts()).unwrap()) {
                assert_eq!(a.shape(), b.shape());
                assert!(same_bits(a.data(), b.data()));
            }
        }
    }

    #[test]
    fn one_and_two_threads_agree() {
        // parts of ~1000 rows of 40: rows_per_task(40) = 819, so every row loop splits.
        let (plan, parts, gates, dy) = case(2000, 40, usize::MAX);
        let refs: Vec<&Tensor> = parts.iter().collect();
        let (outs, chunks) = run_threads_split(|| {
            let y = combine_parts_forward(&refs, &gates, &plan).unwrap();
            let (dp, dg) = combine_parts_backward(&refs, &gates, &plan, &dy).unwrap();
            let mut all = y.data().to_vec();
            dp.iter().for_each(|t| all.extend_from_slice(t.data()));
            all.extend_from_slice(dg.data());
            all
        });
        assert!(chunks >= 2, "the work must split to test anything: {chunks} chunk(s)");
        assert!(same_bits(&outs[0], &outs[1]));
    }

    #[test]
    fn wrong_part_count_or_shape_is_an_error() {
        let (plan, parts, gates, _) = case(53, 11, usize::MAX);
        let refs: Vec<&Tensor> = parts.iter().collect();
        assert!(combine_parts_forward(&refs[..3], &gates, &plan).is_err());
        let bad = Tensor::zeros(&[parts[0].shape()[0] + 1, 11]);
        let mut refs2 = refs.clone();
        refs2[0] = &bad;
        assert!(combine_parts_forward(&refs2, &gates, &plan).is_err());
    }
}
