"""Issue #31's targets for ``transcribe_corpus`` (a corpus as a Ray Data job), side by side in
one run:

1. one local node (Ray started by the job's ``ray_session``: all cores, one worker) against plain
   ``transcribe_many`` in this process on the same files (batch 8 both): throughput within 10 %;
2. two nodes of one CPU each against one node of one CPU: >= 1.7x. A "node of one CPU" is a
   ``ray start`` whose processes are pinned to one core (``taskset -c``; its actor's MAX threads
   with it: MAX starts one worker thread per core the process may use), as a one-CPU machine or
   container would be: one cluster of a head alone (core 0), one of a head (core 0) and a
   second node (core 1), both on 127.0.0.1, each started for its run and stopped after it (the
   cluster start is not timed), so that no idle cluster shares the cores with the measured one.

The corpus: examples/jfk.wav and the 28 recorded prompts in ../shared/data/speech (8 kHz,
resampled by the readers), ``--repeat`` times (copies in sub-directories), ~321 s of audio
each time. Each configuration runs ``--reps`` times, interleaved (a, b, c, d, a, b, ...), each
after waiting for the machine to be quiet (``quiet.wait_quiet``); the fastest run of each is
compared. Wall times include the job's actor start and model load (the model's programs come
from the program store; MAX's compile cache is warm); the workers' load time (``load_s`` of the
manifest, concurrent on every worker) is reported and also subtracted (``excl_load``); plain
``transcribe_many``'s wall excludes its model load, reported apart. The Ray job also writes
every output format per file; ``transcribe_many`` writes nothing. ``busy_cores``: the cores the
whole machine kept busy during a run (this job's Ray processes included), to judge the noise of
other people's jobs on a shared machine.

    python benchmarks/corpus_ray.py [--repeat 1] [--reps 2] [--out benchmarks/results/corpus_ray.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import lscpu_model, machine, wait_quiet, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "speech"
LOOPBACK = "127.0.0.1"


def busy_jiffies() -> tuple[int, float]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]) - v[3] - v[4], time.perf_counter()


def busy_cores(start: tuple[int, float]) -> float:
    j, t = busy_jiffies()
    return round((j - start[0]) / os.sysconf("SC_CLK_TCK") / (t - start[1]), 2)


def make_corpus(root: Path, repeat: int) -> list[str]:
    sources = [ROOT / "examples" / "jfk.wav", *sorted(SHARED.glob("*.wav"))]
    if len(sources) == 1:
        sources += sorted((ROOT / "tests" / "data" / "speech").glob("*.wav"))
    for r in range(repeat):
        (root / f"r{r}").mkdir(parents=True)
        for src in sources:
            shutil.copyfile(src, root / f"r{r}" / src.name)
    from models.whisper.corpus.inputs import list_audio

    return [ref.file for ref in list_audio([root])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def start_node(core: int, temp: Path, head: str | None = None) -> str:
    """A Ray node pinned to ``core`` on 127.0.0.1 (a head when ``head`` is None); its address."""
    args = ["--node-ip-address", LOOPBACK, "--num-cpus", "1", "--disable-usage-stats"]
    args += ["--object-store-memory", str(300 * 2**20)]
    if head is None:
        head = f"{LOOPBACK}:{free_port()}"
        args = [
            "--head",
            "--port",
            head.rsplit(":", 1)[1],
            "--include-dashboard",
            "false",
            "--temp-dir",
            str(temp),
            *args,
        ]
    else:
        args = ["--address", head, *args]
    cmd = ["taskset", "-c", str(core), sys.executable, "-m", "models.whisper.corpus.cluster", "start", *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return head


@contextlib.contextmanager
def cluster(temp: Path, cores: list[int]):
    """A cluster of one-CPU nodes, one pinned to each of ``cores`` (the head on the first);
    yields the head's address, stops the nodes afterwards."""
    from models.whisper.corpus.cluster import stop_nodes

    try:
        head = start_node(cores[0], temp)
        for core in cores[1:]:
            start_node(core, temp, head=head)
        yield head
    finally:
        stop_nodes(temp)


def run_ray(name: str, root: Path, files_s: float, work: Path, **kwargs) -> dict:
    from models.whisper.corpus.ray_job import transcribe_corpus

    out = Path(tempfile.mkdtemp(dir=work))
    wait_quiet(timeout=60)
    start, t0 = busy_jiffies(), time.perf_counter()
    rows = transcribe_corpus([root], out, batch_size=8, progress=False, **kwargs)
    wall = time.perf_counter() - t0
    load = max(r["load_s"] or 0.0 for r in rows)
    texts = {
        r["file"]: (out / Path(r["file"]).relative_to(root)).with_suffix(".txt").read_text() for r in rows
    }
    shutil.rmtree(out)
    return {
        "config": name,
        "wall_s": round(wall, 2),
        "load_s": round(load, 2),
        "wall_excl_load_s": round(wall - load, 2),
        "x_realtime": round(files_s / wall, 2),
        "x_realtime_excl_load": round(files_s / (wall - load), 2),
        "busy_cores": busy_cores(start),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "failed": sum(r["status"] != "ok" for r in rows),
        "nodes": sorted({r["node"] for r in rows}),
        "_texts": texts,
    }


