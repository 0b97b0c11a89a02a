"""Measure only while the machine is quiet: other processes' CPU time from /proc/stat."""

from __future__ import annotations

import os
import platform
import subprocess
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


def allowed(threshold: float) -> float:
    """``threshold``, or ``$KVGRAPH_BENCH_OTHER_CORES`` when set: on a machine whose other
    jobs cannot be stopped, run them at ``nice 19`` and allow their (idle-time) CPU use —
    the report must say so."""
    env = os.environ.get("KVGRAPH_BENCH_OTHER_CORES")
    return max(threshold, float(env)) if env else threshold


def wait_quiet(threshold: float = 0.25, window: float = 1.0, timeout: float = 120.0) -> bool:
    """Block until other processes use < ``threshold`` cores over ``window`` s (or time out)."""
    threshold = allowed(threshold)
    end = time.time() + timeout
    while time.time() < end:
        with Probe() as p:
            time.sleep(window)
        if p.other_cores < threshold:
            return True
    return False


def machine() -> dict:
    cpu, kind = platform.processor(), None
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(l.split(":", 1) for l in f.read().split("\n\n")[0].splitlines() if ":" in l)
        info = {k.strip(): v.strip() for k, v in info.items()}
        cpu = info.get("model name", cpu)
        flags = set(info.get("flags", "").split())
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
        kind = f"family {info.get('cpu family')} model {info.get('model')}, {isa}"
    except (OSError, ValueError):
        pass
    return {
        "other_jobs_niced_allowed_cores": os.environ.get("KVGRAPH_BENCH_OTHER_CORES"),
        "cpu": cpu,
        "cpu_kind": kind,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def lscpu_model() -> str | None:
    """``lscpu``'s "Model name" (None where lscpu cannot run or does not say)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), None)


def measure_interleaved(fns: dict, reps: int, calls: int = 1, threshold: float = 0.3, warmup: int = 0):
    """Time each of ``fns`` (name -> callable) ``reps`` times, interleaved, each repetition
    the mean of ``calls`` calls after ``warmup`` untimed ones (the engine timed before
    this one evicted its data from the CPU caches; in a decode loop one engine's steps
    run back to back). A repetition during which other processes used ``threshold``
    cores or more is discarded and run again. The order rotates by one engine per
    repetition, so each engine follows every other equally often (an engine's first calls
    pay for the one before it: its evicted caches, its threads still spinning).
    Returns ``({name: [seconds, ...]}, {name: discarded count})``."""
    threshold = allowed(threshold)
    times = {k: [] for k in fns}
    discarded = {k: 0 for k in fns}
    names = list(fns)
    for rep in range(reps):
        for k in names[rep % len(names) :] + names[: rep % len(names)]:
            f = fns[k]
            while True:
                wait_quiet()
                for _ in range(warmup):
                    f()
                with Probe() as p:
                    t = time.perf_counter()
                    for _ in range(calls):
                        f()
                    dt = (time.perf_counter() - t) / calls
                if p.other_cores < threshold:
                    times[k].append(dt)
                    break
                discarded[k] += 1
    return times, discarded


def write_json(report: dict, out) -> None:
    """Write ``report`` to ``out`` atomically (temp file + rename)."""
    import json
    from pathlib import Path

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")
