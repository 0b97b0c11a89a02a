"""Silero VAD speed on one core: kvgraph's batched graph against the original, window by window.

10 minutes of 16 kHz audio (jfk.wav and the two speech clips, with digital silence and white
noise between, repeated) go through

* ``sequential``: the original ``silero_vad.onnx`` on onnxruntime, one 512-sample window per
  ``session.run`` as silero-vad's ``OnnxWrapper`` runs it (in NumPy here: no torch tensors, so
  a little faster than the wrapper itself);
* ``batched``: ``SileroVad.probs`` (models/whisper/vad/silero.py): one new graph, 256 windows
  per ``session.run``, the LSTM as ONNX's LSTM op over the windows;
* ``detect_speech``: ``batched`` plus the timestamps (faster-whisper's default options).

Each with one onnxruntime thread (intra and inter op 1), the process pinned to one CPU (as
``taskset -c 0``), the best of ``--reps`` interleaved repetitions taken while the machine is
otherwise quiet (``quiet.measure_interleaved``). Realtime factor = audio seconds / seconds.
Writes ``benchmarks/results/vad.json`` with the ``lscpu`` model name and the date.

    .venv/bin/python benchmarks/vad.py [--reps 3] [--minutes 10] [--out benchmarks/results/vad.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from quiet import lscpu_model, machine, measure_interleaved, write_json  # noqa: E402

from models.whisper.audio.load import load_audio  # noqa: E402
from models.whisper.vad.silero import SileroVad, packaged_model_path  # noqa: E402
from models.whisper.vad.speech import VadOptions, detect_speech  # noqa: E402

SR = 16000


def test_audio(minutes: float) -> np.ndarray:
    """Speech, silence and noise, repeated to ``minutes``."""
    rng = np.random.default_rng(0)
    clips = [load_audio(ROOT / "examples" / "jfk.wav")]
    clips += [load_audio(p) for p in sorted((ROOT / "tests" / "data" / "speech").glob("*.wav"))]
    pieces = []
    for clip in clips:
        pieces += [
            clip,
            np.zeros(3 * SR, np.float32),
            (rng.standard_normal(4 * SR) * 0.01).astype(np.float32),
        ]
    unit = np.concatenate(pieces)
    n = int(minutes * 60 * SR)
    return np.tile(unit, -(-n // len(unit)))[:n]


def sequential_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def sequential_probs(session, audio: np.ndarray) -> np.ndarray:
    """silero-vad 6.2's ``OnnxWrapper.audio_forward`` at 16 kHz: one window per call, 64
    samples of the previous input before it, the state carried."""
    n = -(-len(audio) // 512)
    x = np.zeros(n * 512, np.float32)
    x[: len(audio)] = audio
    state, context, sr = np.zeros((2, 1, 128), np.float32), np.zeros((1, 64), np.float32), np.array(SR)
    out = np.empty(n, np.float32)
    for i in range(n):
        inp = np.concatenate([context, x[None, i * 512 : (i + 1) * 512]], axis=1)
        prob, state = session.run(None, {"input": inp, "state": state, "sr": sr})
        out[i], context = prob[0, 0], inp[:, -64:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--cpu", type=int, default=0, help="the CPU to pin to (taskset -c CPU)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vad.json"))
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})

    audio = test_audio(args.minutes)
    seconds = len(audio) / SR
    path = packaged_model_path()
    session, vad, options = sequential_session(path), SileroVad.load(path, threads=1), VadOptions()
    fns = {
        "sequential": lambda: sequential_probs(session, audio),
        "batched": lambda: vad.speech_probs(audio),
        "detect_speech": lambda: detect_speech(audio, options, vad),
    }
    diff = float(np.abs(fns["sequential"]() - fns["batched"]()).max())
    times, discarded = measure_interleaved(fns, reps=args.reps)
    windows = -(-len(audio) // 512)
    rows = {
        name: {
            "best_s": min(ts),
            "all_s": ts,
            "realtime_factor": seconds / min(ts),
            "us_per_window": min(ts) / windows * 1e6,
            "discarded_noisy_reps": discarded[name],
        }
        for name, ts in times.items()
    }
    report = {
        "machine": {**machine(), "lscpu_model": lscpu_model(), "pinned_cpu": args.cpu},
        "model": f"{path.name} (silero-vad package), onnxruntime one thread",
        "audio_seconds": seconds,
        "windows": windows,
        "reps": args.reps,
        "max_abs_prob_diff_batched_vs_sequential": diff,
        "speech_found_s": sum(t["end"] - t["start"] for t in fns["detect_speech"]()) / SR,
        "speedup_batched_vs_sequential": rows["sequential"]["best_s"] / rows["batched"]["best_s"],
        "target_realtime_factor": 500,
        "rows": rows,
    }
    for name, row in rows.items():
        print(
            f"{name:14s} {row['best_s']:7.3f} s  {row['realtime_factor']:7.0f}x realtime  {row['us_per_window']:6.1f} us/window"
        )
    write_json(report, args.out)


if __name__ == "__main__":
    main()
