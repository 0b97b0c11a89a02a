"""Static cost of a graph: node count and a per-op FLOP estimate at given dim sizes.

``flops(graph, {"b": 1, "s": 1, "past": 300})`` binds the symbolic dims of every node's
type and sums a FLOP estimate per op, split in two buckets:

- ``"dense"``: linear layers, norms, elementwise ops, embeddings, positions, convolution —
  the work a cached step must keep independent of how many tokens came before;
- ``"attention"``: scores ``q @ kᵀ``, softmax and the weighted sum ``p @ v``, which
  legitimately grows with the number of keys (``past + s`` in a cached step).

Data movement (``concat``, ``take_last``, ``transpose``) counts zero. Causal masking is
ignored: an attention is charged for every (query, key) pair, as a dense kernel computes them.
"""
from __future__ import annotations

import math

from . import ir
from .ir import Graph, Node
from .types import Dim, bind_dim

DENSE, ATTENTION = "dense", "attention"


def node_count(graph: Graph) -> int:
    """Number of nodes (ops) in ``graph``."""
    return len(graph.nodes)


def _size(shape: tuple[Dim, ...], dims: dict[str, int]) -> int:
    return math.prod(bind_dim(d, dims) for d in shape)


def _numel(v, dims) -> int:
    return _size(v.type.shape, dims)


def _node_flops(n: Node, dims: dict[str, int]) -> tuple[str, int]:
    op, out = n.op, n.out
    numel = _numel(out, dims)
    if isinstance(op, ir.Linear):
        rows = _size(op.x.type.shape[:-1], dims)
        o, i = (bind_dim(d, dims) for d in op.w.type.shape)
        return DENSE, 2 * rows * o * i + (rows * o if op.bias is not None else 0)
    if isinstance(op, ir.Attention):
        b, sq, w = (bind_dim(d, dims) for d in op.q.type.shape)
        sk = bind_dim(op.k.type.shape[1], dims)
        hd = w // op.heads
        pairs = b * op.heads * sq * sk
        # q·k (2*hd per pair) + scale, max, exp, sum, divide (~5 per pair) + p·v (2*hd per pair)
        return ATTENTION, pairs * (4 * hd + 5)
    if isinstance(op, ir.Conv1d):
        cout, cin, k = (bind_dim(d, dims) for d in op.w.type.shape)
        return DENSE, numel * (2 * cin * k + 1)
    per_elem = {
        ir.Embed: 1, ir.GatherRows: 1, ir.Positions: 1, ir.Sinusoid: 3, ir.Rope: 4,
        ir.Add: 1, ir.Mul: 1, ir.LayerNorm: 8, ir.RMSNorm: 5, ir.Gelu: 8, ir.Silu: 4,
        ir.Concat: 0, ir.TakeLast: 0, ir.Transpose: 0,
    }
    if type(op) not in per_elem:
        raise ValueError(f"cost: no FLOP rule for op {op.NAME!r} (%{out.name})")
    return DENSE, per_elem[type(op)] * numel


def node_flops(graph: Graph, dims: dict[str, int]) -> list[tuple[str, str, int]]:
    """``(value name, "dense" | "attention", flops)`` for every node, in order."""
    out = []
    for n in graph.nodes:
        try:
            kind, f = _node_flops(n, dims)
        except KeyError as e:
            raise ValueError(f"cost: dim {e.args[0]!r} of %{n.out.name} ({n.out.type}) is not bound; "
                             f"given {sorted(dims)}") from None
        out.append((n.out.name, kind, f))
    return out


def flops(graph: Graph, dims: dict[str, int]) -> dict:
    """FLOP estimate of ``graph`` with its symbolic dims bound from ``dims``.

    Returns ``{"dense": int, "attention": int, "total": int, "by_op": {op name: int}}``.
    Raises ValueError naming a dim ``graph`` uses that ``dims`` does not bind.
    """
    totals = {DENSE: 0, ATTENTION: 0}
    by_op: dict[str, int] = {}
    for n, (_, kind, f) in zip(graph.nodes, node_flops(graph, dims)):
        totals[kind] += f
        by_op[n.op.NAME] = by_op.get(n.op.NAME, 0) + f
    return {DENSE: totals[DENSE], ATTENTION: totals[ATTENTION],
            "total": totals[DENSE] + totals[ATTENTION], "by_op": by_op}
