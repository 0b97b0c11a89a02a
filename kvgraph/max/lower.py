"""Lowering to MAX Graph: an interpreter over the IR, one rule per op class (``RULES``),
emitting :mod:`kvgraph.max.kernels`.

Weights become MAX ``Weight`` s bound once, when the compiled model is loaded, from a
registry this module builds. A rule may ask for a weight in a layout that suits its
kernel (a Linear weight pre-transposed to ``[in, out]``, a conv weight as RSCF); the
registry then holds that layout, computed once on the host. Nothing weight-sized is
ever a per-call input.

Fixed-capacity caches (``cache_store`` / ``cache_view``) lower to MAX buffers: a graph
input that a ``cache_store`` writes is a ``BufferType`` written in place with
``buffer_store_slice``; a graph output holding such a buffer is not emitted (the caller
keeps the input buffer of that name, see :func:`kvgraph.analysis.buffer_outputs`). In a
step program with kvgraph's custom kernels a ``cache_view`` stays unread (:class:`_CacheView`)
until something needs it as a tensor: a causal attention over such views reads the buffers
in place (``kernels.attention_cache``), since ``buffer_load`` copies the whole buffer.

Errors raised while emitting a node are re-raised as :class:`LoweringError` carrying
that node's printed IR line.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from max.dtype import DType
from max.graph import BufferType, BufferValue, DeviceRef, ops
from max.graph import Graph as MaxGraph
from max.graph import TensorType as MaxTensorType
from max.graph import Weight as MaxWeight

from .. import ir
from ..analysis import buffer_values, f16_exact
from ..errors import LoweringError
from ..numerics import EXACT_TOP_SLACK, bf16_panels, quantize_int8, round_bf16
from ..printer import format_node, window
from ..types import TensorType
from . import custom, isa
from . import kernels as K

WEIGHT_MODES = ("registry", "constant")

#: Most rows (product of a linear's leading dims) computed as a float16 GEMV: MAX's own form
#: reads the weight once per row and beats the float32 GEMM up to about 3 rows (see
#: ``kernels.linear_gemv``); kvgraph's custom kernel reads it once for all rows and beats the
#: GEMM up to about 16 (``kernels.linear_gemv_once``).
#: (The custom kernel's limit is a table keyed by the CPU's instruction-set class,
#: :func:`kvgraph.max.isa.thresholds`; its inner dim must be a multiple of the class's
#: vector width, ``isa.host().lanes``.)
FEW_ROWS = 2

# layout name -> host transform of a torch-layout array
LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "plain": lambda a: a,
    "T": lambda a: a.T,  # Linear: [out, in] -> [in, out]
    "rscf": lambda a: a.transpose(2, 1, 0)[None],  # Conv1d: [cout, cin, k] -> [1, k, cin, cout]
    # bfloat16 linears: the kernels' packed panels (uint16 bits), or the values rounded
    # to bfloat16 as float32 [in, out] for the emulation on MAX's float32 GEMM
    "bf16_panels": bf16_panels,
    "bf16_T": lambda a: round_bf16(a).T,
    # bfloat16 conv1d: its weight as the linear of the im2col form ([cout, k * cin]), packed;
    # or rounded, in RSCF
    "bf16_conv_panels": lambda a: bf16_panels(a.transpose(0, 2, 1).reshape(a.shape[0], -1)),
    "bf16_rscf": lambda a: round_bf16(a).transpose(2, 1, 0)[None],
    # int8 linears: the quantized weight (int8, [out, in]) and its per-row scales; the same
    # integers as float32 [in, out] for the GEMM of many rows
    "int8": lambda a: quantize_int8(a)[0],
    "int8_scale": lambda a: quantize_int8(a)[1],
    "int8_T": lambda a: quantize_int8(a)[0].T,
}
_MAX_DTYPES = {
    np.dtype(np.float32): DType.float32,
    np.dtype(np.float16): DType.float16,
    np.dtype(np.uint16): DType.uint16,
    np.dtype(np.int8): DType.int8,
}
#: layouts whose arrays keep their own dtype (packed bits, quantized integers)
_OWN_DTYPES = (np.dtype(np.uint16), np.dtype(np.int8))


def max_dim(d):
    if isinstance(d, int):
        return d
    if len(d.terms) == 1 and not d.const:
        return d.terms[0]
    raise LoweringError(f"input dim {d} is a sum; graph inputs take plain symbols")


def max_type(t: TensorType, buffer: bool = False):
    dt = DType.float32 if t.dtype == "f32" else DType.int64
    if buffer:
        return BufferType(dt, [max_dim(d) for d in t.shape], device=DeviceRef.CPU())
    return MaxTensorType(dt, [max_dim(d) for d in t.shape], device=DeviceRef.CPU())


class LowerCtx:
    """State of one lowering: the weight registry and the MAX weights emitted so far.

    ``f16_weights``: a matrix weight whose values are all exactly float16 (checked, see
    :func:`f16_exact`) is also held as float16 for the kernels that read it once per
    token (the few-rows ``linear`` and ``embed``); the arithmetic stays float32, so
    results are those of the float32 weights, with half the bytes to read.

    A linear counts as few-rows when its input's static leading dims hold at most
    ``FEW_ROWS`` rows and its symbolic ones are all in ``few_dims`` (dims that are small
    at run time, e.g. the batch); a few-rows linear on a float16 copy is a GEMV
    (``kernels.linear_gemv_once``, kvgraph's custom kernel reading the weight once for all
    rows, or MAX's own ``kernels.linear_gemv``). ``always_few`` (a program only run with few
    rows) lowers causal attention to ``kernels.attention_few``; so does ``few_attention``
    alone (a step of one token per row over many rows, ``step_rows``: there each linear is
    kvgraph's float16 GEMM, the GEMV up to ``isa.thresholds().few_rows_custom`` rows inside
    the kernel; without the kernels, a run-time ``cond`` picks the GEMV or the float32 GEMM)."""

    def __init__(
        self,
        weights: dict[str, np.ndarray],
        mode: str = "registry",
        f16_weights: bool = True,
        few_dims=frozenset(),
        always_few: bool = False,
        few_attention: bool = False,
        bf16_engine: str = "emulate",
        exact_top: bool = False,
    ):
        if mode not in WEIGHT_MODES:
            raise LoweringError(f"weights mode {mode!r}: expected one of {WEIGHT_MODES}")
        self.weights, self.mode = weights, mode
        self.few_dims, self.always_few = frozenset(few_dims), always_few
        self.few_attention = few_attention
        self.f16_weights = f16_weights and mode == "registry"
        # kvgraph's custom kernels (a built Mojo package), for programs with few-row linears
        wanted = (self.f16_weights and (few_dims or always_few)) or (
            (bf16_engine != "emulate" or exact_top) and mode == "registry"
        )
        self.kernels = custom.kernel_package() if wanted else None
        #: the kernels' engine of bfloat16 products ("amx", "avx512"), or None: emulated on
        #: MAX's float32 ops
        self.bf16_kernel = bf16_engine if bf16_engine != "emulate" and self.kernels is not None else None
        self.registry: dict[str, np.ndarray] = {}
        #: registry name -> (weight name, layout, f16); a fused weight's name is the tuple of
        #: its members' names (:func:`source_array`)
        self.recipe: dict[str, tuple] = {}
        self._emitted: dict[str, object] = {}
        self._half: dict[str, bool] = {}
        #: linears reading one input, by that IR value (:func:`_fusable_linears`), and the
        #: slices of their fused product once emitted, by op
        self.siblings: dict[ir.Value, tuple] = {}
        self.fused: dict[ir.Op, object] = {}

    @property
    def step_attention(self) -> bool:
        """Attention here is a step's few query rows (``always_few`` or ``few_attention``)."""
        return self.always_few or self.few_attention

    def _source(self, w: ir.Weight | tuple) -> np.ndarray:
        if isinstance(w, tuple):  # a fused weight: its members' matrices stacked
            return stack_rows([self._source(m) for m in w])
        if w.name not in self.weights:
            raise LoweringError(f"missing weight {w.name!r} ({w.type})")
        src = np.asarray(self.weights[w.name])
        if src.shape != tuple(w.type.shape):
            raise LoweringError(f"weight {w.name!r} expects {w.type}, got shape {src.shape}")
        return src

    def half(self, w) -> bool:
        """May ``w`` (an IR value) be read as float16 without changing any result?"""
        if not (self.f16_weights and isinstance(w, ir.Weight) and w.type.rank == 2):
            return False
        if w.name not in self._half:
            self._half[w.name] = f16_exact(self._source(w))
        return self._half[w.name]

    def weight(self, w: ir.Weight | tuple, layout: str = "plain", f16: bool = False):
        """The MAX value of weight ``w`` in ``layout`` (as float16 with ``f16``); ``w`` a tuple
        of weights: their matrices stacked along the output axis (one fused linear)."""
        name = tuple(m.name for m in w) if isinstance(w, tuple) else w.name
        base = FUSED.join(name) if isinstance(w, tuple) else name
        key = (base if layout == "plain" else f"{base}@{layout}") + ("#f16" if f16 else "")
        if key not in self._emitted:
            arr = weight_array(self._source(w), layout, f16)
            if self.mode == "constant":
                self._emitted[key] = ops.constant(arr, _MAX_DTYPES[arr.dtype], DeviceRef.CPU())
            else:
                self.registry[key] = arr
                self.recipe[key] = (name, layout, f16)
                self._emitted[key] = MaxWeight(key, _MAX_DTYPES[arr.dtype], list(arr.shape), DeviceRef.CPU())
        return self._emitted[key]


