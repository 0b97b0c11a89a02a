"""The IR: ordered SSA nodes, frozen, one class per op.

A :class:`Graph` holds its inputs, a tuple of :class:`Node` (an op and the value it
defines) and named outputs. Operands are :class:`Value` s: graph inputs, node results,
or :class:`Weight` s (named parameters, printed ``@name``). Every op class documents its
meaning and has ``infer_type()``; the printer reads only these, and three interpreters
have one table (``RULES``, ``{op class: rule}``) each: the NumPy reference
(:mod:`kvgraph.reference`), the MAX lowering (:mod:`kvgraph.max.lower`) and the cost
model (:mod:`kvgraph.cost`). ``@op`` lists every op class in :data:`OP_CLASSES`;
:func:`missing_rules` checks a table against it (``tests/test_rules.py``).

Op classes carry two facts the passes read instead of knowing op names:

- ``POSITIONWISE``: row ``i`` of the result (axis 1, the sequence) depends only on row
  ``i`` of the sequence operands, so the op commutes with dropping or appending rows.
- ``OPERANDS``: the fields that hold values; the rest are attributes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import ClassVar

import attrs

from . import names
from .errors import InputError, IRTypeError
from .types import Dim, TensorType, dim_add, f32, i64, sym


@attrs.frozen(eq=False, repr=False)
class Value:
    """An SSA value. Identity-hashed: two values are the same only if they are one object."""

    #: how the printed IR names it: ``%name``
    SIGIL: ClassVar[str] = "%"

    name: str
    type: TensorType

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@attrs.frozen(eq=False, repr=False)
class Weight(Value):
    """A named parameter, bound to an array of ``weights[name]`` when the graph runs."""

    #: printed as ``@name``
    SIGIL: ClassVar[str] = "@"

    def __repr__(self) -> str:
        return f"@{self.name}: {self.type}"


def _t(v: Value) -> TensorType:
    return v.type


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise IRTypeError(msg)


def _offset_ok(offset: Value, batch, what: str) -> None:
    """An offset (``past``) is an i64[] scalar (every row at the same position) or an
    i64[b] vector over the batch ``batch`` (each row at its own position)."""
    t = _t(offset)
    _need(
        t == i64() or (t.dtype == "i64" and t.rank == 1 and t.shape[0] == batch),
        f"{what} must be i64[] or i64[{batch}] (one per row), got {t}",
    )


def per_row(offset: Value | None) -> bool:
    """Is ``offset`` (a ``past`` / ``q_offset`` operand) given per row (i64[b])?"""
    return offset is not None and _t(offset).rank == 1


def _broadcast(a: TensorType, b: TensorType, what: str) -> tuple[Dim, ...]:
    ra, rb = list(a.shape[::-1]), list(b.shape[::-1])
    out = []
    for i in range(max(len(ra), len(rb))):
        da = ra[i] if i < len(ra) else 1
        db = rb[i] if i < len(rb) else 1
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        else:
            raise IRTypeError(f"{what}: shapes {a} and {b} do not broadcast")
    return tuple(out[::-1])


class Op:
    """Base of all ops. Subclasses are frozen attrs classes."""

    NAME: ClassVar[str] = "?"
    OPERANDS: ClassVar[tuple[str, ...]] = ()
    POSITIONWISE: ClassVar[bool] = False
    #: attributes left out of the printed IR while they hold their default (added after the
    #: IR's text was fixed: graphs that do not use them print as before)
    QUIET: ClassVar[tuple[str, ...]] = ()

    def operands(self) -> tuple[Value, ...]:
        return tuple(v for f in self.OPERANDS if (v := getattr(self, f)) is not None)

    def attributes(self) -> dict:
        return {
            f.name: getattr(self, f.name)
            for f in attrs.fields(type(self))
            if f.name not in self.OPERANDS
            and not (f.name in self.QUIET and getattr(self, f.name) == f.default)
        }

    def replace_operands(self, mapping: dict) -> Op:
        """A copy with every operand ``v`` replaced by ``mapping.get(v, v)``."""
        changes = {
            f: mapping.get(getattr(self, f), getattr(self, f))
            for f in self.OPERANDS
            if getattr(self, f) is not None
        }
        return attrs.evolve(self, **changes)

    def infer_type(self) -> TensorType:  # pragma: no cover - every op overrides
        raise NotImplementedError


_OPS: dict[str, type] = {}  # printed name -> op class, in definition order (filled by @op)


def op(name: str, operands: tuple[str, ...], positionwise: bool = False):
    """Class decorator: a frozen attrs op class with its printed name and operand fields,
    registered in :data:`OP_CLASSES` (a name may be taken once)."""

    def wrap(cls):
        if name in _OPS:
            raise InputError(f"op name {name!r} is taken by {_OPS[name].__name__}")
        cls.NAME = name
        cls.OPERANDS = operands
        cls.POSITIONWISE = positionwise
        cls = attrs.frozen(eq=False)(cls)
        _OPS[name] = cls
        return cls

    return wrap


def missing_rules(table, ops=None) -> list[str]:
    """Names of the op classes (``ops``, by default :data:`OP_CLASSES`) that ``table`` (an
    interpreter's ``{op class: rule}``) has no rule for, in definition order. Every
    interpreter (the NumPy reference, the MAX lowering, the cost model) covers every op;
    ``tests/test_rules.py`` checks it with this."""
    return [c.NAME for c in (OP_CLASSES if ops is None else ops) if c not in table]


# --------------------------------------------------------------------------- ops


@op("embed", ("tokens", "table"), positionwise=True)
class Embed(Op):
    """``table[tokens]``: tokens i64[b, s], table f32[V, d] -> f32[b, s, d]."""

    tokens: Value
    table: Value

    def infer_type(self):
        t, w = _t(self.tokens), _t(self.table)
        _need(t.dtype == "i64" and t.rank == 2, f"embed: tokens must be i64[b, s], got {t}")
        _need(w.dtype == "f32" and w.rank == 2, f"embed: table must be f32[V, d], got {w}")
        return f32(t.shape[0], t.shape[1], w.shape[1])


@op("positions", ("tokens", "offset"))
class Positions(Op):
    """Absolute positions of the rows of ``tokens``: ``offset + arange(s)`` -> i64[s].

    tokens i64[b, s] (only its shape is read); offset an i64[] scalar, or absent (0).
    Full-sequence graphs have no offset; the KV-cache pass sets it to ``past``. With a
    per-row offset i64[b] (``KVCache(per_row=True)``: rows at different positions) the
    result is i64[b, s]: ``offset[r] + arange(s)`` for row ``r``.
    """

    tokens: Value
    offset: Value | None = None

    def infer_type(self):
        t = _t(self.tokens)
        _need(t.rank >= 2, f"positions: tokens must be [b, s, ...], got {t}")
        if self.offset is not None:
            _offset_ok(self.offset, t.shape[0], "positions: offset")
            if per_row(self.offset):
                return i64(t.shape[0], t.shape[1])
        return i64(t.shape[1])


@op("gather_rows", ("table", "index"), positionwise=True)
class GatherRows(Op):
    """``table[index]`` for a table f32[N, d] and index i64[s] -> f32[s, d] (learned
    positions); an index i64[b, s] (per-row positions) gives f32[b, s, d]."""

    table: Value
    index: Value

    def infer_type(self):
        w, i = _t(self.table), _t(self.index)
        _need(w.rank == 2, f"gather_rows: table must be rank 2, got {w}")
        _need(
            i.dtype == "i64" and i.rank in (1, 2), f"gather_rows: index must be i64[s] or i64[b, s], got {i}"
        )
        return f32(*i.shape, w.shape[1])


@op("sinusoid", ("positions",), positionwise=True)
class Sinusoid(Op):
    """Sinusoidal embedding of positions i64[s] -> f32[s, dim]: ``[sin(p*w), cos(p*w)]``
    with ``w_k = exp(-k * log(10000) / (dim/2 - 1))`` (openai-whisper's ``sinusoids``);
    per-row positions i64[b, s] give f32[b, s, dim]."""

    positions: Value
    dim: int

    def infer_type(self):
        p = _t(self.positions)
        _need(
            p.dtype == "i64" and p.rank in (1, 2), f"sinusoid: positions must be i64[s] or i64[b, s], got {p}"
        )
        _need(self.dim % 2 == 0 and self.dim >= 4, f"sinusoid: dim must be even and >= 4, got {self.dim}")
        return f32(*p.shape, self.dim)


@op("rope", ("x", "positions"), positionwise=True)
class Rope(Op):
    """Rotary embedding of x f32[b, s, heads*hd] at positions i64[s] (rotate-half form):
    ``x*cos(p*f) + rotate_half(x)*sin(p*f)``, ``f_j = theta**(-2j/hd)`` repeated twice per head,
    ``rotate_half([x1, x2]) = [-x2, x1]`` over the two halves of each head. Per-row
    positions i64[b, s] rotate row ``r`` of x by its own positions."""

    x: Value
    positions: Value
    heads: int
    theta: float

    def infer_type(self):
        x, p = _t(self.x), _t(self.positions)
        _need(x.rank == 3, f"rope: x must be f32[b, s, h*hd], got {x}")
        _need(
            p.dtype == "i64" and (p.shape == (x.shape[1],) or p.shape == tuple(x.shape[:2])),
            f"rope: positions must be i64[{x.shape[1]}] or i64[{x.shape[0]}, {x.shape[1]}], got {p}",
        )
        _need(
            isinstance(x.shape[2], int) and x.shape[2] % (2 * self.heads) == 0,
            f"rope: width {x.shape[2]} is not heads={self.heads} times an even head size",
        )
        return x


@op("add", ("a", "b"), positionwise=True)
class Add(Op):
    """Elementwise ``a + b`` with NumPy broadcasting (trailing dims align)."""

    a: Value
    b: Value

    def infer_type(self):
        a, b = _t(self.a), _t(self.b)
        _need(a.dtype == b.dtype == "f32", f"add: operands must be f32, got {a} and {b}")
        return f32(*_broadcast(a, b, "add"))


@op("mul", ("a", "b"), positionwise=True)
class Mul(Op):
    """Elementwise ``a * b`` with NumPy broadcasting."""

    a: Value
    b: Value

    def infer_type(self):
        a, b = _t(self.a), _t(self.b)
        _need(a.dtype == b.dtype == "f32", f"mul: operands must be f32, got {a} and {b}")
        return f32(*_broadcast(a, b, "mul"))


@op("linear", ("x", "w", "bias"), positionwise=True)
class Linear(Op):
    """``x @ w.T + bias``: x f32[..., in], w f32[out, in] (PyTorch layout), bias f32[out] or absent.

    ``compute``: the product's arithmetic (:data:`kvgraph.numerics.COMPUTE_TYPES`): ``float32``
    (exact, the default, not printed); ``bfloat16``: x and w rounded to bfloat16, the sums in
    float32; ``int8``: w quantized per output row (:func:`kvgraph.numerics.quantize_int8`), x
    float32, the sums scaled (set by :class:`kvgraph.passes.ComputeType`); the bias is added
    in float32.

    ``exact_top`` (int8 only; 0, the default, is not printed): every output that may rank
    among the ``exact_top`` largest of its row, by the int8 error bound, is computed again in
    float32 from the float weight (:func:`kvgraph.numerics.exact_top`): the largest outputs
    are the float32 ones, so an argmax — after masking up to ``exact_top - 1`` of them — is
    float32's (a vocabulary projection on int8 weights with float32's greedy tokens).
    ``exact_top_splits``: outputs where a new group starts (increasing, inside ``(0, out)``):
    the top ``exact_top`` of each group are float32's (Whisper's timestamp tokens, whose argmax
    is taken alone when its rules mask the text tokens)."""

    QUIET: ClassVar[tuple[str, ...]] = ("compute", "exact_top", "exact_top_splits")

    x: Value
    w: Value
    bias: Value | None = None
    compute: str = "float32"
    exact_top: int = 0
    exact_top_splits: tuple[int, ...] = attrs.field(default=(), converter=tuple)

    def infer_type(self):
        from .numerics import COMPUTE_TYPES

        _need(
            self.compute in COMPUTE_TYPES, f"linear: compute {self.compute!r} is not one of {COMPUTE_TYPES}"
        )
        _need(
            self.exact_top == 0 or (self.compute == "int8" and self.exact_top > 0),
            f"linear: exact_top={self.exact_top} needs compute int8 and a positive count",
        )
        sp = self.exact_top_splits
        _need(
            not sp
            or (
                self.exact_top > 0
                and list(sp) == sorted(set(sp))
                and 0 < sp[0]
                and sp[-1] < _t(self.w).shape[0]
            ),
            f"linear: exact_top_splits={list(sp)} must increase inside (0, {_t(self.w).shape[0]}) with exact_top",
        )
        x, w = _t(self.x), _t(self.w)
        _need(w.rank == 2, f"linear: weight must be f32[out, in], got {w}")
        _need(x.shape[-1] == w.shape[1], f"linear: input width {x.shape[-1]} != weight in-dim {w.shape[1]}")
        if self.bias is not None:
            _need(
                _t(self.bias).shape == (w.shape[0],),
                f"linear: bias must be f32[{w.shape[0]}], got {_t(self.bias)}",
            )
        return f32(*x.shape[:-1], w.shape[0])


@op("layer_norm", ("x", "weight", "bias"), positionwise=True)
class LayerNorm(Op):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis (biased variance)."""

    x: Value
    weight: Value
    bias: Value
    eps: float

    def infer_type(self):
        x = _t(self.x)
        for p in (self.weight, self.bias):
            _need(
                _t(p).shape == (x.shape[-1],),
                f"layer_norm: parameter {_t(p)} does not match width {x.shape[-1]}",
            )
        return x


