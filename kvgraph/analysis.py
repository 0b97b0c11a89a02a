"""MAX-free analyses of programs that the compiler front, the MAX backend and tests share:
which values the MAX lowering makes in-place buffers, which weights may be read as
float16, what a graph can index. Nothing here imports MAX."""

from __future__ import annotations

import numpy as np

from . import ir
from .names import CONTEXTS


def f16_exact(a: np.ndarray) -> bool:
    """True when every value of ``a`` is exactly a float16 value (so storing it as
    float16 loses nothing): e.g. weights from an fp16 checkpoint held as float32."""
    a = np.asarray(a)
    if a.dtype == np.float16:
        return True
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    with np.errstate(over="ignore"):
        return bool(np.array_equal(a.astype(np.float16).astype(np.float32), a))


def has_f16_linear(g: ir.Graph, weights: dict) -> bool:
    """Does ``g`` have a linear whose weight is float16-exact (see :func:`f16_exact`)?"""
    names = {n.op.w.name for n in g.nodes if isinstance(n.op, ir.Linear) and isinstance(n.op.w, ir.Weight)}
    return any(name in weights and f16_exact(weights[name]) for name in sorted(names))


def per_context_state(step: ir.Graph) -> frozenset[str]:
    """Names of the step's state held one row per context, not per batch row
    (``ShareContexts``: the inputs whose first dim is ``c``)."""
    return frozenset(v.name for v in step.inputs if v.type.rank and str(v.type.shape[0]) == CONTEXTS)


def buffer_values(g: ir.Graph) -> set:
    """IR values lowered as MAX buffers: graph inputs a ``cache_store`` writes, and the
    ``cache_store`` results (the same buffers)."""
    bufs = set()
    for n in g.nodes:
        if isinstance(n.op, ir.CacheStore):
            bufs.add(n.op.cache)
            bufs.add(n.out)
    return bufs


def buffer_outputs(g: ir.Graph) -> dict[str, str]:
    """``{output name: input name}`` for outputs that are buffers: not emitted by the MAX
    graph, they are the input buffer of that name, mutated in place."""
    prod = g.producers()
    bufs = buffer_values(g)
    out = {}
    for k, v in g.outputs:
        if v in bufs:
            while v in prod:
                v = prod[v].op.cache
            out[k] = v.name
    return out


def emitted_outputs(g: ir.Graph) -> list[str]:
    """Names of the outputs the MAX graph returns, in order (buffer outputs are left out)."""
    bufs = buffer_values(g)
    return [k for k, v in g.outputs if v not in bufs]


def limits(g: ir.Graph) -> tuple[int | None, int | None]:
    """(vocabulary size, longest sequence) the graph can index: rows of the tables that
    ``embed`` reads with tokens and ``gather_rows`` reads with positions."""
    vocab = max_len = None
    pos = {n.out for n in g.nodes if isinstance(n.op, ir.Positions)}
    for n in g.nodes:
        if isinstance(n.op, ir.Embed):
            vocab = n.op.table.type.shape[0] if vocab is None else min(vocab, n.op.table.type.shape[0])
        elif isinstance(n.op, ir.GatherRows) and n.op.index in pos:
            rows = n.op.table.type.shape[0]
            max_len = rows if max_len is None else min(max_len, rows)
    return vocab, max_len
