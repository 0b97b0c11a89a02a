"""Throughput of many files (audio seconds per wall second): kvgraph sequential vs continuous
batching (``--batch-size`` 4 / 8 / 16) vs openai-whisper sequential and faster-whisper
(sequential and its ``BatchedInferencePipeline``, fp32 and int8, when installed), tiny.en, greedy with
openai's default fallback temperatures and ``condition_on_previous_text``.

Two sets of real speech (``/work/shared/data/speech``, or ``--speech DIR``: 28 telephone
prompts of 1-31 s; credits in its README): (a) ``short``: JFK + the 28 prompts (29 clips,
~5 min); (b) ``long``: 8 files of 1-3 minutes, each the prompts concatenated in a seeded
order with 0.5 s gaps. Each engine runs in its own process (``--engine``), loads its model,
warms up on JFK (compiles / reads its programs), then transcribes the whole set once while
other processes' CPU use is recorded. Texts are compared with openai-whisper's.
JSON (default ``benchmarks/results/batching.json``) with the machine (``lscpu``) and date.

    python benchmarks/batching.py                 # every engine, both sets
    python benchmarks/batching.py --sets short --engines kvgraph_seq,kvgraph_b8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import Probe, machine, wait_quiet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
ENGINES = ("kvgraph_seq", "kvgraph_b4", "kvgraph_b8", "kvgraph_b16", "openai_seq")
#: faster-whisper rows (run when ``faster_whisper`` is installed): sequential, and its
#: ``BatchedInferencePipeline`` (batch 8: VAD chunks of one file, no previous-text conditioning)
FW_ENGINES = ("fw_seq_fp32", "fw_seq_int8", "fw_b8_fp32", "fw_b8_int8")
TEMPS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def speech_dir(arg: str | None) -> Path:
    for d in [arg, os.environ.get("KVGRAPH_SPEECH"), "/work/shared/data/speech", ROOT / "tests/data/speech"]:
        if d and Path(d).is_dir():
            return Path(d)
    raise SystemExit("no speech directory (--speech DIR)")


def clip_set(name: str, speech: Path) -> list[tuple[str, np.ndarray]]:
    from models.whisper.audio.load import load_audio

    prompts = [(p.stem, load_audio(str(p))) for p in sorted(speech.glob("*.wav"))]
    if name == "short":
        return [("jfk", load_audio(str(ROOT / "examples" / "jfk.wav")))] + prompts
    rng = np.random.default_rng(0)
    gap = np.zeros(SR // 2, np.float32)
    out = []
    for i, target in enumerate(np.linspace(60, 180, 8)):
        parts, total = [], 0.0
        while total < target:
            _, a = prompts[int(rng.integers(len(prompts)))]
            parts += [a, gap]
            total += (len(a) + len(gap)) / SR
        out.append((f"long{i}", np.concatenate(parts)))
    return out


def run_engine(engine: str, set_name: str, speech: Path, fw_model: str | None = None) -> dict:
    clips = clip_set(set_name, speech)
    audio_s = sum(len(a) for _, a in clips) / SR
    opts = dict(temperature=TEMPS)
    t0 = time.perf_counter()
    if engine == "openai_seq":
        import torch
        import whisper

        from models import whisper as mw

        torch.set_num_threads(os.cpu_count() or 1)
        dims, weights = mw.load_checkpoint("tiny.en")
        tm = whisper.model.Whisper(dims)
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
        tm.eval()

        def run_all():
            return [whisper.transcribe(tm, a, fp16=False, **opts)["text"] for _, a in clips]

        warm = lambda: whisper.transcribe(tm, clips[0][1], fp16=False, **opts)  # noqa: E731
    elif engine.startswith("fw_"):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        _, mode, ctype = engine.split("_")
        fw = WhisperModel(fw_model, device="cpu", compute_type=ctype.replace("fp", "float"))
        # greedy with openai's fallback (faster-whisper's own default is beam 5)
        fw_opts = dict(beam_size=1, best_of=5, temperature=list(TEMPS), condition_on_previous_text=True)
        if mode == "seq":
            run_one = lambda a: "".join(s.text for s in fw.transcribe(a, **fw_opts)[0])  # noqa: E731
        else:
            pipe = BatchedInferencePipeline(fw)
            bs = int(mode[1:])
            run_one = lambda a: "".join(  # noqa: E731
                s.text for s in pipe.transcribe(a, batch_size=bs, **fw_opts)[0]
            )

        def run_all():
            return [run_one(a) for _, a in clips]

        warm = lambda: run_one(clips[0][1])  # noqa: E731
    else:
        from models import whisper as mw

        model = mw.load_model("tiny.en")
        if engine == "kvgraph_seq":

            def run_all():
                return [model.transcribe(a, **opts)["text"] for _, a in clips]

            warm = lambda: model.transcribe(clips[0][1], **opts)  # noqa: E731
        else:
            bs = int(engine.split("_b")[1])

            def run_all():
                return [
                    r["text"] for r in model.transcribe_many([a for _, a in clips], batch_size=bs, **opts)
                ]

            warm = lambda: model.transcribe_many([clips[0][1]] * 2, batch_size=2, **opts)  # noqa: E731
    load_s = time.perf_counter() - t0
    warm()
    quiet = wait_quiet(timeout=60)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)
    with Probe() as p:
        t0 = time.perf_counter()
        texts = run_all()
        wall = time.perf_counter() - t0
    return {
        "engine": engine,
        "set": set_name,
        "files": len(clips),
        "audio_s": round(audio_s, 2),
        "wall_s": round(wall, 3),
        "audio_s_per_wall_s": round(audio_s / wall, 2),
        "load_s": round(load_s, 2),
        "quiet_before": quiet,
        "other_cores_during": round(p.other_cores, 2),
        "texts": texts,
    }


def _fw_python(given: str | None) -> str | None:
    """The interpreter for the faster-whisper rows, or None where there is none."""
    import importlib.util

    if given:
        return given
    return sys.executable if importlib.util.find_spec("faster_whisper") is not None else None


def lscpu() -> str:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--sets", default="short,long")
    ap.add_argument("--speech", default=None)
    ap.add_argument("--engine", help=argparse.SUPPRESS)  # child: one engine, one set
    ap.add_argument("--set", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "batching.json"))
    ap.add_argument(
        "--fw-python",
        default=os.environ.get("FASTER_WHISPER_PYTHON"),
        help="the Python that runs the faster-whisper rows (default: $FASTER_WHISPER_PYTHON, else "
        "this one where it has faster_whisper; the rows are skipped where neither is there)",
    )
    ap.add_argument("--fw-model", help=argparse.SUPPRESS)  # child: the CTranslate2 model folder
    args = ap.parse_args(argv)
    speech = speech_dir(args.speech)
    if args.engine:
        print(json.dumps(run_engine(args.engine, args.set, speech, args.fw_model)))
        return 0
    fw_python = _fw_python(args.fw_python)
    if args.engines == ",".join(ENGINES) and fw_python is not None:
        args.engines += "," + ",".join(FW_ENGINES)
    fw_model = None
    if any(e.startswith("fw_") for e in args.engines.split(",")):
        from models.whisper.weights.packages import resolve_source

        fw_model = str(resolve_source("tiny.en")["parts"][0].parent)
    rows = []
    for set_name in args.sets.split(","):
        for engine in args.engines.split(","):
            python = (fw_python or sys.executable) if engine.startswith("fw_") else sys.executable
            cmd = [python, __file__, "--engine", engine, "--set", set_name, "--speech", str(speech)]
            if engine.startswith("fw_"):
                cmd += ["--fw-model", fw_model]
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{engine} {set_name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{set_name:5s} {engine:12s} {row['audio_s']:7.1f} s audio in {row['wall_s']:7.2f} s: "
                f"{row['audio_s_per_wall_s']:6.2f} x realtime (other cores {row['other_cores_during']})",
                flush=True,
            )
    ref = {(r["set"]): r["texts"] for r in rows if r["engine"] == "openai_seq"}
    seq = {(r["set"]): r for r in rows if r["engine"] == "kvgraph_seq"}
    for r in rows:
        if r["set"] in ref:
            r["files_differing_from_openai"] = [
                i for i, (a, b) in enumerate(zip(r["texts"], ref[r["set"]])) if a != b
            ]
        if r["set"] in seq:
            r["speedup_vs_kvgraph_seq"] = round(
                r["audio_s_per_wall_s"] / seq[r["set"]]["audio_s_per_wall_s"], 2
            )
    out = {"machine": machine(), "lscpu": lscpu(), "options": {"temperature": TEMPS}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