@op("rms_norm", ("x", "weight"), positionwise=True)
class RMSNorm(Op):
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last axis."""

    x: Value
    weight: Value
    eps: float

    def infer_type(self):
        x = _t(self.x)
        _need(
            _t(self.weight).shape == (x.shape[-1],),
            f"rms_norm: weight {_t(self.weight)} does not match width {x.shape[-1]}",
        )
        return x


@op("gelu", ("x",), positionwise=True)
class Gelu(Op):
    """Exact GELU: ``x * (1 + erf(x / sqrt(2))) / 2``."""

    x: Value

    def infer_type(self):
        return _t(self.x)


@op("silu", ("x",), positionwise=True)
class Silu(Op):
    """SiLU: ``x * sigmoid(x)``."""

    x: Value

    def infer_type(self):
        return _t(self.x)


@op("attention", ("q", "k", "v", "q_offset"))
class Attention(Op):
    """Multi-head (grouped-query) scaled dot-product attention.

    q f32[b, sq, heads*hd]; k, v f32[b, sk, kv_heads*hd] -> f32[b, sq, heads*hd].
    Query head ``h`` reads key/value head ``h // (heads // kv_heads)``. Scores are
    ``(q_h @ k_hᵀ) * scale``, softmax over keys. If ``causal``, query row ``i`` sees key
    ``j`` iff ``j <= q_offset + i``; ``q_offset`` is an i64[] scalar or absent (0), so the
    full-sequence graph is the ``q_offset = 0`` case and a cached step is ``q_offset = past``.

    *Rows sharing a context*: a non-causal attention may read k, v of another (symbolic)
    batch dim ``c`` than q's ``b``: the rows are grouped contiguously, ``b = c x g``, and q
    row ``i`` reads k/v row ``i // g`` (``ShareContexts`` makes beams of one audio read one
    copy of its cross-attention K/V this way). ``b`` must be a multiple of ``c`` at run time.

    ``compute`` (:data:`kvgraph.numerics.COMPUTE_TYPES`; ``float32`` by default, not printed):
    with ``bfloat16`` q, k and v are rounded to bfloat16, the scores summed in float32, the
    softmax's numerators ``e = exp(scores - max)`` kept in float32 for their sum and rounded to
    bfloat16 for the product with v: ``out = (bf16(e) @ bf16(v)) / sum(e)``.
    """

    QUIET: ClassVar[tuple[str, ...]] = ("compute",)

    q: Value
    k: Value
    v: Value
    heads: int
    kv_heads: int
    causal: bool
    scale: float
    q_offset: Value | None = None
    compute: str = "float32"

    def infer_type(self):
        from .numerics import COMPUTE_TYPES

        _need(
            self.compute in COMPUTE_TYPES,
            f"attention: compute {self.compute!r} is not one of {COMPUTE_TYPES}",
        )
        q, k, v = _t(self.q), _t(self.k), _t(self.v)
        _need(q.rank == k.rank == v.rank == 3, f"attention: q, k, v must be rank 3, got {q}, {k}, {v}")
        _need(k.shape == v.shape, f"attention: k {k} and v {v} differ")
        _need(
            self.heads % self.kv_heads == 0,
            f"attention: heads={self.heads} not a multiple of kv_heads={self.kv_heads}",
        )
        _need(
            isinstance(q.shape[2], int) and q.shape[2] % self.heads == 0,
            f"attention: q width {q.shape[2]} not divisible by heads={self.heads}",
        )
        hd = q.shape[2] // self.heads
        _need(
            k.shape[2] == hd * self.kv_heads,
            f"attention: k width {k.shape[2]} != kv_heads={self.kv_heads} * head size {hd}",
        )
        _need(
            q.shape[0] == k.shape[0] or (self.grouped and not self.causal),
            f"attention: batch of q {q} and k {k} differ"
            + (
                " (rows may share k/v of another batch dim only in a non-causal attention)"
                if self.grouped
                else ""
            ),
        )
        if self.q_offset is not None:
            _need(self.causal, "attention: q_offset given to a non-causal attention")
            _offset_ok(self.q_offset, q.shape[0], "attention: q_offset")
        return q

    @property
    def grouped(self) -> bool:
        """Do q's rows read k/v of a distinct symbolic batch dim (rows sharing a context)?"""
        qb, kb = _t(self.q).shape[0], _t(self.k).shape[0]
        return qb != kb and not isinstance(qb, int) and not isinstance(kb, int)


