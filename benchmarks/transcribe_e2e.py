"""End-to-end transcription time on the same CPU: kvgraph (MAX) vs openai-whisper (PyTorch)
vs faster-whisper (CTranslate2), tiny.en fp32, greedy, the same decoded audio for all three.

Interleaved in one process, median of quiet repetitions; JSON out (default
benchmarks/results/transcribe_e2e.json). faster-whisper is optional (`pip install
faster-whisper`); it reads the same CTranslate2 model directory that kvgraph parses."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import machine, measure_interleaved, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def long_clip(audio: np.ndarray, repeats: int = 6, pause_s: float = 1.5) -> np.ndarray:
    gap = np.zeros(int(pause_s * 16000), np.float32)
    return np.concatenate([x for _ in range(repeats) for x in (audio, gap)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "transcribe_e2e.json"))
    args = ap.parse_args(argv)

    import torch
    import whisper

    from models import whisper as mw
    from models.whisper.audio.load import load_audio
    from models.whisper.weights.packages import resolve_source

    torch.set_num_threads(os.cpu_count() or 1)
    jfk = load_audio(str(ROOT / "examples" / "jfk.wav"))
    clips = {"jfk_11s": jfk, "jfk_x6_75s": long_clip(jfk)}

    dims, weights = mw.load_checkpoint("tiny.en")
    ours = mw.WhisperModel(mw.MaxWhisperBackend(dims, weights))
    tm = whisper.model.Whisper(dims)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    tm.eval()
    engines = {
        "kvgraph_max": lambda a: ours.transcribe(a, temperature=0.0)["text"],
        "openai_whisper_torch": lambda a: whisper.transcribe(tm, a, temperature=0.0, fp16=False)["text"],
    }
    try:
        from faster_whisper import WhisperModel

        fw = WhisperModel(
            str(resolve_source("tiny.en")["parts"][0].parent),
            device="cpu",
            compute_type="float32",
            cpu_threads=os.cpu_count() or 1,
        )
        engines["faster_whisper_ct2"] = lambda a: "".join(
            s.text for s in fw.transcribe(a, beam_size=1, temperature=0.0, vad_filter=False)[0]
        )
    except ImportError:
        print("faster-whisper not installed: skipped", file=sys.stderr)

    results = {}
    for cname, audio in clips.items():
        texts = {k: f(audio) for k, f in engines.items()}  # warm-up, and the outputs
        times, discarded = measure_interleaved(
            {k: (lambda f=f: f(audio)) for k, f in engines.items()}, args.reps
        )
        med = {k: statistics.median(v) for k, v in times.items()}
        results[cname] = {
            "seconds": len(audio) / 16000,
            "median_s": med,
            "discarded": discarded,
            "texts": texts,
            "speedup_vs": {k: med[k] / med["kvgraph_max"] for k in med if k != "kvgraph_max"},
        }
        print(cname, {k: round(v, 3) for k, v in med.items()}, flush=True)
    report = {"machine": machine(), "model": "tiny.en fp32 greedy", "clips": results}
    write_json(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
