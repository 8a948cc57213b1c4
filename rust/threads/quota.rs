//! The CPU quota of the process's cgroup (a container's `--cpus`), which the default thread
//! count honours alongside the affinity mask: cgroup v2 `cpu.max` ("QUOTA PERIOD" or "max ...")
//! and cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota -1 = unlimited), read for the
//! process's cgroup (from `/proc/self/cgroup`) and each of its ancestors, the smallest winning.
//!
//! Every reader takes the cgroup mount root, so tests run on fake trees.

use std::path::{Path, PathBuf};

/// Parses a cgroup v2 `cpu.max`: Some(CPUs) for "200000 100000", None for "max 100000" or
/// malformed text.
pub fn parse_cpu_max(s: &str) -> Option<f64> {
    let mut it = s.split_whitespace();
    let quota = it.next()?;
    let period = it.next().map_or(Some(100_000.0), |p| p.parse::<f64>().ok())?;
    if quota == "max" {
        return None;
    }
    ratio(quota.parse::<f64>().ok()?, period)
}

/// CPUs from a v1 quota and period in microseconds (quota -1 = unlimited).
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    ratio(quota.trim().parse::<f64>().ok()?, period.trim().parse::<f64>().ok()?)
}

fn ratio(quota: f64, period: f64) -> Option<f64> {
    (quota > 0.0 && period > 0.0 && quota.is_finite() && period.is_finite()).then(|| quota / period)
}

/// `dir` and each of its ancestors up to and including `root`.
fn chain(root: &Path, rel: &str) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut cur = root.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty() && *p != "." && *p != "..") {
        cur = cur.join(part);
        out.push(cur.clone());
    }
    out
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// The quota in CPUs for a process whose `/proc/self/cgroup` reads `self_cgroup`, with cgroups
/// mounted at `root` (normally `/sys/fs/cgroup`): the smallest quota set on its cgroup or an
/// ancestor, v2 or v1. None when no quota applies or nothing is readable.
pub fn quota_from(root: &Path, self_cgroup: &str) -> Option<f64> {
    let mut best = None;
    for line in self_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_id), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
        if ctrl.is_empty() {
            // v2 unified hierarchy.
            for d in chain(root, path) {
                let q = std::fs::read_to_string(d.join("cpu.max")).ok().and_then(|s| parse_cpu_max(&s));
                best = min_opt(best, q);
            }
        } else if ctrl.split(',').any(|c| c == "cpu") {
            for mount in [ctrl, "cpu", "cpu,cpuacct", "cpuacct,cpu"] {
                let base = root.join(mount);
                if !base.is_dir() {
                    continue;
                }
                for d in chain(&base, path) {
                    let (Ok(q), Ok(p)) = (
                        std::fs::read_to_string(d.join("cpu.cfs_quota_us")),
                        std::fs::read_to_string(d.join("cpu.cfs_period_us")),
                    ) else {
                        continue;
                    };
                    best = min_opt(best, parse_cfs(&q, &p));
                }
                break;
            }
        }
    }
    best
}

/// This process's CPU quota (None: unlimited or not Linux).
pub fn cpu_quota() -> Option<f64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    quota_from(Path::new("/sys/fs/cgroup"), &own)
}

/// Threads for `cores` usable physical cores under `quota` CPUs: min(cores, ceil(quota)), at
/// least 1; and whether the quota is what limited it.
pub fn limit_threads(cores: usize, quota: Option<f64>) -> (usize, bool) {
    let cores = cores.max(1);
    match quota {
        Some(q) => {
            let cap = (q.ceil() as usize).max(1);
            if cap < cores {
                (cap, true)
            } else {
                (cores, false)
            }
        }
        None => (cores, false),
    }
}