@op("attention_scores", ("q", "k", "q_offset"))
class AttentionScores(Op):
    """The pre-softmax scores of chosen heads of an :class:`Attention` (to read its weights).

    q f32[b, sq, heads*hd], k f32[b, sk, kv_heads*hd] -> f32[b, len(select), sq, sk]: entry
    ``[.., n, i, j]`` is ``(q_h[i] · k_g[j]) * scale`` for query head ``h = select[n]`` and
    its key head ``g = h // (heads // kv_heads)``, as :class:`Attention` computes them
    before its softmax. If ``causal``, keys row ``i`` may not see (``j > q_offset + i``)
    are ``-inf``, so a softmax over the last axis gives the attention's weights.
    """

    q: Value
    k: Value
    heads: int
    kv_heads: int
    causal: bool
    scale: float
    select: tuple = attrs.field(converter=tuple)
    q_offset: Value | None = None

    def infer_type(self):
        q, k = _t(self.q), _t(self.k)
        _need(q.rank == k.rank == 3, f"attention_scores: q, k must be rank 3, got {q}, {k}")
        _need(
            self.heads % self.kv_heads == 0,
            f"attention_scores: heads={self.heads} not a multiple of kv_heads={self.kv_heads}",
        )
        _need(
            isinstance(q.shape[2], int) and q.shape[2] % self.heads == 0,
            f"attention_scores: q width {q.shape[2]} not divisible by heads={self.heads}",
        )
        hd = q.shape[2] // self.heads
        _need(
            k.shape[2] == hd * self.kv_heads,
            f"attention_scores: k width {k.shape[2]} != kv_heads={self.kv_heads} * head size {hd}",
        )
        _need(q.shape[0] == k.shape[0], f"attention_scores: batch of q {q} and k {k} differ")
        _need(
            len(self.select) > 0 and all(isinstance(h, int) and 0 <= h < self.heads for h in self.select),
            f"attention_scores: select={self.select} must name heads in [0, {self.heads})",
        )
        _need(
            len(set(self.select)) == len(self.select),
            f"attention_scores: select={self.select} repeats a head",
        )
        if self.q_offset is not None:
            _need(self.causal, "attention_scores: q_offset given to non-causal scores")
            _offset_ok(self.q_offset, q.shape[0], "attention_scores: q_offset")
        return f32(q.shape[0], len(self.select), q.shape[1], k.shape[1])


