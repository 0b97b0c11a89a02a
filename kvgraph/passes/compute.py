"""ComputeType: run a graph's linears in a reduced-precision compute type.

A lowering choice of the same IR: the pass sets ``compute`` on every ``linear`` and ``conv1d``
whose weight is a parameter (``@name``, a matrix the lowering can convert once) and, with
``attention=True``, on every unmasked ``attention`` (an encoder's: its two products are the
largest GEMMs there); every other op stays float32. ``int8`` is for linears only (per-row
int8 weights, float32 activations: a step's GEMVs read half the bytes of float16). The printed IR shows it
(``linear %x, @w, @b {compute=bfloat16}``), the NumPy reference runs it (bfloat16 rounding
emulated, :mod:`kvgraph.numerics`), the MAX lowering picks a kernel for it.
"""

from __future__ import annotations

import attrs

from .. import ir
from ..ir import Graph, Node
from ..numerics import check_compute_type
from .manager import Programs


def _takes(op, compute: str, attention: bool) -> bool:
    if isinstance(op, ir.Linear) or (isinstance(op, ir.Conv1d) and compute != "int8"):
        return isinstance(op.w, ir.Weight)
    return attention and compute != "int8" and isinstance(op, ir.Attention) and not op.causal


def compute_type(g: Graph, compute: str, attention: bool = False) -> Graph:
    """``g`` with its weight linears and convolutions (and unmasked attentions, with
    ``attention``) computed in ``compute``; types unchanged."""
    check_compute_type(compute)
    nodes = tuple(
        Node(attrs.evolve(n.op, compute=compute), n.out) if _takes(n.op, compute, attention) else n
        for n in g.nodes
    )
    return Graph(g.name, g.inputs, nodes, g.outputs)


@attrs.frozen
class ComputeType:
    """Set the compute type of every weight linear and convolution (and unmasked attention,
    with ``attention``) in every program (``float32``: all exact)."""

    compute: str = "bfloat16"
    attention: bool = False
    name: str = "compute_type"

    def apply(self, programs: Programs) -> Programs:
        return Programs(
            tuple((k, compute_type(g, self.compute, self.attention)) for k, g in programs.items())
        )
