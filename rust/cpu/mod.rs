//! Instruction-set detection (once per process) and dispatch of the primitive kernels.
//!
//! `scalar` is the specification of every kernel; `avx2` (AVX2+FMA) and `avx512` (AVX-512F) carry
//! the same names. Algorithms written once for both widths (the GEMM microkernel, `exp`) live in
//! `simd`, generic over a small vector trait that each of `avx2`/`avx512` implements.
//! `SOS_ISA=scalar|avx2|avx512` forces a lower path than the host offers (a higher one than
//! detected is refused, with a warning, since it would fault).

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod cache;
pub mod fused;
pub mod peak;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd;

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

/// The best instruction set this host supports, ignoring the environment.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// True when the host can run kernels of `isa` (tests use this to skip loudly).
pub fn supports(isa: Isa) -> bool {
    isa <= detected()
}

/// The instruction set in use: detected once, lowered by `SOS_ISA` when set.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detected();
        match std::env::var("SOS_ISA").ok().as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("auto") => best,
            Some(want) => {
                let forced = match want {
                    "scalar" => Isa::Scalar,
                    "avx2" => Isa::Avx2,
                    "avx512" => Isa::Avx512,
                    other => {
                        eprintln!("sos_rs: SOS_ISA={other} is not one of scalar|avx2|avx512; using {}", best.name());
                        best
                    }
                };
                if forced > best {
                    eprintln!("sos_rs: SOS_ISA={} is not supported by this CPU; using {}", forced.name(), best.name());
                    best
                } else {
                    forced
                }
            }
        }
    })
}

/// Dispatches one primitive to the kernel of the active instruction set. Elementwise kernels are
/// memory-bound, so AVX-512 uses the AVX2 body for them except where `avx512` has its own.
macro_rules! dispatch {
    ($name:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)?, $avx512:ident) => {
        #[inline]
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            match isa() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: isa() only reports Avx512 when avx512f, avx2 and fma are present.
                Isa::Avx512 => unsafe { $avx512::$name($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: isa() only reports Avx2 when avx2 and fma are present.
                Isa::Avx2 => unsafe { avx2::$name($($arg),*) },
                _ => scalar::$name($($arg),*),
            }
        }
    };
}

dispatch!(dot(a: &[f32], b: &[f32]) -> f32, avx512);
dispatch!(axpy(alpha: f32, x: &[f32], y: &mut [f32]), avx512);
dispatch!(scale(alpha: f32, x: &[f32], out: &mut [f32]), avx2);
dispatch!(add(a: &[f32], b: &[f32], out: &mut [f32]), avx2);
dispatch!(mul(a: &[f32], b: &[f32], out: &mut [f32]), avx2);
dispatch!(scale_mul(alpha: f32, x: &[f32], w: &[f32], out: &mut [f32]), avx2);
dispatch!(sum(x: &[f32]) -> f32, avx2);
dispatch!(sumsq(x: &[f32]) -> f32, avx2);
dispatch!(max(x: &[f32]) -> f32, avx2);
dispatch!(exp_shift_sum(x: &[f32], shift: f32, out: &mut [f32]) -> f32, avx512);
dispatch!(exp_sub(x: &mut [f32], shift: &[f32]), avx512);
dispatch!(silu(x: &[f32], out: &mut [f32]), avx2);
dispatch!(transpose8x8(src: &[f32], lds: usize, dst: &mut [f32], ldd: usize, scale: f32), avx2);
dispatch!(silu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]), avx2);
dispatch!(gelu(x: &[f32], out: &mut [f32]), avx2);
dispatch!(gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]), avx2);
dispatch!(adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamParams), avx2);

/// Addressing of one GEMM microkernel call: A(r, p) = a[r·rsa + p·csa], B(p, j) = b[p·ldb + j]
/// (the NR columns of a B row are contiguous), C(r, j) = c[r·ldc + j]. Packed panels have
/// rsa = 1, csa = MR, ldb = NR; a row-major A read in place has rsa = its row length, csa = 1.
#[derive(Debug, Clone, Copy)]
pub struct Tile {
    pub a: *const f32,
    pub rsa: usize,
    pub csa: usize,
    pub b: *const f32,
    pub ldb: usize,
    pub c: *mut f32,
    pub ldc: usize,
}

/// The microkernel tile (MR rows, NR columns) of `isa`.
pub fn gemm_shape(isa: Isa) -> (usize, usize) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => (avx512::MR, avx512::NR),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (avx2::MR, avx2::NR),
        _ => (scalar::MR, scalar::NR),
    }
}

/// One microkernel call on `isa`: C[MR×NR] (+)= A·B over `kc` steps.
///
/// # Safety
/// `isa` is supported by the host (`supports(isa)`), and every address `t` describes for
/// r < MR, p < kc, j < NR of that isa's tile is valid, C not overlapping A or B.
#[inline(always)]
pub unsafe fn gemm_tile(isa: Isa, kc: usize, t: &Tile, accumulate: bool) {
    // SAFETY: the host supports `isa` and `t` is valid for its tile (this function's contract).
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::gemm_tile(kc, t, accumulate),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::gemm_tile(kc, t, accumulate),
            _ => scalar::gemm_tile(kc, t, accumulate),
        }
    }
}

/// Asks the cache hierarchy to bring the 64-byte line holding `p` into L2 (a hint; it never
/// faults, whatever the address).
#[inline(always)]
pub fn prefetch_l2(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT1 is an SSE (x86-64 baseline) hint that neither faults nor reads memory
    // architecturally, so any address is fine.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// AdamW hyper-parameters for one step, with the bias corrections already computed.
#[derive(Debug, Clone, Copy)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1 - beta1^step
    pub bias1: f32,
    /// sqrt(1 - beta2^step)
    pub bias2_sqrt: f32,
}

/// One online-softmax step of tiled attention on `isa` (see `simd::softmax_step`; the scalar
/// path is its specification).
///
/// # Safety
/// The host supports `isa`.
#[inline]
pub unsafe fn softmax_step(isa: Isa, st: &mut [f32], nr: usize, m: &mut [f32], l: &mut [f32], corr: &mut [f32]) {
    // SAFETY: the host supports `isa` (this function's contract).
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::softmax_step(st, nr, m, l, corr),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::softmax_step(st, nr, m, l, corr),
            _ => scalar::softmax_step(st, nr, m, l, corr),
        }
    }
}

/// One row of the attention backward on `isa`: s = P = exp(s − lse), dp = P·(dp − delta)·scale
/// (see `simd::attn_ds_row`).
///
/// # Safety
/// The host supports `isa`.
#[inline]
pub unsafe fn attn_ds_row(isa: Isa, s: &mut [f32], dp: &mut [f32], lse: f32, delta: f32, scale: f32) {
    // SAFETY: the host supports `isa` (this function's contract).
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::attn_ds_row(s, dp, lse, delta, scale),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::attn_ds_row(s, dp, lse, delta, scale),
            _ => scalar::attn_ds_row(s, dp, lse, delta, scale),
        }
    }
}

#[cfg(test)]
mod tests;
