"""Each rank's own cores on a shared node. Ranks of one node that were given the same CPU set by
the launcher (no binding, or binding to a whole socket) split it: the set's physical cores,
ordered by L3 domain then number, are cut into equal contiguous runs, one per rank, and the rank
narrows its affinity mask to its run (with the cores' SMT siblings) before the Rust thread pool
starts. The pool then sizes itself to one thread per physical core of that mask and pins within
its L3 domains (rust/threads), so the default thread count is the rank's share. Ranks the
launcher already bound to distinct sets keep them. Deliberately Python-only: no Rust change."""

from __future__ import annotations

import os
import pathlib
from typing import Dict, List, Sequence, Tuple

SYS_CPU = pathlib.Path("/sys/devices/system/cpu")


def parse_cpu_list(text: str) -> List[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11]."""
    out: List[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def physical_cores(cpus: Sequence[int], sys_cpu: pathlib.Path = SYS_CPU) -> List[List[int]]:
    """The CPUs of `cpus` grouped by physical core (SMT siblings together), ordered by
    (L3 domain, first CPU). Without sysfs every CPU is its own core in one domain."""
    allowed = set(cpus)
    groups: Dict[Tuple[int, ...], List[int]] = {}
    domain: Dict[Tuple[int, ...], int] = {}
    for cpu in sorted(allowed):
        base = sys_cpu / f"cpu{cpu}"
        siblings = tuple(c for c in parse_cpu_list(_read(base / "topology/thread_siblings_list")) if c in allowed)
        key = siblings or (cpu,)
        groups.setdefault(key, [])
        if cpu not in groups[key]:
            groups[key].append(cpu)
        l3 = parse_cpu_list(_read(base / "cache/index3/shared_cpu_list"))
        domain.setdefault(key, min(l3) if l3 else 0)
    return [sorted(groups[k]) for k in sorted(groups, key=lambda k: (domain[k], min(k)))]


def share(cpus: Sequence[int], index: int, count: int, sys_cpu: pathlib.Path = SYS_CPU) -> List[int]:
    """The CPUs of member `index` of `count` ranks sharing `cpus`: an equal contiguous run of
    physical cores (the first `cores % count` members get one more). Fewer cores than ranks:
    ranks share cores round-robin (oversubscribed, still one core each)."""
    cores = physical_cores(cpus, sys_cpu)
    if count <= 1 or not cores:
        return sorted(cpus)
    if len(cores) < count:
        return cores[index % len(cores)]
    base, extra = divmod(len(cores), count)
    start = index * base + min(index, extra)
    stop = start + base + (1 if index < extra else 0)
    return sorted(c for core in cores[start:stop] for c in core)


def assign(masks: Sequence[Sequence[int]], me: int, sys_cpu: pathlib.Path = SYS_CPU) -> List[int]:
    """The CPUs rank `me` of a node should use, given every node-local rank's current mask (in
    local-rank order): ranks with identical masks split theirs; a mask no other rank has stays."""
    mine = sorted(masks[me])
    same = [i for i, m in enumerate(masks) if sorted(m) == mine]
    return share(mine, same.index(me), len(same), sys_cpu)


def current_mask() -> List[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def apply(cpus: Sequence[int]) -> None:
    """Narrows this process's affinity mask (threads started later inherit it)."""
    if hasattr(os, "sched_setaffinity") and sorted(cpus) != current_mask():
        os.sched_setaffinity(0, set(cpus))