def run_plain(model, files: list[str], files_s: float) -> dict:
    wait_quiet(timeout=60)
    start, t0 = busy_jiffies(), time.perf_counter()
    results = model.transcribe_many(files, batch_size=8)
    wall = time.perf_counter() - t0
    return {
        "config": "a_plain_transcribe_many",
        "wall_s": round(wall, 2),
        "x_realtime": round(files_s / wall, 2),
        "busy_cores": busy_cores(start),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "_texts": {f: r["text"] for f, r in zip(files, results)},
    }


def main() -> None:
    """Long because it is the benchmark's whole sequence: environment, corpus, the two
    clusters, the interleaved runs, the checks and the report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="copies of the corpus (~321 s of audio each)")
    ap.add_argument(
        "--reps", type=int, default=2, help="runs of each configuration (the fastest is compared)"
    )
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "corpus_ray.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kvr-bench-", dir="/tmp"))
    token = work / "token"
    token.write_text(secrets.token_hex(32))
    # before Ray is imported: Ray's temp files and token are this run's own
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_TMPDIR=str(work))
    import soundfile as sf

    import models.whisper.corpus.ray_job  # noqa: F401 - pyarrow before MAX (MAX_BEFORE_PYARROW)
    from models.whisper import load_model
    from models.whisper.corpus.cluster import ray_session, stop_nodes

    root = work / "corpus"
    files = make_corpus(root, args.repeat)
    files_s = sum(sf.info(f).duration for f in files)
    t0 = time.perf_counter()
    model = load_model(args.model)
    plain_load_s = time.perf_counter() - t0
    runs = []
    try:
        for rep in range(args.reps):
            runs.append(run_plain(model, files, files_s))
            with ray_session(None, num_cpus=os.cpu_count()):
                runs.append(run_ray("b_local_node", root, files_s, work, num_workers=1))
            # each cluster runs alone: an idle cluster beside the measured one would take CPU
            # that neither configuration has on machines of their own
            with cluster(work / f"one{rep}", cores=[0]) as head:
                runs.append(run_ray("c_one_node_one_cpu", root, files_s, work, address=head, num_workers=1))
            with cluster(work / f"two{rep}", cores=[0, 1]) as head:
                runs.append(run_ray("d_two_nodes_one_cpu", root, files_s, work, address=head, num_workers=2))
            for r in runs[-4:]:
                print(rep, {k: v for k, v in r.items() if k != "_texts"}, flush=True)
    finally:
        stop_nodes(work)
    reference = runs[0]["_texts"]  # words compared: the .txt output has one line per segment
    mismatches = sum(
        " ".join(r["_texts"][f].split()) != " ".join(reference[f].split()) for r in runs for f in files
    )
    best = {}
    for r in runs:
        r.pop("_texts")
        if r["config"] not in best or r["wall_s"] < best[r["config"]]["wall_s"]:
            best[r["config"]] = r
    a, b = best["a_plain_transcribe_many"], best["b_local_node"]
    c, d = best["c_one_node_one_cpu"], best["d_two_nodes_one_cpu"]
    summary = {
        "local_node_vs_transcribe_many": round(a["wall_s"] / b["wall_s"], 3),
        "local_node_vs_transcribe_many_excl_load": round(a["wall_s"] / b["wall_excl_load_s"], 3),
        "target_local_node": ">= 0.90",
        "two_nodes_vs_one_node": round(c["wall_s"] / d["wall_s"], 3),
        "two_nodes_vs_one_node_excl_load": round(c["wall_excl_load_s"] / d["wall_excl_load_s"], 3),
        "target_two_nodes": ">= 1.70",
        "transcripts_differing_from_transcribe_many": mismatches,
    }
    import pyarrow
    import ray

    report = {
        "benchmark": "corpus_ray",
        "machine": {**machine(), "lscpu_model": lscpu_model()},
        "versions": {"ray": ray.__version__, "pyarrow": pyarrow.__version__},
        "corpus": {"files": len(files), "audio_s": round(files_s, 1), "repeat": args.repeat},
        "model": args.model,
        "plain_model_load_s": round(plain_load_s, 2),
        "summary": summary,
        "best": best,
        "runs": runs,
    }
    print(summary)
    write_json(report, args.out)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
