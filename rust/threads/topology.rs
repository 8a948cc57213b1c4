//! Core groups read from sysfs: a core group is the set of cores sharing one L3 cache (one CCD
//! on AMD Zen, a whole socket on most Intel parts), from `cpu*/cache/index3/shared_cpu_list`
//! and `cpu*/topology/thread_siblings_list`, restricted to the process's affinity mask; and
//! pinning of the calling thread to one CPU.
//!
//! Falls back cleanly: missing sysfs files give one group of all usable CPUs.

use std::collections::BTreeSet;
use std::path::Path;

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

/// CPU numbers at or above this are malformed (Linux's NR_CPUS tops out at 8192); keeps a
/// corrupt list such as "0-18446744073709551615" from expanding into memory (found by fuzzing).
pub const MAX_CPU: usize = 1 << 16;

/// Parses a kernel CPU list such as "0-3,8-11" or "5". None on malformed input.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.trim().parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?);
                if a > b || b >= MAX_CPU {
                    return None;
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse::<usize>().ok().filter(|&c| c < MAX_CPU)?);
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
    let ok = |c: &usize| allowed.is_none_or(|a| a.contains(c));
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
            if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) == 0 {
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
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
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
