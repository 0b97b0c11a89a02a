"""``kvgraph serve`` under load: requests/s and latency percentiles for 1, 4 and 16 concurrent
clients, on short clips and on a ~1-minute clip, tiny.en.

The server is ``kvgraph serve`` in a subprocess (127.0.0.1, a free port; ``--in-process``: a
``models.whisper.apps.server.BackgroundServer`` thread of this process, sharing its GIL with the clients),
with the engine ``kvgraph serve`` builds (``models.whisper.engine.make_engine``); the clients are the
official ``openai`` client, one per thread, uploading WAV files. Concurrency 1 is "the same
requests one at a time"; a lone request's latency is its median. The issue's target: at 16
clients, throughput >= 2x one-at-a-time and p95 latency <= 2x a lone request's.

Audio: recorded telephone prompts from ``/work/shared/data/speech`` (Debian's
``asterisk-core-sounds-en-wav`` 1.6.1-1, voice of Allison Smith, (c) Digium, CC-BY-SA-3.0) and
``examples/jfk.wav`` (public domain); the long clip is three prompts joined with 0.5 s pauses
(62 s). Without that directory, the prompts in ``tests/data/speech`` are used. Each response is
checked against the one-at-a-time transcript of the same clip.

The machine is shared: every run records how many cores processes other than this one and the
server kept busy meanwhile (``other_cores``); treat numbers taken while that is high as noisy.

    python benchmarks/serve.py [--concurrency 1 4 16] [--short-requests 32] [--long-requests 8]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import Probe, lscpu_model, machine, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_SPEECH = Path("/work/shared/data/speech")
SHORT_CLIPS = (
    "at-tone-time-exactly",
    "confbridge-lock-extended",
    "confbridge-mute-extended",
    "demo-enterkeywords",
    "dir-instr",
    "queue-periodic-announce",
    "vm-instructions",
    "vm-newuser",
)
LONG_PARTS = ("basic-pbx-ivr-main", "conf-adminmenu-18", "demo-abouttotry")


def wav_bytes(audio: np.ndarray, sr: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def clip_sets(speech_dir: Path) -> dict[str, dict[str, tuple[bytes, float]]]:
    """``{"short": {name: (wav bytes, seconds)}, "long": {...}}``."""
    import soundfile as sf

    def read(path):
        data, sr = sf.read(str(path), dtype="float32")
        return (data.mean(axis=1) if data.ndim == 2 else data), sr

    short = {"jfk": (ROOT / "examples" / "jfk.wav").read_bytes()}
    if all((speech_dir / f"{n}.wav").exists() for n in (*SHORT_CLIPS, *LONG_PARTS)):
        short.update({n: (speech_dir / f"{n}.wav").read_bytes() for n in SHORT_CLIPS})
        parts = [read(speech_dir / f"{n}.wav") for n in LONG_PARTS]
    else:  # a fresh clone: the two prompts the tests ship, and JFK
        speech_dir = ROOT / "tests" / "data" / "speech"
        names = ("demo-nogo", "basic-pbx-ivr-main")
        short["demo-nogo"] = (speech_dir / "demo-nogo.wav").read_bytes()
        parts = [read(speech_dir / f"{n}.wav") for n in names] * 2
    sr = parts[0][1]
    assert all(p[1] == sr for p in parts)
    gap = np.zeros(sr // 2, np.float32)
    long = np.concatenate([x for a, _ in parts for x in (a, gap)])
    out = {"short": {}, "long": {f"speech_{len(long) / sr:.0f}s": (wav_bytes(long, sr), len(long) / sr)}}
    for name, data in short.items():
        info = sf.info(io.BytesIO(data))
        out["short"][name] = (data, info.frames / info.samplerate)
    return out


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def proc_cpu_s(pid: int | None) -> float:
    """CPU seconds process ``pid`` has used (all its threads); 0 for None."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(
    url: str, clips: dict, n_requests: int, concurrency: int, expected: dict | None, server_pid: int | None
):
    """``n_requests`` uploads (the clips round robin) from ``concurrency`` client threads;
    ``server_pid``: the server's process when it is not this one."""
    import openai

    names = [list(clips)[i % len(clips)] for i in range(n_requests)]
    latencies: list[float] = [0.0] * n_requests
    texts: list[str | None] = [None] * n_requests
    errors: list[str] = []
    next_i = iter(range(n_requests))
    lock = threading.Lock()

    def worker():
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            data = clips[names[i]][0]
            t0 = time.perf_counter()
            try:
                texts[i] = c.audio.transcriptions.create(file=(f"{names[i]}.wav", data), model="tiny.en").text
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(e).__name__}: {e}")
            latencies[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    server0 = proc_cpu_s(server_pid)
    with Probe() as probe:
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    server_cores = (proc_cpu_s(server_pid) - server0) / wall
    audio_s = sum(clips[n][1] for n in names)
    wrong = 0
    if expected is not None:
        wrong = sum(1 for n, t in zip(names, texts) if t is not None and t != expected[n])
    return {
        "concurrency": concurrency,
        "requests": n_requests,
        "wall_s": round(wall, 3),
        "requests_per_s": round(n_requests / wall, 4),
        "audio_s_per_s": round(audio_s / wall, 3),
        "latency_s": {
            "p50": round(percentile(latencies, 50), 3),
            "p95": round(percentile(latencies, 95), 3),
            "mean": round(statistics.fmean(latencies), 3),
            "max": round(max(latencies), 3),
        },
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "transcripts_differing_from_one_at_a_time": wrong,
        "other_cores": round(max(0.0, probe.other_cores - server_cores), 2),
    }, dict(zip(names, texts))


@contextlib.contextmanager
def in_process_server(args):
    from models.whisper import load_model
    from models.whisper.apps import server as sv

    t0 = time.perf_counter()
    model = load_model(args.model)
    load_s = time.perf_counter() - t0
    engine = sv.make_engine(model, batch_size=args.batch_size, max_queue=args.max_queue)
    with sv.BackgroundServer(sv.create_app(engine, sv.ServedModel.of(args.model, model))) as url:
        yield url, None, {"engine": type(engine).__name__, "load_s": round(load_s, 2), "server": "in-process"}


@contextlib.contextmanager
def subprocess_server(args):
    """``kvgraph serve`` of this checkout in a subprocess; stopped with SIGTERM."""
    import json
    import urllib.request

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "kvgraph", "serve", "--model", args.model, "--port", "0"]
    cmd += ["--log-level", "warning", "--max-queue", str(args.max_queue)]
    if args.batch_size is not None:
        cmd += ["--batch-size", str(args.batch_size)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url, load_s, lines = None, None, []
        while url is None:
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError("kvgraph serve did not start:\n" + "".join(lines))
            lines.append(line)
            if " loaded in " in line:
                load_s = float(line.rsplit(" loaded in ", 1)[1].split()[0])
            if " on http://" in line:
                url = line.split(" on ", 1)[1].split("/v1", 1)[0]
        with urllib.request.urlopen(url + "/health", timeout=30) as r:
            engine = json.load(r).get("engine", {}).get("engine")
        yield url, proc.pid, {"engine": engine, "load_s": load_s, "server": " ".join(cmd[1:])}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument(
        "--short-requests", type=int, default=32, help="requests per level (at least the concurrency)"
    )
    ap.add_argument(
        "--long-requests", type=int, default=8, help="requests per level (at least the concurrency)"
    )
    ap.add_argument("--sets", nargs="+", default=["short", "long"], choices=["short", "long"])
    ap.add_argument("--batch-size", type=int, default=None, help="passed to the engine factory")
    ap.add_argument("--in-process", action="store_true", help="the server in a thread of this process")
    ap.add_argument("--speech-dir", type=Path, default=SHARED_SPEECH)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = ap.parse_args(argv)

    args.max_queue = max(64, *args.concurrency)
    sets = clip_sets(args.speech_dir)
    report = {
        "machine": {**machine(), "lscpu_model": lscpu_model()},
        "model": args.model,
        "batch_size": args.batch_size,
        "sets": {},
    }
    with (in_process_server if args.in_process else subprocess_server)(args) as (url, pid, info):
        report.update(info)
        for set_name in args.sets:
            clips = sets[set_name]
            per_level = args.short_requests if set_name == "short" else args.long_requests
            # warm-up, and the one-at-a-time transcripts every response is compared with
            _, expected = run_load(url, clips, len(clips), 1, None, pid)
            levels = []
            for c in args.concurrency:
                row, _ = run_load(url, clips, max(per_level, c), c, expected, pid)
                levels.append(row)
                print(
                    f"{set_name:5s} c={c:2d}: {row['requests_per_s']:.2f} req/s, "
                    f"p50 {row['latency_s']['p50']:.2f} s, p95 {row['latency_s']['p95']:.2f} s, "
                    f"errors {row['errors']}, other cores {row['other_cores']}",
                    flush=True,
                )
            by_c = {r["concurrency"]: r for r in levels}
            summary = {}
            if 1 in by_c:
                lone = by_c[1]["latency_s"]["p50"]
                for c, r in by_c.items():
                    summary[f"c{c}"] = {
                        "throughput_vs_one_at_a_time": round(
                            r["requests_per_s"] / by_c[1]["requests_per_s"], 2
                        ),
                        "p95_vs_lone_request": round(r["latency_s"]["p95"] / lone, 2),
                    }
            report["sets"][set_name] = {
                "clips": {n: round(s, 2) for n, (_, s) in clips.items()},
                "levels": levels,
                "summary": summary,
            }
    report["target_at_16"] = "throughput_vs_one_at_a_time >= 2 and p95_vs_lone_request <= 2"
    write_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
