"""Added cost of word-level timestamps per 30 s window: kvgraph (MAX) vs openai-whisper
(PyTorch), Whisper tiny.en fp32, greedy (temperature 0), the same decoded audio.

Each engine runs in its own process (``--engine kvgraph|openai``; the parent starts both
and merges their JSON): per clip, ``transcribe`` without and with ``word_timestamps=True``,
interleaved, the median of ``--reps`` quiet repetitions each (``quiet.measure_interleaved``).
The added cost per window is ``(with - without) / windows`` (windows: the distinct ``seek``
s of the result). For kvgraph the forced alignment pass alone (``timings["align_s"]``: the
full-sequence decoder with the alignment heads' scores as outputs) is reported too; both
engines then run the same openai code (median filter, DTW, punctuation merging).

    python benchmarks/word_timestamps.py [--reps 5] [--out benchmarks/results/word_timestamps.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import measure_interleaved, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _clips():
    from models.whisper.audio.load import load_audio

    jfk = load_audio(str(ROOT / "examples" / "jfk.wav"))
    gap = np.zeros(int(1.5 * 16000), np.float32)
    x6 = np.concatenate([x for _ in range(6) for x in (jfk, gap)])
    pbx = load_audio(str(ROOT / "tests" / "data" / "speech" / "basic-pbx-ivr-main.wav"))
    return {"jfk_11s": jfk, "ivr_25s": pbx, "jfk_x6_75s": x6}


def _engine(name: str):
    """``transcribe(audio, word_timestamps) -> result`` for one engine, loaded and warmed."""
    import torch
    import whisper

    from models import whisper as mw

    dims, weights = mw.load_checkpoint("tiny.en")
    if name == "kvgraph":
        backend = mw.load_backend("tiny.en")
        from models.whisper.transcription.transcribe import transcribe

        return lambda a, w: transcribe(backend, a, temperature=0.0, word_timestamps=w)
    torch.set_num_threads(os.cpu_count() or 1)
    tm = whisper.model.Whisper(dims)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    tm.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny.en"])
    tm.eval()
    return lambda a, w: whisper.transcribe(tm, a, temperature=0.0, fp16=False, word_timestamps=w)


def run_engine(name: str, reps: int) -> dict:
    run = _engine(name)
    out = {}
    for cname, audio in _clips().items():
        t0 = time.perf_counter()
        first = run(audio, True)  # compiles the alignment program on first use (kvgraph)
        first_s = time.perf_counter() - t0
        run(audio, False)
        windows = len({s["seek"] for s in first["segments"]})
        times, discarded = measure_interleaved(
            {"plain": lambda: run(audio, False), "words": lambda: run(audio, True)}, reps
        )
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "seconds": len(audio) / 16000,
            "windows": windows,
            "median_s": med,
            "discarded": discarded,
            "added_per_window_s": (med["words"] - med["plain"]) / windows,
            "first_words_call_s": first_s,
            "words": [(w["word"], w["start"], w["end"]) for s in first["segments"] for w in s["words"]],
        }
        if "timings" in first:
            res = run(audio, True)
            row["align_pass_per_window_s"] = res["timings"]["align_s"] / res["timings"]["align_calls"]
        out[cname] = row
        print(name, cname, {k: round(v, 3) for k, v in med.items()}, file=sys.stderr, flush=True)
    return out


def _lscpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--engine", choices=["kvgraph", "openai"], help="(internal) run one engine, JSON on stdout"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "word_timestamps.json"))
    args = ap.parse_args(argv)
    if args.engine:
        print(json.dumps(run_engine(args.engine, args.reps)))
        return 0
    load0 = os.getloadavg()
    engines = {}
    for name in ("kvgraph", "openai"):
        r = subprocess.run(
            [sys.executable, __file__, "--engine", name, "--reps", str(args.reps)],
            stdout=subprocess.PIPE,
            check=True,
            cwd=ROOT,
            text=True,
        )
        engines[name] = json.loads(r.stdout.strip().splitlines()[-1])
    summary = {
        c: {
            "kvgraph_added_per_window_s": engines["kvgraph"][c]["added_per_window_s"],
            "openai_added_per_window_s": engines["openai"][c]["added_per_window_s"],
            "same_words": engines["kvgraph"][c]["words"] == engines["openai"][c]["words"],
        }
        for c in engines["kvgraph"]
    }
    report = {
        "machine": {
            "cpu": _lscpu_model(),
            "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "loadavg_before": load0,
            "loadavg_after": os.getloadavg(),
        },
        "model": "tiny.en fp32 greedy (temperature 0)",
        "reps": args.reps,
        "summary": summary,
        "engines": engines,
    }
    write_json(report, args.out)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
