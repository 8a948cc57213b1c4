//! One written body per SIMD algorithm, instantiated per instruction set.
//!
//! `Lanes` is a vector of f32 lanes with the few operations the shared bodies need; `avx2`
//! implements it for `__m256` (8 lanes), `avx512` for `__m512` (16 lanes), each method one
//! intrinsic. Every method and body here is `#[inline(always)]` and has no target features of
//! its own: it is compiled inside the calling `#[target_feature]` function of `avx2` or
//! `avx512`, so each instantiation is the same instruction sequence a hand-written copy with
//! that set's intrinsics would be (the same operations in the same order: bit-identical results).
//!
//! Shared here: `exp` (the Cephes polynomial behind softmax, attention and the sigmoids) and the
//! GEMM microkernel body `gemm_tile` (MR rows × 2 vectors of columns).

use super::Tile;

/// A vector of `W` f32 lanes of one instruction set.
///
/// # Safety
/// Every method may only run on a host with the implementing set's features (in practice: from
/// a `#[target_feature]` function of that set). Pointer methods need `W` valid lanes at `p`
/// (`broadcast`: one float).
pub(crate) trait Lanes: Copy {
    /// Lanes per vector.
    const W: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(p: *mut f32, v: Self);
    /// All lanes = *p.
    unsafe fn broadcast(p: *const f32) -> Self;
    unsafe fn add(self, b: Self) -> Self;
    unsafe fn mul(self, b: Self) -> Self;
    /// Lane-wise min/max with the operand order of `minps`/`maxps` (b where either is NaN).
    unsafe fn min(self, b: Self) -> Self;
    unsafe fn max(self, b: Self) -> Self;
    /// self·b + c, fused.
    unsafe fn fmadd(self, b: Self, c: Self) -> Self;
    /// c − self·b, fused.
    unsafe fn fnmadd(self, b: Self, c: Self) -> Self;
    /// Rounds to the nearest integer (ties to even), without exceptions.
    unsafe fn round(self) -> Self;
    /// 2^self for integral lanes in [-127, 128), built in the exponent bits.
    unsafe fn pow2(self) -> Self;
    /// Before `gemm_tile` accumulates into a C row of 2W floats at `p`: AVX-512 prefetches its
    /// lines into L1, AVX2 does nothing. A hint: it never faults.
    unsafe fn prefetch_c_row(p: *const f32);
}

/// exp(x) by Cephes' range reduction and degree-5 polynomial (rel. error ~2 ulp); inputs are
/// clamped to [-88.38, 88.38], so -inf gives 0 and +inf gives ~1.7e38.
///
/// # Safety
/// The host supports `V`'s instruction set.
#[inline(always)]
pub(crate) unsafe fn exp<V: Lanes>(x: V) -> V {
    // SAFETY: V's instruction set is available (this function's contract); no memory is read.
    unsafe {
        let x = x.max(V::splat(-88.376_26)).min(V::splat(88.376_26));
        let n = x.mul(V::splat(std::f32::consts::LOG2_E)).round();
        let r = n.fnmadd(V::splat(0.693_359_4), x);
        let r = n.fnmadd(V::splat(-2.121_944_4e-4), r);
        let mut y = V::splat(1.987_569_1e-4);
        y = y.fmadd(r, V::splat(1.398_199_9e-3));
        y = y.fmadd(r, V::splat(8.333_452e-3));
        y = y.fmadd(r, V::splat(4.166_579_6e-2));
        y = y.fmadd(r, V::splat(0.166_666_65));
        y = y.fmadd(r, V::splat(0.5));
        y = y.fmadd(r.mul(r), r.add(V::splat(1.0)));
        // 2^n through the exponent bits; n is in [-127, 128) after the clamp.
        y.mul(n.pow2())
    }
}

/// GEMM microkernel: C[MR × 2W] (+)= A·B over `kc` steps, in 2·MR accumulators.
///
/// ```text
///            b: 2 vectors per k step (2W columns), loaded from b + p·ldb
///          [ b0 (cols 0..W) ][ b1 (cols W..2W) ]
/// a[0] ->  [ c00            ][ c01             ]   a[r] = A(r, p), broadcast from
///  ...          (one broadcast of a[r] per row, 2 FMAs)     a + r·rsa + p·csa
/// a[MR-1]  [ c(MR-1)0       ][ c(MR-1)1        ]
/// ```
/// AVX2 (MR = 6, W = 8): 12 accumulators + 2 B vectors + 1 broadcast = 15 of 16 ymm registers;
/// per k step 12 FMAs (6 cycles on two FMA ports) against 2 vector loads and 6 broadcasts.
/// AVX-512 (MR = 8, W = 16): 16 accumulators + 2 + 1 = 19 of 32 zmm registers; per k step 16
/// FMAs (8 cycles) against 2 vector loads and 8 broadcasts (two load ports).
///
/// `rsa`, `csa`, `ldb` are passed apart from `t` so a caller can hand in constants (packed
/// panels) and get a loop with fixed strides.
///
/// # Safety
/// The host supports `V`'s instruction set; every address `t` describes (with these strides)
/// for r < MR, p < kc, j < 2W is valid (A, B readable, C writable) and C does not overlap A or B.
#[inline(always)]
pub(crate) unsafe fn gemm_tile<V: Lanes, const MR: usize>(
    kc: usize,
    t: &Tile,
    rsa: usize,
    csa: usize,
    ldb: usize,
    accumulate: bool,
) {
    // SAFETY: V's instruction set is available and every address below is one `t` describes
    // for r < MR, p < kc, j < 2W (this function's contract).
    unsafe {
        let mut acc = [[V::zero(); 2]; MR];
        // One base pointer per row and a shared step offset: the row addresses are independent
        // of each other, so no add chain runs through the loop (strided A read in place).
        let rows: [*const f32; MR] = std::array::from_fn(|r| t.a.add(r * rsa));
        let (mut off, mut pb) = (0usize, t.b);
        if accumulate {
            for r in 0..MR {
                V::prefetch_c_row(t.c.add(r * t.ldc));
            }
        }
        for _ in 0..kc {
            let b0 = V::load(pb);
            let b1 = V::load(pb.add(V::W));
            for (r, row) in acc.iter_mut().enumerate() {
                let ar = V::broadcast(rows[r].add(off));
                row[0] = ar.fmadd(b0, row[0]);
                row[1] = ar.fmadd(b1, row[1]);
            }
            off += csa;
            pb = pb.add(ldb);
        }
        for (r, row) in acc.iter().enumerate() {
            for (h, v) in row.iter().enumerate() {
                let dst = t.c.add(r * t.ldc + h * V::W);
                let v = if accumulate { V::load(dst).add(*v) } else { *v };
                V::store(dst, v);
            }
        }
    }
}
