"""HoistInvariant: compute in ``prefill`` what ``step`` would recompute identically each step.

A step input is *varying* if it is ``tokens``, ``past`` or state the step returns (a cache);
every other input (Whisper's audio ``context``) is fixed across steps. Step nodes that read
only fixed inputs and weights are invariant. Each invariant value that a varying node reads
becomes a prefill output and a step input named ``hoisted.<value>``; prefill computes it once
(reusing its own node of that name when it computes the same thing, copying the cone
otherwise) and the runtime passes it to every step as state.
"""

from __future__ import annotations

import attrs

from .. import names
from ..errors import PassError
from ..ir import Graph, GraphBuilder, Value, Weight
from .manager import Programs
from .rewrite import depends_on, remap

VARYING = names.STEP_ARGS


def hoisted_name(v: Value) -> str:
    return names.hoisted_name(v.name)


def _invariant(step: Graph) -> set[Value]:
    outs = {k for k, _ in step.outputs}
    varying = {v for v in step.inputs if v.name in VARYING or v.name in outs}
    dep = depends_on(step, varying)
    return {n.out for n in step.nodes if n.out not in dep}


def hoist(prefill: Graph, step: Graph) -> tuple[Graph, Graph]:
    inv = _invariant(step)
    frontier: list[Value] = []
    for n in step.nodes:
        if n.out in inv:
            continue
        for v in n.op.operands():
            if v in inv and v not in frontier:
                frontier.append(v)
    for _, v in step.outputs:
        if v in inv and v not in frontier:
            frontier.append(v)
    if not frontier:
        return prefill, step

    # prefill: compute the frontier (reuse same-named nodes that print the same)
    pb = GraphBuilder.like(prefill)
    pmap: dict[Value, Value] = {}
    for n in prefill.nodes:
        pb.append(n)
    by_name = {n.out.name: n for n in prefill.nodes}
    in_by_name = {v.name: v for v in prefill.inputs}
    needed = depends_on_rev(step, set(frontier))
    for v in step.inputs:
        if v in needed:
            if v.name not in in_by_name:
                raise PassError(f"hoist: step input %{v.name} is fixed but prefill does not take it")
            pmap[v] = in_by_name[v.name]
    for n in step.nodes:
        if n.out not in needed:
            continue
        op = remap(n.op, pmap)
        same = by_name.get(n.out.name)
        if same is not None and _same_op(same.op, op):
            pmap[n.out] = same.out
        else:
            pb.copy(n, op, pmap, "hoist." + n.out.name)
    new_prefill = pb.finish(list(prefill.outputs) + [(hoisted_name(v), pmap[v]) for v in frontier])

    # step: the frontier arrives as inputs; invariant nodes go
    sb = GraphBuilder.like(step)
    smap: dict[Value, Value] = {}
    for v in frontier:
        smap[v] = sb.input(hoisted_name(v), v.type)
    for n in step.nodes:
        if n.out in inv:
            continue
        sb.copy(n, remap(n.op, smap), smap)
    new_step = sb.finish([(k, smap.get(v, v)) for k, v in step.outputs])
    return new_prefill, new_step


def _same_op(a, b) -> bool:
    if type(a) is not type(b) or a.attributes() != b.attributes():
        return False
    return all(x is y for x, y in zip(a.operands(), b.operands()))


def depends_on_rev(g: Graph, roots: set[Value]) -> set[Value]:
    """Every value (inputs included) that one of ``roots`` transitively reads."""
    need = set(roots)
    for n in reversed(g.nodes):
        if n.out in need:
            need.update(v for v in n.op.operands() if not isinstance(v, Weight))
    return need


@attrs.frozen
class HoistInvariant:
    """Move step work that depends only on inputs fixed across steps into prefill."""

    name: str = "hoist_invariant"

    def apply(self, programs: Programs) -> Programs:
        p, s = hoist(programs["prefill"], programs["step"])
        return programs.replace(prefill=p, step=s)
