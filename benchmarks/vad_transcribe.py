"""Transcription with voice activity detection against without, on a recording that is half
silence: `kvgraph transcribe FILE` and `kvgraph transcribe FILE --vad`, each run in its own
process (warm program store), interleaved, best of --reps. The recording (--minutes, default
10) is the bundled speech (JFK, the two recorded prompts) with pauses of quiet noise as long as
the speech before them, written to a temporary WAV. The figure is the wall time without VAD
over with it (the issue's target: >= 1.7x); the two transcripts' word error rate against each
other is reported beside it. Writes JSON (default benchmarks/results/vad_transcribe.json)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import machine, wait_quiet, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def write_half_silent(path: Path, minutes: float) -> tuple[float, float]:
    """Speech clips, each followed by a pause of quiet noise whose length is drawn from an
    exponential distribution with the clips' mean length (many short pauses, a few long ones,
    as in a meeting), rescaled so the pauses are half the recording; (duration, speech) s."""
    sys.path.insert(0, str(ROOT))
    from models.whisper.audio.load import load_audio

    clips = [load_audio(str(ROOT / "examples" / "jfk.wav"))]
    clips += [load_audio(str(p)) for p in sorted((ROOT / "tests" / "data" / "speech").glob("*.wav"))]
    rng = np.random.default_rng(0)
    want = int(minutes * 60 * SR)
    n = int(np.ceil(want / 2 / np.mean([len(c) for c in clips]))) + 1
    order = [clips[i % len(clips)] for i in range(n)]
    pauses = rng.exponential(1.0, n)
    pauses *= sum(len(c) for c in order) / pauses.sum()
    total, speech = 0, 0
    with sf.SoundFile(str(path), "w", samplerate=SR, channels=1, subtype="PCM_16") as f:
        for clip, pause_len in zip(order, pauses):
            if total >= want:
                break
            pause = (0.003 * rng.standard_normal(int(pause_len))).astype(np.float32)
            block = np.concatenate([clip, pause])[: want - total]
            f.write(block)
            speech += min(len(clip), len(block))
            total += len(block)
    return total / SR, speech / SR


def run(audio: Path, out_dir: str, vad: bool) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "kvgraph",
        "transcribe",
        str(audio),
        "-o",
        out_dir,
        "-f",
        "txt",
        "--no-progress",
    ]
    if vad:
        cmd.append("--vad")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return {"wall_s": time.perf_counter() - t0, "text": done.stdout.strip()}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def wer(ref: list[str], hyp: list[str]) -> float:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / max(1, len(ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vad_transcribe.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "half_silent.wav"
        duration, speech = write_half_silent(audio, args.minutes)
        runs = {"off": [], "vad": []}
        texts = {}
        run(audio, tmp, True)  # warm the program store and the page cache
        for _ in range(args.reps):
            for name in ("off", "vad"):
                wait_quiet()
                r = run(audio, tmp, name == "vad")
                runs[name].append(r["wall_s"])
                texts[name] = r["text"]
                print(f"{name}: {r['wall_s']:.1f} s", flush=True)
    best = {k: min(v) for k, v in runs.items()}
    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "audio_s": duration,
        "speech_s": speech,
        "runs_s": runs,
        "best_s": best,
        "speedup": best["off"] / best["vad"],
        "wer_vad_vs_off": wer(words(texts["off"]), words(texts["vad"])),
        "words_off": len(words(texts["off"])),
        "words_vad": len(words(texts["vad"])),
    }
    print(
        f"VAD off {best['off']:.1f} s, on {best['vad']:.1f} s: {result['speedup']:.2f}x; "
        f"WER between them {result['wer_vad_vs_off']:.3f}"
    )
    write_json(result, args.out)


if __name__ == "__main__":
    main()
