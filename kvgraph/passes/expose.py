"""ExposeAttention: chosen heads' attention scores as extra outputs of a program.

For every attention named in ``which`` (by the name of the value it defines, e.g. ``b0.cross``)
the pass adds, right after it, an ``attention_scores`` node over the same ``q``, ``k`` and
offset with the same heads, scale and mask, selecting the given query heads, and returns it
as the output ``scores.<attention>`` (f32[b, heads chosen, sq, sk], pre-softmax). Nothing
else changes: the program's other outputs are computed as before.

Meant for the full-sequence program (``build``'s ``full``), e.g. to read Whisper's
cross-attention weights over a forced token sequence (word timestamps). The cached
programs are left to the KV-cache pipeline, which knows nothing of these outputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .. import ir, names
from ..errors import InputError
from ..ir import Graph, GraphBuilder
from .manager import Programs


def _which(which) -> tuple[tuple[str, tuple[int, ...] | None], ...]:
    items = which.items() if isinstance(which, Mapping) else which
    out = []
    for attn, heads in items:
        if not isinstance(attn, str):
            raise InputError(f"ExposeAttention: attention names are value names (str), got {attn!r}")
        try:
            heads = None if heads is None else tuple(int(h) for h in heads)
        except (TypeError, ValueError):
            raise InputError(
                f"ExposeAttention: heads of {attn!r} must be ints (or None: all), got {heads!r}"
            ) from None
        out.append((attn, heads))
    return tuple(out)


def expose_attention(g: Graph, which) -> Graph:
    """``g`` with the scores of ``which`` (``{attention value name: heads or None}``, None for
    every head) as extra outputs ``scores.<name>``. Raises InputError naming the attention
    that ``g`` lacks, a head out of range, or an output name already taken."""
    which = dict(_which(which))
    attns = {n.out.name: n for n in g.nodes if isinstance(n.op, ir.Attention)}
    for attn, heads in which.items():
        if attn not in attns:
            raise InputError(
                f"ExposeAttention: graph {g.name} has no attention %{attn}; its attentions: {sorted(attns)}"
            )
        H = attns[attn].op.heads
        bad = heads is not None and (
            not heads or len(set(heads)) < len(heads) or any(not 0 <= h < H for h in heads)
        )
        if bad:
            raise InputError(
                f"ExposeAttention: heads {list(heads)} of %{attn}: expected distinct heads in [0, {H})"
            )
        if any(k == names.scores_name(attn) for k, _ in g.outputs):
            raise InputError(
                f"ExposeAttention: graph {g.name} already has an output {names.scores_name(attn)!r}"
            )
    b = GraphBuilder.like(g)
    for n in g.nodes:
        b.reserve(n.out.name)
    extra = []
    for n in g.nodes:
        b.append(n)
        if n.out.name in which:
            a, heads = n.op, which[n.out.name]
            op = ir.AttentionScores(
                a.q,
                a.k,
                a.heads,
                a.kv_heads,
                a.causal,
                a.scale,
                tuple(range(a.heads)) if heads is None else heads,
                a.q_offset,
            )
            extra.append((names.scores_name(n.out.name), b.add(op, names.scores_name(n.out.name))))
    return b.finish(list(g.outputs) + extra)


@attrs.frozen
class ExposeAttention:
    """Add ``scores.<attention>`` outputs to program ``program`` (by default ``full``).

    ``which``: ``{attention value name: heads}`` (a dict or pairs; heads a sequence of
    query-head indices, or None for all of them)."""

    which: tuple = attrs.field(converter=_which)
    program: str = "full"
    name: str = "expose_attention"

    def apply(self, programs: Programs) -> Programs:
        if self.program not in programs:
            raise InputError(f"ExposeAttention: no program {self.program!r}; have {programs.names()}")
        return programs.replace(**{self.program: expose_attention(programs[self.program], self.which)})
