//! Attention timing at the shapes the performance issue names, with the FMA peak measured before
//! each repetition (medians printed). Used for before/after comparisons in alternating processes.
//!
//!   cargo run --release --example attn_ab [-- reps [case]]
//!
//! Cases 0-3 (the default): the shapes; 4-7: forward and backward apart at hd 64,
//! T = 1024 and 256.

use sos_rs::cpu::{peak, Isa};
use sos_rs::ops::attention;
use sos_rs::Tensor;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU seconds used by the whole process so far (all threads).
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// (GFLOP/s over wall time, GFLOP per CPU-second) of `f`, timed over ~`ms` milliseconds. The
/// second is not lowered by other tenants taking the CPUs away.
fn gflops(flops: f64, ms: f64, mut f: impl FnMut()) -> (f64, f64) {
    let t = Instant::now();
    f();
    let one = t.elapsed().as_secs_f64();
    let inner = ((ms / 1e3 / one.max(1e-7)) as usize).max(1);
    let (t, c) = (Instant::now(), cpu_seconds());
    for _ in 0..inner {
        f();
    }
    let total = flops * inner as f64 / 1e9;
    (total / t.elapsed().as_secs_f64(), total / (cpu_seconds() - c))
}

fn mk(shape: [usize; 4], seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_slice(
        &shape,
        &(0..n).map(|i| ((i * 2654435761 + seed) % 1000) as f32 / 1000.0 - 0.5).collect::<Vec<_>>(),
    )
    .unwrap()
}

/// Positional argument `i` when given: an integer in `range`, else one line and exit status 2.
fn arg_in(i: usize, what: &str, range: std::ops::RangeInclusive<usize>) -> Option<usize> {
    let s = std::env::args().nth(i)?;
    match s.parse::<usize>() {
        Ok(v) if range.contains(&v) => Some(v),
        _ => {
            eprintln!("attn_ab: {what} must be an integer in {range:?}, got {s:?} (usage: attn_ab [reps] [case])");
            std::process::exit(2)
        }
    }
}

fn main() {
    let reps = arg_in(1, "reps", 1..=1000).unwrap_or(5);
    // (name, b, t, h, hd, part): part 0 = fwd+bwd, 1 = fwd, 2 = bwd
    let cases = [
        ("fb B1 H8 hd64 T256", 1, 256, 8, 64, 0),
        ("fb B1 H8 hd64 T1024", 1, 1024, 8, 64, 0),
        ("fwd B16 H4 hd32 T128", 16, 128, 4, 32, 1),
        ("bwd B16 H4 hd32 T128", 16, 128, 4, 32, 2),
        ("fwd B1 H8 hd64 T1024", 1, 1024, 8, 64, 1),
        ("bwd B1 H8 hd64 T1024", 1, 1024, 8, 64, 2),
        ("fwd B1 H8 hd64 T256", 1, 256, 8, 64, 1),
        ("bwd B1 H8 hd64 T256", 1, 256, 8, 64, 2),
    ];
    let th: usize = std::env::var("AB_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    sos_rs::threads::set_num_threads(th);
    let only = arg_in(2, "case", 0..=cases.len() - 1);
    for (ci, (name, b, t, h, hd, part)) in cases.into_iter().enumerate() {
        // Without a case argument, the four shapes the issue names (4..: forward and backward apart).
        if only.map_or(ci >= 4, |o| o != ci) {
            continue;
        }
        let (q, k, v, dout) = (mk([b, t, h, hd], 1), mk([b, t, h, hd], 2), mk([b, t, h, hd], 3), mk([b, t, h, hd], 4));
        let scale = 1.0 / (hd as f32).sqrt();
        let (o, l) = attention::attention_forward(&q, &k, &v, scale, None).unwrap();
        let unit = (b * h * t * t * hd) as f64;
        let flops = unit * [7.0, 2.0, 5.0][part];
        let run = || match part {
            0 => {
                let (o, l) = attention::attention_forward(&q, &k, &v, scale, None).unwrap();
                attention::attention_backward(&q, &k, &v, &o, &l, &dout, scale, None).unwrap();
            }
            1 => {
                attention::attention_forward(&q, &k, &v, scale, None).unwrap();
            }
            _ => {
                attention::attention_backward(&q, &k, &v, &o, &l, &dout, scale, None).unwrap();
            }
        };
        if std::env::var("AB_CYCLES").is_ok() {
            // For `perf stat -e cycles:u`: no peak probe, a fixed count of calls, the flops printed
            // (flops per user cycle does not depend on other tenants taking the CPU).
            for _ in 0..reps {
                sos_rs::threads::install(run);
            }
            println!("{name:24} flops {:.6e}", flops * reps as f64);
            continue;
        }
        let mut rows = Vec::new();
        for _ in 0..reps {
            let p = peak::fma_peak_gflops(Isa::Avx512.min(sos_rs::cpu::isa()), th, 1, 30);
            let (g, gc) = gflops(flops, 150.0, || sos_rs::threads::install(run));
            rows.push([p, g, g / p, gc]);
        }
        let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
        println!(
            "{name:24} thr {th} peak {:6.1} GFLOP/s {:6.1} frac {:.3} | per CPU-s {:6.1} = {:.3} of 93, best {:6.1}",
            col(0),
            col(1),
            col(2),
            col(3),
            col(3) / 93.0,
            rows.iter().map(|r| r[3]).fold(0.0, f64::max)
        );
    }
}