#: joins a fused weight's member names in its registry key
FUSED = "+"


def stack_rows(mats: list[np.ndarray]) -> np.ndarray:
    """Linear weights ``[out_i, in]`` (torch layout) of linears reading one input, stacked
    along the output axis: the ``[sum out_i, in]`` weight of their fused product."""
    return np.concatenate(mats, axis=0)


def source_array(weights: dict, name) -> np.ndarray:
    """The array a recipe entry reads: ``weights[name]``, or for a fused entry (``name`` a
    list or tuple of names) their matrices stacked (:func:`stack_rows`). Raises KeyError
    naming a missing weight."""
    if isinstance(name, (list, tuple)):
        return stack_rows([source_array(weights, n) for n in name])
    if name not in weights:
        raise KeyError(name)
    return np.asarray(weights[name])


def weight_array(src: np.ndarray, layout: str = "plain", f16: bool = False) -> np.ndarray:
    """The host array MAX binds for weight ``src`` in ``layout`` (:data:`LAYOUTS`), as
    float16 or float32 (or the bits a layout makes itself: bfloat16 panels are uint16): made
    in one pass, or ``src`` itself when it already is that."""
    view = LAYOUTS[layout](src)
    dt = view.dtype if view.dtype in _OWN_DTYPES else (np.float16 if f16 else np.float32)
    if view.dtype == dt and view.flags.c_contiguous:
        arr = view  # e.g. a float16 weight read by a float16 kernel: shared, not copied
    else:  # layout and dtype in one pass (no intermediate converted copy)
        arr = np.empty(view.shape, dt)
        arr[...] = view
    if arr.ctypes.data % arr.dtype.alignment:  # MAX refuses misaligned weights
        arr = arr.copy()
    return arr


