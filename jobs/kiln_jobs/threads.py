"""CPU threads for PyTorch, sized to what the process may really use.

PyTorch sizes its thread pool from the machine's core count, not the container's CPU quota: a pod
limited to 8 CPUs on a 128-core node would run 128 spinning threads. Measured on a shared
2-core machine, busy-waiting OpenMP threads also made SmolLM2 forwards 5-10x slower than passive
ones. So before torch is imported: passive waiting, and as many threads as the cgroup quota (or
the CPU affinity mask) allows, unless the user set OMP_NUM_THREADS or KILN_CPU_THREADS.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["configure_cpu_threads", "cpu_budget"]

_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_budget(cpu_max: Path = _CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 quota."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def configure_cpu_threads() -> int:
    """Set the OpenMP environment (call before importing torch); returns the thread count."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    requested = os.environ.get("KILN_CPU_THREADS") or os.environ.get("OMP_NUM_THREADS")
    threads = int(requested) if requested and requested.isdigit() else cpu_budget()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    return threads
