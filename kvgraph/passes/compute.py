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

#: outputs an int8 output linear recomputes exactly by default (:attr:`kvgraph.ir.Linear.exact_top`)
EXACT_TOP = 16


def _takes(op, compute: str, attention: bool) -> bool:
    if isinstance(op, ir.Linear) or (isinstance(op, ir.Conv1d) and compute != "int8"):
        return isinstance(op.w, ir.Weight)
    return attention and compute != "int8" and isinstance(op, ir.Attention) and not op.causal


def _set(op, compute: str, exact: int, splits=()):
    if isinstance(op, ir.Linear):
        on = compute == "int8" and exact > 0
        return attrs.evolve(
            op, compute=compute, exact_top=exact if on else 0, exact_top_splits=splits if on else ()
        )
    return attrs.evolve(op, compute=compute)


def compute_type(
    g: Graph,
    compute: str,
    attention: bool = False,
    outputs: str | None = None,
    exact_top: int = EXACT_TOP,
    exact_top_splits=(),
) -> Graph:
    """``g`` with its weight linears and convolutions (and unmasked attentions, with
    ``attention``) computed in ``compute``; types unchanged. ``outputs``: the compute type of
    the linears whose value is a graph output (a decoder's logits; default ``compute``); an
    int8 one recomputes its ``exact_top`` largest outputs in float32 (0: none), in each group
    of outputs ``exact_top_splits`` starts (``ir.Linear.exact_top_splits``)."""
    check_compute_type(compute)
    outputs = check_compute_type(outputs, "outputs") if outputs is not None else compute
    out_values = {v for _name, v in g.outputs}
    nodes = []
    for n in g.nodes:
        final = isinstance(n.op, ir.Linear) and n.out in out_values
        want = outputs if final else compute
        exact = (exact_top, exact_top_splits) if final else (0, ())
        nodes.append(Node(_set(n.op, want, *exact), n.out) if _takes(n.op, want, attention) else n)
    return Graph(g.name, g.inputs, tuple(nodes), g.outputs)


@attrs.frozen
class ComputeType:
    """Set the compute type of every weight linear and convolution (and unmasked attention,
    with ``attention``) in every program (``float32``: all exact); ``outputs`` for the linears
    that are a program's outputs (see :func:`compute_type`)."""

    compute: str = "bfloat16"
    attention: bool = False
    outputs: str | None = None
    exact_top: int = EXACT_TOP
    exact_top_splits: tuple = ()
    name: str = "compute_type"

    def apply(self, programs: Programs) -> Programs:
        return Programs(
            tuple(
                (
                    k,
                    compute_type(
                        g, self.compute, self.attention, self.outputs, self.exact_top, self.exact_top_splits
                    ),
                )
                for k, g in programs.items()
            )
        )
