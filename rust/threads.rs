//! Core groups and pinned thread pools. A core group is the set of cores sharing one L3 cache
//! (one CCD on AMD Zen, a whole socket on most Intel parts), read from sysfs
//! (`cpu*/cache/index3/shared_cpu_list`, `cpu*/topology/thread_siblings_list`). Each group gets
//! its own Rayon pool whose workers are pinned one per physical core, so a task's packed panels
//! stay in its group's L3 and its buffers are first touched on its own node.
//!
//! Falls back cleanly: missing sysfs files give one group of all usable CPUs, and a refused
//! `sched_setaffinity` (containers, restricted cpusets) leaves the workers unpinned.

use rayon::ThreadPool;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Weak};

/// One L3 domain: its CPUs, and one CPU per physical core (the first SMT sibling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub cpus: Vec<usize>,
    pub cores: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub groups: Vec<Group>,
    /// True when read from sysfs; false for the fallback of one group.
    pub from_sysfs: bool,
}

impl Topology {
    pub fn cores(&self) -> usize {
        self.groups.iter().map(|g| g.cores.len()).sum()
    }
}

/// Parses a kernel CPU list such as "0-3,8-11" or "5". None on malformed input.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?);
                if a > b {
                    return None;
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse::<usize>().ok()?);
            }
        }
    }
    Some(out.into_iter().collect())
}

fn read_list(path: &Path) -> Option<Vec<usize>> {
    parse_cpu_list(&std::fs::read_to_string(path).ok()?).filter(|v| !v.is_empty())
}

/// Reads the topology under `root` (normally `/sys/devices/system/cpu`), keeping only CPUs in
/// `allowed` (the process's affinity mask; None keeps all).
pub fn detect(root: &Path, allowed: Option<&[usize]>) -> Topology {
    let ok = |c: &usize| allowed.map_or(true, |a| a.contains(c));
    let mut cpus: Vec<usize> = match read_list(&root.join("online")) {
        Some(v) => v,
        None => std::fs::read_dir(root)
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("cpu")?.parse().ok()).collect())
            .unwrap_or_default(),
    };
    cpus.sort_unstable();
    cpus.retain(ok);
    let mut groups: Vec<Group> = Vec::new();
    let mut complete = !cpus.is_empty();
    for &c in &cpus {
        let dir = root.join(format!("cpu{c}"));
        let Some(l3) = read_list(&dir.join("cache/index3/shared_cpu_list")) else {
            complete = false;
            break;
        };
        let l3: Vec<usize> = l3.into_iter().filter(|x| cpus.contains(x)).collect();
        let siblings = read_list(&dir.join("topology/thread_siblings_list")).unwrap_or_else(|| vec![c]);
        let gi = match groups.iter().position(|g| g.cpus == l3) {
            Some(i) => i,
            None => {
                groups.push(Group { cpus: l3, cores: Vec::new() });
                groups.len() - 1
            }
        };
        // A CPU is a new core unless an earlier sibling already stands for its core.
        let g = &mut groups[gi];
        if !siblings.iter().any(|s| *s < c && g.cores.contains(s)) {
            g.cores.push(c);
        }
    }
    if complete && groups.iter().all(|g| !g.cores.is_empty()) {
        return Topology { groups, from_sysfs: true };
    }
    // Fallback: one group of every usable CPU, each counted as a core.
    let cpus = if cpus.is_empty() {
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        (0..n).filter(ok).collect::<Vec<_>>()
    } else {
        cpus
    };
    let cpus = if cpus.is_empty() { vec![0] } else { cpus };
    Topology { groups: vec![Group { cpus: cpus.clone(), cores: cpus }], from_sysfs: false }
}

/// CPUs this process may run on (None where the call is unavailable).
pub fn allowed_cpus() -> Option<Vec<usize>> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
                let v: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect();
                return (!v.is_empty()).then_some(v);
            }
        }
    }
    None
}

/// This host's topology, restricted to the CPUs the process may use.
pub fn host_topology() -> Topology {
    detect(Path::new("/sys/devices/system/cpu"), allowed_cpus().as_deref())
}

/// Pins the calling thread to `cpu`. Err carries the OS error when pinning is refused.
pub fn pin_current(cpu: usize) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks against CPU_SETSIZE.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "pinning needs Linux"))
    }
}

/// One Rayon pool per core group. Ops run in the first pool (`par::install`); work that
/// splits by group (`par::for_groups`) runs one part in each pool at once.
pub struct Pools {
    pub pools: Vec<Arc<ThreadPool>>,
    /// Threads per pool, and the CPUs its workers are pinned to (in worker order).
    pub cpus: Vec<Vec<usize>>,
    /// None when every worker is pinned; else why pinning was not done.
    pub unpinned: Option<String>,
    pub topology: Topology,
}

