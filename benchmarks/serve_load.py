"""``kvgraph serve`` under a mixed load (issue 29, part 3): 16 concurrent clients against one
client back-to-back over the same requests, tiny.en. Reports the throughput ratio (target >=
1.5x), p50/p95 latency per request size, wrong and lost transcripts (target: none), and a
fairness probe: a 4 s request posted behind 15 one-minute ones, and where it finishes.

The server is ``kvgraph serve --model tiny.en --port 0`` in a subprocess (its programs read
from the warm program store), with its default engine (continuous batching, batch 8, round-
robin turns of one 30 s window). ``--turns fifo`` serves the same code with the engine's FIFO
turns instead (``kvgraph serve``'s ``main`` with ``BatchedTranscriber(turns="fifo")`` as its
engine factory, in a subprocess too): what the engine did before round robin, for an A/B.

Requests: a fixed mix over the bundled clips (``examples/jfk.wav``, ``tests/data/speech/``),
some cut short, some joined (22 s, 37 s, 60 s): short (< 15 s), medium (15-30 s), long
(> 30 s), every other one streamed (``stream=true``: latency to ``transcript.text.done``),
uploaded as 16-bit WAV by the official ``openai`` client, one per thread. Every answer is
compared with ``transcribe`` of that upload's decoded audio, computed in this process before
the server starts: ``wrong`` is a different text, ``lost`` a request without an answer. One
client and 16 clients alternate (``--reps`` pairs, the order swapped each pair), each run
after the machine is quiet; ``other_cores`` is what other processes than this one and the
server used meanwhile (treat runs where it is high as noisy).

    python benchmarks/serve_load.py [--reps 2] [--turns round_robin|fifo] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import Probe, machine, wait_quiet, write_json  # noqa: E402
from serve import lscpu_model, percentile, proc_cpu_s, wav_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "data" / "speech"
SR = 16000
SIZES = (("short", 0, 15), ("medium", 15, 30), ("long", 30, 1e9))


def size_of(seconds: float) -> str:
    return next(name for name, lo, hi in SIZES if lo <= seconds < hi)


def clips() -> dict[str, bytes]:
    """The uploads: name -> 16-bit WAV bytes at 16 kHz (the bundled clips resampled, cut and
    joined)."""
    from models.whisper.audio.load import load_audio

    jfk = load_audio(str(ROOT / "examples" / "jfk.wav"))
    pbx = load_audio(str(SPEECH / "basic-pbx-ivr-main.wav"))
    nogo = load_audio(str(SPEECH / "demo-nogo.wav"))
    gap = lambda s: np.zeros(int(s * SR), np.float32)  # noqa: E731
    audio = {
        "jfk_4s": jfk[: 4 * SR],
        "pbx_9s": pbx[: 9 * SR],
        "nogo": nogo,
        "jfk": jfk,
        "pbx": pbx,
        "nogo_jfk": np.concatenate([nogo, gap(1.0), jfk]),
        "pbx_jfk": np.concatenate([pbx, gap(1.0), jfk]),
        # two 30 s windows: pbx, silence to 30 s, pbx's first 21 s, 9 s of silence
        "minute": np.concatenate([pbx, gap(30 - len(pbx) / SR), pbx[: 21 * SR], gap(9.0)]),
    }
    return {name: wav_bytes(a, SR) for name, a in audio.items()}


def references(uploads: dict[str, bytes], model_name: str) -> dict[str, tuple[float, str]]:
    """``transcribe`` of each upload's decoded audio: name -> (seconds, text as served)."""
    from models.whisper import load_model
    from models.whisper.audio.load import decode_audio

    model = load_model(model_name)
    out = {}
    for name, data in uploads.items():
        audio = decode_audio(data, SR, name)
        out[name] = (len(audio) / SR, model.transcribe(audio)["text"].strip())
    return out


def mix(refs: dict, per_clip: int = 4) -> list[tuple[str, bool]]:
    """The requests: every clip ``per_clip`` times in a fixed shuffled order, every other
    one streamed: ``(clip, streamed)``."""
    names = [n for n in refs for _ in range(per_clip)]
    order = np.random.default_rng(0).permutation(len(names))
    return [(names[i], k % 2 == 1) for k, i in enumerate(order)]


