//! The thread pool every op runs in, and helpers for deterministic parallel work.
//!
//! Determinism rule: work is split into chunks whose size never depends on the thread count, and
//! partial results are combined in chunk order, so 1 and N threads give the same bits.

use crate::threads::{self, Pools};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock, RwLock};

fn slot() -> &'static RwLock<Option<Arc<Pools>>> {
    static POOLS: OnceLock<RwLock<Option<Arc<Pools>>>> = OnceLock::new();
    POOLS.get_or_init(|| RwLock::new(None))
}

fn topology() -> &'static threads::Topology {
    static TOPO: OnceLock<threads::Topology> = OnceLock::new();
    TOPO.get_or_init(threads::host_topology)
}

/// Threads from `SOS_NUM_THREADS`, else one per physical core the process may use.
fn default_threads() -> usize {
    std::env::var("SOS_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| topology().cores().max(1))
}

fn build(n: usize) -> Arc<Pools> {
    let pin = std::env::var("SOS_PIN").map_or(true, |v| v.trim() != "0");
    Pools::build(topology(), n, pin)
}

/// The pools ops run in, created on first use (and reported once on stderr then, unless
/// `SOS_QUIET=1`).
pub fn pools() -> Arc<Pools> {
    if let Some(p) = slot().read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return p.clone();
    }
    let mut w = slot().write().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = w.as_ref() {
        return p.clone();
    }
    let p = build(default_threads());
    if std::env::var("SOS_QUIET").map_or(true, |v| v.trim() != "1") {
        eprintln!("sos_rs: {}", p.describe());
    }
    *w = Some(p.clone());
    p
}

/// The first group's pool (the one `install` runs in).
pub fn pool() -> Arc<rayon::ThreadPool> {
    pools().pools[0].clone()
}

/// Replaces the pools with ones of `n` threads in all (n = 0 means the default).
pub fn set_num_threads(n: usize) {
    let n = if n == 0 { default_threads() } else { n };
    *slot().write().unwrap_or_else(|e| e.into_inner()) = Some(build(n));
}

pub fn num_threads() -> usize {
    pools().num_threads()
}

/// Runs `f` inside the sos_rs pool (the first core group's; see `for_groups`).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// Runs `f(group, threads_per_group)` once per core group, each inside its own pool, when
/// called from the first pool of a multi-group `Pools`; otherwise once as `f(0, [threads])` in
/// the current Rayon context. Work split by `threads_per_group` must not change results.
pub fn for_groups(f: impl Fn(usize, &[usize]) + Sync) {
    match threads::current_multi() {
        Some(p) => threads::run_groups(&p, &f),
        None => f(0, &[rayon::current_num_threads()]),
    }
}

/// Applies `f(first_row, rows)` to consecutive groups of `rows_per_task` rows of `out`
/// (each row `row_len` long), in parallel. Each output row is written by exactly one task.
pub fn for_row_chunks<F>(out: &mut [f32], row_len: usize, rows_per_task: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    if out.is_empty() || row_len == 0 {
        return;
    }
    let step = row_len * rows_per_task.max(1);
    out.par_chunks_mut(step).enumerate().for_each(|(i, chunk)| f(i * rows_per_task.max(1), chunk));
}

/// Sums `f(chunk)` over fixed chunks `0..n_chunks` into a vector of length `len`, combining the
/// partials in chunk order (the reduction behind weight gradients of norms, for instance).
pub fn ordered_sum<F>(n_chunks: usize, len: usize, f: F) -> Vec<f32>
where
    F: Fn(usize) -> Vec<f32> + Sync + Send,
{
    let partials: Vec<Vec<f32>> = (0..n_chunks).into_par_iter().map(f).collect();
    let mut total = vec![0.0f32; len];
    for p in &partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// Rows per parallel task so that a task does at least ~32k elements of work.
pub fn rows_per_task(row_len: usize) -> usize {
    (32 * 1024 / row_len.max(1)).max(1)
}
