"""Memory readings for the trainer: what the machine has available (checked against the family's
`estimate_memory` before the first step, so a run that cannot fit fails at once) and the
process's resident set size for the metrics."""

from __future__ import annotations

import os
import resource


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else a large number."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
