"""Cold and warm start of Whisper's programs (encoder, prefill, step): MAX compile times, one
compile per program against one compile of the three as a MAX Module, and the warm start from
kvgraph's program store.

Each run is a child process with an empty MAX cache (a fresh HOME, so ~/.cache/modular is new)
and its own empty program store (KVGRAPH_CACHE_DIR). "separate" compiles the three programs one
by one (``kvgraph.max.runtime.COMPILE_TOGETHER = False``); "together" as one Module (the
default). "store" is a second child reading the "together" child's store (no compile); "maxcache"
a second child with the store off that hits only MAX's own cache. Writes JSON (default
benchmarks/results/compile_times.json). Takes many minutes: run on demand."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import Probe, machine, write_json  # noqa: E402

CHILD = """
import json, time
t0 = time.perf_counter()
import kvgraph.max.runtime as rt
rt.COMPILE_TOGETHER = {together!r}
from kvgraph.store import default_store
from models import whisper as mw
b = mw.load_backend({model!r})
out = dict(b.decoder.compile_seconds, encoder=b.encoder.compile_seconds, total=time.perf_counter() - t0,
           store=str(default_store().stats))
print("RESULT " + json.dumps(out))
"""


def run_child(model: str, home: str, store: str, together: bool) -> dict:
    env = dict(os.environ, HOME=home, KVGRAPH_CACHE_DIR=store)
    env.pop("XDG_CACHE_HOME", None)
    root = Path(__file__).resolve().parents[1]
    with Probe() as p:
        r = subprocess.run(
            [sys.executable, "-c", CHILD.format(model=model, together=together)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    out["other_cores_busy"] = round(p.other_cores, 2)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile_times.json"))
    args = ap.parse_args(argv)
    report = {"machine": machine(), "model": args.model}
    for mode in ("separate", "together"):
        with tempfile.TemporaryDirectory() as home:
            store = os.path.join(home, "kvgraph-store")
            report[f"cold_{mode}"] = run_child(args.model, home, store, mode == "together")
            print(mode, "cold", report[f"cold_{mode}"], flush=True)
            if mode == "together":
                report["warm_store"] = run_child(args.model, home, store, True)
                print("warm store", report["warm_store"], flush=True)
                report["warm_maxcache"] = run_child(args.model, home, "off", True)
                print("warm MAX cache only", report["warm_maxcache"], flush=True)
    write_json(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
