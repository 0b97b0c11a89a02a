"""A pool's step (``step_rows``, continuous batching) in its two lowered forms, in one process,
interleaved: every linear as kvgraph's float16 GEMM kernel (``kvgraph_gemm_f16``: the GEMV up
to the class's few rows, a GEMM over per-call widened panels beyond; the default) against the
form before it, a run-time branch per linear between the float16 GEMV and MAX's float32 GEMM
over float32 copies of the weights. The earlier form is lowered by setting the kernel's GEMV
limit apart from the class's threshold (the lowering then keeps the branch), compiled under a
key of its own into a temporary program store. Reports each form's step time per row count
(tiny.en, real weights, rows at different positions), whether their logits agree, and the
bytes each program's weight registry holds beyond the checkpoint's arrays; then, each in a
fresh process, the peak resident memory and wall time of ``transcribe_many`` of JFK and 7
bundled clips at ``--batch-size`` files, greedy and beam 5, per form (both forms' programs
read from a store: no compile in the measured processes). JSON to ``--out`` (default
``benchmarks/results/step_rows_forms.json``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import machine, measure_interleaved, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


#: one batched transcription in a fresh process: argv = form, the branch form's store, batch
#: size, beam size (0: greedy); prints its peak RSS, wall time and the texts' joined hash
CHILD = """
import hashlib, glob, sys, time
form, branch_store, batch, beam = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from models.whisper.transcription.model import load_model
m = load_model("tiny.en")
if form == "branch":
    sys.path.insert(0, "benchmarks")
    from step_rows_forms import branch_lowering
    with branch_lowering(branch_store):
        m.backend.decoder.program("step_rows")
