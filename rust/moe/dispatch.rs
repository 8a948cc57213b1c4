//! Grouping tokens by expert (a counting sort into a `Plan`), gathering their rows into one
//! contiguous block per expert, and the weighted scatter back. Gradients flow through both.
//!
//! Capacity and the overflow rule: expert e accepts at most `capacity` assignments. Assignments
//! are admitted by priority — every token's first choice (in token order) before any second
//! choice, and so on — so a token loses its lower-ranked choices first. An assignment over
//! capacity is dropped: it is counted in `Plan::dropped`, its gate contributes nothing, and a
//! token whose every choice is dropped leaves the layer as zero, so it passes through the
//! residual connection unchanged. Within an expert, rows are in ascending token order.

use crate::cpu;
use crate::error::{ensure_shape, Error, Result};
use crate::tensor::Tensor;
use crate::threads;
use rayon::prelude::*;

/// Marks a dropped assignment in `Plan::token_slot`.
pub const DROPPED: u32 = u32::MAX;

/// Where every (token, choice) assignment went.
#[derive(Debug, Clone)]
pub struct Plan {
    pub n_tokens: usize,
    pub k: usize,
    pub n_experts: usize,
    /// Most assignments an expert accepts (`usize::MAX`: unlimited).
    pub capacity: usize,
    /// Slots of expert e are `offsets[e]..offsets[e+1]`; len E+1.
    pub offsets: Vec<usize>,
    /// Token of each slot; len S = offsets[E].
    pub slot_token: Vec<u32>,
    /// Which of its token's k choices each slot serves.
    pub slot_choice: Vec<u32>,
    /// Slot of assignment (n, j) at n*k + j, or DROPPED.
    pub token_slot: Vec<u32>,
    /// Assignments each expert was asked for, before the capacity limit.
    pub demand: Vec<usize>,
    /// Assignments refused for capacity.
    pub dropped: usize,
}