def _arg(ctx, env, v, layout="plain"):
    if v is None:
        return None
    if isinstance(v, ir.Weight):
        return ctx.weight(v, layout)
    return env[v]


def _int8_linear(op, x, b, ctx):
    """``s * (x @ q.T) + b``: the int8 GEMV (kvgraph's kernel) for a few rows, the float32
    GEMM over the same integers beyond (exact emulation: the integers are float32 values)."""
    if not isinstance(op.w, ir.Weight):
        raise LoweringError("an int8 linear needs a weight parameter (@name) as its matrix")
    if op.exact_top and ctx.kernels is None:
        # no kernel package (custom kernels off, or it did not build): every output in float32,
        # the top ones among them (what exact_top promises; the rest exact too)
        return K.linear(x, ctx.weight(op.w, "T"), b, w_transposed=True)
    scale = ctx.weight(op.w, "int8_scale")
    static, sym = K.leading_dims(x)
    few = static <= FEW_ROWS and set(sym) <= ctx.few_dims
    if not few or ctx.kernels is None or op.w.type.shape[1] % isa.host().lanes:
        y = K.linear(x, ctx.weight(op.w, "int8_T"), None, w_transposed=True)
    elif not ctx.few_attention or ctx.always_few:
        y = K.gemv_i8(x, ctx.weight(op.w, "int8"))
    else:  # step_rows: the GEMV up to the class's few rows, the GEMM beyond
        few_rows = isa.thresholds().few_rows_custom
        y = K.linear_few_rows(
            x, ctx.weight(op.w, "int8"), ctx.weight(op.w, "int8_T"), None, few_rows, K.gemv_i8
        )
    y = y * scale
    y = y if b is None else y + b
    if op.exact_top:  # the largest outputs again in float32, from the float weight
        w = ctx.weight(op.w, "plain", f16=ctx.half(op.w))
        c = 0.5 * (1 + EXACT_TOP_SLACK)
        y = K.exact_top(y, x, w, scale, b, op.exact_top, c, op.exact_top_splits)
    return y


