//! The whole routed SwiGLU expert bank as one forward/backward pair, with no [S, D] buffer:
//! `dispatch -> experts -> combine` fused per expert.
//!
//! Forward, for each expert (experts run as parallel tasks, as in `experts`):
//!   gather   its token rows straight from x [N, D] into a task buffer (the rows the GEMM reads
//!            in place), so no gathered copy of all S = N·k rows is made;
//!   GEMMs    g = xe W_gateᵀ, u = xe W_upᵀ (kept for backward), a = silu(g) ⊙ u, ye = a W_downᵀ;
//!   scatter  gate · ye straight to the row of its (token, choice) in a [N·k, D] buffer (each
//!            (token, choice) has at most one slot, so tasks never write the same row).
//! Then y[n] = Σ_j over kept choices, in choice order: the result does not depend on which task
//! ran where, so 1 and N threads give the same bits.
//!
//! Backward needs no expert output: dgate = dy · ye = (dy W_down) · a, so the down projection's
//! input gradient is computed unscaled as dyw = dye W_down, the gate gradient is the row dot
//! dyw · a, and then da = gate · dyw, dW_down = (gate · dye)ᵀ a. The input gradients of the
//! expert rows go to the (token, choice) rows of a [N·k, D] buffer and are summed per token in
//! choice order, like the forward. Weight gradients are written whole (never accumulated), into
//! recycled buffers that are not zeroed first; experts with no token get zeros.

use super::dispatch::{Plan, DROPPED};
use super::experts::{dims, Dims};
use crate::cpu;
use crate::error::{ensure_shape, Result};
use crate::ops::matmul::gemm;
use crate::scratch;
use crate::tensor::{AlignedBuf, Tensor};
use crate::threads;
use rayon::prelude::*;

/// A [N·k, D] buffer whose rows tasks write disjointly (one row per kept (token, choice)).
#[derive(Clone, Copy)]
struct Rows(*mut f32);
// SAFETY: every task writes only the rows of the (token, choice) pairs of its own slots; the
// plan gives each pair at most one slot, and the buffer outlives the parallel region.
unsafe impl Send for Rows {}
// SAFETY: as above.
unsafe impl Sync for Rows {}

impl Rows {
    /// Row `r` (of `d` floats) for writing.
    ///
    /// # Safety
    /// `r` must be within the buffer and no other task may access row `r` meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, r: usize, d: usize) -> &mut [f32] {
        // SAFETY: the caller guarantees the row is in bounds and exclusively this task's.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(r * d), d) }
    }
}

