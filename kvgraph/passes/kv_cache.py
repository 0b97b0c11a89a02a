"""KVCache: a full-sequence graph -> ``prefill`` and ``step`` programs with a KV cache.

Nothing here knows a model family. The pass reads only the IR:

1. *Classify.* Values that depend on the token stream (``tokens``) are *stream* values;
   the rest depend only on inputs fixed across steps (``context``) or on weights.
2. *Check exactness.* Caching is exact iff every stream op treats positions independently
   (``POSITIONWISE``), or is ``positions`` (which gets an offset), or is a causal attention
   whose K/V are both stream values (cached) or both fixed (cross-attention). Anything else
   mixes positions — e.g. a non-causal self-attention, a concat along the sequence — and
   the pass raises :class:`PassError` naming the node, with its IR window.
3. *Rewrite.* ``step`` takes ``tokens`` (the new rows), ``past`` (rows already cached) and
   per-attention caches ``cache.<node>.k|v`` f32[b, past, kv]; it concatenates the new K/V,
   gives the attention ``q_offset=past`` and ``positions`` ``offset=past``, and returns the
   logits of the new rows and the grown caches under the same names. ``prefill`` is the
   full graph returning the last row's logits and the caches.

Layouts (``KVCache(layout=...)``):

- ``"concat"`` (default): caches are f32[b, past, kv] and grow by ``concat`` each step.
- ``"buffer"``: caches are fixed-capacity f32[b, capacity, kv] inputs of *both* programs
  (prefill gets zero-filled ones from the runtime). ``st = cache_store(cache, new, past)``
  writes the new rows at ``past`` and ``cache_view(st, new, past)`` hands attention rows
  ``[0, past+s)``; ``st`` is returned under the input's name. Prefill is the same with
  no ``past`` (offset 0). The MAX lowering makes these caches buffers written in place.

``per_row=True`` (buffer layout only): the step's ``past`` is i64[b], one position per
batch row, so rows at different positions share one step (continuous batching: each row
a different stream). Positions become i64[b, s] (``offset[r] + arange(s)``), each row's
causal mask is its own, ``cache_store`` writes row ``r``'s new K/V at ``past[r]``, and
``cache_view`` hands attention rows ``[0, max(past)+s)`` (the mask hides what a row has
not written). Prefill is the same as without ``per_row``.
"""

from __future__ import annotations

import attrs

from .. import ir, names
from ..errors import PassError
from ..ir import Graph, GraphBuilder, Value
from ..printer import window
from ..types import f32, i64, sym
from .manager import Programs
from .rewrite import depends_on, remap

PAST = sym(names.PAST_DIM)
LAYOUTS = ("concat", "buffer")
STREAM_INPUT = names.TOKENS


def cache_name(attn: Value, which: str) -> str:
    return names.cache_name(attn.name, which)


def _refuse(g: Graph, i: int, why: str):
    n = g.nodes[i]
    raise PassError(
        f"KVCache: cannot cache graph {g.name}: node %{n.out.name} ({n.op.NAME}) {why}\n"
        f"{window(g, i, note=why)}"
    )


def classify(g: Graph) -> tuple[set[Value], list[int]]:
    """Stream values and the indices of attentions whose K/V get cached; refuses what
    caching would get wrong."""
    try:
        tokens = g.input(STREAM_INPUT)
    except KeyError:
        raise PassError(f"KVCache: graph {g.name} has no {STREAM_INPUT!r} input to cache over") from None
    stream = depends_on(g, {tokens})
    cached = []
    for i, n in enumerate(g.nodes):
        op = n.op
        ins = [v in stream for v in op.operands()]
        if not any(ins):
            continue
        if isinstance(op, ir.Attention):
            k_s, v_s = op.k in stream, op.v in stream
            if op.q_offset is not None:
                _refuse(g, i, "already has a q_offset: the graph is cached already")
            if k_s != v_s:
                _refuse(
                    g, i, "reads keys and values of different kinds (one from the token stream, one fixed)"
                )
            if k_s and not op.causal:
                _refuse(
                    g,
                    i,
                    "is a non-causal attention over the token stream: a new token would change "
                    "earlier rows, so their cached K/V would be stale",
                )
            if k_s and op.q not in stream:
                _refuse(g, i, "attends from a fixed query to the token stream")
            if k_s:
                cached.append(i)
        elif isinstance(op, ir.Positions):
            if op.offset is not None:
                _refuse(g, i, "already has an offset: the graph is cached already")
        elif isinstance(op, ir.Concat) and n.out.type.rank == 3 and op.axis % 3 != 1:
            pass  # a concat across features keeps rows independent
        elif not op.POSITIONWISE:
            _refuse(
                g,
                i,
                "mixes positions of the token stream; only position-wise ops and causal "
                "attention can be cached",
            )
    for k, v in g.outputs:
        if v not in stream:
            raise PassError(f"KVCache: output {k}=%{v.name} of graph {g.name} does not depend on the tokens")
    return stream, cached