def _rule_linear(op, env, ctx):
    x, b = _arg(ctx, env, op.x), _arg(ctx, env, op.bias)
    if op.compute == "int8":
        return _int8_linear(op, x, b, ctx)
    if op.compute == "bfloat16":
        if not isinstance(op.w, ir.Weight):
            raise LoweringError("a bfloat16 linear needs a weight parameter (@name) as its matrix")
        if ctx.bf16_kernel:
            panels = ctx.weight(op.w, "bf16_panels")
            return K.linear_bf16_kernel(x, panels, int(op.w.type.shape[0]), b, ctx.bf16_kernel)
        return K.linear_bf16_emulated(x, ctx.weight(op.w, "bf16_T"), b)
    static, sym = K.leading_dims(x)
    few_rows = static <= FEW_ROWS and set(sym) <= ctx.few_dims
    if few_rows and ctx.half(op.w):
        # rows only over dims declared few (a step's tokens; prefill's last row per batch
        # row): the float16 GEMV, so no float32 copy of the weight is held (for prefill's
        # vocabulary projection it would be the largest array, 80 MB for tiny.en; a GEMM
        # branch widening the float16 weight was folded by MAX into such a copy at load).
        # kvgraph's custom GEMV reads the weight once for all rows; MAX's own, once per row.
        w16 = ctx.weight(op.w, "plain", f16=True)
        once = ctx.kernels is not None and op.w.type.shape[1] % isa.host().lanes == 0
        gemv = K.linear_gemv_once if once else K.linear_gemv
        if not ctx.few_attention or ctx.always_few:
            return gemv(x, w16, b)
        if once and isa.thresholds().few_rows_custom == K.GEMM_F16_GEMV_ROWS:
            # step_rows, as many rows as a pool holds: kvgraph's float16 GEMM is the GEMV up to
            # the class's few rows and a GEMM over per-call widened panels beyond, one kernel,
            # so no run-time branch (a ``cond``, ~10 us a linear a step) and no float32 copy
            # of the weight (tiny.en: 80 MB for the vocabulary, ~38 MB for the layers)
            return K.linear_gemm_f16(x, w16, b)
        # step_rows without the custom GEMM (or a class whose few rows are not the kernel's):
        # a run-time choice of the GEMV or the float32 GEMM beyond what the GEMV serves well
        few = isa.thresholds().few_rows_custom if once else FEW_ROWS
        group = ctx.siblings.get(op.x, ())
        if op in group and all(ctx.half(m.w) for m in group):  # the GEMM beyond: one product
            return _grouped(
                op,
                b,
                group,
                ctx,
                lambda: K.linear_few_rows_stacked(
                    x,
                    [ctx.weight(m.w, "plain", f16=True) for m in group],
                    ctx.weight(tuple(m.w for m in group), "T"),
                    few,
                    gemv,
                ),
            )
        return K.linear_few_rows(x, w16, _arg(ctx, env, op.w, "T"), b, few, gemv)
    group = ctx.siblings.get(op.x, ())
    if not few_rows and _gemm_f16(op, group, ctx):
        # many rows (a prompt's prefill) over a float16-exact weight: kvgraph's GEMM reads
        # the float16 weight the steps' GEMVs read, widened per call, so no float32 copy is
        # held for it (the decoder's layers: ~38 MB for tiny.en)
        return K.linear_gemm_f16(x, ctx.weight(op.w, "plain", f16=True), b)
    if not few_rows and op in group:  # all of them take the GEMM: one product
        return _fused_linear(op, x, b, group, ctx)
    return K.linear(x, _arg(ctx, env, op.w, "T"), b, w_transposed=True)


def _gemm_f16(op, group: tuple, ctx) -> bool:
    """Whether linear ``op`` (not few rows) takes kvgraph's float16 GEMM: the kernels are
    loaded (a program with few-row linears too: a prefill, never an encoder), its weight and
    those of the linears it would be fused with are float16-exact, the inner dim a multiple
    of the vector width."""
    if ctx.kernels is None or ctx.few_attention or not isinstance(op.w, ir.Weight):
        return False
    if op.w.type.shape[1] % isa.host().lanes:  # a weight's dims are numbers
        return False
    return all(ctx.half(m.w) for m in (group if op in group else (op,)))