def one_request(c, name: str, data: bytes, streamed: bool) -> tuple[float, float | None, str]:
    """``(latency s, first delta s or None, text)`` of one request."""
    t0 = time.perf_counter()
    if not streamed:
        text = c.audio.transcriptions.create(file=(f"{name}.wav", data), model="tiny.en").text
        return time.perf_counter() - t0, None, text
    first, text = None, None
    for event in c.audio.transcriptions.create(file=(f"{name}.wav", data), model="tiny.en", stream=True):
        if first is None:
            first = time.perf_counter() - t0
        if event.type == "transcript.text.done":
            text = event.text
    return time.perf_counter() - t0, first, text


def run_load(url: str, uploads: dict, refs: dict, requests: list, clients: int, server_pid: int) -> dict:
    """``requests`` from ``clients`` threads, each taking the next request when its last one is
    answered."""
    import openai

    rows: list[dict | None] = [None] * len(requests)
    next_i = iter(range(len(requests)))
    lock = threading.Lock()

    def worker():
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            name, streamed = requests[i]
            row = {"clip": name, "size": size_of(refs[name][0]), "streamed": streamed}
            try:
                row["latency_s"], row["first_delta_s"], text = one_request(c, name, uploads[name], streamed)
                row["wrong"] = text != refs[name][1]
            except Exception as e:  # noqa: BLE001 - counted and reported
                row["error"] = f"{type(e).__name__}: {e}"
            rows[i] = row

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    server0 = proc_cpu_s(server_pid)
    with Probe() as probe:
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    server_cores = (proc_cpu_s(server_pid) - server0) / wall
    done = [r for r in rows if r is not None and "latency_s" in r]
    audio_s = sum(refs[name][0] for name, _ in requests)
    return {
        "clients": clients,
        "requests": len(requests),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(requests) / wall, 4),
        "audio_s_per_s": round(audio_s / wall, 2),
        "wrong": sum(r["wrong"] for r in done),
        "lost": len(requests) - len(done),
        "errors": [r["error"] for r in rows if r is not None and "error" in r][:3],
        "server_cores": round(server_cores, 2),
        "other_cores": round(max(0.0, probe.other_cores - server_cores), 2),
        "rows": rows,
    }


def latency_table(runs: list[dict]) -> dict:
    """p50/p95 latency (s) per request size (and of the first delta of streamed ones), pooled
    over ``runs``."""
    out = {}
    for size, _, _ in SIZES:
        rows = [r for run in runs for r in run["rows"] if r and r["size"] == size and "latency_s" in r]
        if not rows:
            continue
        lat = [r["latency_s"] for r in rows]
        first = [r["first_delta_s"] for r in rows if r["first_delta_s"] is not None]
        out[size] = {
            "n": len(lat),
            "p50_s": round(percentile(lat, 50), 3),
            "p95_s": round(percentile(lat, 95), 3),
            "first_delta_p50_s": round(percentile(first, 50), 3) if first else None,
        }
    return out


def fairness(url: str, uploads: dict, refs: dict) -> dict:
    """15 one-minute requests posted at once, then (once the engine has them all) a 4 s one:
    the order they finish in, and the short one's latency against a lone request's."""
    import openai

    finished: list[tuple[str, float]] = []
    texts: dict[int, str] = {}

    def post(i: int, name: str):
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
        t0 = time.perf_counter()
        texts[i] = c.audio.transcriptions.create(file=(f"{name}.wav", uploads[name]), model="tiny.en").text
        finished.append((name, time.perf_counter() - t0))

    def in_engine() -> int:
        with urllib.request.urlopen(url + "/health", timeout=30) as r:
            e = json.load(r)["engine"]
        return e["running"] + e["waiting"]

    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    lone, _, _ = one_request(c, "jfk_4s", uploads["jfk_4s"], False)
    wait_quiet()
    longs = [threading.Thread(target=post, args=(i, "minute")) for i in range(15)]
    for t in longs:
        t.start()
    deadline = time.monotonic() + 120
    while in_engine() < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
    short = threading.Thread(target=post, args=(15, "jfk_4s"))
    short.start()
    for t in [*longs, short]:
        t.join()
    order = [name for name, _ in finished]
    wrong = sum(texts.get(i) != refs["minute" if i < 15 else "jfk_4s"][1] for i in range(16))
    return {
        "short_finished_at": order.index("jfk_4s") + 1,
        "of": len(order),
        "short_latency_s": round(dict(finished)["jfk_4s"], 2),
        "lone_short_latency_s": round(lone, 2),
        "first_long_done_s": round(min(s for n, s in finished if n == "minute"), 2),
        "wrong": wrong,
    }


