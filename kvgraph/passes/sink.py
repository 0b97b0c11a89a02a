"""SinkTakeLast: select the last row before position-wise work, not after it.

``take_last(f(x)) == f(take_last(x))`` for a position-wise ``f`` of one row-carrying
operand, so prefill projects only the last row onto the vocabulary.
"""

from __future__ import annotations

import attrs

from .. import ir
from ..ir import Graph, GraphBuilder, Value, Weight
from .manager import Programs
from .rewrite import remap


def _row_operands(op) -> list[Value]:
    return [v for v in op.operands() if not isinstance(v, Weight)]


def sink_take_last(g: Graph) -> Graph:
    prod = g.producers()
    users = g.users()
    for _, o in g.outputs:  # a graph output is a use too: its value must keep every row
        users.setdefault(o, []).append(None)
    for n in g.nodes:
        if not isinstance(n.op, ir.TakeLast):
            continue
        # walk up a chain of single-use, single-row-operand, position-wise ops
        chain = []
        v = n.op.x
        while v in prod:
            p = prod[v]
            rows = _row_operands(p.op)
            if not (
                p.op.POSITIONWISE and len(rows) == 1 and len(users.get(v, ())) == 1 and rows[0].type.rank == 3
            ):
                break
            chain.append(p)
            v = rows[0]
        if not chain:
            continue
        b = GraphBuilder.like(g)
        mapping: dict[Value, Value] = {}
        skip = set(chain)
        for m in g.nodes:
            if m in skip:
                continue
            if m is not n:
                b.copy(m, remap(m.op, mapping), mapping)
                continue
            src = mapping.get(v, v)
            cur = b.add(ir.TakeLast(src), src.name + ".last")
            for p in reversed(chain):
                row = _row_operands(p.op)[0]
                op = remap(p.op, mapping).replace_operands({mapping.get(row, row): cur})
                cur = b.copy(p, op, mapping)
            mapping[n.out] = cur
        return sink_take_last(b.finish([(k, mapping.get(o, o)) for k, o in g.outputs]))
    return g


@attrs.frozen
class SinkTakeLast:
    """Move ``take_last`` above position-wise chains in every program."""

    name: str = "sink_take_last"

    def apply(self, programs: Programs) -> Programs:
        return Programs(tuple((k, sink_take_last(g)) for k, g in programs.items()))
