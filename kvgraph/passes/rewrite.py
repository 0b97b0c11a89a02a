"""Small helpers passes share: remapping operands, dependence sets (building graphs:
``GraphBuilder.like`` / ``GraphBuilder.copy``)."""

from __future__ import annotations

from ..ir import Graph, Op, Value, Weight


def depends_on(g: Graph, roots: set[Value]) -> set[Value]:
    """Every value of ``g`` that transitively reads one of ``roots`` (roots included)."""
    dep = set(roots)
    for n in g.nodes:
        if any(v in dep for v in n.op.operands()):
            dep.add(n.out)
    return dep


def remap(op: Op, mapping: dict[Value, Value]) -> Op:
    return op.replace_operands({k: v for k, v in mapping.items() if not isinstance(k, Weight)})