@op("concat", ("a", "b"))
class Concat(Op):
    """``a`` then ``b`` along ``axis`` (the KV cache grows this way: ``[b, past+s, d]``)."""

    a: Value
    b: Value
    axis: int = 1

    def infer_type(self):
        a, b = _t(self.a), _t(self.b)
        _need(a.rank == b.rank and a.dtype == b.dtype, f"concat: {a} and {b} differ in rank or dtype")
        ax = self.axis
        for i, (da, db) in enumerate(zip(a.shape, b.shape)):
            _need(i == ax or da == db, f"concat: dim {i} differs: {a} vs {b}")
        shape = list(a.shape)
        shape[ax] = dim_add(a.shape[ax], b.shape[ax])
        return TensorType(a.dtype, shape)


@op("cache_store", ("cache", "new", "past"))
class CacheStore(Op):
    """The fixed-capacity cache with rows ``[past, past+s)`` replaced by ``new``.

    cache f32[b, cap, d], new f32[b, s, d], past an i64[] scalar or absent (0)
    -> f32[b, cap, d]; ``past + s <= cap`` is required (the reference raises otherwise).
    With a per-row past i64[b], row ``r`` gets ``new[r]`` at rows ``[past[r], past[r]+s)``.
    Functional meaning; the MAX lowering writes the cache input buffer in place, so the
    result is the same buffer and a graph output holding it is the mutated input.
    """

    cache: Value
    new: Value
    past: Value | None = None

    def infer_type(self):
        c, n = _t(self.cache), _t(self.new)
        _need(
            c.rank == 3 and n.rank == 3 and c.dtype == n.dtype == "f32",
            f"cache_store: cache and new must be f32 rank 3, got {c} and {n}",
        )
        _need(
            c.shape[0] == n.shape[0] and c.shape[2] == n.shape[2],
            f"cache_store: new {n} does not fit cache {c} (batch and width must match)",
        )
        _need(isinstance(c.shape[1], int), f"cache_store: cache capacity must be static, got {c}")
        if self.past is not None:
            _offset_ok(self.past, c.shape[0], "cache_store: past")
        return c


