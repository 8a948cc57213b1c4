//! Topology parsing on sysfs trees built in a temporary directory.

use super::*;
use std::path::{Path, PathBuf};

/// A fake `/sys/devices/system/cpu` with `n` CPUs; `l3(c)` and `sib(c)` give each CPU's lists
/// (None leaves the file out).
fn tree(name: &str, n: usize, l3: impl Fn(usize) -> Option<String>, sib: impl Fn(usize) -> Option<String>) -> PathBuf {
    let root = std::env::temp_dir().join(format!("sos_sysfs_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for c in 0..n {
        let d = root.join(format!("cpu{c}"));
        std::fs::create_dir_all(d.join("cache/index3")).unwrap();
        std::fs::create_dir_all(d.join("topology")).unwrap();
        if let Some(s) = l3(c) {
            std::fs::write(d.join("cache/index3/shared_cpu_list"), s + "\n").unwrap();
        }
        if let Some(s) = sib(c) {
            std::fs::write(d.join("topology/thread_siblings_list"), s + "\n").unwrap();
        }
    }
    std::fs::write(root.join("online"), format!("0-{}\n", n - 1)).unwrap();
    root
}

#[test]
fn cpu_lists() {
    assert_eq!(parse_cpu_list("0-3,8-11"), Some(vec![0, 1, 2, 3, 8, 9, 10, 11]));
    assert_eq!(parse_cpu_list("5\n"), Some(vec![5]));
    assert_eq!(parse_cpu_list(" 2, 0 "), Some(vec![0, 2]));
    assert_eq!(parse_cpu_list(""), Some(vec![]));
    assert_eq!(parse_cpu_list("3-1"), None);
    assert_eq!(parse_cpu_list("a-b"), None);
    // Found by fuzzing: a huge range once expanded into gigabytes.
    assert_eq!(parse_cpu_list("0-18446744073709551615"), None);
    assert_eq!(parse_cpu_list("70000"), None);
}

#[test]
fn two_ccds_of_four_cores_with_smt() {
    // CPUs 0-7 are cores; CPU c+8 is the SMT sibling of c. CCD0 = cores 0-3, CCD1 = cores 4-7.
    let root = tree(
        "zen",
        16,
        |c| Some(if c % 8 < 4 { "0-3,8-11" } else { "4-7,12-15" }.to_string()),
        |c| Some(format!("{},{}", c % 8, c % 8 + 8)),
    );
    let t = detect(&root, None);
    assert!(t.from_sysfs);
    assert_eq!(t.groups.len(), 2);
    assert_eq!(t.groups[0], Group { cpus: vec![0, 1, 2, 3, 8, 9, 10, 11], cores: vec![0, 1, 2, 3] });
    assert_eq!(t.groups[1], Group { cpus: vec![4, 5, 6, 7, 12, 13, 14, 15], cores: vec![4, 5, 6, 7] });
    assert_eq!(t.cores(), 8);
    // An affinity mask keeps only the allowed CPUs (here a sibling stands in for core 5).
    let t = detect(&root, Some(&[0, 1, 13]));
    assert_eq!(
        t.groups,
        vec![Group { cpus: vec![0, 1], cores: vec![0, 1] }, Group { cpus: vec![13], cores: vec![13] }]
    );
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn one_l3_for_all() {
    let root = tree("one", 4, |_| Some("0-3".into()), |c| Some(c.to_string()));
    let t = detect(&root, None);
    assert_eq!(t.groups, vec![Group { cpus: vec![0, 1, 2, 3], cores: vec![0, 1, 2, 3] }]);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn missing_files_fall_back_to_one_group() {
    // No L3 file on CPU 2: one group of every CPU, each counted as a core.
    let root = tree("missing", 4, |c| (c != 2).then(|| "0-3".into()), |_| None);
    let t = detect(&root, None);
    assert!(!t.from_sysfs);
    assert_eq!(t.groups, vec![Group { cpus: vec![0, 1, 2, 3], cores: vec![0, 1, 2, 3] }]);
    std::fs::remove_dir_all(root).unwrap();
    // No tree at all: one group of the CPUs this process may use.
    let t = detect(Path::new("/nonexistent/sos_sysfs"), Some(&[0, 1]));
    assert!(!t.from_sysfs);
    assert_eq!(t.groups, vec![Group { cpus: vec![0, 1], cores: vec![0, 1] }]);
}

#[test]
fn threads_spread_over_groups() {
    let g = |c: Vec<usize>| Group { cpus: c.clone(), cores: c };
    let topo = Topology { groups: vec![g(vec![0, 1, 2, 3]), g(vec![4, 5, 6, 7])], from_sysfs: true };
    for (threads, want) in [(1, vec![1]), (2, vec![1, 1]), (3, vec![2, 1]), (8, vec![4, 4]), (10, vec![5, 5])] {
        let p = Pools::build(&topo, threads, false);
        assert_eq!(p.cpus.iter().map(Vec::len).collect::<Vec<_>>(), want, "{threads} threads");
        assert_eq!(p.num_threads(), threads);
        assert!(p.describe().starts_with(&format!("{threads} threads in {} core group", want.len())));
    }
    let p = Pools::build(&topo, 3, false);
    assert_eq!(p.cpus, vec![vec![0, 1], vec![4]]);
}

#[test]
fn pinning_either_pins_or_reports_why() {
    let host = host_topology();
    let p = Pools::build(&host, 1, true);
    match &p.unpinned {
        None => {
            let cpu = p.cpus[0][0];
            let mask = p.install(allowed_cpus);
            assert_eq!(mask, Some(vec![cpu]), "worker pinned to cpu {cpu}");
        }
        Some(why) => {
            // Refused (a container's seccomp or cpuset): the reason names the OS error, and the
            // worker kept the process's whole mask rather than some other single CPU.
            assert!(why.starts_with("pinning refused (") && why.len() > "pinning refused ()".len(), "{why}");
            assert_eq!(p.install(allowed_cpus), allowed_cpus(), "an unpinned worker keeps the process mask");
            eprintln!("pinning refused on this host, checked the fallback instead: {why}");
        }
    }
}

/// A fake cgroup mount root with the given files (path relative to the root, contents).
fn cgroup_tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = std::env::temp_dir().join(format!("sos_cgroup_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    for (rel, text) in files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    root
}

#[test]
fn cpu_max_and_cfs_parse() {
    assert_eq!(parse_cpu_max("200000 100000\n"), Some(2.0));
    assert_eq!(parse_cpu_max("150000 100000"), Some(1.5));
    assert_eq!(parse_cpu_max("max 100000\n"), None);
    assert_eq!(parse_cpu_max(""), None);
    assert_eq!(parse_cpu_max("abc 100000"), None);
    assert_eq!(parse_cpu_max("100000 0"), None);
    assert_eq!(parse_cfs("-1\n", "100000\n"), None);
    assert_eq!(parse_cfs("50000\n", "100000\n"), Some(0.5));
    assert_eq!(parse_cfs("x", "100000"), None);
}

#[test]
fn cgroup_v2_quota_on_own_group_or_ancestor() {
    // A container (`--cpus 2`) whose cgroup namespace root holds the quota.
    let root = cgroup_tree("v2ns", &[("cpu.max", "200000 100000\n")]);
    assert_eq!(quota_from(&root, "0::/\n"), Some(2.0));
    // A nested group: the smallest of its own and its ancestors' quotas.
    let root = cgroup_tree(
        "v2nest",
        &[("cpu.max", "max 100000\n"), ("a/cpu.max", "400000 100000\n"), ("a/b/cpu.max", "max 100000\n")],
    );
    assert_eq!(quota_from(&root, "0::/a/b\n"), Some(4.0));
    // No quota anywhere.
    let root = cgroup_tree("v2none", &[("cpu.max", "max 100000\n")]);
    assert_eq!(quota_from(&root, "0::/\n"), None);
    // Nothing readable at all.
    assert_eq!(quota_from(Path::new("/nonexistent/sos"), "0::/\n"), None);
}

#[test]
fn cgroup_v1_quota() {
    let root = cgroup_tree(
        "v1",
        &[
            ("cpu,cpuacct/docker/x/cpu.cfs_quota_us", "150000\n"),
            ("cpu,cpuacct/docker/x/cpu.cfs_period_us", "100000\n"),
        ],
    );
    let own = "4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n0::/\n";
    assert_eq!(quota_from(&root, own), Some(1.5));
    let root = cgroup_tree("v1none", &[("cpu/cpu.cfs_quota_us", "-1\n"), ("cpu/cpu.cfs_period_us", "100000\n")]);
    assert_eq!(quota_from(&root, "1:cpu:/\n"), None);
}

#[test]
fn quota_caps_the_default_thread_count() {
    // A --cpus 2 container on a 64-core host: 2 threads, and the quota is named as the cause.
    assert_eq!(limit_threads(64, Some(2.0)), (2, true));
    assert_eq!(limit_threads(64, Some(1.5)), (2, true));
    assert_eq!(limit_threads(64, Some(0.2)), (1, true));
    // The affinity mask is the smaller limit: the quota did not limit it.
    assert_eq!(limit_threads(4, Some(8.0)), (4, false));
    assert_eq!(limit_threads(4, None), (4, false));
}
