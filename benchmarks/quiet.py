"""Measure only while the machine is quiet: other processes' CPU time from /proc/stat."""
from __future__ import annotations

import os
import platform
import time


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle


def _own_jiffies() -> int:
    t = os.times()
    return int((t.user + t.system + t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK"))


class Probe:
    """``with Probe() as p: ...`` then ``p.other_cores``: the average number of cores other
    processes kept busy meanwhile."""

    def __enter__(self):
        self.t0, self.b0, self.o0 = time.perf_counter(), _busy_jiffies(), _own_jiffies()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        other = (_busy_jiffies() - self.b0) - (_own_jiffies() - self.o0)
        self.other_cores = max(0.0, other / os.sysconf("SC_CLK_TCK") / max(wall, 1e-9))
        return False


def wait_quiet(threshold: float = 0.25, window: float = 1.0, timeout: float = 120.0) -> bool:
    """Block until other processes use < ``threshold`` cores over ``window`` s (or time out)."""
    end = time.time() + timeout
    while time.time() < end:
        with Probe() as p:
            time.sleep(window)
        if p.other_cores < threshold:
            return True
    return False


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