@op("cache_view", ("cache", "new", "past"))
class CacheView(Op):
    """The filled rows ``[0, past+s)`` of a fixed-capacity cache: cache f32[b, cap, d],
    new f32[b, s, d] (only its length ``s`` is read), past an i64[] scalar (the symbolic
    dim ``past``) or absent (0) -> f32[b, past+s, d] (f32[b, s, d] without past). With a
    per-row past i64[b] the view is rows ``[0, max(past)+s)`` (the dim ``past`` is then the
    largest row's): each row's attention masks the keys beyond its own ``past[r]+i``."""

    cache: Value
    new: Value
    past: Value | None = None

    def infer_type(self):
        c, n = _t(self.cache), _t(self.new)
        _need(c.rank == 3 and n.rank == 3, f"cache_view: cache and new must be rank 3, got {c} and {n}")
        if self.past is None:
            return TensorType(c.dtype, (c.shape[0], n.shape[1], c.shape[2]))
        _offset_ok(self.past, c.shape[0], "cache_view: past")
        return TensorType(c.dtype, (c.shape[0], dim_add(sym(names.PAST_DIM), n.shape[1]), c.shape[2]))


@op("take_last", ("x",))
class TakeLast(Op):
    """The last row along axis 1: x f32[b, s, d] -> f32[b, 1, d]."""

    x: Value

    def infer_type(self):
        x = _t(self.x)
        _need(x.rank == 3, f"take_last: x must be rank 3, got {x}")
        return TensorType(x.dtype, (x.shape[0], 1, x.shape[2]))


