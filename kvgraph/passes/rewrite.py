"""Small helpers passes share: copying nodes with remapped operands, dependence sets."""
from __future__ import annotations

from ..ir import Graph, GraphBuilder, Node, Op, Value, Weight


def depends_on(g: Graph, roots: set[Value]) -> set[Value]:
    """Every value of ``g`` that transitively reads one of ``roots`` (roots included)."""
    dep = set(roots)
    for n in g.nodes:
        if any(v in dep for v in n.op.operands()):
            dep.add(n.out)
    return dep


def copy_node(b: GraphBuilder, n: Node, op: Op, mapping: dict[Value, Value], name: str | None = None) -> Value:
    """Append ``op`` (operands already remapped) keeping ``n``'s name when free; record it."""
    new_name = b.fresh(name or n.out.name)
    v = Value(new_name, op.infer_type())
    b.nodes.append(Node(op, v))
    mapping[n.out] = v
    return v


def remap(op: Op, mapping: dict[Value, Value]) -> Op:
    return op.replace_operands({k: v for k, v in mapping.items() if not isinstance(k, Weight)})