files = ["examples/jfk.wav"] + sorted(glob.glob("tests/data/speech/*.wav"))[:7]
t0 = time.perf_counter()
out = m.transcribe_many(files, batch_size=batch, **({"beam_size": beam} if beam else {}))
wall = time.perf_counter() - t0
text = "|".join(r["text"] for r in out)
# this process's own peak (VmHWM): ru_maxrss would carry the forking parent's
rss = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM")) / 1024
print("RESULT", rss, wall, hashlib.sha256(text.encode()).hexdigest()[:16])
"""


@contextlib.contextmanager
def branch_lowering(store_dir: str):
    """Programs loaded inside the block are lowered in the earlier form (the kernel's GEMV
    limit set apart from every class's threshold, so the lowering keeps the run-time branch)
    and kept under a key of their own in the program store at ``store_dir``."""
    from kvgraph import store
    from kvgraph.max import kernels as K
    from kvgraph.max import runtime

    limit, digest = K.GEMM_F16_GEMV_ROWS, runtime.lowering_source_digest
    K.GEMM_F16_GEMV_ROWS = -1
    runtime.lowering_source_digest = lambda: "step_rows_forms: the run-time branch"
    store.set_default_store(store.ProgramStore(store_dir))
    try:
        yield
    finally:
        K.GEMM_F16_GEMV_ROWS, runtime.lowering_source_digest = limit, digest
        store.set_default_store(None)


def _registry_bytes(decoder) -> dict:
    """Bytes of ``step_rows``'s weight registry by layout (what the program holds besides the
    checkpoint's own arrays: copies, stacked or transposed, and float16 views shared with it)."""
    from kvgraph.max import runtime

    prog = runtime._lower([decoder.request("step_rows")], ["step_rows"])
    by_layout: dict[str, int] = {}
    for key, (_, layout, f16, *_) in prog.recipe.items():
        name = f"{layout}{' f16' if f16 else ''}"
        by_layout[name] = by_layout.get(name, 0) + int(prog.registry[key].nbytes)
    return by_layout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", default="1,2,8,16,17,24,40")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--process-reps", type=int, default=2, help="fresh processes per form and decode")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_rows_forms.json"))
    args = ap.parse_args(argv)

    from kvgraph.slots import SlotPool
    from models.whisper.audio.features import log_mel_spectrogram, pad_or_trim
    from models.whisper.audio.load import load_audio
    from models.whisper.model.backend import load_backend

    kernel = load_backend("tiny.en")
    kernel.decoder.program("step_rows")
    branch = load_backend("tiny.en")  # its own weights dict: its own in-process cache entries
    branch_store = tempfile.mkdtemp(prefix="kvgraph-forms-")
    with branch_lowering(branch_store):
        branch.decoder.program("step_rows")
        registry = {"branch": _registry_bytes(branch.decoder)}
    registry["kernel"] = _registry_bytes(kernel.decoder)

    audio = load_audio(str(ROOT / "examples" / "jfk.wav"))
    mel = log_mel_spectrogram(pad_or_trim(audio), 80)
    feats = kernel.encode(mel[None])
    tok = np.array([[220]], np.int64)
    rows = [int(r) for r in args.rows.split(",")]

    def pool_step(decoder, b: int):
        rng = np.random.default_rng(0)  # the same prompts for both forms
        pool = SlotPool(decoder, b)
        groups = []
        for i in range(b):  # every row busy, each at its own position
            g = pool.acquire(1)
            pool.prefill(g, rng.integers(0, 50000, size=(1, 20 + 5 * i)), feats)
            groups.append(g)

        def step():
            for g in groups:
                g.past = min(g.past, 300)
            return pool.step([(g, tok) for g in groups])

        return step

    fns, agree = {}, {}
    for b in rows:
        fns[f"kernel_b{b}"] = pool_step(kernel.decoder, b)
        fns[f"branch_b{b}"] = pool_step(branch.decoder, b)
        x = np.concatenate(fns[f"kernel_b{b}"]())
        y = np.concatenate(fns[f"branch_b{b}"]())
        agree[b] = {
            "max_abs_diff": float(np.abs(x - y).max()),
            "argmax_equal": bool((x.argmax(-1) == y.argmax(-1)).all()),
        }
    times, discarded = measure_interleaved(fns, args.reps, calls=args.calls, warmup=2)
    report = {"machine": machine(), "calls": args.calls, "reps": args.reps, "discarded": discarded}
    report["registry_mb"] = {
        form: {k: round(v / 2**20, 1) for k, v in sorted(by.items())} for form, by in registry.items()
    }
    report["rows"] = {}
    for b in rows:
        k, br = times[f"kernel_b{b}"], times[f"branch_b{b}"]
        entry = {
            "kernel_ms": {"median": round(statistics.median(k) * 1e3, 3), "min": round(min(k) * 1e3, 3)},
            "branch_ms": {"median": round(statistics.median(br) * 1e3, 3), "min": round(min(br) * 1e3, 3)},
            "kernel_over_branch": {
                "median": round(statistics.median(k) / statistics.median(br), 3),
                "min": round(min(k) / min(br), 3),
            },
            **agree[b],
        }
        report["rows"][b] = entry
        print(
            f"{b:3d} rows  kernel {entry['kernel_ms']}  branch {entry['branch_ms']}  "
            f"ratio {entry['kernel_over_branch']}  diff {entry['max_abs_diff']:.2g}",
            flush=True,
        )
    print("registry MB", report["registry_mb"])
    del fns  # the pools: this process's memory is not the children's to count
    report["processes"] = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for beam in (0, 5):
        runs: dict[str, list] = {"kernel": [], "branch": []}
        for _ in range(args.process_reps):
            for form in runs:  # interleaved
                cmd = [sys.executable, "-c", CHILD, form, branch_store, str(args.batch_size), str(beam)]
                done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
                line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT"))
                _, rss, wall, digest = line.split()
                runs[form].append(
                    {"peak_rss_mb": round(float(rss), 1), "wall_s": round(float(wall), 2), "texts": digest}
                )
        decode = "greedy" if not beam else f"beam {beam}"
        report["processes"][decode] = runs
        print(decode, json.dumps(runs), flush=True)
    write_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
