"""Decode steps of several rows, tiny.en real weights on MAX: ms per step and per row at 1, 2,
5, 8, 16 distinct audios and for 5 beams of one audio (a batch-1 prefill, then
``reorder(state, [0] * 5)``: the beams share one copy of the audio's cross-attention K/V);
and what ``reorder`` costs (5 rows, a beam-search permutation, at two positions).

``--ablate`` explains where the time per row goes by switching one thing off at a time, each
in its own process: kvgraph's custom GEMV (``KVGRAPH_CUSTOM_KERNELS=off``: MAX's own few-row
GEMV, which reads the weights once per row). The distinct-audios vs one-audio rows of the main
table show the per-audio cross-attention share.

Random audio features (1500 frames); steps timed at position ~24 (a prompt of 24 tokens),
interleaved, medians of quiet repetitions (benchmarks/quiet.py). Writes JSON (default
benchmarks/results/multi_row.json)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import machine, measure_interleaved, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS = (1, 2, 5, 8, 16)


def measure(model: str, reps: int, calls: int, prompt: int) -> dict:
    from models.whisper import load_backend

    be = load_backend(model)
    dec = be.decoder
    d = be.dims
    rng = np.random.default_rng(0)
    tok = 50363 if d.n_vocab == 51864 else 50364  # <|notimestamps|>: any id will do

    def setup(rows: int, audios: int):
        ctx = rng.standard_normal((audios, d.n_audio_ctx, d.n_audio_state)).astype(np.float32)
        prompt_toks = rng.integers(0, 50000, (audios, prompt))
        _, st = dec.prefill(prompt_toks, ctx)
        if rows != audios:
            st = dec.reorder(st, np.repeat(np.arange(audios), rows // audios))
        new = np.full((rows, 1), tok, np.int64)
        dec.step(new, st)  # compile/warm the program for this row count
        return lambda: dec.step(new, st)

    fns = {f"{r} audios": setup(r, r) for r in ROWS}
    fns["5 beams of 1 audio"] = setup(5, 1)
    times, discarded = measure_interleaved(fns, reps, calls=calls, warmup=1)
    step = {k: statistics.median(v) * 1e3 for k, v in times.items()}

    # reorder: 5 rows, a beam-search-like permutation (rows stay with their audio)
    ctx = rng.standard_normal((1, d.n_audio_ctx, d.n_audio_state)).astype(np.float32)
    reo = {}
    for past in (prompt, 4 * prompt):
        _, st = dec.prefill(rng.integers(0, 50000, (1, past)), ctx)
        st5 = dec.reorder(st, [0] * 5)
        perm = np.array([2, 2, 0, 4, 1])
        reo[f"5 rows, past {past}"] = lambda st5=st5, perm=perm: dec.reorder(st5, perm)
    rtimes, rdisc = measure_interleaved(reo, reps, calls=20, warmup=2)
    return {
        "step_ms": step,
        "per_row_ms": {
            k: step[k] / (int(k.split()[0]) if k[0].isdigit() and "beams" not in k else 5) for k in step
        },
        "reorder_ms": {k: statistics.median(v) * 1e3 for k, v in rtimes.items()},
        "discarded": {**discarded, **rdisc},
        "step_few_rows": dec.step_few_rows,
        "programs": {k: p.source for k, p in dec.loaded.items()},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument(
        "--calls",
        type=int,
        default=20,
        help="steps per repetition (few calls add the switch between cases to each figure)",
    )
    ap.add_argument("--prompt", type=int, default=24)
    ap.add_argument("--ablate", action="store_true", help="also run with KVGRAPH_CUSTOM_KERNELS=off")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "multi_row.json"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.model, args.reps, args.calls, args.prompt)))
        return 0

    def run(env_extra: dict) -> dict:
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--reps", str(args.reps)]
        cmd += ["--calls", str(args.calls), "--prompt", str(args.prompt)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), **env_extra)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    report = {"machine": machine(), "model": args.model, "kvgraph": run({})}
    if args.ablate:
        report["builtin_gemv"] = run({"KVGRAPH_CUSTOM_KERNELS": "off"})
    one = report["kvgraph"]["step_ms"]["1 audios"]
    report["ratios_to_1_row"] = {k: v / one for k, v in report["kvgraph"]["step_ms"].items()}
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=1))
    write_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