def _fusable_linears(g: ir.Graph) -> dict[ir.Value, tuple]:
    """The float32 linears of ``g`` by the input they read, where two or more read one input
    through weight parameters (an attention's query, key and value projections): lowered as
    one GEMM over their stacked weights (:func:`_fused_linear`). MAX fuses such products
    itself, by a stacked copy of the weights that it makes at every load and keeps beside the
    registry's (measured: a second load of one compiled program grew by their size);
    stacked in the registry, the weights are held once."""
    by_input: dict[ir.Value, list] = {}
    for n in g.nodes:
        op = n.op
        if isinstance(op, ir.Linear) and op.compute == "float32" and isinstance(op.w, ir.Weight):
            group = by_input.setdefault(op.x, [])
            if op not in group:
                group.append(op)
    return {x: tuple(ops_) for x, ops_ in by_input.items() if len(ops_) > 1}


def _fused_linear(op, x, b, group: tuple, ctx):
    """Linear ``op`` of ``group`` (float32 linears reading ``x``, taking the GEMM): the
    first of them to be lowered emits one product over their stacked weights; each takes
    its slice of the outputs and adds its own bias. Every output is the same sum over the
    input as apart (a GEMM's output columns do not mix)."""

    def product():
        y = K.linear(x, ctx.weight(tuple(m.w for m in group), "T"), None, w_transposed=True)
        return K.split_last(y, [int(m.w.type.shape[0]) for m in group])

    return _grouped(op, b, group, ctx, product)


def _grouped(op, b, group: tuple, ctx, product):
    """Linear ``op`` of ``group`` (linears of one input lowered as one product): the first of
    them to be lowered emits ``product()`` (each member's outputs, in the group's order);
    each takes its own and adds its bias."""
    if op not in ctx.fused:
        ctx.fused.update(zip(group, product()))
    y = ctx.fused[op]
    return y if b is None else y + b


def _rule_embed(op, env, ctx):
    half = ctx.half(op.table)
    return K.embed(
        _arg(ctx, env, op.tokens),
        ctx.weight(op.table, "plain", f16=half) if half else _arg(ctx, env, op.table),
    )


def _rule_positions(op, env, ctx):
    if ir.per_row(op.offset):
        return K.positions_rows(env[op.offset], env[op.tokens])
    off = env[op.offset] if op.offset is not None else ops.constant(np.int64(0), DType.int64, DeviceRef.CPU())
    return K.positions(off, env[op.tokens], axis=1)


def _attend_kernel(ctx, q, heads: int) -> bool:
    """Whether kvgraph's attention kernels (``kvgraph_attend_f32``, ``kvgraph_cache_attend_f32``)
    can serve this attention: the custom kernels are loaded and the head size is one they handle."""
    if ctx.kernels is None:
        return False
    try:
        width = int(q.shape[-1])
    except (TypeError, ValueError):  # a symbolic width
        return False
    return width % heads == 0 and width // heads in K.ATTEND_HEAD_DIMS


def _rule_attention(op, env, ctx):
    # In a program only run with few rows (a decode step) causal self-attention reads the
    # cache in its stored layout (``attention_few``): no per-call head-major copies of a
    # growing cache. Unmasked attention there goes to kvgraph's ``attention_context`` kernel
    # when the custom kernels are loaded; otherwise (and in full-sequence programs) the
    # matmul form, which MAX fuses into its flash-attention kernel (measured: faster than
    # ``attention_few``'s broadcast form over 1500 audio frames).
    if op.compute == "bfloat16":
        return _bf16_attention(op, env, ctx)
    few = ctx.step_attention
    q = _arg(ctx, env, op.q)
    kv = [env.raw(x) if not isinstance(x, ir.Weight) else None for x in (op.k, op.v)]
    if (
        few
        and op.causal
        and not op.grouped
        # unread views (one read already, e.g. before a later store, must be used as read),
        # of float32 caches, of one length (attention's type rule)
        and all(isinstance(x, _CacheView) and x.loaded is None and x.buf.dtype == DType.float32 for x in kv)
        and q.dtype == DType.float32
        and _attend_kernel(ctx, q, op.heads)
    ):
        # a step's causal self-attention over cache buffers: kvgraph's kernel reads them in
        # place (a cache view loaded through the graph is a copy of the whole buffer)
        q_off = env[op.q_offset] if op.q_offset is not None else None
        return K.attention_cache(q, kv[0].buf, kv[1].buf, op.heads, op.kv_heads, q_off, kv[0].end, op.scale)
    fn = K.attention_few if few and op.causal else K.attention
    k = _arg(ctx, env, op.k)
    if few and not op.causal and op.q_offset is None and _attend_kernel(ctx, q, op.heads):
        # unmasked attention of a step's few rows over a context (Whisper's cross-attention
        # over the hoisted audio K/V): kvgraph's kernel reads K and V once per context and
        # head for all the context's rows, in their stored layout
        fn = K.attention_context
    if op.grouped:  # rows sharing a context: the g = b // c rows of context i are one block
        b, sq, w = q.shape
        c = k.shape[0]
        g = b // c  # (rebind: MAX checks b == c * g when the program runs)
        q = ops.reshape(q.rebind([c * g, sq, w]), [c, g * sq, w])
    out = fn(
        q, k, _arg(ctx, env, op.v), op.heads, op.kv_heads, op.causal, _arg(ctx, env, op.q_offset), op.scale
    )
    if op.grouped:
        out = ops.reshape(out, [c * g, sq, w]).rebind([b, sq, w])
    return out