@op("transpose", ("x",))
class Transpose(Op):
    """Swap axes 1 and 2: x[b, m, n] -> [b, n, m]."""

    x: Value

    def infer_type(self):
        x = _t(self.x)
        _need(x.rank == 3, f"transpose: x must be rank 3, got {x}")
        return TensorType(x.dtype, (x.shape[0], x.shape[2], x.shape[1]))


@op("conv1d", ("x", "w", "bias"))
class Conv1d(Op):
    """1-D convolution, channels last: x f32[b, t, cin], w f32[cout, cin, k] (PyTorch layout),
    bias f32[cout] -> f32[b, (t + 2*padding - k) // stride + 1, cout]; zero padding.
    ``compute``: as :class:`Linear`'s (``bfloat16``: x and w rounded, float32 sums)."""

    QUIET: ClassVar[tuple[str, ...]] = ("compute",)

    x: Value
    w: Value
    bias: Value
    stride: int = 1
    padding: int = 0
    compute: str = "float32"

    def infer_type(self):
        from .numerics import COMPUTE_TYPES

        _need(
            self.compute in COMPUTE_TYPES, f"conv1d: compute {self.compute!r} is not one of {COMPUTE_TYPES}"
        )
        x, w = _t(self.x), _t(self.w)
        _need(
            x.rank == 3 and w.rank == 3, f"conv1d: x must be [b, t, cin] and w [cout, cin, k], got {x}, {w}"
        )
        _need(x.shape[2] == w.shape[1], f"conv1d: input channels {x.shape[2]} != weight's {w.shape[1]}")
        t = x.shape[1]
        _need(isinstance(t, int), f"conv1d: time axis must be static, got {t}")
        t_out = (t + 2 * self.padding - w.shape[2]) // self.stride + 1
        return f32(x.shape[0], t_out, w.shape[0])


