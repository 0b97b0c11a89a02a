"""Whisper tiny.en decode steps and encoder against this machine's own floors (issue #27).

One run measures, on this machine:

* read bandwidth, independent of kvgraph's kernels: a MAX graph summing a float32 tensor
  ``[n, 4096]`` over its last axis (one compile, ``n`` symbolic), bytes / best time. "dram":
  at least 512 MiB and 4x the last-level cache (LLC); "llc": a working set the size of the
  1-row step's bytes, reported only where the LLC holds 1.5x it, else "does not fit". Taken
  before and after the steps; the floors use the higher of the two.
* the bytes each step reads, from the loaded program's real inputs and weight registry (the
  lowering's own registry: float16 copies where the program reads them, each array once; a
  table read by a lookup only counts the rows looked up), the cross-attention K/V per
  distinct audio, the self-attention cache rows read, and the logits written. Floor = bytes
  / bandwidth: the LLC figure where the case's whole working set fits the LLC (1.5x), else
  DRAM. Beside it (the "ws" columns): the bandwidth read at each case's own working-set
  size, for where the nominal LLC serves less than that rule assumes (a VM may report its
  host's whole LLC).
* kvgraph's steps (``step_few``, the program a decode of at most ``step_few_rows`` rows
  runs): 1 row; 2 rows of 2 audios; 5 beams of one audio (one shared copy of its K/V, as
  beam search holds it after ``reorder(state, [0] * 5)``); 8 and 16 rows of distinct audios;
  ``reorder`` of 5 beams (a beam-search permutation); and ``step_rows`` (the per-row program
  continuous batching runs, ``kvgraph.slots``) at 1, 2, 8, 16 distinct audios. Median of
  individually timed calls after warm-up, cases interleaved over three rounds.
* the encoder on one 30 s window (JFK's mel): kvgraph's vs openai-whisper's torch float32
  encoder, the latter in its own process; GFLOP/s from the model's dims.

JSON to ``benchmarks/results/step_floor.json`` (machine with lscpu's model, date, every
figure, the ISA class of the kernels' tiles) and a table on stdout.

    python benchmarks/step_floor.py [--calls 45] [--busy-ok] [--isa avx2] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import Probe, machine, wait_quiet, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny.en"
JFK = ROOT / "examples" / "jfk.wav"
COLS = 4096  # the bandwidth graph's row: 16 KiB of float32
MiB = 1 << 20
FITS = 1.5  # a working set "fits" the LLC when the LLC holds this many times it
ROUNDS = 3  # step cases are interleaved over this many rounds
FEW_CASES = {  # name: (rows, distinct audios), run by the step program a decode uses
    "1 row": (1, 1),
    "2 rows, 2 audios": (2, 2),
    "5 beams, 1 audio": (5, 1),
    "8 rows, 8 audios": (8, 8),
    "16 rows, 16 audios": (16, 16),
}
ROWS_CASES = (1, 2, 8, 16)  # step_rows: distinct audios, one row each
BEAM_PERM = (2, 2, 0, 4, 1)  # reorder: the beams a beam-search step keeps


# ---------------------------------------------------------------- machine
def lscpu() -> dict:
    """lscpu's "Model name" and "L3 cache" lines (empty where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k: fields[k].strip() for k in ("Model name", "L3 cache", "L2 cache") if k in fields}