def _bf16_attention(op, env, ctx):
    """Attention in the bfloat16 compute type: the kernel for an unmasked attention of
    one context per row (an encoder's), else the definition on float32 ops."""
    q, k, v = (_arg(ctx, env, x) for x in (op.q, op.k, op.v))
    try:
        dh = int(q.shape[-1]) // op.heads
    except (TypeError, ValueError):
        dh = 0
    if ctx.bf16_kernel and not op.causal and not op.grouped and op.q_offset is None and dh % 32 == 0 and dh:
        return K.attention_bf16_kernel(q, k, v, op.heads, op.scale, ctx.bf16_kernel)
    if op.grouped:
        raise LoweringError("bfloat16 attention over shared contexts is not lowered")
    return K.attention(
        q, k, v, op.heads, op.kv_heads, op.causal, _arg(ctx, env, op.q_offset), op.scale, bf16=True
    )


def _rule_attention_scores(op, env, ctx):
    return K.attention_scores(
        _arg(ctx, env, op.q),
        _arg(ctx, env, op.k),
        op.heads,
        op.kv_heads,
        op.causal,
        _arg(ctx, env, op.q_offset),
        op.scale,
        op.select,
    )


def _rows(op, env):
    """(start, end) int64 scalars of the rows ``[past, past+s)`` a cache op addresses."""
    start = env[op.past] if op.past is not None else ops.constant(np.int64(0), DType.int64, DeviceRef.CPU())
    return start, start + K.scalar_dim(env[op.new].shape[1])


def _dim_name(d) -> str:
    """A MAX dim name for a symbolic IR dim (``past+s`` -> ``past_s``)."""
    if isinstance(d, int):
        return d
    return "_".join(list(d.terms) + ([str(d.const)] if d.const else []))


def _store_rows(buf, new, past):
    """Per-row ``cache_store`` without the custom kernels: row ``r`` of ``new`` into rows
    ``[past[r], past[r]+s)`` of row ``r`` of the buffer, in place: a ``while_loop`` over
    the batch rows whose body stores one row's slice (MAX has no in-place scatter into a
    buffer; a loop body may write a buffer input). ~35 us a row per cache here: with the
    kernels, ``kernels.store_rows`` does it in one call."""
    cpu = DeviceRef.CPU()
    nb, s = K.scalar_dim(new.shape[0]), K.scalar_dim(new.shape[1])

    def body(r):
        p = ops.reshape(ops.slice_tensor(past, [(slice(r, r + 1), 1)]), [])
        row = ops.slice_tensor(new, [(slice(r, r + 1), 1), slice(None), slice(None)])
        ops.buffer_store_slice(buf, row, [(slice(r, r + 1), 1), (slice(p, p + s), new.shape[1]), slice(None)])
        return r + 1

    ops.while_loop(ops.constant(np.int64(0), DType.int64, cpu), lambda r: r < nb, body)


