//! Helpers shared by the op tests: seeded inputs, tolerance checks, thread-count runs.

use rand::{Rng, SeedableRng};

pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

pub fn assert_close(got: &[f32], want: &[f32], rtol: f32, atol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{what}: index {i}: got {g}, want {w}");
    }
}

/// Runs `f` in a 1-thread and a 2-thread pool; returns both results.
pub fn run_threads<R: Send>(f: impl Fn() -> R + Sync + Send) -> Vec<R> {
    [1, 2].iter().map(|&n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap().install(&f)).collect()
}

/// As `run_threads`, and also the fewest chunks any deterministic parallel loop (`for_row_chunks`,
/// `ordered_sum`) called by `f` was split into, in the 2-thread run (0 when none ran): a "1 vs 2
/// threads" test asserts it is at least 2, so every split it claims to check really happens.
pub fn run_threads_split<R: Send>(f: impl Fn() -> R + Sync + Send) -> (Vec<R>, usize) {
    use crate::threads::probe;
    let rec = probe::Recorder::default();
    let outs = [1, 2]
        .iter()
        .map(|&n| {
            rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap().install(|| {
                probe::RECORD.with(|r| *r.borrow_mut() = (n == 2).then(|| rec.clone()));
                let out = f();
                probe::RECORD.with(|r| *r.borrow_mut() = None);
                out
            })
        })
        .collect();
    let chunks = rec.lock().unwrap().min_chunks.unwrap_or(0);
    (outs, chunks)
}

pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Sizes every SIMD kernel is checked at.
pub fn sizes() -> Vec<usize> {
    (0..=70).chain([127, 128, 129, 1000]).collect()
}
