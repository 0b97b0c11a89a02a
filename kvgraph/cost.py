"""Static cost of a graph: node count and a per-op FLOP estimate at given dim sizes.

``flops(graph, {"b": 1, "s": 1, "past": 300})`` binds the symbolic dims of every node's
type and sums a FLOP estimate per op, split in two buckets:

- ``"dense"``: linear layers, norms, elementwise ops, embeddings, positions, convolution —
  the work a cached step must keep independent of how many tokens came before;
- ``"attention"``: scores ``q @ kᵀ``, softmax and the weighted sum ``p @ v``, which
  legitimately grows with the number of keys (``past + s`` in a cached step).

Data movement (``concat``, ``cache_store``, ``cache_view``, ``take_last``, ``transpose``)
counts zero. Causal masking is ignored: an attention is charged for every (query, key) pair,
as a dense kernel computes them. One rule per op class (``RULES``).
"""

from __future__ import annotations

import math

from . import ir
from .errors import InputError
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


def _linear(op, numel, dims):
    rows = _size(op.x.type.shape[:-1], dims)
    o, i = (bind_dim(d, dims) for d in op.w.type.shape)
    return DENSE, 2 * rows * o * i + (rows * o if op.bias is not None else 0)


def _attention(op, numel, dims):
    b, sq, w = (bind_dim(d, dims) for d in op.q.type.shape)
    sk = bind_dim(op.k.type.shape[1], dims)
    hd = w // op.heads
    pairs = b * op.heads * sq * sk
    # q·k (2*hd per pair) + scale, max, exp, sum, divide (~5 per pair) + p·v (2*hd per pair)
    return ATTENTION, pairs * (4 * hd + 5)


def _attention_scores(op, numel, dims):
    hd = bind_dim(op.q.type.shape[2], dims) // op.heads
    return ATTENTION, numel * (2 * hd + 1)  # q·k and the scale, for each selected pair


def _conv1d(op, numel, dims):
    cout, cin, k = (bind_dim(d, dims) for d in op.w.type.shape)
    return DENSE, numel * (2 * cin * k + 1)


def _per_element(k: int):
    """A dense rule of ``k`` FLOPs per result element (0: data movement)."""
    return lambda op, numel, dims: (DENSE, k * numel)


#: ``{op class: rule(op, numel of its result, dims) -> ("dense" | "attention", flops)}``:
#: one rule per op class, like the reference's and the MAX lowering's tables.
RULES = {
    ir.Embed: _per_element(1),
    ir.Positions: _per_element(1),
    ir.GatherRows: _per_element(1),
    ir.Sinusoid: _per_element(3),
    ir.Rope: _per_element(4),
    ir.Add: _per_element(1),
    ir.Mul: _per_element(1),
    ir.Linear: _linear,
    ir.LayerNorm: _per_element(8),
    ir.RMSNorm: _per_element(5),
    ir.Gelu: _per_element(8),
    ir.Silu: _per_element(4),
    ir.Attention: _attention,
    ir.AttentionScores: _attention_scores,
    ir.Concat: _per_element(0),
    ir.CacheStore: _per_element(0),
    ir.CacheView: _per_element(0),
    ir.TakeLast: _per_element(0),
    ir.Transpose: _per_element(0),
    ir.Conv1d: _conv1d,
}


def _node_flops(n: Node, dims: dict[str, int]) -> tuple[str, int]:
    numel = _numel(n.out, dims)
    rule = RULES.get(type(n.op))
    if rule is None:
        raise InputError(f"cost: no FLOP rule for op {n.op.NAME!r} (%{n.out.name})")
    return rule(n.op, numel, dims)


def node_flops(graph: Graph, dims: dict[str, int]) -> list[tuple[str, str, int]]:
    """``(value name, "dense" | "attention", flops)`` for every node, in order."""
    out = []
    for n in graph.nodes:
        try:
            kind, f = _node_flops(n, dims)
        except KeyError as e:
            raise InputError(
                f"cost: dim {e.args[0]!r} of %{n.out.name} ({n.out.type}) is not bound; given {sorted(dims)}"
            ) from None
        out.append((n.out.name, kind, f))
    return out


def flops(graph: Graph, dims: dict[str, int]) -> dict:
    """FLOP estimate of ``graph`` with its symbolic dims bound from ``dims``.

    Returns ``{"dense": int, "attention": int, "total": int, "by_op": {op name: int}}``.
    Raises InputError (a ValueError) naming a dim ``graph`` uses that ``dims`` does not bind.
    """
    totals = {DENSE: 0, ATTENTION: 0}
    by_op: dict[str, int] = {}
    for n, (_, kind, f) in zip(graph.nodes, node_flops(graph, dims)):
        totals[kind] += f
        by_op[n.op.NAME] = by_op.get(n.op.NAME, 0) + f
    return {
        DENSE: totals[DENSE],
        ATTENTION: totals[ATTENTION],
        "total": totals[DENSE] + totals[ATTENTION],
        "by_op": by_op,
    }
