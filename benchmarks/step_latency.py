"""Decoder step latency, tiny.en real weights: kvgraph cached step vs kvgraph kv_cache=False
vs openai-whisper's PyTorch decoder with its kv-cache hooks. Interleaved in one process,
medians over quiet repetitions at several positions. Writes JSON (default
benchmarks/results/step_latency.json). Run on demand: ``make bench``.

``kvgraph_cached`` is ``kvgraph.compile``'s default: the fixed-capacity cache written in
place (capacity 448, Whisper's text context). ``--compare-concat`` adds
``kvgraph_cached_concat``: the same step with the functional concat cache
(``cache_layout="concat"``). ``--compare-f32`` adds ``kvgraph_cached_f32``: the default
cached step with ``f16_weights=False`` (every weight read as float32), to show what the
float16 copies of an fp16 checkpoint's weights save."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import machine, measure_interleaved, write_json  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--positions", default="10,100,220")
    ap.add_argument("--reps", type=int, default=7, help="quiet repetitions per engine and position (>= 5)")
    ap.add_argument("--calls", type=int, default=5, help="step calls averaged inside one repetition")
    ap.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed calls before each repetition (steps of one engine run back to back "
        "when decoding; the engine timed before evicted the CPU caches)",
    )
    ap.add_argument(
        "--compare-concat",
        action="store_true",
        help="also time the cached step with the functional concat cache",
    )
    ap.add_argument(
        "--compare-f32", action="store_true", help="also time the cached step with f16_weights=False"
    )
    ap.add_argument("--no-full", action="store_true", help="skip the kv_cache=False engine")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_latency.json"))
    args = ap.parse_args(argv)

    import torch
    import whisper

    import kvgraph
    from models import whisper as mw

    torch.set_num_threads(os.cpu_count() or 1)
    dims, weights = mw.load_checkpoint(args.model)
    spec = mw.spec_from_dims(dims)
    t0 = time.perf_counter()
    cached = kvgraph.compile(spec, weights)
    full = None if args.no_full else kvgraph.compile(spec, weights, kv_cache=False)
    concat = kvgraph.compile(spec, weights, cache_layout="concat") if args.compare_concat else None
    f32 = kvgraph.compile(spec, weights, f16_weights=False) if args.compare_f32 else None
    compile_s = time.perf_counter() - t0

    tm = whisper.model.Whisper(dims)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    tm.eval()
    rng = np.random.default_rng(0)
    xa = rng.standard_normal((1, dims.n_audio_ctx, dims.n_audio_state)).astype(np.float32)
    xa_t = torch.from_numpy(xa)
    cache, hooks = tm.install_kv_cache_hooks()

    def engines(P):
        toks = rng.integers(0, 50000, (1, P + 1))
        _, st = cached.prefill(toks[:, :P], xa)
        with torch.no_grad():
            cache.clear()
            tm.decoder(torch.from_numpy(toks[:, :P]), xa_t, kv_cache=cache)
        base = dict(cache)
        new = toks[:, P : P + 1]
        new_t = torch.from_numpy(new)

        def torch_step():
            with torch.no_grad():
                return tm.decoder(new_t, xa_t, kv_cache=dict(base))

        fns = {"kvgraph_cached": lambda: cached.step(new, st)}
        # (each call of the default step writes row P in place; the state, past=P, stays valid)
        if concat is not None:
            _, cst = concat.prefill(toks[:, :P], xa)
            fns["kvgraph_cached_concat"] = lambda: concat.step(new, cst)
            np.testing.assert_allclose(concat.step(new, cst)[0], cached.step(new, st)[0], atol=2e-3)
        if f32 is not None:
            _, f32st = f32.prefill(toks[:, :P], xa)
            fns["kvgraph_cached_f32"] = lambda: f32.step(new, f32st)
            np.testing.assert_allclose(f32.step(new, f32st)[0], cached.step(new, st)[0], atol=2e-3)
        if full is not None:
            _, fst = full.prefill(toks[:, :P], xa)
            fns["kvgraph_no_cache"] = lambda: full.step(new, fst)
        fns["openai_whisper_torch"] = torch_step
        return fns

    results = {}
    for P in [int(p) for p in args.positions.split(",")]:
        fns = engines(P)
        for f in fns.values():
            f()  # warm-up
        times, discarded = measure_interleaved(fns, args.reps, args.calls, warmup=args.warmup)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        results[P] = {
            "median_ms": med,
            "runs": {k: len(v) for k, v in times.items()},
            "discarded": discarded,
            "ratio_cached_vs_openai": med["kvgraph_cached"] / med["openai_whisper_torch"],
        }
        if "kvgraph_no_cache" in med:
            results[P]["speedup_cached_vs_no_cache"] = med["kvgraph_no_cache"] / med["kvgraph_cached"]
        if "kvgraph_cached_concat" in med:
            results[P]["speedup_concat_vs_no_cache"] = (
                med.get("kvgraph_no_cache", float("nan")) / med["kvgraph_cached_concat"]
            )
        if "kvgraph_cached_f32" in med:
            results[P]["ratio_cached_vs_f32_weights"] = med["kvgraph_cached"] / med["kvgraph_cached_f32"]
        if "kvgraph_cached_concat" in med:
            results[P]["ratio_buffer_vs_concat"] = med["kvgraph_cached"] / med["kvgraph_cached_concat"]
        print(f"position {P}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items()), flush=True)
    for h in hooks:
        h.remove()
    report = {
        "machine": machine(),
        "model": args.model,
        "compile_s": compile_s,
        "layout": "buffer (default)",
        "reps": args.reps,
        "calls": args.calls,
        "warmup": args.warmup,
        "positions": results,
    }
    write_json(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
