"""What the benchmark reads about processes from Linux's /proc (proc(5)).

CPU time is utime + stime of /proc/<pid>/stat (fields 14 and 15, in clock ticks); memory is
VmRSS of /proc/<pid>/status. Both are read before and after a measured interval, so the
figures say how much of a core the server (and the generator) spent on it.
"""

from __future__ import annotations

import contextlib
import os
import resource

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds spent so far by process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS for process {pid}")


def own_cpu_seconds() -> float:
    """CPU seconds of this process, user + system."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def pin(pid: int, cpus: set[int] | None) -> bool:
    """Restrict ``pid`` (0: this process) to ``cpus``; False when that is not possible."""
    if not cpus or (os.cpu_count() or 1) < 2:
        return False
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError:
        return False
    return True


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process's open-files soft limit toward ``wanted``; returns the new limit.

    Children inherit it, so calling this before starting the servers lifts theirs too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy so far (everything but idle and iowait, /proc/stat)."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, counted in user]
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / _TICK


def threads_cpu(pids: list[int]) -> float:
    """Total CPU seconds of several processes; a process that is gone counts as 0."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total
