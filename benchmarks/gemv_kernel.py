"""kvgraph's few-row float16 GEMV kernel (``kvgraph_gemv_f16``) against another version of
itself and against MAX's own few-row GEMV, on tiny.en's projection shapes; with ``--gemm``
also against MAX's float32 GEMM over the same weight as float32 ``[in, out]`` (what the
lowering runs beyond ``isa.thresholds().few_rows_custom`` rows): where the kernel stops paying.

``--against REV`` builds the kernel source of git revision REV (renamed
``kvgraph_gemv_f16_rev``, in a package of its own) so both versions run in this one
process, interleaved call by call (each round starting with the next engine): the comparison
holds even while the machine's memory bandwidth drifts (a shared VM), which a step benchmark
run at two different times does not. Run a revision against itself first: the same source
in the revision's package (built here with `mojo precompile`) measured up to ~9 % slower at
5-8 rows than in the tree's package (Sapphire Rapids, 2026-12-06), so only larger differences
say anything.
Each call reads a different copy of the weight (copies totalling > 96 MB, past the L3
cache), as a decode step does. Random values; milliseconds per call, median of
``--calls`` calls per shape and row count.

    python benchmarks/gemv_kernel.py [--against 08c9737] [--gemm] [--gemm16] [--rows 1 2 5 8 16]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import machine, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"vocab 51864x384": (51864, 384), "fc1 1536x384": (1536, 384), "fc2 384x1536": (384, 1536)}
KERNEL = "kvgraph_gemv_f16"


def build_revision(rev: str, tmp: Path) -> Path:
    """The kernel package of git revision ``rev``, each op renamed ``<name>_rev``."""
    from kvgraph.max import custom

    src = tmp / "kvgraph_gemv_rev"
    src.mkdir()
    rel = custom.SOURCE.relative_to(ROOT)
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, f"{rel}/"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in names:
        text = subprocess.run(
            ["git", "show", f"{rev}:{name}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        # every kernel renamed (the package holds more than the GEMV: one name twice fails to load)
        text = re.sub(r'@register\("(\w+)"\)', r'@register("\1_rev")', text)
        text = text.replace("struct GemvF16:", "struct GemvF16Rev:")
        base = Path(name).name  # module names must differ from the current package's
        dest = base if base == "__init__.mojo" else base.replace(".mojo", "_rev.mojo")
        (src / dest).write_text(text)
    out = tmp / "kvgraph_gemv_rev.mojoc"
    subprocess.run(
        [str(custom.mojo_compiler()), "precompile", "-I", str(custom._mojo_libs()), str(src), "-o", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", default=None, help="a git revision whose kernel to compare with")
    ap.add_argument(
        "--against-parameters",
        action="store_true",
        help="the revision's kernel takes the instruction-set class's parameters (lanes, regs)",
    )
    ap.add_argument("--gemm", action="store_true", help="also MAX's float32 GEMM (the many-row path)")
    ap.add_argument(
        "--gemm16",
        action="store_true",
        help="also kvgraph's float16 GEMM (kvgraph_gemm_f16: a prefill's path)",
    )
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 5, 8, 16])
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gemv_kernel.json"))
    args = ap.parse_args(argv)

    from max.driver import Buffer
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType, ops

    from kvgraph.max import custom, isa
    from kvgraph.max import kernels as K
    from kvgraph.max.runtime import session

    pkg = custom.kernel_package()
    if pkg is None:
        print("the custom kernel package is not available", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="kvgraph-gemv-"))
    try:
        pkgs = [pkg] + ([build_revision(args.against, tmp)] if args.against else [])
        cpu = DeviceRef.CPU()
        types = [
            TensorType(DType.float32, ["m", "k"], device=cpu),
            TensorType(DType.float16, ["n", "k"], device=cpu),
        ]

        def custom_op(name, parameters=None):
            def fn(x, w):
                out = TensorType(DType.float32, [x.shape[0], w.shape[0]], device=cpu)
                res = ops.custom(name, device=cpu, values=[x, w], out_types=[out], parameters=parameters)
                return res[0].tensor

            return fn

        # this tree's kernel with this machine's class (KVGRAPH_ISA forces another), a
        # revision's with the parameters it declares (none before the classes)
        fns = {
            "kvgraph": custom_op(KERNEL, isa.host().gemv_parameters()),
            "max_gemv": lambda x, w: K.linear_gemv(x, w),
        }
        if args.gemm16:
            fns["kvgraph_gemm16"] = custom_op("kvgraph_gemm_f16", isa.host().gemv_parameters())
        if args.against:
            rev = isa.host().gemv_parameters() if args.against_parameters else None
            fns[args.against] = custom_op(KERNEL + "_rev", rev)
        models = {}
        for name, fn in fns.items():
            with Graph(f"gemv_bench_{len(models)}", input_types=types, custom_extensions=pkgs) as g:
                x, w = (v.tensor for v in g.inputs)
                g.output(fn(x, w))
            models[name] = session().load(g)
        if args.gemm:  # the weight as float32 [k, n], as the lowering's "T" layout holds it
            gemm_types = [types[0], TensorType(DType.float32, ["k", "n"], device=cpu)]
            with Graph("gemm_bench_f32", input_types=gemm_types) as g:
                x, w = (v.tensor for v in g.inputs)
                g.output(ops.matmul(x, w))
            models["max_gemm_f32"] = session().load(g)
        rng = np.random.default_rng(0)
        table: dict = {}
        for m in args.rows:
            for shape, (n, k) in SHAPES.items():
                copies = max(2, int(96e6 // (n * k * 2)))
                ws = [
                    Buffer.from_numpy(rng.standard_normal((n, k)).astype(np.float16)) for _ in range(copies)
                ]
                wts = [  # float32 [k, n] copies for the GEMM, as many bytes or more past the cache
                    Buffer.from_numpy(np.ascontiguousarray(rng.standard_normal((k, n)).astype(np.float32)))
                    for _ in range(max(2, int(96e6 // (n * k * 4))) if args.gemm else 0)
                ]
                x = Buffer.from_numpy(rng.standard_normal((m, k)).astype(np.float32))
                times: dict = {name: [] for name in models}
                i = 0
                order = list(models.items())
                for c in range(args.calls):
                    # each round starts with the next engine (no engine always runs first)
                    for name, model in order[c % len(order) :] + order[: c % len(order)]:
                        w = wts[i % len(wts)] if name == "max_gemm_f32" else ws[i % copies]
                        i += 1
                        t0 = time.perf_counter()
                        model.execute(x, w)
                        times[name].append((time.perf_counter() - t0) * 1e3)
                row = {name: round(statistics.median(t), 3) for name, t in times.items()}
                table.setdefault(shape, {})[f"{m} rows"] = row
                print(
                    f"{shape:16s} {m:2d} rows: " + ", ".join(f"{k} {v:.3f} ms" for k, v in row.items()),
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(
        {"machine": machine(), "against": args.against, "class": isa.host().describe(), "ms_per_call": table},
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
