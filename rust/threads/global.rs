//! The process-wide pools every op runs in: built on first use for `SOS_NUM_THREADS` threads
//! (default one per physical core in the affinity mask, capped by the cgroup CPU quota), pinned
//! unless `SOS_PIN=0`, resized by `set_num_threads`.

use super::pool::{current_multi, run_groups, Pools};
use super::quota::{cpu_quota, limit_threads};
use super::topology::{host_topology, Topology};
use std::sync::{Arc, OnceLock, RwLock};

fn slot() -> &'static RwLock<Option<Arc<Pools>>> {
    static POOLS: OnceLock<RwLock<Option<Arc<Pools>>>> = OnceLock::new();
    POOLS.get_or_init(|| RwLock::new(None))
}

fn topology() -> &'static Topology {
    static TOPO: OnceLock<Topology> = OnceLock::new();
    TOPO.get_or_init(host_topology)
}

/// Threads from `SOS_NUM_THREADS`, else one per physical core the process may use, capped at
/// ceil(the cgroup CPU quota); with a note when the quota is what capped it.
fn default_threads() -> (usize, Option<String>) {
    if let Some(n) = std::env::var("SOS_NUM_THREADS").ok().and_then(|s| s.trim().parse::<usize>().ok()) {
        if n > 0 {
            return (n, None);
        }
    }
    let quota = cpu_quota();
    let (n, limited) = limit_threads(topology().cores(), quota);
    let note = limited.then(|| {
        format!(
            "limited to {n} by the CPU quota ({:.2} CPUs; {} cores usable)",
            quota.unwrap_or(0.0),
            topology().cores()
        )
    });
    (n, note)
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
    let (n, note) = default_threads();
    let p = build(n);
    if std::env::var("SOS_QUIET").map_or(true, |v| v.trim() != "1") {
        match note {
            Some(note) => eprintln!("sos_rs: {}; {note}", p.describe()),
            None => eprintln!("sos_rs: {}", p.describe()),
        }
    }
    *w = Some(p.clone());
    p
}

/// Replaces the pools with ones of `n` threads in all (n = 0 means the default).
pub fn set_num_threads(n: usize) {
    let n = if n == 0 { default_threads().0 } else { n };
    *slot().write().unwrap_or_else(|e| e.into_inner()) = Some(build(n));
}

pub fn num_threads() -> usize {
    pools().num_threads()
}

/// Runs `f` inside the sos_rs pool (the first core group's; see `for_groups`).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pools().install(f)
}

/// Runs `f(group, threads_per_group)` once per core group, each inside its own pool, when
/// called from the first pool of a multi-group `Pools`; otherwise once as `f(0, [threads])` in
/// the current Rayon context. Work split by `threads_per_group` must not change results.
pub fn for_groups(f: impl Fn(usize, &[usize]) + Sync) {
    match current_multi() {
        Some(p) => run_groups(&p, &f),
        None => f(0, &[rayon::current_num_threads()]),
    }
}
