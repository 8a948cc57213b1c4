//! The text the engine parses from the OS: CPU lists (sysfs) and cgroup CPU quotas. Any bytes
//! give None/Some, never a panic; a parsed quota is positive and finite.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sos_rs::threads::{limit_threads, parse_cfs, parse_cpu_list, parse_cpu_max};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Some(v) = parse_cpu_list(&s) {
        assert!(v.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
    }
    for q in [parse_cpu_max(&s), s.split_once('\n').and_then(|(a, b)| parse_cfs(a, b))].into_iter().flatten() {
        assert!(q > 0.0 && q.is_finite());
        let (n, _) = limit_threads(64, Some(q));
        assert!((1..=64).contains(&n));
    }
});