def _rule_cache_store(op, env, ctx):
    buf, new = env[op.cache], env[op.new]
    if not isinstance(buf, BufferValue):
        raise LoweringError("cache_store: the cache must be a graph input (lowered as a buffer)")
    env.load_views_of(buf)  # a view not yet read must see the buffer as it was
    if ir.per_row(op.past):
        if ctx.kernels is not None and new.dtype == DType.float32:
            K.store_rows(buf, new, env[op.past])
        else:
            _store_rows(buf, new, env[op.past])
        return buf
    start, end = _rows(op, env)
    ops.buffer_store_slice(buf, new, [slice(None), (slice(start, end), new.shape[1]), slice(None)])
    return buf  # written in place: the result is the same buffer


class _CacheView:
    """A ``cache_view`` not yet read: rows ``[0, end)`` of a cache buffer. An attention that
    kvgraph's ``attention_cache`` kernel serves reads the buffer in place; anything else gets
    :meth:`load` (``buffer_load`` — a copy of the whole buffer — and a slice), through
    :class:`_Env`."""

    __slots__ = ("buf", "end", "rows", "loaded")

    def __init__(self, buf, end, rows):
        self.buf, self.end, self.rows, self.loaded = buf, end, rows, None

    def load(self):
        if self.loaded is None:
            full = ops.buffer_load(self.buf)
            self.loaded = ops.slice_tensor(full, [slice(None), (slice(0, self.end), self.rows), slice(None)])
        return self.loaded


class _Env(dict):
    """The lowering's value table: reading a value that is a :class:`_CacheView` loads it
    (``raw`` does not). A store into a buffer first loads the views of it still unread, so
    each view sees the buffer as it was at its own place in the program."""

    def __getitem__(self, key):
        v = dict.__getitem__(self, key)
        return v.load() if isinstance(v, _CacheView) else v

    def raw(self, key):
        return dict.__getitem__(self, key)

    def load_views_of(self, buf) -> None:
        for v in self.values():
            if isinstance(v, _CacheView) and v.buf is buf:
                v.load()


def _rule_cache_view(op, env, ctx):
    if ir.per_row(op.past):  # rows [0, max(past) + s): each row's mask hides the rest
        longest = ops.reshape(ops.max(env[op.past], axis=0), [])
        end = longest + K.scalar_dim(env[op.new].shape[1])
    else:
        _, end = _rows(op, env)
    view = _CacheView(env[op.cache], end, _dim_name(op.infer_type().shape[1]))
    # in a step program with the custom kernels, attention may read the buffer in place
    return view if (ctx.step_attention and ctx.kernels is not None) else view.load()


def _rule_conv1d(op, env, ctx):
    if op.compute == "bfloat16":
        if not isinstance(op.w, ir.Weight):
            raise LoweringError("a bfloat16 conv1d needs a weight parameter (@name) as its kernel")
        cout, _, k = op.w.type.shape
        x = _arg(ctx, env, op.x)
        if ctx.bf16_kernel:  # im2col, then the kernel's GEMM against the weight as [cout, k * cin]
            cols = K.conv1d_columns(x, k, op.stride, op.padding)
            return K.linear_bf16_kernel(
                cols, ctx.weight(op.w, "bf16_conv_panels"), cout, _arg(ctx, env, op.bias), ctx.bf16_kernel
            )
        xr = ops.cast(ops.cast(x, DType.bfloat16), DType.float32)
        return K.conv1d(
            xr, ctx.weight(op.w, "bf16_rscf"), _arg(ctx, env, op.bias), op.stride, op.padding, w_layout="rscf"
        )
    return K.conv1d(
        _arg(ctx, env, op.x),
        _arg(ctx, env, op.w, "rscf"),
        _arg(ctx, env, op.bias),
        op.stride,
        op.padding,
        w_layout="rscf",
    )


