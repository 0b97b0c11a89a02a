"""DCE: drop nodes whose results no output needs, and inputs nothing reads."""

from __future__ import annotations

import attrs

from .. import names
from ..ir import Graph
from .manager import Programs


def dce(g: Graph, keep_inputs: tuple[str, ...] = names.STEP_ARGS) -> Graph:
    live = {v for _, v in g.outputs}
    nodes = []
    for n in reversed(g.nodes):
        if n.out in live:
            nodes.append(n)
            live.update(n.op.operands())
    inputs = tuple(v for v in g.inputs if v in live or v.name in keep_inputs)
    return Graph(g.name, inputs, tuple(reversed(nodes)), g.outputs)


@attrs.frozen
class DCE:
    """Dead-code elimination on every program (``tokens`` and ``past`` inputs are kept:
    they define a program's calling convention even when unread)."""

    name: str = "dce"

    def apply(self, programs: Programs) -> Programs:
        return Programs(tuple((k, dce(g)) for k, g in programs.items()))
