"""Cold vs warm MAX compile times for Whisper's programs (encoder, prefill, step).

Cold: a child process with an empty MAX cache (a fresh HOME, so ~/.cache/modular is new).
Warm: a second child process sharing that cache. Writes JSON (default
benchmarks/results/compile_times.json). Takes several minutes: run on demand."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import machine, write_json  # noqa: E402

CHILD = """
import json, time
t0 = time.perf_counter()
from models import whisper as mw
b = mw.load_backend({model!r})
out = dict(b.decoder.compile_seconds, encoder=b.encoder.compile_seconds, total=time.perf_counter() - t0)
print("RESULT " + json.dumps(out))
"""


def run_child(model: str, home: str) -> dict:
    env = dict(os.environ, HOME=home)
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-c", CHILD.format(model=model)], cwd=root, env=env,
                       capture_output=True, text=True, check=True)
    line = next(l for l in p.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile_times.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as home:
        cold = run_child(args.model, home)
        print("cold", cold, flush=True)
        warm = run_child(args.model, home)
        print("warm", warm, flush=True)
    report = {"machine": machine(), "model": args.model, "cold_s": cold, "warm_s": warm}
    write_json(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
