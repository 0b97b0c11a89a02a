"""ShareContexts: rows of a step that read the same context read one copy of its hoisted state.

After ``HoistInvariant`` a step takes the values computed once from the fixed inputs
(Whisper's cross-attention K/V of the audio) as state ``hoisted.*``, one row per batch row.
Beams of one audio, or ``best_of`` samples, would each hold and read a copy. This pass gives
such a state input its own batch dim ``c`` (:data:`kvgraph.names.CONTEXTS`): the step's
rows are grouped contiguously by context (``b = c x g``) and each reads its group's row,
through :class:`~kvgraph.ir.Attention`'s grouped form. The runtime keeps one row per
distinct context and a row->context grouping (``DecoderState.contexts``).

A hoisted input is shared only when every step node that reads it is a non-causal
attention reading it as keys or values (with both its k and v shared): that is where the
grouped form is defined. Others stay one row per batch row, as before. Prefill is left
as it is: run with one row per context, it returns the shared state.
"""

from __future__ import annotations

import attrs

from .. import ir, names
from ..ir import Graph, GraphBuilder, Value
from ..types import TensorType, sym
from .manager import Programs
from .rewrite import remap


def shareable(step: Graph) -> list[Value]:
    """The step's hoisted inputs that can be read per context (see the module docstring)."""
    users = step.users()
    cand = [
        v
        for v in step.inputs
        if v.name.startswith(names.HOISTED_PREFIX) and v.type.rank and str(v.type.shape[0]) == names.BATCH
    ]
    ok = set()
    for v in cand:
        uses = users.get(v, [])
        if uses and all(
            isinstance(n.op, ir.Attention) and not n.op.causal and v in (n.op.k, n.op.v) and v is not n.op.q
            for n in uses
        ):
            ok.add(v)
    # an attention's k and v share, or neither does (one grouping per attention)
    for n in step.nodes:
        if isinstance(n.op, ir.Attention) and (n.op.k in ok) != (n.op.v in ok):
            ok.discard(n.op.k)
            ok.discard(n.op.v)
    return [v for v in cand if v in ok]


def share_contexts(step: Graph) -> Graph:
    shared = shareable(step)
    if not shared:
        return step
    b = GraphBuilder(step.name)
    mapping: dict[Value, Value] = {}
    for v in step.inputs:
        if v in shared:
            t = v.type
            mapping[v] = b.input(v.name, TensorType(t.dtype, (sym(names.CONTEXTS),) + tuple(t.shape[1:])))
        else:
            mapping[v] = b.input(v.name, v.type)
    for n in step.nodes:
        b.copy(n, remap(n.op, mapping), mapping)
    return b.finish([(k, mapping.get(v, v)) for k, v in step.outputs])


@attrs.frozen
class ShareContexts:
    """Give hoisted state read only as attention K/V one row per context (see the module
    docstring)."""

    name: str = "share_contexts"

    def apply(self, programs: Programs) -> Programs:
        if "step" not in programs:
            return programs
        return programs.replace(step=share_contexts(programs["step"]))