fn check(op: &'static str, x: &Tensor, gates: &Tensor, plan: &Plan, d: usize) -> Result<()> {
    ensure_shape!(
        x.shape() == [plan.n_tokens, d],
        op,
        "x {:?} must be [{}, {}] (the plan's tokens × model width)",
        x.shape(),
        plan.n_tokens,
        d
    );
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

/// Copies rows `tokens` of `src` (rows of `d`) into `dst`, in order.
fn gather(src: &[f32], tokens: &[u32], d: usize, dst: &mut [f32]) {
    for (row, &n) in dst.chunks_exact_mut(d).zip(tokens) {
        row.copy_from_slice(&src[n as usize * d..(n as usize + 1) * d]);
    }
}

/// a = silu(g) ⊙ u.
fn swiglu_into(g: &[f32], u: &[f32], a: &mut [f32]) {
    cpu::silu(g, a);
    for (v, uu) in a.iter_mut().zip(u) {
        *v *= uu;
    }
}

/// y[n] = Σ_j rows[n·k + j] over the kept choices of token n, in choice order (0 if none).
fn sum_choices(rows: &[f32], plan: &Plan, d: usize, y: &mut [f32]) {
    let k = plan.k;
    threads::for_row_chunks(y, d, threads::rows_per_task(d), |r0, out| {
        for (i, row) in out.chunks_mut(d).enumerate() {
            let n = r0 + i;
            let mut first = true;
            for j in 0..k {
                if plan.token_slot[n * k + j] == DROPPED {
                    continue;
                }
                let src = &rows[(n * k + j) * d..(n * k + j + 1) * d];
                if first {
                    row.copy_from_slice(src);
                    first = false;
                } else {
                    cpu::axpy(1.0, src, row);
                }
            }
            if first {
                row.fill(0.0);
            }
        }
    });
}

/// y = Σ_j gates[n, j] · SwiGLU_{expert(n, j)}(x[n]) over kept choices.
/// x: [N, D], gates: [N, k] -> (y [N, D], g [S, H], u [S, H]); g and u are backward's cache.
pub fn moe_swiglu_forward(
    x: &Tensor,
    gates: &Tensor,
    plan: &Plan,
    wg: &Tensor,
    wu: &Tensor,
    wd: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let Dims { h, d, s } = dims("moe_swiglu", &[plan.n_slots(), x.last_dim()], &plan.offsets, wg, wu, wd)?;
    check("moe_swiglu", x, gates, plan, d)?;
    let (n, k) = (plan.n_tokens, plan.k);
    let (mut g, mut u) = (Tensor::for_overwrite(&[s, h]), Tensor::for_overwrite(&[s, h]));
    let mut yk = AlignedBuf::for_overwrite(n * k * d);
    let (xd, gd) = (x.data(), gates.data());
    let (wgd, wud, wdd) = (wg.data(), wu.data(), wd.data());
    let out = Rows(yk.as_mut_slice().as_mut_ptr());
    let parts = split2(g.data_mut(), u.data_mut(), &plan.offsets, h);
    parts.into_par_iter().enumerate().for_each(|(ex, (ge, ue))| {
        let (r0, m) = (plan.offsets[ex], plan.offsets[ex + 1] - plan.offsets[ex]);
        if m == 0 {
            return;
        }
        let mut buf = scratch::take_shared(m * (2 * d + h));
        let (xe, rest) = buf.as_mut_slice().split_at_mut(m * d);
        let (ae, ye) = rest.split_at_mut(m * h);
        gather(xd, plan.tokens_of(ex), d, xe);
        gemm(m, h, d, xe, false, &wgd[ex * h * d..(ex + 1) * h * d], true, ge, false);
        gemm(m, h, d, xe, false, &wud[ex * h * d..(ex + 1) * h * d], true, ue, false);
        swiglu_into(ge, ue, ae);
        gemm(m, d, h, ae, false, &wdd[ex * d * h..(ex + 1) * d * h], true, ye, false);
        for (i, src) in ye.chunks_exact(d).enumerate() {
            let (t, j) = (plan.slot_token[r0 + i] as usize, plan.slot_choice[r0 + i] as usize);
            // SAFETY: (t, j) is the pair of slot r0 + i, a slot of this expert alone; row t·k + j
            // < N·k is written by this task only.
            let dst = unsafe { out.row(t * k + j, d) };
            cpu::scale(gd[t * k + j], src, dst);
        }
    });
    let mut y = Tensor::for_overwrite(&[n, d]);
    sum_choices(yk.as_slice(), plan, d, y.data_mut());
    Ok((y, g, u))
}

/// Gradients of `moe_swiglu_forward` given dy [N, D]:
/// (dx [N, D], dgates [N, k], dw_gate, dw_up, dw_down).
pub fn moe_swiglu_backward(
    x: &Tensor,
    gates: &Tensor,
    plan: &Plan,
    wg: &Tensor,
    wu: &Tensor,
    wd: &Tensor,
    g: &Tensor,
    u: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor, Tensor, Tensor)> {
    let Dims { h, d, s } = dims("moe_swiglu_backward", &[plan.n_slots(), x.last_dim()], &plan.offsets, wg, wu, wd)?;
    check("moe_swiglu_backward", x, gates, plan, d)?;
    ensure_shape!(
        g.shape() == [s, h] && u.shape() == [s, h] && dy.shape() == x.shape(),
        "moe_swiglu_backward",
        "g {:?}, u {:?} must be [{}, {}]; dy {:?} must be {:?}",
        g.shape(),
        u.shape(),
        s,
        h,
        dy.shape(),
        x.shape()
    );
    let (n, k) = (plan.n_tokens, plan.k);
    let (xd, gated, dyd, gcache, ucache) = (x.data(), gates.data(), dy.data(), g.data(), u.data());
    let (wgd, wud, wdd) = (wg.data(), wu.data(), wd.data());
    let mut dwg = Tensor::for_overwrite(wg.shape());
    let mut dwu = Tensor::for_overwrite(wu.shape());
    let mut dwd = Tensor::for_overwrite(wd.shape());
    let mut dgates = Tensor::zeros(gates.shape());
    let mut dxk = AlignedBuf::for_overwrite(n * k * d);
    let (dxo, dgo) = (Rows(dxk.as_mut_slice().as_mut_ptr()), Rows(dgates.data_mut().as_mut_ptr()));
    let parts: Vec<_> = dwg
        .data_mut()
        .chunks_mut(h * d)
        .zip(dwu.data_mut().chunks_mut(h * d))
        .zip(dwd.data_mut().chunks_mut(d * h))
        .collect();
    parts.into_par_iter().enumerate().for_each(|(ex, ((dwge, dwue), dwde))| {
        let (r0, m) = (plan.offsets[ex], plan.offsets[ex + 1] - plan.offsets[ex]);
        if m == 0 {
            // No token: zero gradient (the buffers are recycled, not zeroed).
            for b in [dwge, dwue, dwde] {
                b.fill(0.0);
            }
            return;
        }
        let mut buf = scratch::take_shared(m * (3 * d + 2 * h));
        let (xe, rest) = buf.as_mut_slice().split_at_mut(m * d);
        let (dye, rest) = rest.split_at_mut(m * d);
        let (dxe, rest) = rest.split_at_mut(m * d);
        let (ae, dyw) = rest.split_at_mut(m * h);
        let tokens = plan.tokens_of(ex);
        gather(xd, tokens, d, xe);
        gather(dyd, tokens, d, dye);
        let (ge, ue) = (&gcache[r0 * h..(r0 + m) * h], &ucache[r0 * h..(r0 + m) * h]);
        swiglu_into(ge, ue, ae);
        // dyw = dye W_down (unscaled), then per row: dgate = dyw · a, da = gate·dyw, dys = gate·dye.
        gemm(m, h, d, dye, false, &wdd[ex * d * h..(ex + 1) * d * h], false, dyw, false);
        for i in 0..m {
            let (t, j) = (plan.slot_token[r0 + i] as usize, plan.slot_choice[r0 + i] as usize);
            let gate = gated[t * k + j];
            let (dr, ar) = (&mut dyw[i * h..(i + 1) * h], &ae[i * h..(i + 1) * h]);
            // SAFETY: element t·k + j of dgates belongs to slot r0 + i, a slot of this task alone.
            unsafe { dgo.row(t * k + j, 1)[0] = cpu::dot(dr, ar) };
            dr.iter_mut().for_each(|v| *v *= gate);
            dye[i * d..(i + 1) * d].iter_mut().for_each(|v| *v *= gate);
        }
        gemm(d, h, m, dye, true, ae, false, dwde, false);
        // dg = da ⊙ u ⊙ silu'(g) into dyw, du = da ⊙ silu(g) into a, 64 elements at a time.
        let mut tmp = [0.0f32; 64];
        for (((dgc, duc), gc), uc) in dyw.chunks_mut(64).zip(ae.chunks_mut(64)).zip(ge.chunks(64)).zip(ue.chunks(64)) {
            let len = dgc.len();
            cpu::silu(gc, duc);
            for ((t, &da), &uu) in tmp[..len].iter_mut().zip(dgc.iter()).zip(uc) {
                *t = da * uu;
            }
            for (du, &da) in duc.iter_mut().zip(dgc.iter()) {
                *du *= da;
            }
            cpu::silu_backward(gc, &tmp[..len], dgc);
        }
        let (dge, due) = (&*dyw, &*ae);
        gemm(m, d, h, dge, false, &wgd[ex * h * d..(ex + 1) * h * d], false, dxe, false);
        gemm(m, d, h, due, false, &wud[ex * h * d..(ex + 1) * h * d], false, dxe, true);
        gemm(h, d, m, dge, true, xe, false, dwge, false);
        gemm(h, d, m, due, true, xe, false, dwue, false);
        for (i, src) in dxe.chunks_exact(d).enumerate() {
            let (t, j) = (plan.slot_token[r0 + i] as usize, plan.slot_choice[r0 + i] as usize);
            // SAFETY: row t·k + j belongs to slot r0 + i, a slot of this task alone.
            unsafe { dxo.row(t * k + j, d) }.copy_from_slice(src);
        }
    });
    let mut dx = Tensor::for_overwrite(&[n, d]);
    sum_choices(dxk.as_slice(), plan, d, dx.data_mut());
    Ok((dx, dgates, dwg, dwu, dwd))
}

/// One (g, u) block pair per expert along `offsets` (rows of `width`).
fn split2<'a>(
    g: &'a mut [f32],
    u: &'a mut [f32],
    offsets: &[usize],
    width: usize,
) -> Vec<(&'a mut [f32], &'a mut [f32])> {
    let (mut rg, mut ru) = (g, u);
    let mut parts = Vec::with_capacity(offsets.len().saturating_sub(1));
    for w in offsets.windows(2) {
        let len = (w[1] - w[0]) * width;
        let (hg, tg) = rg.split_at_mut(len);
        let (hu, tu) = ru.split_at_mut(len);
        parts.push((hg, hu));
        (rg, ru) = (tg, tu);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::super::dispatch::{build_plan, combine_backward, combine_forward, dispatch_backward, dispatch_forward};
    use super::super::experts::{experts_backward, experts_forward};
    use super::*;
    use crate::ops::testutil::{assert_close, rand_vec, run_threads, same_bits};

    /// Expert ids [N·k]: k distinct experts per token, walking (7t + c) mod E, never `skip`.
    fn ids(n: usize, k: usize, e: usize, skip: usize) -> Vec<u32> {
        let mut idx = Vec::with_capacity(n * k);
        for t in 0..n {
            let mut row: Vec<u32> = Vec::new();
            let mut c = t * 7;
            while row.len() < k {
                let ex = (c % e) as u32;
                if ex as usize != skip && !row.contains(&ex) {
                    row.push(ex);
                }
                c += 1;
            }
            idx.extend(row);
        }
        idx
    }

    struct Case {
        x: Tensor,
        gates: Tensor,
        wg: Tensor,
        wu: Tensor,
        wd: Tensor,
        dy: Tensor,
    }

    fn case(n: usize, k: usize, e: usize, h: usize, d: usize) -> Case {
        let t = |shape: &[usize], seed| Tensor::from_slice(shape, &rand_vec(shape.iter().product(), seed)).unwrap();
        Case {
            x: t(&[n, d], 21),
            gates: t(&[n, k], 22),
            wg: t(&[e, h, d], 23),
            wu: t(&[e, h, d], 24),
            wd: t(&[e, d, h], 25),
            dy: t(&[n, d], 26),
        }
    }

    /// The unfused ops (dispatch -> experts -> combine and their backward), each tested on its own.
    fn unfused(c: &Case, plan: &Plan) -> [Vec<f32>; 6] {
        let xs = dispatch_forward(&c.x, plan).unwrap();
        let (ys, g, u) = experts_forward(&xs, &plan.offsets, &c.wg, &c.wu, &c.wd).unwrap();
        let y = combine_forward(&ys, &c.gates, plan).unwrap();
        let (dys, dgates) = combine_backward(&ys, &c.gates, plan, &c.dy).unwrap();
        let (dxs, dwg, dwu, dwd) = experts_backward(&xs, &plan.offsets, &c.wg, &c.wu, &c.wd, &g, &u, &dys).unwrap();
        let dx = dispatch_backward(&dxs, plan).unwrap();
        [y, dx, dgates, dwg, dwu, dwd].map(|t| t.data().to_vec())
    }

    fn fused(c: &Case, plan: &Plan) -> [Vec<f32>; 6] {
        let (y, g, u) = moe_swiglu_forward(&c.x, &c.gates, plan, &c.wg, &c.wu, &c.wd).unwrap();
        let (dx, dgates, dwg, dwu, dwd) =
            moe_swiglu_backward(&c.x, &c.gates, plan, &c.wg, &c.wu, &c.wd, &g, &u, &c.dy).unwrap();
        [y, dx, dgates, dwg, dwu, dwd].map(|t| t.data().to_vec())
    }

    #[test]
    fn matches_dispatch_experts_combine_with_drops_and_an_empty_expert() {
        let (n, k, e, h, d) = (53, 2, 5, 24, 16);
        let c = case(n, k, e, h, d);
        let idx = ids(n, k, e, 3);
        for cap in [usize::MAX, 17, 6] {
            let plan = build_plan(&idx, n, k, e, cap).unwrap();
            assert_eq!(plan.counts()[3], 0, "expert 3 must stay empty");
            if cap == 6 {
                assert!(plan.dropped > 0 && (0..n).any(|t| (0..k).all(|j| plan.token_slot[t * k + j] == DROPPED)));
            }
            let (want, got) = (unfused(&c, &plan), fused(&c, &plan));
            for (i, name) in ["y", "dx", "dgates", "dw_gate", "dw_up", "dw_down"].iter().enumerate() {
                assert_close(&got[i], &want[i], 1e-4, 1e-4, &format!("{name} at capacity {cap}"));
            }
            // The empty expert's weight gradients are exact zeros (recycled buffers are not).
            assert!(got[3][3 * h * d..4 * h * d].iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn backward_matches_finite_differences_of_the_gates_and_input() {
        // loss = Σ dy ⊙ y; central differences of d/dgates and d/dx at a few entries (f32, loose).
        let (n, k, e, h, d) = (9, 2, 3, 6, 5);
        let c = case(n, k, e, h, d);
        let plan = build_plan(&ids(n, k, e, usize::MAX), n, k, e, usize::MAX).unwrap();
        let got = fused(&c, &plan);
        let loss = |x: &Tensor, gates: &Tensor| -> f64 {
            let (y, _, _) = moe_swiglu_forward(x, gates, &plan, &c.wg, &c.wu, &c.wd).unwrap();
            y.data().iter().zip(c.dy.data()).map(|(a, b)| *a as f64 * *b as f64).sum()
        };
        let eps = 1e-2f32;
        for (which, i) in [(0usize, 0usize), (0, 17), (0, 44), (1, 0), (1, 5), (1, 17)] {
            let mut ts = [c.x.clone(), c.gates.clone()];
            ts[which].data_mut()[i] += eps;
            let fp = loss(&ts[0], &ts[1]);
            ts[which].data_mut()[i] -= 2.0 * eps;
            let fm = loss(&ts[0], &ts[1]);
            let num = ((fp - fm) / (2.0 * eps as f64)) as f32;
            let want = if which == 0 { got[1][i] } else { got[2][i] };
            assert!((num - want).abs() < 2e-3 * (1.0 + want.abs()), "input {which}[{i}]: numeric {num} vs {want}");
        }
    }

    #[test]
    fn one_and_two_threads_same_bits() {
        let (n, k, e, h, d) = (300, 2, 4, 96, 80);
        let c = case(n, k, e, h, d);
        let plan = build_plan(&ids(n, k, e, usize::MAX), n, k, e, 160).unwrap();
        let outs = run_threads(|| fused(&c, &plan));
        for (i, (a, b)) in outs[0].iter().zip(&outs[1]).enumerate() {
            assert!(same_bits(a, b), "output {i}");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let (n, k, e, h, d) = (8, 2, 3, 4, 5);
        let c = case(n, k, e, h, d);
        let plan = build_plan(&ids(n, k, e, usize::MAX), n, k, e, usize::MAX).unwrap();
        let short = Tensor::zeros(&[n - 1, d]);
        assert!(moe_swiglu_forward(&short, &c.gates, &plan, &c.wg, &c.wu, &c.wd).is_err());
        assert!(moe_swiglu_forward(&c.x, &Tensor::zeros(&[n, 1]), &plan, &c.wg, &c.wu, &c.wd).is_err());
        assert!(moe_swiglu_forward(&c.x, &c.gates, &plan, &c.wg, &c.wu, &c.wg).is_err());
    }
}
