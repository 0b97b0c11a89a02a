"""``verify(graph)``: SSA, type rules and outputs. Faults raise VerifyError with the IR window."""

from __future__ import annotations

from .errors import IRTypeError, VerifyError
from .ir import Graph, Op, Value, Weight
from .printer import window


def _fail(g: Graph, index: int, what: str):
    raise VerifyError(f"graph {g.name}: {what}\n{window(g, index, note=what)}")


def verify(g: Graph) -> Graph:
    """Check ``g`` and return it. Rules:

    1. every input, node result and weight name is defined once;
    2. every operand is a graph input, a weight, or the result of an earlier node;
    3. each node's result type equals its op's ``infer_type()``;
    4. every output is defined, and output names are unique.
    """
    defined: set[Value] = set()
    names: dict[str, str] = {}
    for v in g.inputs:
        if v.name in names:
            raise VerifyError(f"graph {g.name}: input %{v.name} is defined twice")
        names[v.name] = "input"
        defined.add(v)
    weight_types: dict[str, object] = {}
    for i, n in enumerate(g.nodes):
        if not isinstance(n.op, Op):
            _fail(g, i, f"node {i} holds {type(n.op).__name__}, not an op")
        for f in n.op.OPERANDS:
            v = getattr(n.op, f)
            if v is None:
                continue
            if not isinstance(v, Value):
                _fail(g, i, f"operand {f} is {type(v).__name__}, not a value")
            if isinstance(v, Weight):
                prev = weight_types.setdefault(v.name, v.type)
                if prev != v.type:
                    _fail(g, i, f"weight @{v.name} used as {v.type} here but as {prev} before")
            elif v not in defined:
                why = "is used before it is defined" if v in {m.out for m in g.nodes} else "is never defined"
                _fail(g, i, f"operand %{v.name} ({f}) {why}")
        if n.out.name in names:
            _fail(g, i, f"%{n.out.name} is defined twice")
        names[n.out.name] = "node"
        try:
            t = n.op.infer_type()
        except IRTypeError as e:
            _fail(g, i, str(e))
        if t != n.out.type:
            _fail(g, i, f"result type {n.out.type} does not match the op's type rule {t}")
        defined.add(n.out)
    seen = set()
    for k, v in g.outputs:
        if k in seen:
            _fail(g, -1, f"output name {k!r} is used twice")
        seen.add(k)
        if v not in defined and not isinstance(v, Weight):
            _fail(g, -1, f"output {k}=%{v.name} is never defined")
    if not g.outputs:
        _fail(g, -1, "graph has no outputs")
    return g
