//! Packing of GEMM operands into the panels the microkernels stream: a panel holds `width`
//! lanes (rows of A or columns of B) for each of `kc` steps of k, step after step, zero-padded
//! past the last real lane so edge tiles run the same microkernel.

/// A strided read-only matrix view: element (i, j) = data[i*rs + j*cs].
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

#[cfg(test)]
impl View<'_> {
    /// Element (i, j): how the reference GEMM of the tests reads its operands.
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// Packs `lanes` (≤ width) lanes × `kc` steps into `dst[p*width + l]`, zeros for l ≥ lanes.
/// Source element (lane l, step p) = `src[base + l*ls + p*ps]`.
pub(crate) fn pack_panel(
    src: &[f32],
    base: usize,
    ls: usize,
    ps: usize,
    lanes: usize,
    kc: usize,
    width: usize,
    dst: &mut [f32],
) {
    let dst = &mut dst[..kc * width];
    if lanes == 0 || kc == 0 {
        dst.fill(0.0);
        return;
    }
    if ls == 1 {
        // Lanes contiguous (A transposed, B as stored): one copy per step.
        for (p, d) in dst.chunks_exact_mut(width).enumerate() {
            let s = base + p * ps;
            d[..lanes].copy_from_slice(&src[s..s + lanes]);
            d[lanes..].fill(0.0);
        }
    } else {
        // Steps contiguous (A as stored, B transposed): a transposing copy, 8×8 blocks in
        // registers where whole, lane by lane for the rest.
        if lanes < width {
            dst.fill(0.0);
        }
        let (l8, k8) = if ps == 1 { (lanes / 8 * 8, kc / 8 * 8) } else { (0, 0) };
        for l0 in (0..l8).step_by(8) {
            for p0 in (0..k8).step_by(8) {
                crate::cpu::transpose8x8(&src[base + l0 * ls + p0..], ls, &mut dst[p0 * width + l0..], width, 1.0);
            }
        }
        for l in 0..lanes {
            let p_from = if l < l8 { k8 } else { 0 };
            if p_from == kc {
                continue;
            }
            let row = &src[base + l * ls + p_from * ps..base + l * ls + (kc - 1) * ps + 1];
            for (d, v) in dst[p_from * width..].chunks_exact_mut(width).zip(row.iter().step_by(ps)) {
                d[l] = *v;
            }
        }
    }
}

/// Packs rows [i0, i0+rows) × steps [p0, p0+kc) of A (view `a`: A(i, p)) into MR-row panels.
pub(crate) fn pack_a(a: View, i0: usize, rows: usize, p0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
    for (q, panel) in dst[..rows.div_ceil(mr) * kc * mr].chunks_exact_mut(kc * mr).enumerate() {
        let lanes = mr.min(rows - q * mr);
        pack_panel(a.data, (i0 + q * mr) * a.rs + p0 * a.cs, a.rs, a.cs, lanes, kc, mr, panel);
    }
}

/// Packs one NR-column panel of B (view `b`: B(p, j)): steps [p0, p0+kc), columns [j0, j0+cols).
pub(crate) fn pack_b(b: View, p0: usize, kc: usize, j0: usize, cols: usize, nr: usize, dst: &mut [f32]) {
    pack_panel(b.data, p0 * b.rs + j0 * b.cs, b.cs, b.rs, cols, kc, nr, dst);
}
