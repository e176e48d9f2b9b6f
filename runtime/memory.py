"""Peak resident memory of this process (light: the PyTorch benchmark references import it too)."""
from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. Linux's ru_maxrss survives exec, so a
    process started from a large parent (a benchmark driver with PyTorch loaded) would
    report the parent's size: read the memory map's own high-water mark where there is one."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / (1024 * 1024)
