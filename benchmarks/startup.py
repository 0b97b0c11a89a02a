"""Whole-process start-to-text time and peak memory of one transcription, each engine in a
fresh process, as a user runs it from a shell: kvgraph (`python -m kvgraph transcribe`, warm
program store) against openai-whisper (PyTorch) and faster-whisper (CTranslate2 int8 and
fp32, when installed) on the same clip and the same tiny.en weights.

Engines are interleaved per repetition (median of --reps); each run waits for a quiet
machine and is re-run (at most --retries times) when other processes kept more than 0.3
core busy meanwhile; every run records how busy the others were. Peak resident memory is
the child's own ``ru_maxrss`` and CPU time its user + system time (``os.wait4``), which
other processes disturb less than the wall time. Writes JSON (default
benchmarks/results/startup.json)."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import Probe, machine, wait_quiet, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

OPENAI = """
import sys, torch, whisper
from models.whisper.audio.load import load_audio
from models.whisper import load_checkpoint
dims, w = load_checkpoint("tiny.en")
m = whisper.model.Whisper(dims)
m.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
print(whisper.transcribe(m.eval(), load_audio(sys.argv[1]), fp16=False, temperature=0.0)["text"])
"""

FASTER = """
import sys
from faster_whisper import WhisperModel
m = WhisperModel(sys.argv[3], device="cpu", compute_type=sys.argv[2])
print("".join(s.text for s in m.transcribe(sys.argv[1], beam_size=1, temperature=0.0)[0]))
"""


def _run(cmd: list[str]) -> dict:
    # as a user's shell runs it: Python caches compiled modules (an environment that turns the
    # cache off would charge every run ~0.1 s of compiling kvgraph's own modules from source)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed")
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": usage.ru_maxrss / 1024, "text": out.strip()}


def _quiet_run(cmd: list[str], retries: int) -> dict:
    """``_run(cmd)`` on a quiet machine: re-run while other processes kept > 0.3 core busy."""
    for _ in range(retries + 1):
        wait_quiet(0.3, 1.0, 30)
        with Probe() as p:
            r = _run(cmd)
        r["other_cores_busy"] = round(p.other_cores, 2)
        if p.other_cores < 0.3:
            break
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--retries", type=int, default=2, help="re-runs of a repetition disturbed by others")
    ap.add_argument("--audio", default=str(ROOT / "examples" / "jfk.wav"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "startup.json"))
    ap.add_argument(
        "--faster-python",
        default=None,
        help="the Python of an environment with faster-whisper installed (default: this one's, if it has it)",
    )
    args = ap.parse_args(argv)
    py = sys.executable
    out_dir = tempfile.mkdtemp()
    engines = {
        "kvgraph": [py, "-m", "kvgraph", "transcribe", args.audio, "-o", out_dir, "--output-format", "txt"],
        "openai_whisper": [py, "-c", OPENAI, args.audio],
    }
    from models.whisper.weights.packages import resolve_source

    model_dir = str(resolve_source("tiny.en")["parts"][0].parent)  # the same CTranslate2 weights
    fpy = args.faster_python or py
    if subprocess.run([fpy, "-c", "import faster_whisper"], capture_output=True).returncode == 0:
        engines["faster_whisper_int8"] = [fpy, "-c", FASTER, args.audio, "int8", model_dir]
        engines["faster_whisper_fp32"] = [fpy, "-c", FASTER, args.audio, "float32", model_dir]
    else:
        print("faster-whisper not installed: skipped", file=sys.stderr)
    _run(engines["kvgraph"])  # fills the program store if it is empty (not timed)
    runs: dict[str, list[dict]] = {k: [] for k in engines}
    for _ in range(args.reps):
        for k, cmd in engines.items():
            runs[k].append(_quiet_run(cmd, args.retries))
    busy = [r["other_cores_busy"] for rs in runs.values() for r in rs]
    report = {
        "machine": machine(),
        "audio": os.path.relpath(args.audio, ROOT),
        "reps": args.reps,
        "other_cores_busy_mean": round(statistics.mean(busy), 2),
        "engines": {},
    }
    for k, rs in runs.items():
        report["engines"][k] = {
            "wall_s_median": statistics.median(r["wall_s"] for r in rs),
            "wall_s": [round(r["wall_s"], 3) for r in rs],
            "cpu_s_median": round(statistics.median(r["cpu_s"] for r in rs), 3),
            "other_cores_busy": [r["other_cores_busy"] for r in rs],
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rs),
            "text": rs[0]["text"],
        }
        print(k, report["engines"][k]["wall_s_median"], report["engines"][k]["peak_rss_mb_max"], flush=True)
    write_json(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