thread_local! {
    /// Set in the workers of a `Pools`' first pool: the pools they belong to.
    static MEMBER: RefCell<Weak<Pools>> = const { RefCell::new(Weak::new()) };
}

impl Pools {
    /// Builds pools for `threads` threads spread over the groups of `topo` (in proportion to
    /// their cores, at least one per group used), pinned one per core unless `pin` is false.
    pub fn build(topo: &Topology, threads: usize, pin: bool) -> Arc<Pools> {
        let threads = threads.max(1);
        let total = topo.cores().max(1);
        let used = topo.groups.len().min(threads);
        // Share of threads per group, proportional to cores, summing to `threads`.
        let mut share: Vec<usize> = topo.groups[..used].iter().map(|g| (threads * g.cores.len() / total).max(1)).collect();
        let mut i = 0;
        while share.iter().sum::<usize>() < threads {
            share[i % used] += 1;
            i += 1;
        }
        while share.iter().sum::<usize>() > threads {
            let j = share.iter().enumerate().max_by_key(|(_, s)| **s).unwrap().0;
            share[j] -= 1;
        }
        let mut cpus = Vec::new();
        let mut pools = Vec::new();
        for (g, &n) in topo.groups[..used].iter().zip(&share) {
            // Physical cores first, then the remaining SMT siblings, cycling if oversubscribed.
            let order: Vec<usize> = g.cores.iter().chain(g.cpus.iter().filter(|c| !g.cores.contains(c))).copied().collect();
            cpus.push((0..n).map(|w| order[w % order.len()]).collect::<Vec<_>>());
            let gi = pools.len();
            pools.push(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(move |w| format!("sos-g{gi}-w{w}"))
                    .build()
                    .expect("cannot start a sos_rs thread pool"),
            ));
        }
        let mut errors: Vec<String> = Vec::new();
        if pin {
            for (pool, list) in pools.iter().zip(&cpus) {
                let res = pool.broadcast(|ctx| pin_current(list[ctx.index()]).map_err(|e| e.to_string()));
                errors.extend(res.into_iter().filter_map(|r| r.err()));
            }
        }
        let unpinned = if pin { errors.first().map(|e| format!("pinning refused ({e})")) } else { Some("pinning disabled (SOS_PIN=0)".to_string()) };
        let p = Arc::new(Pools { pools, cpus, unpinned, topology: topo.clone() });
        let weak = Arc::downgrade(&p);
        p.pools[0].broadcast(|_| MEMBER.with(|m| *m.borrow_mut() = weak.clone()));
        p
    }

    pub fn num_threads(&self) -> usize {
        self.cpus.iter().map(Vec::len).sum()
    }

    /// Runs `f` inside the first pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pools[0].install(f)
    }

    /// One line for logs: threads, groups and pinning.
    pub fn describe(&self) -> String {
        let groups: Vec<String> = self.cpus.iter().map(|c| format!("[{}]", c.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))).collect();
        format!(
            "{} threads in {} core group{} (of {} L3 domain{}{}) on cpus {}; {}",
            self.num_threads(),
            self.pools.len(),
            if self.pools.len() == 1 { "" } else { "s" },
            self.topology.groups.len(),
            if self.topology.groups.len() == 1 { "" } else { "s" },
            if self.topology.from_sysfs { "" } else { ", sysfs unreadable" },
            groups.join(" "),
            self.unpinned.as_deref().unwrap_or("pinned"),
        )
    }
}

/// The pools the current thread works for, when it is a worker of a multi-group `Pools`.
pub(crate) fn current_multi() -> Option<Arc<Pools>> {
    MEMBER.with(|m| m.borrow().upgrade()).filter(|p| p.pools.len() > 1)
}

/// Runs `f(group, threads_per_group)` once per group of `pools`, each inside its group's pool,
/// all at once; returns when all are done. Called from a worker of the first pool.
pub(crate) fn run_groups(pools: &Pools, f: &(dyn Fn(usize, &[usize]) + Sync)) {
    let shares: Vec<usize> = pools.cpus.iter().map(Vec::len).collect();
    std::thread::scope(|s| {
        for g in 1..pools.pools.len() {
            let (pool, shares) = (&pools.pools[g], &shares);
            s.spawn(move || pool.install(|| f(g, shares)));
        }
        f(0, &shares);
    });
}

#[cfg(test)]
mod tests;