def _store(b: GraphBuilder, attn: Value, which: str, new: Value, past, capacity: int):
    """Buffer layout: the cache input, its stored value (an output) and the view attention reads."""
    name = cache_name(attn, which)
    t = new.type
    cache = b.input(name, f32(t.shape[0], capacity, t.shape[2]))
    st = b.add(ir.CacheStore(cache, new, past), f"{attn.name}.{which}_store")
    view = b.add(ir.CacheView(st, new, past), f"{attn.name}.{which}_all")
    return (name, st), view


def _grow(b: GraphBuilder, attn: Value, which: str, new: Value):
    """Concat layout: the cache input grown by the new rows; the result is both the next
    cache (an output) and what attention reads."""
    name = cache_name(attn, which)
    t = new.type
    old = b.input(name, f32(t.shape[0], PAST, t.shape[2]))
    grown = b.add(ir.Concat(old, new, 1), f"{attn.name}.{which}_all")
    return (name, grown), grown


def _step(g: Graph, stream: set[Value], cached: list[int], capacity=None, per_row: bool = False) -> Graph:
    b = GraphBuilder(g.name + (".step_rows" if per_row else ".step"))
    mapping: dict[Value, Value] = {}
    for v in g.inputs:
        mapping[v] = b.input(v.name, v.type)
    past = b.input(names.PAST, i64(g.input(STREAM_INPUT).type.shape[0]) if per_row else i64())
    caches: list[tuple[str, Value]] = []
    for i, n in enumerate(g.nodes):
        op = remap(n.op, mapping)
        if n.out not in stream:
            pass  # reads only fixed inputs: its rows are not token positions, nothing shifts
        elif isinstance(op, ir.Positions):
            op = attrs.evolve(op, offset=past)
        elif isinstance(op, ir.Attention) and op.causal:
            if i in cached:
                kv = []
                for which, new in (("k", op.k), ("v", op.v)):
                    if capacity is not None:
                        out, view = _store(b, n.out, which, new, past, capacity)
                    else:
                        out, view = _grow(b, n.out, which, new)
                    caches.append(out)
                    kv.append(view)
                op = attrs.evolve(op, k=kv[0], v=kv[1], q_offset=past)
            else:
                op = attrs.evolve(op, q_offset=past)
        b.copy(n, op, mapping)
    outs = [(k, mapping[v]) for k, v in g.outputs] + caches
    return b.finish(outs)


def _prefill(g: Graph, cached: list[int], capacity=None) -> Graph:
    b = GraphBuilder(g.name + ".prefill")
    mapping: dict[Value, Value] = {}
    for v in g.inputs:
        mapping[v] = b.input(v.name, v.type)
    caches = []
    for i, n in enumerate(g.nodes):
        op = remap(n.op, mapping)
        if i in cached and capacity is not None:
            kv = []
            for which, new in (("k", op.k), ("v", op.v)):
                out, view = _store(b, n.out, which, new, None, capacity)
                caches.append(out)
                kv.append(view)
            b.copy(n, attrs.evolve(op, k=kv[0], v=kv[1]), mapping)
            continue
        b.copy(n, op, mapping)
        if i in cached:
            caches += [(cache_name(n.out, "k"), mapping[n.op.k]), (cache_name(n.out, "v"), mapping[n.op.v])]
    outs = []
    for k, v in g.outputs:
        nv = mapping[v]
        if nv.type.rank == 3:
            nv = b.add(ir.TakeLast(nv), nv.name + ".last")
        outs.append((k, nv))
    return b.finish(outs + caches)


@attrs.frozen
class KVCache:
    """Turn ``full`` into ``prefill`` and ``step`` (see the module docstring)."""

    layout: str = attrs.field(default="concat", validator=attrs.validators.in_(LAYOUTS))
    capacity: int | None = attrs.field(default=None, kw_only=True)
    #: a position per batch row (``past: i64[b]``); buffer layout only
    per_row: bool = attrs.field(default=False, kw_only=True)
    name: str = "kv_cache"

    def __attrs_post_init__(self):
        if self.per_row and self.layout != "buffer":
            raise PassError(
                "KVCache(per_row=True) needs layout='buffer' (rows at different positions write "
                "fixed-capacity caches in place; a concat cache has one length for every row)"
            )
        if self.layout == "buffer":
            if not (isinstance(self.capacity, int) and self.capacity > 0):
                raise PassError(
                    f"KVCache(layout='buffer') needs capacity=<rows per cache, a positive int>, "
                    f"got capacity={self.capacity!r}"
                )
        elif self.capacity is not None:
            raise PassError(f"KVCache(layout={self.layout!r}) takes no capacity (only layout='buffer' does)")

    def apply(self, programs: Programs) -> Programs:
        if "full" not in programs:
            if "step" in programs:
                classify(programs["step"])  # names the node that shows it is cached already
            raise PassError(
                f"KVCache: expects a 'full' program, got {programs.names()}: the programs are cached already"
            )
        g = programs["full"]
        stream, cached = classify(g)
        cap = self.capacity if self.layout == "buffer" else None
        return Programs.of(prefill=_prefill(g, cached, cap), step=_step(g, stream, cached, cap, self.per_row))
