"""A decode step's self-attention over its cache buffers, read in place by kvgraph's
``kvgraph_cache_attend_f32`` kernel ("in place", what the lowering does) against the same
step lowered with every cache view loaded through the graph ("loaded": ``buffer_load`` — a
copy of the whole ``[rows, 448, 384]`` buffer per cache per step — and a slice, then
``attention_few``; what the lowering did before the kernel). Whisper tiny.en, real weights,
random 1500-frame context; programs ``step_few`` (uniform positions: 1 row, 5 beams of one
audio) and ``step_rows`` (each row at its own position: 1, 4, 8 rows, as continuous
batching runs it).

Both forms are loaded in this one process (the "loaded" one under its own program-store
key) and timed alternately: per case and repetition, 20 steps after 3 untimed ones, at a
fixed position (each step writes the same cache row). Medians of ``--reps`` repetitions,
milliseconds per step; JSON (default ``benchmarks/results/cache_attend.json``) with the
machine and date.

    python benchmarks/cache_attend.py [--reps 9] [--pasts 24,200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import machine, wait_quiet, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def loaded_views_programs(dec, names):
    """``names`` lowered with every cache view loaded (the form before the kernel)."""
    import kvgraph.max.lower as L
    import kvgraph.max.runtime as rt

    digest, rule = rt.lowering_source_digest(), L.RULES[L.ir.CacheView]

    def load_view(op, env, ctx):
        v = rule(op, env, ctx)
        return v.load() if isinstance(v, L._CacheView) else v

    kept = {n: dec.program(n) for n in names}
    L.RULES[L.ir.CacheView] = load_view
    rt.lowering_source_digest = lambda: digest + "+loaded-cache-views"  # its own store key
    try:
        rt._MODELS.clear()
        for n in names:
            dec._progs.pop(n, None)
        out = {n: dec.program(n) for n in names}
    finally:
        L.RULES[L.ir.CacheView] = rule
        rt.lowering_source_digest = lambda: digest
        dec._progs.update(kept)
    return kept, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--pasts", default="24,200")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cache_attend.json"))
    args = ap.parse_args(argv)

    from kvgraph.slots import SlotPool
    from models import whisper as mw

    backend = mw.load_backend("tiny.en")
    dec = backend.decoder
    forms = dict(zip(("in place", "loaded"), loaded_views_programs(dec, ("step_few", "step_rows"))))
    rng = np.random.default_rng(0)
    d = backend.dims
    feats = rng.standard_normal((1, d.n_audio_ctx, d.n_audio_state)).astype(np.float32)
    tok = 50363 if d.n_vocab == 51864 else 50364
    cases = {}
    for past in (int(p) for p in args.pasts.split(",")):
        for rows in (1, 5):
            _, st = dec.prefill(rng.integers(0, 50000, (1, past)), feats)
            if rows > 1:
                st = dec.reorder(st, [0] * rows)
            new = np.full((rows, 1), tok, np.int64)
            name = f"step_few {'5 beams of 1 audio' if rows > 1 else '1 row'}, past {past}"
            cases[name] = ("step_few", lambda new=new, st=st: dec.step(new, st))
        for rows in (1, 4, 8):  # rows at positions past .. past + 3 * (rows - 1)
            pool = SlotPool(dec, rows)
            groups = []
            for i in range(rows):
                g = pool.acquire(1)
                pool.prefill(g, rng.integers(0, 50000, (1, past + 3 * i)), feats)
                groups.append(g)
            one = np.array([[tok]], np.int64)

            def fn(pool=pool, groups=groups, one=one):
                pasts = [g.past for g in groups]
                pool.step([(g, one) for g in groups])
                for g, p in zip(groups, pasts):  # back to the same position
                    g.past = p

            cases[f"step_rows {rows} rows, past {past}.."] = ("step_rows", fn)
    times = {(c, f): [] for c in cases for f in forms}
    for rep in range(args.reps):
        for c, (prog, fn) in cases.items():
            for f in forms if rep % 2 else list(forms)[::-1]:
                dec._progs[prog] = forms[f][prog]
                wait_quiet()
                for _ in range(3):
                    fn()
                t0 = time.perf_counter()
                for _ in range(20):
                    fn()
                times[c, f].append((time.perf_counter() - t0) / 20 * 1e3)
    report = {"machine": machine(), "reps": args.reps, "ms": {}}
    for c in cases:
        row = {f: statistics.median(times[c, f]) for f in forms}
        row["in place / loaded"] = row["in place"] / row["loaded"]
        report["ms"][c] = row
        print(f"{c:40s} " + "  ".join(f"{k}: {v:.3f}" for k, v in row.items()), flush=True)
    write_json(report, args.out)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
