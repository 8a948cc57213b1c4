//! Threads: where they run and how work is split among them.
//!
//! - `topology`: core groups (the cores sharing one L3 cache) read from sysfs, and pinning.
//! - `quota`: the cgroup CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), which caps the
//!   default thread count.
//! - `pool`: `Pools`, one Rayon pool per core group with its workers pinned one per core.
//! - `global`: the process-wide pools every op runs in (`install`, `set_num_threads`,
//!   `for_groups`).
//! - `chunks`: deterministic parallel loops over rows (`for_row_chunks`, `ordered_sum`): chunk
//!   sizes never depend on the thread count, so 1 and N threads give the same bits.

mod chunks;
mod global;
mod pool;
mod quota;
mod topology;

#[cfg(test)]
pub(crate) use chunks::probe;
pub use chunks::{for_row_chunks, ordered_sum, rows_per_task};
pub use global::{for_groups, install, num_threads, pools, set_num_threads};
pub use pool::Pools;
pub use quota::{cpu_quota, limit_threads, parse_cfs, parse_cpu_max, quota_from};
pub use topology::{allowed_cpus, detect, host_topology, parse_cpu_list, pin_current, Group, Topology};

#[cfg(test)]
mod tests;