RULES: dict[type, Callable] = {
    ir.Embed: _rule_embed,
    ir.Positions: _rule_positions,
    ir.GatherRows: lambda op, env, ctx: K.gather_rows(_arg(ctx, env, op.table), _arg(ctx, env, op.index)),
    ir.Sinusoid: lambda op, env, ctx: K.sinusoid(env[op.positions], op.dim),
    ir.Rope: lambda op, env, ctx: K.rope(env[op.x], env[op.positions], op.heads, op.theta),
    ir.Add: lambda op, env, ctx: K.add(_arg(ctx, env, op.a), _arg(ctx, env, op.b)),
    ir.Mul: lambda op, env, ctx: K.mul(_arg(ctx, env, op.a), _arg(ctx, env, op.b)),
    ir.Linear: _rule_linear,
    ir.LayerNorm: lambda op, env, ctx: K.layer_norm(
        env[op.x], _arg(ctx, env, op.weight), _arg(ctx, env, op.bias), op.eps
    ),
    ir.RMSNorm: lambda op, env, ctx: K.rms_norm(env[op.x], _arg(ctx, env, op.weight), op.eps),
    ir.Gelu: lambda op, env, ctx: K.gelu(env[op.x]),
    ir.Silu: lambda op, env, ctx: K.silu(env[op.x]),
    ir.Attention: _rule_attention,
    ir.AttentionScores: _rule_attention_scores,
    ir.Concat: lambda op, env, ctx: ops.concat([env[op.a], env[op.b]], axis=op.axis),
    ir.CacheStore: _rule_cache_store,
    ir.CacheView: _rule_cache_view,
    ir.TakeLast: lambda op, env, ctx: K.take_last(env[op.x]),
    ir.Transpose: lambda op, env, ctx: ops.transpose(env[op.x], 1, 2),
    ir.Conv1d: _rule_conv1d,
}


def max_name(g: ir.Graph) -> str:
    """The name of ``g``'s MAX graph (MAX names take no dots)."""
    return g.name.replace(".", "_")


def lower(
    g: ir.Graph,
    weights: dict[str, np.ndarray],
    mode: str = "registry",
    f16_weights: bool = True,
    few_dims=frozenset(),
    always_few: bool = False,
    module=None,
    few_attention: bool = False,
    recipe: dict | None = None,
    name: str | None = None,
):
    """Emit ``g`` as a MAX ``Graph``; returns ``(max_graph, registry)`` where ``registry``
    maps MAX weight names to host arrays (bind them once, at load). ``recipe``: a dict
    filled with how each registry array is made, ``{MAX weight name: (weight name, layout,
    f16)}`` (:func:`weight_array`), so that a stored program's registry can be rebuilt
    without lowering again.

    ``mode="registry"``: weights are MAX ``Weight`` s bound at load (one compiled graph
    serves every weight set of the same shapes). ``mode="constant"``: weights are baked
    into the graph as constants (a compile per weight set, faster steps).
    ``f16_weights``, ``few_dims``, ``always_few``: see :class:`LowerCtx`. ``module``: a MAX
    ``Module`` to emit the graph into (programs compiled together); ``name``: the MAX graph's
    name (default :func:`max_name`; unique within a Module)."""
    bf16 = any(getattr(n.op, "compute", "float32") == "bfloat16" for n in g.nodes)
    exact = any(getattr(n.op, "exact_top", 0) for n in g.nodes)
    ctx = LowerCtx(
        weights,
        mode,
        f16_weights,
        few_dims,
        always_few,
        few_attention,
        bf16_engine=isa.bf16_engine() if bf16 else "emulate",
        exact_top=exact,
    )
    ctx.siblings = _fusable_linears(g)
    bufs = buffer_values(g)
    try:
        in_types = [max_type(v.type, v in bufs) for v in g.inputs]
    except LoweringError as e:
        raise LoweringError(f"graph {g.name}: {e}") from None
    mg = MaxGraph(
        name or max_name(g),
        input_types=in_types,
        module=module,
        custom_extensions=[ctx.kernels] if ctx.kernels is not None else [],
    )
    with mg:
        env = _Env(
            (v, mg.inputs[i].buffer if v in bufs else mg.inputs[i].tensor) for i, v in enumerate(g.inputs)
        )
        for i, n in enumerate(g.nodes):
            rule = RULES.get(type(n.op))
            if rule is None:
                have = ", ".join(sorted(c.NAME for c in RULES))
                raise LoweringError(
                    f"no MAX lowering rule for op {n.op.NAME!r} (rules exist for: {have})\n{window(g, i)}"
                )
            try:
                env[n.out] = rule(n.op, env, ctx)
            except LoweringError as e:
                raise LoweringError(f"{e}\n  while lowering: {format_node(n)}\n{window(g, i)}") from e
            except Exception as e:  # MAX's own errors, re-raised with the IR line
                raise LoweringError(
                    f"MAX rejected {n.op.NAME}: {type(e).__name__}: {e}\n"
                    f"  IR: {format_node(n)}\n{window(g, i)}"
                ) from e
        mg.output(
            *[
                env[v] if not isinstance(v, ir.Weight) else ctx.weight(v)
                for _, v in g.outputs
                if v not in bufs
            ]
        )
    if recipe is not None:
        recipe.update(ctx.recipe)
    return mg, ctx.registry