@contextlib.contextmanager
def server(args):
    """The server subprocess: ``(url, pid)``; stopped with SIGTERM."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    serve_args = ["--model", args.model, "--port", "0", "--log-level", "warning"]
    if args.batch_size is not None:
        serve_args += ["--batch-size", str(args.batch_size)]
    if args.turns == "fifo":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-fifo", *serve_args]
    else:
        cmd = [sys.executable, "-m", "kvgraph", "serve", *serve_args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url, lines = None, []
        while url is None:
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError("the server did not start:\n" + "".join(lines))
            lines.append(line)
            if " on http://" in line:
                url = line.split(" on ", 1)[1].split("/v1", 1)[0]
        yield url, proc.pid, " ".join(cmd[1:])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def serve_fifo(argv: list[str]) -> int:
    """``kvgraph serve`` with the engine's FIFO turns (the A/B's other arm)."""
    from models.whisper.apps.cli import serve as serve_cli
    from models.whisper.engine.batched import BatchedTranscriber
    from models.whisper.engine.protocol import DEFAULT_BATCH

    def factory(model, batch_size=None, max_queue=None):
        batch = batch_size or DEFAULT_BATCH
        return BatchedTranscriber(model.backend, batch_size=batch, max_queue=max_queue, turns="fifo")

    return serve_cli.main(argv, engine_factory=factory)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-fifo"]:
        return serve_fifo(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--reps", type=int, default=2, help="pairs of runs (one client, 16 clients)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--turns", default="round_robin", choices=["round_robin", "fifo"])
    ap.add_argument(
        "--batch-size", type=int, default=None, help="kvgraph serve --batch-size (default: its own)"
    )
    ap.add_argument("--no-fairness", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.json"))
    args = ap.parse_args(argv)

    uploads = clips()
    refs = references(uploads, args.model)
    requests = mix(refs)
    report = {
        "machine": {**machine(), "lscpu_model": lscpu_model()},
        "model": args.model,
        "turns": args.turns,
        "batch_size": args.batch_size,
        "clips_s": {n: round(s, 1) for n, (s, _) in refs.items()},
        "requests": len(requests),
        "audio_s": round(sum(refs[n][0] for n, _ in requests), 1),
        "sizes": {name: f"[{lo}, {hi}) s" for name, lo, hi in SIZES},
    }
    runs = {1: [], args.clients: []}
    with server(args) as (url, pid, cmd):
        report["server"] = cmd
        warm = run_load(url, uploads, refs, [(n, False) for n in refs], 1, pid)  # warm-up and check
        report["warm_up_wrong"] = warm["wrong"] + warm["lost"]
        for rep in range(args.reps):
            for clients in (1, args.clients) if rep % 2 == 0 else (args.clients, 1):
                wait_quiet()
                run = run_load(url, uploads, refs, requests, clients, pid)
                runs[clients].append(run)
                print(
                    f"{clients:2d} client(s): {run['requests_per_s']:.3f} req/s, {run['audio_s_per_s']} audio s/s, "
                    f"wrong {run['wrong']}, lost {run['lost']}, other cores {run['other_cores']}",
                    flush=True,
                )
        if not args.no_fairness:
            report["fairness"] = fairness(url, uploads, refs)
            print("fairness:", report["fairness"], flush=True)
    one, many = runs[1], runs[args.clients]
    ratios = [m["requests_per_s"] / o["requests_per_s"] for o, m in zip(one, many)]
    report["summary"] = {
        "throughput_ratio": round(statistics.median(ratios), 2),
        "throughput_ratios": [round(r, 2) for r in ratios],
        "wrong": sum(r["wrong"] for r in one + many),
        "lost": sum(r["lost"] for r in one + many),
        "latency_one_client": latency_table(one),
        f"latency_{args.clients}_clients": latency_table(many),
        "target": "throughput_ratio >= 1.5, wrong == lost == 0",
    }
    report["runs"] = [{k: v for k, v in r.items() if k != "rows"} for r in one + many]
    print(json.dumps(report["summary"], indent=2))
    write_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
