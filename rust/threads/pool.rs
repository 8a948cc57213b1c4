//! Pinned thread pools: one Rayon pool per core group, whose workers are pinned one per
//! physical core, so a task's packed panels stay in its group's L3 and its buffers are first
//! touched on its own node. A refused `sched_setaffinity` (containers, restricted cpusets)
//! leaves the workers unpinned and says why.

use super::topology::{pin_current, Topology};
use rayon::ThreadPool;
use std::cell::RefCell;
use std::sync::{Arc, Weak};

/// One Rayon pool per core group. Ops run in the first pool (`threads::install`); work that
/// splits by group (`threads::for_groups`) runs one part in each pool at once.
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
        let mut share: Vec<usize> =
            topo.groups[..used].iter().map(|g| (threads * g.cores.len() / total).max(1)).collect();
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
            let order: Vec<usize> =
                g.cores.iter().chain(g.cpus.iter().filter(|c| !g.cores.contains(c))).copied().collect();
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
        let unpinned = if pin {
            errors.first().map(|e| format!("pinning refused ({e})"))
        } else {
            Some("pinning disabled (SOS_PIN=0)".to_string())
        };
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
        let groups: Vec<String> = self
            .cpus
            .iter()
            .map(|c| format!("[{}]", c.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")))
            .collect();
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