def llc_bytes() -> tuple[int | None, str]:
    """The last-level cache of one instance, bytes, and where the figure came from: sysfs
    (``cpu0/cache/index*`` of the highest level), else lscpu's "L3 cache"."""
    best = None
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = int((d / "level").read_text())
            size = (d / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        mult = {"K": 1024, "M": MiB, "G": 1 << 30}.get(size[-1:], 1)
        value = int(size.rstrip("KMG")) * mult
        if best is None or level > best[0]:
            best = (level, value, f"sysfs {d.name} (L{level})")
    if best is not None:
        return best[1], best[2]
    m = re.match(r"([\d.]+)\s*([KMG])i?B", lscpu().get("L3 cache", ""))
    if m:
        return int(float(m[1]) * {"K": 1024, "M": MiB, "G": 1 << 30}[m[2]]), "lscpu L3 cache"
    return None, "unknown"


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 4 << 30


# ---------------------------------------------------------------- bandwidth
def bandwidth_model():
    """A MAX graph reading a float32 ``[n, COLS]`` tensor once (a sum over its rows): no
    kvgraph kernel involved. ``n`` is symbolic: one compile serves both sizes."""
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType, ops

    from kvgraph.max.runtime import load_graph

    t = TensorType(DType.float32, ["n", COLS], device=DeviceRef.CPU())
    with Graph("step_floor_read_bandwidth", input_types=[t]) as g:
        g.output(ops.sum(g.inputs[0].tensor, axis=-1))
    return load_graph(g, "step_floor read-bandwidth graph")


def read_bandwidth(model, big: np.ndarray, sizes: dict[str, int], calls: int) -> dict:
    """``{name: GB/s}``: bytes / best time of ``calls`` reads of the first ``sizes[name]``
    bytes of ``big`` (after one untimed read: the LLC case then reads a warm cache)."""
    from max.driver import Buffer

    out = {}
    for name, nbytes in sizes.items():
        rows = max(1, nbytes // (COLS * 4))
        buf = Buffer.from_numpy(big[:rows])
        model.execute(buf)
        best = float("inf")
        for _ in range(calls):
            t0 = time.perf_counter()
            model.execute(buf)
            best = min(best, time.perf_counter() - t0)
        out[name] = {"bytes": rows * COLS * 4, "best_s": best, "GB_s": rows * COLS * 4 / best / 1e9}
    return out


# ---------------------------------------------------------------- bytes a step reads
def program_weights(request) -> dict:
    """The weight registry of ``request``'s program as the loaded program binds it (``lower``
    builds it; nothing is compiled): ``{"registry": {key: array}, "recipe": {key: (weight,
    layout, f16)}, "uses": {weight: {op classes reading it}}}``."""
    from kvgraph import ir
    from kvgraph.max.lower import lower

    recipe: dict = {}
    _, registry = lower(
        request.graph,
        request.weights,
        request.weights_mode,
        request.f16_weights,
        request.few_dims,
        request.always_few,
        few_attention=request.few_attention,
        recipe=recipe,
    )
    uses: dict[str, set] = {}
    for n in request.graph.nodes:
        for v in n.op.operands():
            if isinstance(v, ir.Weight):
                uses.setdefault(v.name, set()).add(type(n.op))
    return {"registry": registry, "recipe": recipe, "uses": uses}


def weights_read(prog: dict, rows: int, few_limit: int | None) -> tuple[int, dict]:
    """Bytes of weights one step of ``rows`` rows reads from ``prog`` (:func:`program_weights`),
    each registry array once. A weight used only as a lookup table (``embed``,
    ``gather_rows``) counts the rows looked up; a float32 transposed copy (layout "T") held
    beside a float16 one for a run-time GEMM branch (``step_rows``) counts only beyond
    ``few_limit`` rows. Returns (bytes, {registry key: bytes})."""
    from kvgraph import ir

    recipe = prog["recipe"]
    halves = {name for name, _, f16 in recipe.values() if f16}
    per = {}
    for key, arr in prog["registry"].items():
        name, layout, _ = recipe[key]
        if layout == "T" and name in halves and few_limit is not None and rows <= few_limit:
            continue  # the GEMM branch's float32 copy, not taken at this many rows
        if prog["uses"].get(name, set()) <= {ir.Embed, ir.GatherRows}:
            per[key] = min(rows, arr.shape[0]) * arr[0].nbytes
        else:
            per[key] = arr.nbytes
    return sum(per.values()), per


def state_sizes(graph) -> tuple[int, int]:
    """(bytes per context of the hoisted ``hoisted.*`` inputs, bytes per cached position of one
    row over every ``cache.*`` input) of a step graph, from its input types."""
    ctx = pos = 0
    for v in graph.inputs:
        dims = v.type.shape[1:]
        if not all(isinstance(d, int) for d in dims):
            continue
        if v.name.startswith("hoisted."):
            ctx += int(np.prod(dims)) * 4
        elif v.name.startswith("cache."):
            pos += int(np.prod(dims[1:])) * 4
    return ctx, pos


def step_bytes(weights: int, ctx_bytes: int, pos_bytes: int, pasts, contexts: int, vocab: int) -> dict:
    """What one step reads (and writes: its logits and new cache rows), by part."""
    parts = {
        "weights": weights,
        "cross_kv": contexts * ctx_bytes,
        "self_cache_read": sum(p + 1 for p in pasts) * pos_bytes,
        "logits_and_cache_written": len(pasts) * (vocab * 4 + pos_bytes),
    }
    parts["total"] = sum(parts.values())
    return parts


# ---------------------------------------------------------------- cases
def few_cases(dec, dims, position: int, rng) -> dict:
    """``{name: (callable, rows, contexts, pasts)}``: step_few cases and the reorder."""
    tok = 50363  # <|notimestamps|>: any id will do
    out = {}
    for name, (rows, audios) in FEW_CASES.items():
        ctx = rng.standard_normal((audios, dims.n_audio_ctx, dims.n_audio_state)).astype(np.float32)
        _, st = dec.prefill(rng.integers(0, 50000, (audios, position)), ctx)
        if rows != audios:  # beams of one audio: one copy of its K/V (ShareContexts)
            st = dec.reorder(st, np.repeat(np.arange(audios), rows // audios))
        new = np.full((rows, 1), tok, np.int64)
        out[name] = (lambda new=new, st=st: dec.step(new, st), rows, audios, [position] * rows)
    ctx = rng.standard_normal((1, dims.n_audio_ctx, dims.n_audio_state)).astype(np.float32)
    _, st = dec.prefill(rng.integers(0, 50000, (1, position)), ctx)
    st5 = dec.reorder(st, [0] * 5)
    perm = np.array(BEAM_PERM)
    out["reorder, 5 beams"] = (lambda: dec.reorder(st5, perm), 5, 1, [position] * 5)
    return out


def rows_cases(dec, dims, position: int, rng) -> dict:
    """``{name: (callable, rows, contexts, pasts)}``: step_rows over distinct audios, row i at
    position ``position + i`` (rows at different positions, as continuous batching runs)."""
    from kvgraph.slots import SlotPool

    tok = np.array([[50363]], np.int64)
    out = {}
    for b in ROWS_CASES:
        pool, groups = SlotPool(dec, b), []
        for i in range(b):
            g = pool.acquire(1)
            ctx = rng.standard_normal((1, dims.n_audio_ctx, dims.n_audio_state)).astype(np.float32)
            pool.prefill(g, rng.integers(0, 50000, (1, position + i)), ctx)
            groups.append(g)
        pasts = [g.past for g in groups]

        def fn(pool=pool, groups=groups, pasts=pasts):
            for g, p in zip(groups, pasts):
                g.past = p  # every call steps the same positions
            pool.step([(g, tok) for g in groups])

        out[f"step_rows {b} rows, {b} audios"] = (fn, b, b, pasts)
    return out


def time_cases(fns: dict, calls: int, busy_ok: bool) -> tuple[dict, dict]:
    """Median seconds per case: ``ROUNDS`` rounds, the cases' order rotating; in each, per
    case, 2 untimed calls then ``ceil(calls / ROUNDS)`` individually timed ones. Returns
    (``{name: [seconds]}``, ``{name: [other cores busy, per round]}``)."""
    per_round = max(1, -(-calls // ROUNDS))
    times = {k: [] for k in fns}
    other = {k: [] for k in fns}
    names = list(fns)
    for r in range(ROUNDS):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            if not busy_ok:
                wait_quiet(timeout=30)
            with Probe() as p:
                for _ in range(2):
                    fns[k]()
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    fns[k]()
                    times[k].append(time.perf_counter() - t0)
            other[k].append(round(p.other_cores, 2))
    return times, other


# ---------------------------------------------------------------- encoder
def encoder_flops(d) -> int:
    """FLOPs of one encoder window (a multiply-add is 2 FLOPs), from the model's dims:
    with F = n_audio_ctx (1500) frames, D = n_audio_state, M = n_mels, L = n_audio_layer:
      conv1 (kernel 3, 2F output frames):   2 * 2F * D * M * 3
      conv2 (kernel 3, stride 2, F frames): 2 * F * D * D * 3
      per layer: q, k, v, out projections   4 * 2 * F * D * D
                 scores q.k^T and p.v       2 * 2 * F * F * D
                 MLP (D -> 4D -> D)         2 * 2 * F * D * 4D
    LayerNorm, GELU, softmax and the residual adds (elementwise, < 1 %) are left out."""
    F, D, M, L = d.n_audio_ctx, d.n_audio_state, d.n_mels, d.n_audio_layer
    conv = 2 * (2 * F) * D * M * 3 + 2 * F * D * D * 3
    layer = 4 * 2 * F * D * D + 2 * 2 * F * F * D + 2 * 2 * F * D * 4 * D
    return conv + L * layer


def jfk_mel() -> np.ndarray:
    """JFK's 30 s window: log-mel f32[1, 80, 3000] (the NumPy features, as kvgraph computes them)."""
    from models.whisper.audio.features import log_mel_spectrogram, pad_or_trim
    from models.whisper.audio.load import load_audio

    return log_mel_spectrogram(pad_or_trim(load_audio(str(JFK))))[None].astype(np.float32)


def time_calls(fn, calls: int) -> dict:
    for _ in range(2):
        fn()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"best_s": min(ts), "median_s": statistics.median(ts), "all_s": ts}


def torch_encoder(calls: int) -> dict:
    """openai-whisper's float32 encoder on JFK's window, all cores (run in its own process)."""
    import torch
    import whisper

    from models.whisper import load_checkpoint

    torch.set_num_threads(os.cpu_count() or 1)
    dims, w = load_checkpoint(MODEL)
    tm = whisper.model.Whisper(dims)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    tm.eval()
    mel = torch.from_numpy(jfk_mel())

    def run():
        with torch.no_grad():
            return tm.encoder(mel)

    res = time_calls(run, calls)
    return {**res, "torch": torch.__version__, "threads": torch.get_num_threads()}


def run_torch_child(calls: int) -> dict:
    cmd = [sys.executable, __file__, "--torch-encoder-only", "--encoder-calls", str(calls)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        return {"error": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report
def floors(case_bytes: dict, bw: dict, llc: int | None, at_ws: dict) -> dict:
    """Per case: the bandwidth basis (LLC where its working set fits, else DRAM) and the
    floor in ms; and the floor at the bandwidth read at the case's own working-set size
    (``at_ws``: {case: GB/s}), which shows where the nominal LLC (a VM may report the
    host's) serves less than the fit rule assumes."""
    out = {}
    for name, parts in case_bytes.items():
        fits = "llc" in bw and llc is not None and llc >= FITS * parts["total"]
        basis = "llc" if fits else "dram"
        out[name] = {
            "basis": basis,
            "floor_ms": parts["total"] / (bw[basis] * 1e9) * 1e3,
            "floor_ms_at_working_set": parts["total"] / (at_ws[name] * 1e9) * 1e3,
        }
    return out


def print_table(report: dict) -> None:
    bw = report["bandwidth_GB_s"]
    print(
        f"\n{report['machine']['lscpu'].get('Model name', report['machine']['cpu'])}, "
        f"LLC {(report['llc']['bytes'] or 0) / MiB:.0f} MiB ({report['llc']['source']}), {report['isa']}"
    )
    llc_txt = f"{bw['llc']:.1f} GB/s" if "llc" in bw else report["llc"]["verdict"]
    print(f"read bandwidth: DRAM {bw['dram']:.1f} GB/s, LLC {llc_txt}")
    print(
        f"\n{'case':30s} {'program':9s} {'MB':>7s} {'basis':5s} {'floor ms':>9s} {'ms':>8s} {'ratio':>6s}"
        f" {'ws GB/s':>8s} {'ratio@ws':>8s}"
    )
    for name, c in report["steps"].items():
        print(
            f"{name:30s} {c['program']:9s} {c['bytes']['total'] / 1e6:7.1f} {c['basis']:5s} "
            f"{c['floor_ms']:9.3f} {c['median_ms']:8.3f} {c['ratio_to_floor']:6.2f} "
            f"{c['bandwidth_at_working_set_GB_s']:8.1f} {c['ratio_to_floor_at_working_set']:8.2f}"
        )
    enc = report["encoder"]
    print(f"\nencoder, one 30 s window, {enc['gflop']:.1f} GFLOP:")
    for side in ("kvgraph", "torch"):
        e = enc.get(side, {})
        if "best_s" in e:
            print(
                f"  {side:8s} best {e['best_s'] * 1e3:8.1f} ms  median {e['median_s'] * 1e3:8.1f} ms  "
                f"{e['GFLOP_s_best']:6.1f} GFLOP/s (best)"
            )
        else:
            print(f"  {side:8s} {e.get('error', 'not run')[-300:]}")
    if "ratio_kvgraph_over_torch_GFLOP_s" in enc:
        print(f"  kvgraph/torch GFLOP/s: {enc['ratio_kvgraph_over_torch_GFLOP_s']:.2f}")


# ---------------------------------------------------------------- run
def case_bytes(dec, cases: dict) -> tuple[dict, dict, dict]:
    """Per case: (program name, bytes by part); and the 1-row step's weight reads by key."""
    from kvgraph.max import custom, isa
    from kvgraph.max.lower import FEW_ROWS

    progs: dict = {}

    def prog(name):
        if name not in progs:
            progs[name] = program_weights(dec.request(name))
        return progs[name]

    few_limit = isa.thresholds().few_rows_custom if custom.kernel_package() else FEW_ROWS
    program, parts, detail = {}, {}, {}
    for name, (_, rows, contexts, pasts) in cases.items():
        if name.startswith("reorder"):
            _, pos = state_sizes(dec.request("step_few" if dec.few_steps else "step").graph)
            moved = sum(pasts) * pos  # rows [0, past) of every cache, gathered into new buffers
            program[name] = "reorder"
            parts[name] = {"cache_rows_read": moved, "cache_rows_written": moved, "total": 2 * moved}
            continue
        if name.startswith("step_rows"):
            pname, limit = "step_rows", few_limit
        else:
            pname, limit = ("step_few" if dec.few_steps and rows <= dec.step_few_rows else "step"), None
        w, per = weights_read(prog(pname), rows, limit)
        ctx, pos = state_sizes(dec.request(pname).graph)
        program[name] = pname
        parts[name] = step_bytes(w, ctx, pos, pasts, contexts, dec.vocab_size)
        if name == "1 row":
            detail = per
    return program, parts, detail


def measure_bandwidth(one_step: int) -> tuple[dict, dict, np.ndarray]:
    """What is known of the LLC (and whether a working set of ``one_step`` bytes fits it),
    the sizes to read ({"dram": bytes, "llc": bytes where it fits}), and the array read."""
    llc, source = llc_bytes()
    llc_test = max(COLS * 4, one_step // (COLS * 4) * COLS * 4)
    fits = llc is not None and llc >= FITS * llc_test
    dram = max(512 * MiB, 4 * (llc or 0))
    dram = min(dram, mem_available() // 4) // (COLS * 4) * (COLS * 4)
    info = {
        "bytes": llc,
        "source": source,
        "llc_test_bytes": llc_test,
        "verdict": "fits" if fits else f"does not fit ({llc_test / MiB:.0f} MiB x {FITS} > LLC)",
        "dram_test_bytes": dram,
        "dram_test_over_llc": None if not llc else round(dram / llc, 2),
    }
    sizes = {"dram": dram} | ({"llc": llc_test} if fits else {})
    big = np.full((dram // (COLS * 4), COLS), 1.0, np.float32)
    return info, sizes, big


def run_steps(be, args, report: dict) -> None:
    """Bandwidth (before and after), step bytes, floors and timings into ``report``."""
    dec, dims = be.decoder, be.dims
    rng = np.random.default_rng(0)
    cases = few_cases(dec, dims, args.position, rng)
    if not args.no_step_rows:
        dec.program("step_rows")
        cases |= rows_cases(dec, dims, args.position, rng)
    program, parts, detail = case_bytes(dec, cases)
    report["weights_read_1_row"] = detail
    info, sizes, big = measure_bandwidth(parts["1 row"]["total"])
    report["llc"] = info
    model = bandwidth_model()
    # also each case's own working-set size (the same graph: n is symbolic)
    ws = {f"ws {k}": min(p["total"], info["dram_test_bytes"]) for k, p in parts.items()}
    before = read_bandwidth(model, big, sizes | ws, args.bw_calls)
    times, other = time_cases({k: c[0] for k, c in cases.items()}, args.calls, args.busy_ok)
    after = read_bandwidth(model, big, sizes | ws, args.bw_calls)
    del big
    best = {k: max(before[k]["GB_s"], after[k]["GB_s"]) for k in before}
    report["bandwidth_runs"] = {"before_steps": before, "after_steps": after}
    report["bandwidth_GB_s"] = bw = {k: best[k] for k in sizes}
    at_ws = {k: best[f"ws {k}"] for k in parts}
    fl = floors(parts, bw, info["bytes"], at_ws)
    report["steps"] = {}
    for name, (_, rows, contexts, pasts) in cases.items():
        ms = statistics.median(times[name]) * 1e3
        report["steps"][name] = {
            "program": program[name],
            "rows": rows,
            "contexts": contexts,
            "past": pasts,
            "bytes": parts[name],
            "working_set_fits_llc": fl[name]["basis"] == "llc",
            "basis": fl[name]["basis"],
            "floor_ms": fl[name]["floor_ms"],
            "median_ms": ms,
            "min_ms": min(times[name]) * 1e3,
            "calls": len(times[name]),
            "ratio_to_floor": ms / fl[name]["floor_ms"],
            "bandwidth_at_working_set_GB_s": at_ws[name],
            "floor_ms_at_working_set": fl[name]["floor_ms_at_working_set"],
            "ratio_to_floor_at_working_set": ms / fl[name]["floor_ms_at_working_set"],
            "other_cores": other[name],
            "all_ms": [round(t * 1e3, 3) for t in times[name]],
        }


def run_encoders(be, args, report: dict, torch_res: dict) -> None:
    gflop = encoder_flops(be.dims) / 1e9
    mel = jfk_mel()
    if not args.busy_ok:
        wait_quiet(timeout=60)
    with Probe() as p:
        kv = time_calls(lambda: be.encode(mel), args.encoder_calls)
    kv["other_cores"] = round(p.other_cores, 2)
    enc = {"gflop": gflop, "kvgraph": kv, "torch": torch_res}
    for side in ("kvgraph", "torch"):
        if "best_s" in enc[side]:
            enc[side]["GFLOP_s_best"] = gflop / enc[side]["best_s"]
            enc[side]["GFLOP_s_median"] = gflop / enc[side]["median_s"]
    if "best_s" in torch_res:
        enc["ratio_kvgraph_over_torch_GFLOP_s"] = kv["GFLOP_s_best"] / torch_res["GFLOP_s_best"]
        enc["ratio_kvgraph_over_torch_GFLOP_s_median"] = kv["GFLOP_s_median"] / torch_res["GFLOP_s_median"]
    report["encoder"] = enc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=45, help="timed calls per step case (over 3 rounds)")
    ap.add_argument("--encoder-calls", type=int, default=10, help="timed encoder calls per engine")
    ap.add_argument("--bw-calls", type=int, default=10, help="timed reads per bandwidth size (best)")
    ap.add_argument("--position", type=int, default=48, help="tokens already in the cache at each step")
    ap.add_argument("--busy-ok", action="store_true", help="measure without waiting for a quiet machine")
    ap.add_argument("--isa", default=None, help="KVGRAPH_ISA for this run: the kernels' tile class")
    ap.add_argument("--no-step-rows", action="store_true", help="skip the step_rows cases")
    ap.add_argument("--no-torch", action="store_true", help="skip openai-whisper's encoder")
    ap.add_argument("--torch-encoder-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_floor.json"))
    args = ap.parse_args(argv)
    if args.torch_encoder_only:
        print(json.dumps(torch_encoder(args.encoder_calls)))
        return 0
    if args.isa:
        from kvgraph.max import isa

        if args.isa.lower() not in isa.CLASSES:
            ap.error(f"--isa {args.isa!r}: expected one of {', '.join(isa.CLASSES)}")
        os.environ[isa.ENV] = args.isa.lower()  # read by isa.host() when the programs load
    torch_res: dict = {"error": "not run (--no-torch)"}
    if not args.no_torch:  # first, while this process holds no MAX threads
        if not args.busy_ok:
            wait_quiet(timeout=60)
        with Probe() as p:
            torch_res = run_torch_child(args.encoder_calls)
        torch_res["other_cores"] = round(p.other_cores, 2)

    from kvgraph.max import custom, isa
    from models.whisper import load_backend

    be = load_backend(MODEL)
    report = {
        "machine": machine() | {"lscpu": lscpu()},
        "model": MODEL,
        "isa": isa.host().describe(),
        "KVGRAPH_ISA": os.environ.get("KVGRAPH_ISA"),
        "custom_kernels": custom.kernel_package() is not None,
        "step_few_rows": be.decoder.step_few_rows,
        "busy_ok": args.busy_ok,
        "calls": args.calls,
        "position": args.position,
    }
    run_steps(be, args, report)
    run_encoders(be, args, report, torch_res)
    report["programs"] = {k: p.source for k, p in be.decoder.loaded.items()}
    print_table(report)
    write_json(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
