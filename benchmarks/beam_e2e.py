"""Whole transcriptions with beam search (beam 5, best_of 5 — openai-whisper's CLI defaults),
tiny.en, model loaded: kvgraph (MAX) vs openai-whisper (PyTorch, fp32) vs faster-whisper
(CTranslate2 fp32 and int8, when ``faster_whisper`` is installed: ``pip install
faster-whisper soundfile soxr`` in the environment ``--faster-python`` names — its child reads
the clips with kvgraph's reader), each engine in its own process (MAX's and torch's threads slow each other
inside one), on the same decoded audio: JFK, two recorded telephone prompts and a >60 s
long-form clip. Each child warms up once, then times every clip ``--reps`` times (median);
the parent runs the engines one after another and reports whether each one's texts equal
openai-whisper's, and which engines' decodes of a clip sampled (a window whose temperature
fallback reached T > 0: its text is a draw, and kvgraph draws from its own seeded generator,
openai-whisper from torch's, so texts may differ there without either being wrong; the tests
compare that case with openai drawing kvgraph's samples). Writes JSON (default
benchmarks/results/beam_e2e.json)."""

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
from quiet import Probe, machine, wait_quiet, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("kvgraph", "openai", "faster-fp32", "faster-int8")
OPTS = dict(beam_size=5, best_of=5)


def clips() -> dict[str, np.ndarray]:
    sys.path.insert(0, str(ROOT / "tests"))
    from whisper_clips import JFK, SPEECH, SPEECH_CLIPS, long_clip

    from models.whisper.audio.load import load_audio

    jfk = load_audio(str(JFK))
    out = {"jfk (11 s)": jfk}
    for name in SPEECH_CLIPS:
        a = load_audio(str(SPEECH / f"{name}.wav"))
        out[f"{name} ({len(a) / 16000:.0f} s)"] = a
    out["long form (66 s)"] = long_clip(jfk)
    return out


def child(engine: str, reps: int, model_dir: str) -> dict:
    audio = clips()
    if engine == "kvgraph":
        from models.whisper import load_model

        m = load_model("tiny.en")
        run = lambda a: m.transcribe(a, seed=0, **OPTS)  # its own generator, seeded
    elif engine == "openai":
        import torch
        import whisper

        from models.whisper import load_checkpoint

        torch.set_num_threads(os.cpu_count() or 1)
        dims, w = load_checkpoint("tiny.en")
        tm = whisper.model.Whisper(dims)
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
        tm.eval()
        run = lambda a: whisper.transcribe(tm, a, fp16=False, **OPTS)
    else:
        from faster_whisper import WhisperModel

        fw = WhisperModel(model_dir, device="cpu", compute_type=engine.split("-")[1].replace("fp", "float"))

        def run(a):
            segments = list(fw.transcribe(a, **OPTS)[0])
            return {
                "text": "".join(s.text for s in segments),
                "segments": [{"temperature": s.temperature} for s in segments],
            }

    def seeded(a):
        # the temperature fallback samples (best_of 5): every run draws the same samples
        # (kvgraph: its seed above; faster-whisper: its own generator)
        if engine == "openai":
            import torch

            torch.manual_seed(0)
        return run(a)

    out = {}
    for name, a in audio.items():
        result = seeded(a)  # warm-up (and the text)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            seeded(a)
            ts.append(time.perf_counter() - t)
        # a segment decoded at T > 0 (the fallback sampled) is a draw: engines whose samplers
        # differ (kvgraph's own generator, torch's) may give other text there, legitimately
        temps = sorted({float(seg["temperature"]) for seg in result["segments"]})
        out[name] = {"s": statistics.median(ts), "all": ts, "text": result["text"], "temperatures": temps}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument(
        "--faster-python",
        default=None,
        help="the Python of an environment with faster-whisper installed (default: this one's, if it has it)",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "beam_e2e.json"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.reps, args.model_dir)))
        return 0
    engines = [e for e in args.engines.split(",") if e]
    fpy = args.faster_python or sys.executable
    if subprocess.run([fpy, "-c", "import faster_whisper"], capture_output=True).returncode:
        print("faster-whisper not installed: skipped", file=sys.stderr)
        engines = [e for e in engines if not e.startswith("faster")]
    from models.whisper.weights.packages import resolve_source

    model_dir = str(resolve_source("tiny.en")["parts"][0].parent)  # the same CTranslate2 weights
    report: dict = {"machine": machine(), "options": OPTS, "engines": {}, "other_cores": {}}
    for e in engines:
        wait_quiet()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        py = fpy if e.startswith("faster") else sys.executable
        cmd = [py, __file__, "--child", e, "--reps", str(args.reps), "--model-dir", model_dir]
        with Probe() as p:
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode:
            report["engines"][e] = {"error": res.stderr[-2000:]}
            continue
        report["engines"][e] = json.loads(res.stdout.strip().splitlines()[-1])
        report["other_cores"][e] = round(p.other_cores, 2)
    ref = report["engines"].get("openai", {})
    table = {}
    for e, res in report["engines"].items():
        if "error" in res:
            continue
        for clip, r in res.items():
            row = table.setdefault(clip, {})
            row[e] = round(r["s"], 3)
            if clip in ref:
                row[f"{e} same text"] = r["text"].strip() == ref[clip]["text"].strip()
            if max(r.get("temperatures") or [0.0]) > 0:
                row[f"{e} sampled"] = True  # its fallback drew samples: text a draw, not a rule
    report["table_s"] = table
    print(json.dumps(table, indent=1))
    write_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
