//! FMA-throughput probe: the machine's measured FP32 peak, the yardstick every benchmark divides
//! by. Each thread runs chains of independent fused multiply-adds that never touch memory; more
//! chains than FMA latency × ports keeps both FMA pipes full. Not a kernel: nothing calls it in
//! training.

use super::Isa;
use std::time::Instant;

/// Independent accumulator chains: ≥ latency (4) × FMA ports (2), with room to spare.
const CHAINS: usize = 12;

/// Runs `iters` steps of CHAINS FMAs on `isa`'s widest vectors; returns flops done.
fn spin(isa: Isa, iters: usize) -> f64 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `measure` only passes an instruction set the host supports.
        Isa::Avx512 => unsafe { x86::spin512(iters) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::spin256(iters) },
        _ => spin_scalar(iters),
    }
}

fn spin_scalar(iters: usize) -> f64 {
    let mut acc = [1.0f32; CHAINS];
    let (x, y) = (std::hint::black_box(0.999_999f32), std::hint::black_box(1e-7f32));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(x, y);
        }
    }
    std::hint::black_box(acc);
    (iters * CHAINS * 2) as f64
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn spin512(iters: usize) -> f64 {
        let x = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let y = _mm512_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        std::hint::black_box(acc);
        (iters * CHAINS * 16 * 2) as f64
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn spin256(iters: usize) -> f64 {
        let x = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let y = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        std::hint::black_box(acc);
        (iters * CHAINS * 8 * 2) as f64
    }
}

/// Peak GFLOP/s of `threads` threads running the probe at once on `isa` (clamped to what the
/// host supports), median of `reps` runs of about `ms` milliseconds each. The threads are plain
/// OS threads started together, so the figure does not depend on any pool's state.
pub fn fma_peak_gflops(isa: Isa, threads: usize, reps: usize, ms: u64) -> f64 {
    let isa = isa.min(super::detected());
    // Calibrate: iterations for ~ms milliseconds on one thread.
    let t0 = Instant::now();
    let mut iters = 1 << 14;
    loop {
        spin(isa, iters);
        if t0.elapsed().as_millis() as u64 > ms / 8 || iters > 1 << 34 {
            break;
        }
        iters *= 2;
    }
    let per_ms = iters as f64 / t0.elapsed().as_secs_f64().max(1e-9) / 1000.0;
    let iters = ((per_ms * ms as f64) as usize).max(1 << 12);
    let mut runs: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            let flops: f64 = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(move || spin(isa, iters))).collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum()
            });
            flops / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}
