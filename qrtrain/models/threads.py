"""How many CPU threads torch uses: on a busy machine, fewer than one per core.

    qrtrain evaluate outputs/my-adapter threads=1      # or threads=auto (the default), or a number
    qrtrain train training.threads=2

OpenMP threads that outnumber the free cores wait on each other at every operation: with other
processes keeping the cores busy, one thread generated many times faster than torch's default of one
per core (`python scripts/bench_threads.py`, BENCHMARKS.md "Generation on a busy CPU"). `auto` counts
the runnable processes besides this one when a command starts and leaves their cores to them (at
least one thread); an OMP_NUM_THREADS set in the environment is obeyed as it is.
"""

import os
import statistics
import time

from qrtrain.errors import QrtrainError


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (which taskset narrows), within a container's
    CPU quota (cgroup v2 cpu.max) when it has one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def busy_cores(samples: int = 5, interval_s: float = 0.02) -> int:
    """Runnable scheduling entities besides this process, from /proc/loadavg (median of a few samples);
    elsewhere the one-minute load average."""
    try:
        counts = []
        for i in range(samples):
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
            if i + 1 < samples:
                time.sleep(interval_s)
        return max(0, round(statistics.median(counts)))
    except (OSError, ValueError, IndexError):
        return round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0


def choose_threads(setting, key: str = "threads") -> int | None:
    """The thread count for a `threads` setting (auto or a number); None: leave torch as it is."""
    if setting != "auto":
        if not isinstance(setting, int) or isinstance(setting, bool) or setting < 1:
            raise QrtrainError(f"{key}={setting!r}: expected auto or a whole number above 0, e.g. {key}=1")
        return setting
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, usable_cores() - busy_cores())


def set_cpu_threads(setting, key: str = "threads") -> int:
    """Apply a `threads` setting to torch; returns the threads torch now uses."""
    import torch

    threads = choose_threads(setting, key)
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()