#: Every op class, in definition order: those the ``@op`` decorator registered above.
OP_CLASSES: tuple[type, ...] = tuple(_OPS.values())


# ------------------------------------------------------------------------ graph


@attrs.frozen(eq=False)
class Node:
    """``out = op(...)``: one op and the value it defines."""

    op: Op
    out: Value


@attrs.frozen(eq=False)
class Graph:
    """A program: inputs, ordered nodes (SSA), named outputs. Frozen: passes build new graphs.

    ``str(graph)`` is the printed IR, e.g. ::

        graph tiny(%tokens: i64[b, s]) {
          %x = embed %tokens, @tok : f32[b, s, 8]
          ...
          return logits=%logits
        }
    """

    name: str
    inputs: tuple[Value, ...] = attrs.field(converter=tuple)
    nodes: tuple[Node, ...] = attrs.field(converter=tuple)
    outputs: tuple[tuple[str, Value], ...] = attrs.field(converter=tuple)

    def weights(self) -> tuple[Weight, ...]:
        seen: dict[str, Weight] = {}
        for n in self.nodes:
            for v in n.op.operands():
                if isinstance(v, Weight):
                    seen.setdefault(v.name, v)
        return tuple(seen.values())

    def output(self, name: str) -> Value:
        for k, v in self.outputs:
            if k == name:
                return v
        raise KeyError(f"graph {self.name} has no output {name!r}; outputs: {[k for k, _ in self.outputs]}")

    def input(self, name: str) -> Value:
        for v in self.inputs:
            if v.name == name:
                return v
        raise KeyError(f"graph {self.name} has no input {name!r}")

    def producers(self) -> dict[Value, Node]:
        return {n.out: n for n in self.nodes}

    def users(self) -> dict[Value, list[Node]]:
        out: dict[Value, list[Node]] = {}
        for n in self.nodes:
            for v in n.op.operands():
                out.setdefault(v, []).append(n)
        return out

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __str__(self) -> str:
        from .printer import format_graph

        return format_graph(self)


class GraphBuilder:
    """The one mutable thing: appends nodes, hands out unique value names, makes a Graph.

    Passes build their rewritten graphs with :meth:`like` and :meth:`copy` (and
    :meth:`input`, :meth:`add`, :meth:`append`); nothing outside this class touches
    ``inputs`` or ``nodes``."""

    def __init__(self, name: str):
        self.name = name
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self._weights: dict[str, Weight] = {}

    @classmethod
    def like(cls, g: Graph, name: str | None = None) -> GraphBuilder:
        """A builder for a rewrite of ``g``: named like ``g`` (or ``name``), taking ``g``'s
        inputs as they are (the same values, so ``g``'s nodes may read them unchanged)."""
        b = cls(g.name if name is None else name)
        for v in g.inputs:
            b.inputs.append(v)
            b.reserve(v.name)
        return b

    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._names:
            k += 1
            name = f"{hint}.{k}"
        self._names.add(name)
        return name

    def reserve(self, name: str) -> None:
        self._names.add(name)

    def input(self, name: str, type: TensorType) -> Value:
        if name in self._names:
            raise InputError(f"input name {name!r} already used")
        self._names.add(name)
        v = Value(name, type)
        self.inputs.append(v)
        return v

    def weight(self, name: str, shape: tuple[int, ...]) -> Weight:
        w = self._weights.get(name)
        if w is None:
            w = self._weights[name] = Weight(name, f32(*shape))
        return w

    def add(self, op: Op, hint: str) -> Value:
        v = Value(self.fresh(hint), op.infer_type())
        self.nodes.append(Node(op, v))
        return v

    def append(self, node: Node) -> Value:
        """Append ``node`` as it is (its value and name)."""
        self._names.add(node.out.name)
        self.nodes.append(node)
        return node.out

    def copy(self, node: Node, op: Op, mapping: dict, name: str | None = None) -> Value:
        """Append ``op`` (operands already remapped) as the copy of ``node``, named like
        ``node`` (or ``name``) when that name is free; records ``mapping[node.out]``."""
        v = Value(self.fresh(name or node.out.name), op.infer_type())
        self.nodes.append(Node(op, v))
        mapping[node.out] = v
        return v

    def finish(self, outputs) -> Graph:
        return Graph(self.name, tuple(self.inputs), tuple(self.nodes), tuple(outputs))


def scale_for(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
