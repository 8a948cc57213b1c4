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
        Some(why) => eprintln!("SKIP pin check: {why}"),
    }
}
