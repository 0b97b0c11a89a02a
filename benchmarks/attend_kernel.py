"""kvgraph's few-row context attention kernel (``kvgraph_attend_f32``, a decode step's
cross-attention over the hoisted audio K/V) against MAX's matmul form of the same attention
(``kernels.attention``, which MAX fuses), on tiny.en's shape: 6 heads of 64, 1500 frames.

Both run in this one process, interleaved call by call (host-side drift hits both alike);
each call reads another copy of K and V (copies totalling > 64 MB, past the L3 cache), as a
step reads a layer's K/V from DRAM. Cases: query rows per context (5 = five beams of one
audio) and contexts (8 = eight distinct audios, one row each). Random values; results are
checked equal (float32 rounding) before timing; milliseconds per call, median of ``--calls``.

    python benchmarks/attend_kernel.py [--calls 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import machine, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADS, DH, FRAMES = 6, 64, 1500
CASES = ((1, 1), (1, 5), (2, 1), (8, 1), (1, 16))  # (contexts, query rows per context)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attend_kernel.json"))
    args = ap.parse_args(argv)

    from max.driver import Buffer
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType

    from kvgraph.max import custom
    from kvgraph.max import kernels as K
    from kvgraph.max.runtime import session

    pkg = custom.kernel_package()
    if pkg is None:
        print("the custom kernel package is not available", file=sys.stderr)
        return 1
    cpu = DeviceRef.CPU()
    w = HEADS * DH
    types = [
        TensorType(DType.float32, ["c", "s", w], device=cpu),
        TensorType(DType.float32, ["c", FRAMES, w], device=cpu),
        TensorType(DType.float32, ["c", FRAMES, w], device=cpu),
    ]
    forms = {
        "max_matmul": lambda q, k, v: K.attention(q, k, v, HEADS, HEADS, False, None, DH**-0.5),
        "kvgraph": lambda q, k, v: K.attention_context(q, k, v, HEADS, HEADS, False, None, DH**-0.5),
    }
    models = {}
    for name, fn in forms.items():
        with Graph(f"attend_bench_{name}", input_types=types, custom_extensions=[pkg]) as g:
            q, k, v = (x.tensor for x in g.inputs)
            g.output(fn(q, k, v))
        models[name] = session().load(g)
    rng = np.random.default_rng(0)
    table = {}
    for c, s in CASES:
        q = Buffer.from_numpy(rng.standard_normal((c, s, w)).astype(np.float32))
        n = max(2, int(64e6 // (c * FRAMES * w * 8)))
        kv = [
            tuple(Buffer.from_numpy(rng.standard_normal((c, FRAMES, w)).astype(np.float32)) for _ in range(2))
            for _ in range(n)
        ]
        a, b = (models[m].execute(q, *kv[0])[0].to_numpy() for m in forms)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
        times: dict = {m: [] for m in models}
        i = 0
        for _ in range(args.calls):
            for name, model in models.items():
                t0 = time.perf_counter()
                model.execute(q, *kv[i % n])
                times[name].append((time.perf_counter() - t0) * 1e3)
                i += 1
        row = {m: round(statistics.median(t), 3) for m, t in times.items()}
        row["ratio"] = round(row["kvgraph"] / row["max_matmul"], 2)
        table[f"{c} contexts x {s} rows"] = row
        print(f"{c} contexts x {s:2d} rows: {row}", flush=True)
    write_json(
        {"machine": machine(), "heads": HEADS, "head_dim": DH, "frames": FRAMES, "ms_per_call": table},
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
