"""Peak memory of a long recording against a short one: `kvgraph transcribe` (warm program
store) on JFK (11 s) and on a recording of --minutes minutes (JFK and speech clips with pauses,
written to a temporary WAV block by block), each in its own process. The long run's peak
resident memory over the short one's is the figure (kvgraph reads a recording window by
window, so it should stay near 1). Writes JSON (default benchmarks/results/long_memory.json)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import machine, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def write_long_wav(path: Path, minutes: float) -> float:
    """A WAV of ``minutes`` minutes: JFK and the bundled speech clips with pauses, repeated;
    written block by block (never whole in memory). Returns its duration in seconds."""
    sys.path.insert(0, str(ROOT))
    from models.whisper.audio.load import load_audio

    clips = [load_audio(str(ROOT / "examples" / "jfk.wav"))]
    clips += [load_audio(str(p)) for p in sorted((ROOT / "tests" / "data" / "speech").glob("*.wav"))]
    pause = np.zeros(SR * 2, np.float32)
    total, want, i = 0, int(minutes * 60 * SR), 0
    with sf.SoundFile(str(path), "w", samplerate=SR, channels=1, subtype="PCM_16") as f:
        while total < want:
            block = np.concatenate([clips[i % len(clips)], pause])[: want - total]
            f.write(block)
            total += len(block)
            i += 1
    return total / SR


def run(audio: Path, out_dir: str, extra: list[str] = ()) -> dict:
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
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    return {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "long_memory.json"))
    ap.add_argument(
        "--transcribe-option",
        action="append",
        default=[],
        metavar="ARG",
        help="passed to both `kvgraph transcribe` runs (repeatable), e.g. "
        "--transcribe-option=--condition_on_previous_text --transcribe-option=False",
    )
    args = ap.parse_args(argv)
    extra = args.transcribe_option
    with tempfile.TemporaryDirectory() as tmp:
        long_wav = Path(tmp) / "long.wav"
        seconds = write_long_wav(long_wav, args.minutes)
        jfk = ROOT / "examples" / "jfk.wav"
        run(jfk, tmp, extra)  # fills the program store if it is empty (not counted)
        short = run(jfk, tmp, extra)
        print("jfk", short, flush=True)
        long = run(long_wav, tmp, extra)
        print(f"{args.minutes:g} min", long, flush=True)
    report = {
        "machine": machine(),
        "long_audio_s": round(seconds, 1),
        "transcribe_options": extra,
        "jfk": short,
        "long": long,
        "peak_rss_ratio": round(long["peak_rss_mb"] / short["peak_rss_mb"], 3),
        "long_realtime_factor": round(seconds / long["wall_s"], 1),
    }
    write_json(report, args.out)
    print("peak RSS ratio", report["peak_rss_ratio"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