impl Plan {
    pub fn n_slots(&self) -> usize {
        self.slot_token.len()
    }
    /// Tokens routed to expert e, ascending.
    pub fn tokens_of(&self, e: usize) -> &[u32] {
        &self.slot_token[self.offsets[e]..self.offsets[e + 1]]
    }
    pub fn counts(&self) -> Vec<usize> {
        self.offsets.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

/// ceil(factor · N · k / E); factor <= 0 means no limit.
pub fn capacity_for(n_tokens: usize, k: usize, n_experts: usize, factor: f32) -> usize {
    if factor <= 0.0 || n_experts == 0 {
        return usize::MAX;
    }
    ((factor as f64) * (n_tokens * k) as f64 / n_experts as f64).ceil() as usize
}

/// Builds the plan from the router's choices idx [N*k] (row n: k distinct experts, best first).
pub fn build_plan(idx: &[u32], n_tokens: usize, k: usize, n_experts: usize, capacity: usize) -> Result<Plan> {
    build_plan_kept(idx, None, n_tokens, k, n_experts, capacity)
}

/// `build_plan` where `keep[n*k + j] == false` leaves assignment (n, j) out before any capacity
/// count: it gets no slot (`token_slot` is DROPPED), is not in `demand` and is not counted as
/// `dropped` (SAGI skips agents whose gate is below its threshold this way).
pub fn build_plan_kept(
    idx: &[u32],
    keep: Option<&[bool]>,
    n_tokens: usize,
    k: usize,
    n_experts: usize,
    capacity: usize,
) -> Result<Plan> {
    ensure_shape!(idx.len() == n_tokens * k, "moe_plan", "{} expert ids for {} tokens × k={}", idx.len(), n_tokens, k);
    if let Some(keep) = keep {
        ensure_shape!(keep.len() == idx.len(), "moe_plan", "keep has {} entries for {} choices", keep.len(), idx.len());
    }
    let kept_choice = |a: usize| keep.is_none_or(|m| m[a]);
    super::router::check_ids("moe_plan", idx, n_experts)?;
    for (n, row) in idx.chunks(k.max(1)).enumerate() {
        for j in 1..row.len() {
            if row[..j].contains(&row[j]) {
                return Err(Error::value("moe_plan", format!("token {n} chooses expert {} twice", row[j])));
            }
        }
    }
    let mut demand = vec![0usize; n_experts];
    let mut kept = vec![0usize; n_experts];
    let mut admitted = vec![false; idx.len()];
    // Admission by priority: choice rank first, then token order.
    for j in 0..k {
        for n in 0..n_tokens {
            if !kept_choice(n * k + j) {
                continue;
            }
            let e = idx[n * k + j] as usize;
            demand[e] += 1;
            if kept[e] < capacity {
                kept[e] += 1;
                admitted[n * k + j] = true;
            }
        }
    }
    let mut offsets = vec![0usize; n_experts + 1];
    for e in 0..n_experts {
        offsets[e + 1] = offsets[e] + kept[e];
    }
    let s = offsets[n_experts];
    let (mut slot_token, mut slot_choice) = (vec![0u32; s], vec![0u32; s]);
    let mut token_slot = vec![DROPPED; idx.len()];
    let mut cursor = offsets[..n_experts].to_vec();
    // Counting sort in token order, so each expert's rows ascend by token.
    for n in 0..n_tokens {
        for j in 0..k {
            if admitted[n * k + j] {
                let e = idx[n * k + j] as usize;
                let slot = cursor[e];
                cursor[e] += 1;
                slot_token[slot] = n as u32;
                slot_choice[slot] = j as u32;
                token_slot[n * k + j] = slot as u32;
            }
        }
    }
    let dropped = demand.iter().sum::<usize>() - s;
    Ok(Plan { n_tokens, k, n_experts, capacity, offsets, slot_token, slot_choice, token_slot, demand, dropped })
}

fn rows_of(op: &'static str, x: &Tensor, rows: usize) -> Result<usize> {
    ensure_shape!(x.ndim() == 2 && x.shape()[0] == rows, op, "need [{}, D], got {:?}", rows, x.shape());
    Ok(x.shape()[1])
}

/// xs[slot] = x[token of slot].  x: [N, D] -> [S, D]
pub fn dispatch_forward(x: &Tensor, plan: &Plan) -> Result<Tensor> {
    let d = rows_of("dispatch", x, plan.n_tokens)?;
    let mut xs = Tensor::zeros(&[plan.n_slots(), d]);
    let xd = x.data();
    threads::for_row_chunks(xs.data_mut(), d, threads::rows_per_task(d), |r0, out| {
        for (j, row) in out.chunks_mut(d).enumerate() {
            let n = plan.slot_token[r0 + j] as usize;
            row.copy_from_slice(&xd[n * d..(n + 1) * d]);
        }
    });
    Ok(xs)
}

/// dx[n] = Σ_j dxs[slot(n, j)] over kept choices, in choice order.  dxs: [S, D] -> [N, D]
pub fn dispatch_backward(dxs: &Tensor, plan: &Plan) -> Result<Tensor> {
    let d = rows_of("dispatch_backward", dxs, plan.n_slots())?;
    let mut dx = Tensor::zeros(&[plan.n_tokens, d]);
    let sd = dxs.data();
    threads::for_row_chunks(dx.data_mut(), d, threads::rows_per_task(d), |r0, out| {
        for (j, row) in out.chunks_mut(d).enumerate() {
            for &slot in &plan.token_slot[(r0 + j) * plan.k..(r0 + j + 1) * plan.k] {
                if slot != DROPPED {
                    cpu::axpy(1.0, &sd[slot as usize * d..(slot as usize + 1) * d], row);
                }
            }
        }
    });
    Ok(dx)
}

pub(super) fn check_gates(op: &'static str, gates: &Tensor, plan: &Plan) -> Result<()> {
    ensure_shape!(
        gates.shape() == [plan.n_tokens, plan.k],
        op,
        "gates {:?} must be [{}, {}]",
        gates.shape(),
        plan.n_tokens,
        plan.k
    );
    Ok(())
}

/// y[n] = Σ_j gates[n, j] · ys[slot(n, j)] over kept choices.  ys: [S, D], gates: [N, k] -> [N, D]
pub fn combine_forward(ys: &Tensor, gates: &Tensor, plan: &Plan) -> Result<Tensor> {
    let d = rows_of("combine", ys, plan.n_slots())?;
    check_gates("combine", gates, plan)?;
    let mut y = Tensor::zeros(&[plan.n_tokens, d]);
    let (sd, gd, k) = (ys.data(), gates.data(), plan.k);
    threads::for_row_chunks(y.data_mut(), d, threads::rows_per_task(d), |r0, out| {
        for (i, row) in out.chunks_mut(d).enumerate() {
            let n = r0 + i;
            for j in 0..k {
                let slot = plan.token_slot[n * k + j];
                if slot != DROPPED {
                    cpu::axpy(gd[n * k + j], &sd[slot as usize * d..(slot as usize + 1) * d], row);
                }
            }
        }
    });
    Ok(y)
}

/// dys[slot] = gate · dy[token]; dgates[n, j] = dy[n] · ys[slot(n, j)] (0 when dropped).
pub fn combine_backward(ys: &Tensor, gates: &Tensor, plan: &Plan, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let d = rows_of("combine_backward", ys, plan.n_slots())?;
    check_gates("combine_backward", gates, plan)?;
    ensure_shape!(
        dy.shape() == [plan.n_tokens, d],
        "combine_backward",
        "dy {:?} must be [{}, {}]",
        dy.shape(),
        plan.n_tokens,
        d
    );
    let (sd, gd, dyd, k) = (ys.data(), gates.data(), dy.data(), plan.k);
    let mut dys = Tensor::zeros(ys.shape());
    threads::for_row_chunks(dys.data_mut(), d, threads::rows_per_task(d), |r0, out| {
        for (i, row) in out.chunks_mut(d).enumerate() {
            let (n, j) = (plan.slot_token[r0 + i] as usize, plan.slot_choice[r0 + i] as usize);
            cpu::scale(gd[n * k + j], &dyd[n * d..(n + 1) * d], row);
        }
    });
    let mut dg = Tensor::zeros(gates.shape());
    dg.data_mut().par_chunks_mut(k.max(1)).enumerate().for_each(|(n, row)| {
        for (g, &slot) in row.iter_mut().zip(&plan.token_slot[n * k..(n + 1) * k]) {
            if slot != DROPPED {
                *g = cpu::dot(&dyd[n * d..(n + 1) * d], &sd[slot as usize * d..(slot as usize + 1) * d]);
            }
        }
    });
    Ok((dys, dg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{rand_vec, run_threads_split, same_bits};

    fn random_idx(n: usize, k: usize, e: usize, seed: u64) -> Vec<u32> {
        let r = rand_vec(n * e, seed);
        let mut idx = vec![0u32; n * k];
        for t in 0..n {
            let mut order: Vec<u32> = (0..e as u32).collect();
            order.sort_by(|a, b| r[t * e + *b as usize].total_cmp(&r[t * e + *a as usize]));
            idx[t * k..(t + 1) * k].copy_from_slice(&order[..k]);
        }
        idx
    }

    #[test]
    fn identity_experts_return_input_times_gate_sum() {
        let (n, k, e, d) = (37, 2, 5, 9);
        let idx = random_idx(n, k, e, 1);
        let x = Tensor::from_slice(&[n, d], &rand_vec(n * d, 2)).unwrap();
        let gates = Tensor::from_slice(&[n, k], &rand_vec(n * k, 3)).unwrap();
        for cap in [usize::MAX, 9, 3] {
            let plan = build_plan(&idx, n, k, e, cap).unwrap();
            let y = combine_forward(&dispatch_forward(&x, &plan).unwrap(), &gates, &plan).unwrap();
            for t in 0..n {
                let gsum: f32 =
                    (0..k).filter(|&j| plan.token_slot[t * k + j] != DROPPED).map(|j| gates.data()[t * k + j]).sum();
                for c in 0..d {
                    let want = x.data()[t * d + c] * gsum;
                    assert!((y.data()[t * d + c] - want).abs() <= 1e-6 * (1.0 + want.abs()), "cap {cap} token {t}");
                }
            }
        }
    }

    #[test]
    fn each_admitted_assignment_is_processed_exactly_once() {
        let (n, k, e) = (100, 2, 4);
        let idx = random_idx(n, k, e, 5);
        for cap in [usize::MAX, 60, 40, 10, 0] {
            let plan = build_plan(&idx, n, k, e, cap).unwrap();
            let mut seen = vec![0usize; n * k];
            for s in 0..plan.n_slots() {
                let (t, j) = (plan.slot_token[s] as usize, plan.slot_choice[s] as usize);
                assert_eq!(plan.token_slot[t * k + j] as usize, s);
                assert_eq!(
                    idx[t * k + j] as usize,
                    plan.offsets.partition_point(|&o| o <= s) - 1,
                    "slot in its expert's range"
                );
                seen[t * k + j] += 1;
            }
            assert!(seen.iter().all(|&c| c <= 1));
            assert_eq!(seen.iter().sum::<usize>() + plan.dropped, n * k);
            for ex in 0..e {
                assert!(plan.counts()[ex] <= cap && plan.counts()[ex] == plan.demand[ex].min(cap));
                assert!(plan.tokens_of(ex).windows(2).all(|w| w[0] < w[1]), "tokens ascend within an expert");
            }
        }
    }

    #[test]
    fn left_out_choices_get_no_slot_and_are_not_capacity_drops() {
        let (n, k, e) = (60, 2, 4);
        let idx = random_idx(n, k, e, 11);
        let keep: Vec<bool> = (0..n * k).map(|a| a % k == 0 || a % 3 != 1).collect();
        for cap in [usize::MAX, 20] {
            let plan = build_plan_kept(&idx, Some(&keep), n, k, e, cap).unwrap();
            // The same plan as building from the kept choices alone: skipped ones leave no trace.
            let asked = keep.iter().filter(|&&x| x).count();
            assert_eq!(plan.demand.iter().sum::<usize>(), asked);
            assert_eq!(plan.n_slots() + plan.dropped, asked);
            for (slot, &kept) in plan.token_slot.iter().zip(&keep) {
                if !kept {
                    assert_eq!(*slot, DROPPED);
                }
            }
            if cap == usize::MAX {
                assert_eq!(plan.dropped, 0);
            }
        }
        let all = build_plan_kept(&idx, Some(&vec![true; n * k]), n, k, e, 20).unwrap();
        assert_eq!(all.token_slot, build_plan(&idx, n, k, e, 20).unwrap().token_slot);
        assert!(matches!(build_plan_kept(&idx, Some(&[true]), n, k, e, 20), Err(Error::Shape { .. })));
    }

    #[test]
    fn overflow_drops_second_choices_first() {
        // 3 tokens all choose expert 0 first, expert 1 second; capacity 2 per expert.
        // First choices: tokens 0, 1 admitted to expert 0, token 2 dropped. Second choices: 0, 1
        // to expert 1, token 2 dropped.
        let plan = build_plan(&[0, 1, 0, 1, 0, 1], 3, 2, 2, 2).unwrap();
        assert_eq!(plan.dropped, 2);
        assert_eq!(plan.tokens_of(0), &[0, 1]);
        assert_eq!(plan.tokens_of(1), &[0, 1]);
        assert_eq!(&plan.token_slot[4..], &[DROPPED, DROPPED]);
        // A first choice beats an earlier token's second choice for the last seat.
        let plan = build_plan(&[0, 1, 1, 0], 2, 2, 2, 1).unwrap();
        assert_eq!((plan.tokens_of(0), plan.tokens_of(1)), (&[0u32][..], &[1u32][..]));
    }

    #[test]
    fn bad_plans_are_errors() {
        assert!(matches!(build_plan(&[0, 2], 1, 2, 2, 5), Err(Error::Value { .. })));
        assert!(matches!(build_plan(&[1, 1], 1, 2, 2, 5), Err(Error::Value { .. })));
        assert!(matches!(build_plan(&[0, 1, 0], 2, 2, 2, 5), Err(Error::Shape { .. })));
        assert_eq!(capacity_for(10, 2, 4, 1.25), 7);
        assert_eq!(capacity_for(10, 2, 4, 0.0), usize::MAX);
    }

    #[test]
    fn one_and_two_threads_same_bits() {
        // 4000 dispatched rows of 40: rows_per_task(40) = 819, so every loop splits.
        let (n, k, e, d) = (2000, 2, 8, 40);
        let plan = build_plan(&random_idx(n, k, e, 7), n, k, e, capacity_for(n, k, e, 1.0)).unwrap();
        let x = Tensor::from_slice(&[n, d], &rand_vec(n * d, 8)).unwrap();
        let gates = Tensor::from_slice(&[n, k], &rand_vec(n * k, 9)).unwrap();
        let (outs, chunks) = run_threads_split(|| {
            let xs = dispatch_forward(&x, &plan).unwrap();
            let y = combine_forward(&xs, &gates, &plan).unwrap();
            let (dys, dg) = combine_backward(&xs, &gates, &plan, &y).unwrap();
            let dx = dispatch_backward(&dys, &plan).unwrap();
            [y, dg, dx].map(|t| t.data().to_vec())
        });
        assert!(chunks >= 2, "the work must split to test anything: {chunks} chunk(s)");
        for (a, b) in outs[0].iter().zip(&outs[1]) {
            assert!(same_bits(a, b));
        }
    }
}
