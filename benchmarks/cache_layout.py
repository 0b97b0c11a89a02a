"""Cache-layout primitive, side by side on MAX: what one decoding step pays to append a new row
to a layer's K (or V) cache and hand attention a [b, past+1, d] tensor.

- ``concat``: the functional layout kvgraph uses: ``concat(cache[b, past, d], new[b, 1, d])``,
  the result becomes the next step's cache input.
- ``buffer``: a fixed-capacity ``BufferType`` cache written in place with
  ``buffer_store_slice`` at row ``past``, then read back (``buffer_load``) and sliced to
  ``past+1`` rows for attention.

Both graphs do 8 such caches (tiny.en: 4 layers x K, V) with d=384, capacity 448, and sum the
result so nothing is dead. Interleaved medians at several positions; JSON out."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import machine, measure_interleaved, write_json  # noqa: E402

N_CACHES, D, CAP = 8, 384, 448


def build(session):
    from max.dtype import DType
    from max.graph import BufferType, DeviceRef, Graph, TensorType, ops

    cpu, f32, i64 = DeviceRef.CPU(), DType.float32, DType.int64
    new_t = TensorType(f32, [1, 1, D], device=cpu)
    with Graph(
        "layout_concat", input_types=[new_t] + [TensorType(f32, [1, "past", D], device=cpu)] * N_CACHES
    ) as g:
        new = g.inputs[0].tensor
        outs = [ops.concat([c.tensor, new], axis=1) for c in g.inputs[1:]]
        g.output(ops.sum(ops.concat([ops.sum(o, axis=1) for o in outs], axis=0), axis=0), *outs)
    concat = session.load(g)
    with Graph(
        "layout_buffer",
        input_types=[new_t, TensorType(i64, [], device=cpu)]
        + [BufferType(f32, [1, CAP, D], device=cpu)] * N_CACHES,
    ) as g:
        new, past = g.inputs[0].tensor, g.inputs[1].tensor
        sums = []
        for b in g.inputs[2:]:
            ops.buffer_store_slice(b.buffer, new, [slice(None), (slice(past, past + 1), 1), slice(None)])
            full = ops.buffer_load(b.buffer)
            rows = ops.slice_tensor(full, [slice(None), (slice(0, past + 1), "kv"), slice(None)])
            sums.append(ops.sum(rows, axis=1))
        g.output(ops.sum(ops.concat(sums, axis=0), axis=0))
    buffer = session.load(g)
    return concat, buffer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--positions", default="10,100,220,440")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cache_layout.json"))
    args = ap.parse_args(argv)
    from max.driver import Buffer

    from kvgraph.max.runtime import session

    concat, buffer = build(session())
    rng = np.random.default_rng(0)
    new = Buffer.from_numpy(rng.standard_normal((1, 1, D)).astype(np.float32))
    results = {}
    for P in [int(p) for p in args.positions.split(",")]:
        caches = [
            Buffer.from_numpy(rng.standard_normal((1, P, D)).astype(np.float32)) for _ in range(N_CACHES)
        ]
        bufs = [Buffer.from_numpy(np.zeros((1, CAP, D), np.float32)) for _ in range(N_CACHES)]
        past = Buffer.from_numpy(np.array(P, dtype=np.int64))
        a = concat.execute(new, *caches)[0].to_numpy()
        b = buffer.execute(
            new,
            past,
            *[
                Buffer.from_numpy(
                    np.concatenate([c.to_numpy(), np.zeros((1, CAP - P, D), np.float32)], axis=1)
                )
                for c in caches
            ],
        )[0].to_numpy()
        assert np.allclose(a, b, atol=1e-3), "layouts disagree"
        fns = {
            "concat": lambda: concat.execute(new, *caches),
            "buffer": lambda: buffer.execute(new, past, *bufs),
        }
        times, discarded = measure_interleaved(fns, args.reps, args.calls)
        med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        results[P] = {"median_us": med, "discarded": discarded}
        print(f"past {P}: " + ", ".join(f"{k} {v:.0f} us" for k, v in med.items()), flush=True)
    write_json(
        {"machine": machine(), "caches": N_CACHES, "d": D, "capacity": CAP, "positions": results}, args.out
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
