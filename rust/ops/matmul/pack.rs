//! Packing of GEMM operands into the panels the microkernels stream: a panel holds `width`
//! lanes (rows of A or columns of B) for each of `kc` steps of k, step after step, zero-padded
//! past the last real lane so edge tiles run the same microkernel.

/// Software prefetch distances, in k steps, of the packs whose source rows lie a row stride
/// (often most of a page) apart, which the hardware prefetchers do not follow across pages: the
/// step loads then wait on L3 or DRAM one line at a time. Measured on Zen 3 by the share of the
/// pack in the GEMM's profile: the A^T pack of the dW products (6 floats per step, m = 704,
/// k = 2048) 0.47 -> 0.37 of the microkernel's time at 48 steps (16: 0.39); the B pack of B as
/// stored (runs of up to 128 floats per step, n = 352) 0.43 -> 0.26 at 8 steps (4: 0.28,
/// 16: 0.26). A prefetch past the end of the source is harmless (a hint, never a fault).
const PREFETCH_STEPS_A: usize = 48;
const PREFETCH_STEPS_B: usize = 8;

/// Asks the cache hierarchy to bring the 64-byte line holding `p` into L1 (a hint; it never
/// faults, whatever the address).
#[inline(always)]
fn prefetch_l1(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is an SSE (x86-64 baseline) hint that neither faults nor reads memory
    // architecturally, so any address is fine.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

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
        // Lanes contiguous (A transposed, B as stored): one copy per step; full panels of the
        // microkernels' widths (MR 6 on AVX2, 8 on AVX-512; NR 16, 32) copy a constant length
        // (vector moves, not a memcpy call per step: the AVX2 A panels of a transposed A went
        // through memcpy and took a third of the dW products' time).
        match (lanes == width, width) {
            (true, 6) => copy_steps::<6>(src, base, ps, kc, dst, true),
            (true, 8) => copy_steps::<8>(src, base, ps, kc, dst, true),
            (true, 16) => copy_steps::<16>(src, base, ps, kc, dst, true),
            (true, 32) => copy_steps::<32>(src, base, ps, kc, dst, true),
            _ => {
                for (p, d) in dst.chunks_exact_mut(width).enumerate() {
                    let s = base + p * ps;
                    d[..lanes].copy_from_slice(&src[s..s + lanes]);
                    d[lanes..].fill(0.0);
                }
            }
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

/// `dst[p*W..][..W] = src[base + p*ps..][..W]` for p < kc: the lanes-contiguous pack of a full
/// panel of constant width W. Pointer-walking, with the bounds checked once: the indexed loop
/// kept its step counter on the stack (a store-to-load chain per step) and its loads waited on
/// it; the source rows are a row stride apart (most of a page), so each step's load is a miss
/// and the loop must keep many in flight.
#[inline(always)]
fn copy_steps<const W: usize>(src: &[f32], base: usize, ps: usize, kc: usize, dst: &mut [f32], prefetch: bool) {
    if kc == 0 {
        return;
    }
    assert!(base + (kc - 1) * ps + W <= src.len() && dst.len() >= kc * W, "pack: panel out of bounds");
    let (mut s, mut d) = (src[base..].as_ptr(), dst.as_mut_ptr());
    for _ in 0..kc {
        if prefetch {
            prefetch_l1(s.wrapping_add(PREFETCH_STEPS_A * ps));
        }
        // Step p reads src[base + p*ps..][..W] and writes dst[p*W..][..W]; s and d then advance
        // by ps and W (the last advance, one past the end, is never dereferenced).
        // SAFETY: both ranges lie inside the slices by the assertion above, as p < kc.
        unsafe {
            std::ptr::copy_nonoverlapping(s, d, W);
            s = s.wrapping_add(ps);
            d = d.add(W);
        }
    }
}

/// The step-major scatter of one source row: `dst[q*stride + p*W..][..W] = row[q*W..][..W]` for
/// q < full, with constant-length copies.
#[inline(always)]
fn scatter_row<const W: usize>(row: &[f32], full: usize, p: usize, stride: usize, dst: &mut [f32]) {
    for q in 0..full {
        let s: &[f32; W] = row[q * W..][..W].try_into().expect("W floats");
        let d: &mut [f32; W] = (&mut dst[q * stride + p * W..][..W]).try_into().expect("W floats");
        *d = *s;
    }
}

/// Packs `lanes` lanes × `kc` steps into consecutive panels of `width` lanes, panel q at
/// `dst[q*stride..]` laid out as `pack_panel` does (zeros past the last lane), for lanes
/// contiguous in the source (`ls` = 1): source element (lane l, step p) = `src[base + l + p*ps]`.
/// Step-major: each step's lanes are read in one contiguous run and scattered to the panels, so
/// the source streams row by row (a panel-major pack reads `width` floats from every row: short
/// strided reads). Used for B as stored (measured faster on the dx shapes, K large); the A
/// blocks of a transposed A take `pack_panels_chunked` (step-major measured slower there: A's
/// panels are short, so each step scatters to many write streams).
pub(crate) fn pack_panels_contig(
    src: &[f32],
    base: usize,
    ps: usize,
    lanes: usize,
    kc: usize,
    width: usize,
    stride: usize,
    dst: &mut [f32],
) {
    let npan = lanes.div_ceil(width);
    if npan == 0 || kc == 0 {
        return;
    }
    assert!(stride >= kc * width && dst.len() >= (npan - 1) * stride + kc * width, "pack: dst too short");
    let full = lanes / width;
    for p in 0..kc {
        let row = &src[base + p * ps..][..lanes];
        let ahead = src.as_ptr().wrapping_add(base + (p + PREFETCH_STEPS_B) * ps);
        for l in (0..lanes).step_by(16) {
            prefetch_l1(ahead.wrapping_add(l));
        }
        match width {
            8 => scatter_row::<8>(row, full, p, stride, dst),
            16 => scatter_row::<16>(row, full, p, stride, dst),
            32 => scatter_row::<32>(row, full, p, stride, dst),
            _ => {
                for q in 0..full {
                    dst[q * stride + p * width..][..width].copy_from_slice(&row[q * width..][..width]);
                }
            }
        }
        if full < npan {
            let d = &mut dst[full * stride + p * width..][..width];
            let rest = lanes - full * width;
            d[..rest].copy_from_slice(&row[full * width..]);
            d[rest..].fill(0.0);
        }
    }
}

/// Steps per chunk of `pack_panels_chunked`: 16 source rows (of up to a few hundred floats) stay
/// in L1 while every panel takes its part of them.
const CHUNK_STEPS: usize = 16;

/// Packs `lanes` lanes × `kc` steps into consecutive panels of `width` lanes, panel q at
/// `dst[q*kc*width..]` laid out as `pack_panel` does, for lanes contiguous in the source
/// (`ls` = 1): source element (lane l, step p) = `src[base + l + p*ps]`. In chunks of
/// CHUNK_STEPS steps, each chunk panel after panel: the chunk's source rows are read from memory
/// once (a panel-major pack walks every row once per panel: with rows a page apart each step is
/// a TLB and cache miss), and each panel is written CHUNK_STEPS·width floats at a time (a
/// step-major pack scatters every step to all panels). Used for the A blocks of a transposed A
/// (the dW products: A = dYᵀ, k = tokens), whose rows are the k steps.
pub(crate) fn pack_panels_chunked(
    src: &[f32],
    base: usize,
    ps: usize,
    lanes: usize,
    kc: usize,
    width: usize,
    dst: &mut [f32],
) {
    let npan = lanes.div_ceil(width);
    if npan == 0 || kc == 0 {
        return;
    }
    let full = lanes / width;
    for p0 in (0..kc).step_by(CHUNK_STEPS) {
        let pc = CHUNK_STEPS.min(kc - p0);
        // The rows of the chunk after next, a line at a time: their lines are a row stride apart
        // (often across pages), which the hardware prefetchers do not follow.
        let ahead = src.as_ptr().wrapping_add(base + (p0 + 2 * CHUNK_STEPS) * ps);
        for p in 0..pc {
            for l in (0..lanes).step_by(16) {
                prefetch_l1(ahead.wrapping_add(p * ps + l));
            }
        }
        for q in 0..npan {
            let d = &mut dst[q * kc * width + p0 * width..][..pc * width];
            let s = base + q * width + p0 * ps;
            match (q < full, width) {
                (true, 4) => copy_steps::<4>(src, s, ps, pc, d, false),
                (true, 6) => copy_steps::<6>(src, s, ps, pc, d, false),
                (true, 8) => copy_steps::<8>(src, s, ps, pc, d, false),
                _ => pack_panel(src, s, 1, ps, width.min(lanes - q * width), pc, width, d),
            }
        }
    }
}

/// Packs rows [i0, i0+rows) × steps [p0, p0+kc) of A (view `a`: A(i, p)) into MR-row panels.
pub(crate) fn pack_a(a: View, i0: usize, rows: usize, p0: usize, kc: usize, mr: usize, dst: &mut [f32]) {
    if a.rs == 1 && a.cs != 1 {
        // A transposed: each step's rows contiguous.
        return pack_panels_chunked(a.data, i0 + p0 * a.cs, a.cs, rows, kc, mr, dst);
    }
    for (q, panel) in dst[..rows.div_ceil(mr) * kc * mr].chunks_exact_mut(kc * mr).enumerate() {
        let lanes = mr.min(rows - q * mr);
        pack_panel(a.data, (i0 + q * mr) * a.rs + p0 * a.cs, a.rs, a.cs, lanes, kc, mr, panel);
    }
}

/// Packs the NR-column panels of B (view `b`: B(p, j)) covering steps [p0, p0+kc), columns
/// [j0, j0+cols): panel q (columns j0 + q·NR ..) at `dst[q*stride..]`.
pub(crate) fn pack_b(b: View, p0: usize, kc: usize, j0: usize, cols: usize, nr: usize, stride: usize, dst: &mut [f32]) {
    if b.cs == 1 {
        // B as stored: each step's columns contiguous.
        return pack_panels_contig(b.data, p0 * b.rs + j0, b.rs, cols, kc, nr, stride, dst);
    }
    for (q, j) in (0..cols).step_by(nr).enumerate() {
        let panel = &mut dst[q * stride..];
        pack_panel(b.data, p0 * b.rs + (j0 + j) * b.cs, b.cs, b.rs, nr.min(cols - j), kc, nr, panel);
    }
}
