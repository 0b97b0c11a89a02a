"""This CPU's arithmetic peak per core for the two products the encoder can run on: float32 FMAs
(MAX's float32 GEMMs) and the bfloat16 pair products of kvgraph's ``compute_type="bfloat16"``
kernels (``kvgraph/max/mojo/kvgraph_kernels/dpbf16.mojo``'s ``_dp``: ``VDPBF16PS`` where the
compile target has AVX512-BF16, else its float32-FMA form). Their ratio bounds what bfloat16 can
gain over float32 when both run at the same fraction of their peak: issue #28 asks an encoder
window 2x float32's on an AVX512-BF16 machine.

Each peak is a register-only loop (12 independent 16-lane accumulators, no memory operands)
built with the ``mojo`` compiler the ``max`` wheel installs, for the host CPU, run on one core
(``taskset``-free: the loop is one thread), best of ``--reps``. GFLOP/s count a fused
multiply-add as 2 and a bfloat16 pair product into a float32 lane as 4 (two multiplies, two
adds). Writes JSON (default benchmarks/results/isa_peak.json) with the ``lscpu`` model.

    python benchmarks/isa_peak.py [--reps 5] [--out benchmarks/results/isa_peak.json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import lscpu_model, machine, wait_quiet, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ITERATIONS = 50_000_000
LOOP = """
from std.time import perf_counter_ns
from kvgraph_kernels.dpbf16 import _dp

def main() raises:
    var a0 = SIMD[DType.float32, 16](1.0)
    var a1 = SIMD[DType.float32, 16](1.1)
    var a2 = SIMD[DType.float32, 16](1.2)
    var a3 = SIMD[DType.float32, 16](1.3)
    var a4 = SIMD[DType.float32, 16](1.4)
    var a5 = SIMD[DType.float32, 16](1.5)
    var a6 = SIMD[DType.float32, 16](1.6)
    var a7 = SIMD[DType.float32, 16](1.7)
    var a8 = SIMD[DType.float32, 16](1.8)
    var a9 = SIMD[DType.float32, 16](1.9)
    var a10 = SIMD[DType.float32, 16](2.0)
    var a11 = SIMD[DType.float32, 16](2.1)
    var fm = SIMD[DType.float32, 16](0.999999)
    var fc = SIMD[DType.float32, 16](0.000001)
    var bm = SIMD[DType.uint32, 16](0x3F803F80)  # bfloat16 pairs (1.0, 1.0)
    var bc = SIMD[DType.uint32, 16](0x3A803A80)  # (2**-10, 2**-10)
    var n = {n}
    var t0 = perf_counter_ns()
    for _ in range(n):
        {body}
    var t1 = perf_counter_ns()
    var s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11
    print(Float64(t1 - t0) * 1e-9, s.reduce_add())
"""
KINDS = {
    # name: (one accumulator's update, flops per update per lane)
    "float32_fma": ("a{i} = a{i}.fma(fm, fc)", 2),
    "bfloat16_pairs": ("a{i} = _dp(a{i}, bm, bc)", 4),
}


def build(kind: str, folder: Path) -> Path:
    from kvgraph.max.custom import SOURCE, _mojo_libs, mojo_compiler

    update, _ = KINDS[kind]
    body = "; ".join(update.format(i=i) for i in range(12))
    src = folder / f"{kind}.mojo"
    src.write_text(LOOP.replace("{n}", str(ITERATIONS)).replace("{body}", body))
    exe = folder / kind
    cmd = [
        str(mojo_compiler()),
        "build",
        "-I",
        str(_mojo_libs()),
        "-I",
        str(SOURCE.parent),
        str(src),
        "-o",
        str(exe),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return exe


def gflops(exe: Path, kind: str, reps: int) -> list[float]:
    per_lane = KINDS[kind][1]
    out = []
    for _ in range(reps):
        wait_quiet(timeout=30)
        seconds = float(
            subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()[0]
        )
        out.append(round(ITERATIONS * 12 * 16 * per_lane / seconds / 1e9, 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "isa_peak.json"))
    args = ap.parse_args()
    from kvgraph.max.isa import bf16_engine

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            runs = gflops(build(kind, Path(tmp)), kind, args.reps)
            results[kind] = {"gflops_one_core_best": max(runs), "gflops_one_core": runs}
            print(kind, results[kind], flush=True)
    ratio = results["bfloat16_pairs"]["gflops_one_core_best"] / results["float32_fma"]["gflops_one_core_best"]
    report = {
        "benchmark": "isa_peak",
        "machine": {**machine(), "lscpu_model": lscpu_model()},
        "bf16_engine": bf16_engine(),
        "iterations": ITERATIONS,
        "results": results,
        "bfloat16_over_float32": round(ratio, 2),
    }
    print("bfloat16 / float32 peak:", report["bfloat16_over_float32"])
    write_json(report, args.out)


if __name__ == "__main__":
    main()
