//! Deterministic parallel loops over rows.
//!
//! Determinism rule: work is split into chunks whose size never depends on the thread count, and
//! partial results are combined in chunk order, so 1 and N threads give the same bits.

use rayon::prelude::*;

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
    #[cfg(test)]
    let probe = probe::start(out.len().div_ceil(step));
    out.par_chunks_mut(step).enumerate().for_each(|(i, chunk)| {
        #[cfg(test)]
        probe::note(&probe);
        f(i * rows_per_task.max(1), chunk)
    });
}

/// Sums `f(chunk)` over fixed chunks `0..n_chunks` into a vector of length `len`, combining the
/// partials in chunk order (the reduction behind weight gradients of norms, for instance).
pub fn ordered_sum<F>(n_chunks: usize, len: usize, f: F) -> Vec<f32>
where
    F: Fn(usize) -> Vec<f32> + Sync + Send,
{
    #[cfg(test)]
    let probe = probe::start(n_chunks);
    let partials: Vec<Vec<f32>> = (0..n_chunks)
        .into_par_iter()
        .map(|c| {
            #[cfg(test)]
            probe::note(&probe);
            f(c)
        })
        .collect();
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

/// Tests' view of how loops split (see `ops::testutil::run_threads_split`): the fewest chunks
/// any one loop had (None before the first), and the threads that ran chunks, recorded while a recorder is set on the calling
/// thread.
#[cfg(test)]
pub(crate) mod probe {
    use std::cell::RefCell;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Debug)]
    pub struct Stats {
        pub min_chunks: Option<usize>,
        pub threads: HashSet<std::thread::ThreadId>,
    }
    pub type Recorder = Arc<Mutex<Stats>>;

    thread_local! {
        pub static RECORD: RefCell<Option<Recorder>> = const { RefCell::new(None) };
    }

    pub fn start(chunks: usize) -> Option<Recorder> {
        let r = RECORD.with(|r| r.borrow().clone())?;
        let mut s = r.lock().unwrap();
        s.min_chunks = Some(s.min_chunks.map_or(chunks, |m| m.min(chunks)));
        drop(s);
        Some(r)
    }

    pub fn note(r: &Option<Recorder>) {
        if let Some(r) = r {
            r.lock().unwrap().threads.insert(std::thread::current().id());
        }
    }
}
