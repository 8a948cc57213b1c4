//! Cache sizes the kernel reports in sysfs (`/sys/devices/system/cpu/cpu0/cache/index*/`), from
//! which GEMM derives its block sizes. Missing or unreadable files fall back to conservative
//! sizes that suit any x86-64 of the last decade.

use std::path::Path;
use std::sync::OnceLock;

/// Per-core data cache sizes in bytes (L3: the whole shared cache of one domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caches {
    pub l1d: usize,
    pub l2: usize,
    pub l3: usize,
}

impl Default for Caches {
    fn default() -> Self {
        Caches { l1d: 32 << 10, l2: 256 << 10, l3: 8 << 20 }
    }
}

/// Parses a sysfs cache size: "48K", "2048K", "32M", or plain bytes.
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<usize>().ok().map(|n| n * mult).filter(|&n| n > 0)
}

/// Reads the caches of the CPU whose sysfs directory is `cpu_dir` (e.g. `.../cpu/cpu0`).
pub fn read(cpu_dir: &Path) -> Caches {
    let mut c = Caches::default();
    for i in 0..8 {
        let dir = cpu_dir.join(format!("cache/index{i}"));
        let get = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let (Some(level), Some(kind), Some(size)) =
            (get("level"), get("type"), get("size").and_then(|s| parse_size(&s)))
        else {
            continue;
        };
        match (level.trim(), kind.trim()) {
            ("1", "Data") | ("1", "Unified") => c.l1d = size,
            ("2", _) => c.l2 = size,
            ("3", _) => c.l3 = size,
            _ => {}
        }
    }
    c
}

/// This host's caches, read once.
pub fn host() -> Caches {
    static C: OnceLock<Caches> = OnceLock::new();
    *C.get_or_init(|| read(Path::new("/sys/devices/system/cpu/cpu0")))
}
