"""MAX Graph building blocks, one per kvgraph IR op.

Every function takes :class:`max.graph.TensorValue` s and must be called inside
an active ``with Graph(...)`` context; it returns ``TensorValue`` s.  Shapes may
be symbolic (``"b"``, ``"s"``, ``"past"``...).  Float work is float32 unless
stated otherwise.

Facts these kernels rely on (checked against max==26.7.0 on CPU, see
``tests/test_max_kernels.py``):

* TRAP: ``range(n)[:, None]`` broadcast against a row vector (the textbook causal
  mask ``range(sq)[:, None] >= range(sk)[None, :]``, or the rope/sinusoid outer
  product of a bare ``positions``) is miscompiled in some graphs: every row got
  row 0's value (so every query row got row 0's mask) or no mask at all, while the
  same expression was right in other graphs.  So masks are built from ONE flat
  ``range(rows*sk)`` split with integer division (:func:`causal_allowed`) and
  position outer products are K=1 matmuls (:func:`_pos_outer`).
* Masked scores are filled with a finite ``MASK_FILL`` (not ``-inf``): once MAX
  fused ``where(mask, scores, -inf)`` into its masked flash-attention kernel as
  ``scores + (!mask) * -inf`` and every row came back NaN (0 * -inf).
* ``ops.range`` accepts a symbolic ``Dim`` as ``stop`` (it becomes a runtime
  scalar), so ``positions`` needs no extra length input.
* Batched matmul is limited to rank <= 4, so grouped-query attention folds the
  query heads of one KV group into the row axis (``[b, KVH, G*sq, dh]``) instead
  of using a rank-5 product or materialising repeated K/V.
"""

from __future__ import annotations

import math

import numpy as np
from max.dtype import DType
from max.graph import BufferValue, DeviceRef, Dim, TensorType, TensorValue, ops

from ..errors import InputError
from . import isa as _isa

__all__ = [
    "embed",
    "positions",
    "gather_rows",
    "sinusoid",
    "linear",
    "linear_gemv",
    "linear_few_rows",
    "linear_few_rows_stacked",
    "split_last",
    "linear_gemv_once",
    "linear_bf16_kernel",
    "linear_bf16_emulated",
    "conv1d_columns",
    "gemv_i8",
    "COMPUTE_TYPE_KERNELS",
    "attention_bf16_kernel",
    "leading_dims",
    "linear_weight_constant",
    "layer_norm",
    "rms_norm",
    "gelu",
    "silu",
    "add",
    "mul",
    "rope",
    "attention",
    "attention_few",
    "attention_cache",
    "store_rows",
    "attention_scores",
    "causal_allowed",
    "causal_allowed_rows",
    "positions_rows",
    "concat_seq",
    "conv1d",
    "conv1d_weight_constant",
    "take_last",
]

F32 = DType.float32
I64 = DType.int64

#: Value written into masked attention scores (finite on purpose, see ``attention``).
MASK_FILL = -1e30


def _cpu() -> DeviceRef:
    return DeviceRef.CPU()


def _f32_const(a: np.ndarray | float, device: DeviceRef | None = None) -> TensorValue:
    return ops.constant(np.asarray(a, dtype=np.float32), F32, device or _cpu())


# --------------------------------------------------------------------------- #
# Embeddings and positions
# --------------------------------------------------------------------------- #


def embed(tokens: TensorValue, table: TensorValue) -> TensorValue:
    """``tokens`` int64 ``[b, s]``, ``table`` ``[V, d]`` -> ``[b, s, d]`` float32 (a
    float16 table is gathered, then widened)."""
    out = ops.gather(table, tokens, axis=0)
    return out if out.dtype == F32 else ops.cast(out, F32)


def positions(offset: TensorValue, seq_len_source: TensorValue, axis: int = 1) -> TensorValue:
    """``offset + arange(s)`` as int64 ``[s]``; ``s = seq_len_source.shape[axis]``.

    ``offset`` is an int64 scalar (rank-0) tensor, typically a graph input.
    """
    n = seq_len_source.shape[axis]
    offset = ops.cast(offset, I64) if offset.dtype != I64 else offset
    return ops.range(0, n, 1, dtype=I64, device=_cpu()) + offset


def positions_rows(offset: TensorValue, seq_len_source: TensorValue) -> TensorValue:
    """Per-row positions ``offset[r] + arange(s)`` as int64 ``[b, s]``: ``offset`` int64
    ``[b]``, ``b, s`` the first two dims of ``seq_len_source``.

    Built from one flat ``range(b*s)`` split with integer division and a gather of the
    row's offset (no broadcast of a bare ``range``: see :func:`causal_allowed`)."""
    b, s = seq_len_source.shape[0], seq_len_source.shape[1]
    st = scalar_dim(s)
    n = ops.range(0, b * s, 1, dtype=I64, device=_cpu())
    r = ops.floor_div(n, st)
    off = ops.gather(ops.cast(offset, I64) if offset.dtype != I64 else offset, r, axis=0)
    return ops.reshape(off + (n - r * st), [b, s])


def _pos_outer(pos: TensorValue, vec: np.ndarray) -> TensorValue:
    """``float(pos)[..., None] * vec`` as a K=1 matmul -> ``[s, len(vec)]`` (or
    ``[b, s, len(vec)]`` for per-row positions ``[b, s]``).

    A matmul instead of a broadcast multiply: a bare ``range`` (``positions`` with
    a constant offset) unsqueezed on the last axis and broadcast is exactly the
    pattern max 26.7 miscompiles (see :func:`causal_allowed`).
    """
    lead = list(pos.shape)
    flat = pos.shape[0] if len(lead) == 1 else lead[0] * lead[1]
    p = ops.reshape(ops.cast(pos, F32), [flat, 1])
    out = ops.matmul(p, _f32_const(np.asarray(vec, dtype=np.float64)[None, :]))
    return out if len(lead) == 1 else ops.reshape(out, [*lead, len(vec)])


def gather_rows(table: TensorValue, idx: TensorValue) -> TensorValue:
    """``table[idx]``: ``[N, d]`` gathered at int64 ``[s]`` -> ``[s, d]``."""
    return ops.gather(table, idx, axis=0)


def sinusoid(pos: TensorValue, dim: int, max_timescale: float = 10000.0) -> TensorValue:
    """openai-whisper ``sinusoids``: ``concat(sin(p*inv), cos(p*inv))`` -> ``[s, dim]``.

    ``inv = exp(-log(max_timescale) / (dim/2 - 1) * arange(dim/2))``.
    """
    if dim % 2:
        raise InputError(f"sinusoid dim must be even, got {dim}")
    half = dim // 2
    inc = math.log(max_timescale) / (half - 1)
    inv = np.exp(-inc * np.arange(half, dtype=np.float64))
    t = _pos_outer(pos, inv)  # [s, half] (per row: [b, s, half])
    return ops.concat([ops.sin(t), ops.cos(t)], axis=-1)


# --------------------------------------------------------------------------- #
# Dense layers and element-wise ops
# --------------------------------------------------------------------------- #


def linear(
    x: TensorValue,
    w: TensorValue,
    b: TensorValue | None = None,
    *,
    w_transposed: bool = False,
) -> TensorValue:
    """``x @ w.T + b`` with ``w`` in torch layout ``[out, in]``.

    With ``w_transposed=True`` ``w`` is already ``[in, out]`` (see
    :func:`linear_weight_constant`, the faster form for constant weights).
    """
    wt = w if w_transposed else ops.transpose(w, 0, 1)
    y = x @ wt
    if b is not None:
        y = y + b
    return y


def _rows(x: TensorValue) -> tuple[int, list]:
    """(product of the static leading dims, the symbolic leading dims) of ``x``."""
    static, sym = 1, []
    for d in list(x.shape)[:-1]:
        try:
            static *= int(d)
        except TypeError:
            sym.append(d)
    return static, sym


def leading_dims(x: TensorValue) -> tuple[int, list[str]]:
    """(product of the static leading dims, names of the symbolic ones) of ``x [..., in]``."""
    static, sym = _rows(x)
    return static, [str(d) for d in sym]


def linear_gemv(x: TensorValue, w16: TensorValue, b: TensorValue | None = None) -> TensorValue:
    """``x @ w.T + b`` for a few rows of ``x``, ``w16`` the float16 ``[out, in]`` weight.

    A GEMV written as a fused broadcast-multiply-sum over ``in``: it streams the
    half-size weight once per row and accumulates in float32, so the result is that of
    the float32 weight (same values) with half the bytes read. Measured for a 51865x384
    projection on the 2-core CPU: 0.9 ms for 1 row, 1.7 ms for 2, 4.0 ms for 5; the
    float32 GEMM 2.5-4 ms at any small row count (a float16 weight cast inside the graph
    before a GEMM was materialised: 2.5x slower, hence the separate float32 copy there).
    """
    wf = ops.cast(w16, F32)
    y = ops.squeeze(ops.sum(ops.unsqueeze(x, -2) * wf, axis=-1), -1)
    return y if b is None else y + b


def linear_gemv_once(
    x: TensorValue, w16: TensorValue, b: TensorValue | None = None, isa: _isa.Isa | None = None
) -> TensorValue:
    """:func:`linear_gemv` as kvgraph's custom kernel ``kvgraph_gemv_f16``
    (``kvgraph/max/mojo/kvgraph_kernels/gemv.mojo``): the float16 weight is read once for
    all rows of ``x`` instead of once per row, float32 arithmetic. The graph must be built
    with the kernel package in its ``custom_extensions`` (see :mod:`kvgraph.max.custom`);
    ``x``'s last dim a multiple of the vector width (``isa.lanes``, this machine's class by
    default: :mod:`kvgraph.max.isa`). Measured for the 51864x384 projection, weight from
    DRAM (2 cores, AMD EPYC, ``benchmarks/gemv_kernel.py``): 0.94 / 1.01 / 1.15 / 1.42 ms at
    1 / 2 / 5 / 8 rows, where :func:`linear_gemv` takes 0.94 / 1.73 / 4.51 / 6.65 ms."""
    y = _by_rows("kvgraph_gemv_f16", x, w16, w16.shape[0], (isa or _isa.host()).gemv_parameters())
    return y if b is None else y + b


#: rows up to which ``kvgraph_gemm_f16`` runs its GEMV (``GEMV_ROWS`` in ``gemm16.mojo``)
GEMM_F16_GEMV_ROWS = 16


def linear_gemm_f16(
    x: TensorValue, w16: TensorValue, b: TensorValue | None = None, isa: _isa.Isa | None = None
) -> TensorValue:
    """``x @ w16.T (+ b)`` for many rows as kvgraph's custom kernel ``kvgraph_gemm_f16``
    (``kvgraph/max/mojo/kvgraph_kernels/gemm16.mojo``): up to 16 rows the GEMV of
    :func:`linear_gemv_once`; beyond, a GEMM that widens the float16 weight into per-call
    panels, so no float32 copy of it is held. float32 arithmetic. Same requirements as
    :func:`linear_gemv_once`. Measured against MAX's float32 GEMM over the widened weight
    (2 cores, AMD EPYC Zen 5, tiny.en's shapes; ``benchmarks/gemv_kernel.py --gemm
    --gemm16``): level at 224 rows, up to 1.24x its time at 64, at most 1.05x at 17."""
    y = _by_rows("kvgraph_gemm_f16", x, w16, w16.shape[0], (isa or _isa.host()).gemv_parameters())
    return y if b is None else y + b


def _by_rows(kernel: str, x: TensorValue, w: TensorValue, out_dim, parameters=None) -> TensorValue:
    """Custom kernel ``kernel`` of ``x``'s rows (its leading dims flattened) and weight ``w``:
    ``[..., in]`` -> ``[..., out_dim]``."""
    lead = list(x.shape[:-1])
    x2 = ops.reshape(x, [-1, x.shape[-1]])
    out = ops.custom(
        kernel,
        device=_cpu(),
        values=[x2, w],
        out_types=[TensorType(F32, [x2.shape[0], out_dim], device=_cpu())],
        parameters=parameters,
    )[0].tensor
    return ops.reshape(out, [*lead, out_dim])


def linear_bf16_kernel(
    x: TensorValue, panels: TensorValue, out_dim: int, b: TensorValue | None = None, engine: str = "amx"
) -> TensorValue:
    """``x @ w.T + b`` in bfloat16 with float32 sums on kvgraph's custom kernel
    ``kvgraph_matmul_bf16_<engine>`` (``kvgraph/max/mojo/kvgraph_kernels/bf16.mojo``; ``amx``:
    Intel AMX tiles, ``avx512``: AVX512-BF16), ``x`` rounded to bfloat16 inside it; ``panels``
    is the weight ``f32[out_dim, in]`` packed by :func:`kvgraph.numerics.bf16_panels`
    (``uint16[out_p / 16, in_p / 2, 32]``). The graph must be built with the kernel package
    (see :mod:`kvgraph.max.custom`)."""
    n = x.shape[-1]
    if int(panels.shape[1]) * 2 < int(n):
        raise InputError(
            f"linear_bf16_kernel: weight panels hold {int(panels.shape[1]) * 2} inputs, x has {n}"
        )
    y = _by_rows(_bf16_kernel("matmul", engine), x, panels, out_dim)
    return y if b is None else y + b


def _bf16_kernel(what: str, engine: str) -> str:
    if engine not in ("amx", "avx512"):
        raise InputError(f"bfloat16 kernels: no engine {engine!r} (amx or avx512)")
    return f"kvgraph_{what}_bf16_{engine}"


def linear_bf16_emulated(
    x: TensorValue, wt_rounded: TensorValue, b: TensorValue | None = None
) -> TensorValue:
    """``x @ w.T + b`` with bfloat16 operands on MAX's float32 GEMM: ``x`` rounded to
    bfloat16 in the graph (MAX's cast rounds to nearest, ties to even), ``wt_rounded`` the
    weight already rounded, ``[in, out]``. The bfloat16 arithmetic of
    :func:`linear_bf16_kernel` at float32 speed: for CPUs without either engine."""
    xr = ops.cast(ops.cast(x, DType.bfloat16), F32)
    return linear(xr, wt_rounded, b, w_transposed=True)


#: the custom kernels of the reduced-precision compute types (``compute_type``: bfloat16 on AMX
#: or AVX512-BF16,
#: int8), which float32 programs never call (tests/test_compute_types.py runs them)
COMPUTE_TYPE_KERNELS = frozenset(
    {
        "kvgraph_matmul_bf16_amx",
        "kvgraph_attend_bf16_amx",
        "kvgraph_matmul_bf16_avx512",
        "kvgraph_attend_bf16_avx512",
        "kvgraph_gemv_i8",
        "kvgraph_exact_top_f16",
        "kvgraph_exact_top_f32",
    }
)


def exact_top(
    y: TensorValue,
    x: TensorValue,
    w: TensorValue,
    scale: TensorValue,
    b: TensorValue | None,
    k: int,
    c: float,
    splits=(),
) -> TensorValue:
    """``y`` (an int8 linear's outputs ``[..., out]`` for inputs ``x`` ``[..., in]``) with
    every output that may rank among its row's ``k`` largest recomputed in float32 from ``w``
    (the float weight ``[out, in]``, float16 or float32), ``scale`` the int8 row scales, ``c``
    the bound's factor (:func:`kvgraph.numerics.int8_bound`), per group of outputs (``splits``:
    where each group after the first starts): kvgraph's custom kernel ``kvgraph_exact_top_f16``
    / ``_f32`` (``exact_top.mojo``; ``ir.Linear``'s ``exact_top``)."""
    lead = list(y.shape[:-1])
    y2 = ops.reshape(y, [-1, y.shape[-1]])
    x2 = ops.reshape(x, [-1, x.shape[-1]])
    kernel = "kvgraph_exact_top_f16" if w.dtype == DType.float16 else "kvgraph_exact_top_f32"
    out = ops.custom(
        kernel,
        device=_cpu(),
        values=[
            y2,
            x2,
            w,
            scale,
            scale if b is None else b,
            _f32_arg(c),
            ops.constant(np.array([0, *splits, int(y.shape[-1])], np.int64), I64, device=_cpu()),
        ],
        out_types=[TensorType(F32, list(y2.shape), device=_cpu())],
        parameters={"k": int(k), "has_bias": int(b is not None)},
    )[0].tensor
    return ops.reshape(out, [*lead, y.shape[-1]])


def gemv_i8(x: TensorValue, q: TensorValue, isa: _isa.Isa | None = None) -> TensorValue:
    """``x @ q.T`` for a few rows of ``x`` and an int8 weight ``q`` ``[out, in]`` (the
    ``int8`` compute type's sums, before its per-row scales): kvgraph's custom kernel
    ``kvgraph_gemv_i8`` (``gemv.mojo``, :func:`linear_gemv_once`'s over int8), float32
    arithmetic, half the bytes of the float16 weight to read."""
    return _by_rows("kvgraph_gemv_i8", x, q, q.shape[0], (isa or _isa.host()).gemv_parameters())


def linear_few_rows(
    x: TensorValue,
    w16: TensorValue,
    wt: TensorValue,
    b: TensorValue | None = None,
    few: int = 2,
    gemv=linear_gemv,
) -> TensorValue:
    """``x @ w.T + b`` choosing at run time: ``gemv`` (:func:`linear_gemv` or
    :func:`linear_gemv_once`) when ``x`` has at most ``few`` rows, else the float32 GEMM
    with ``wt`` (the same values, ``[in, out]``). A ``cond`` costs ~10 us per call here,
    so programs that always see few rows call the GEMV directly."""
    out_type = TensorType(F32, [*x.shape[:-1], w16.shape[0]], device=x.device)
    y = ops.cond(_row_count(x) <= few, [out_type], lambda: gemv(x, w16), lambda: x @ wt)[0]
    return y if b is None else y + b


def linear_few_rows_stacked(
    x: TensorValue, w16s: list[TensorValue], wt: TensorValue, few: int = 2, gemv=linear_gemv
) -> list[TensorValue]:
    """:func:`linear_few_rows` of several linears reading ``x`` (no biases): ``gemv`` of each
    float16 weight ``w16s[i]`` (``[out_i, in]``) when ``x`` has at most ``few`` rows, else one
    float32 GEMM over ``wt``, their weights stacked (``[in, sum out_i]``), sliced per linear."""
    outs = [int(w.shape[0]) for w in w16s]
    types = [TensorType(F32, [*x.shape[:-1], n], device=x.device) for n in outs]

    def stacked():
        y = x @ wt
        return split_last(y, outs)

    return ops.cond(_row_count(x) <= few, types, lambda: [gemv(x, w) for w in w16s], stacked)


def split_last(y: TensorValue, sizes: list[int]) -> list[TensorValue]:
    """``y``'s last axis cut into consecutive slices of ``sizes``."""
    lead = (slice(None),) * (y.rank - 1)
    out, start = [], 0
    for n in sizes:
        out.append(y[(*lead, slice(start, start + n))])
        start += n
    return out


def _row_count(x: TensorValue) -> TensorValue:
    """The product of ``x``'s leading dims, an int64 scalar computed when the program runs."""
    static, sym = _rows(x)
    rows = ops.constant(np.int64(static), I64, device=_cpu())
    for d in sym:
        rows = rows * scalar_dim(d)
    return rows


def linear_weight_constant(w: np.ndarray, device: DeviceRef | None = None) -> TensorValue:
    """A torch-layout ``[out, in]`` numpy weight as an ``[in, out]`` constant.

    Use with ``linear(x, c, b, w_transposed=True)``.
    """
    return _f32_const(np.ascontiguousarray(np.asarray(w, dtype=np.float32).T), device)


def layer_norm(x: TensorValue, gamma: TensorValue, beta: TensorValue, eps: float = 1e-5) -> TensorValue:
    return ops.layer_norm(x, gamma, beta, eps)


def rms_norm(x: TensorValue, gamma: TensorValue, eps: float = 1e-6) -> TensorValue:
    """``x * rsqrt(mean(x^2) + eps) * gamma`` over the last axis."""
    return ops.rms_norm(x, gamma, eps)


def gelu(x: TensorValue) -> TensorValue:
    """Exact (erf) GELU, torch ``F.gelu`` default."""
    return ops.gelu(x, approximate="none")


def silu(x: TensorValue) -> TensorValue:
    return ops.silu(x)


def add(a: TensorValue, b: TensorValue) -> TensorValue:
    return a + b


def mul(a: TensorValue, b: TensorValue) -> TensorValue:
    return a * b


# --------------------------------------------------------------------------- #
# Rotary embedding
# --------------------------------------------------------------------------- #


def rope(x: TensorValue, pos: TensorValue, n_heads: int, theta: float = 10000.0) -> TensorValue:
    """HF-Llama rotate-half RoPE on ``x`` ``[b, s, H*dh]`` at int64 positions ``[s]``."""
    b, s, hd = x.shape
    d = int(hd)
    if d % n_heads:
        raise InputError(f"last dim {d} not divisible by n_heads={n_heads}")
    dh = d // n_heads
    if dh % 2:
        raise InputError(f"head dim {dh} must be even for rope")
    half = dh // 2
    inv_freq = 1.0 / (theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh))
    freqs = _pos_outer(pos, inv_freq)  # [s, half] (per-row positions: [b, s, half])
    cos = ops.unsqueeze(ops.cos(freqs), -2)  # [s, 1, half] ([b, s, 1, half])
    sin = ops.unsqueeze(ops.sin(freqs), -2)
    xh = ops.reshape(x, [b, s, n_heads, dh])
    x1 = xh[:, :, :, :half]
    x2 = xh[:, :, :, half:]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    return ops.reshape(ops.concat([o1, o2], axis=3), [b, s, hd])


# --------------------------------------------------------------------------- #
# Attention
# --------------------------------------------------------------------------- #


def scalar_dim(d: Dim | int) -> TensorValue:
    """A (possibly symbolic) dim as an int64 rank-0 tensor."""
    return ops.reshape(ops.shape_to_tensor([d]), [])


def causal_allowed(
    sq: Dim | int, sk: Dim | int, q_offset: TensorValue | None, groups: int = 1
) -> TensorValue:
    """Boolean ``[groups*sq, sk]``: row ``g*sq + i`` may see key ``j`` iff ``j <= q_offset + i``.

    Built from ONE flat ``range(groups*sq*sk)`` split into (row, col) with integer
    division, then reshaped.  The obvious ``range(sq)[:, None] >= range(sk)[None, :]``
    is miscompiled by max 26.7 in some graphs: a bare ``range`` unsqueezed on the
    last axis and broadcast came back as row 0's value for every row (or as the
    column index), i.e. every query row got row 0's mask, or no mask at all.
    """
    cpu = _cpu()
    rows = groups * sq
    skt = scalar_dim(sk)
    n = ops.range(0, rows * sk, 1, dtype=I64, device=cpu)
    r = ops.floor_div(n, skt)  # row in [0, groups*sq)
    j = n - r * skt  # key index
    i = r % scalar_dim(sq) if groups > 1 else r  # query row within its head
    if q_offset is not None:
        i = i + (ops.cast(q_offset, I64) if q_offset.dtype != I64 else q_offset)
    return ops.reshape(ops.greater_equal(i, j), [rows, sk])


def causal_allowed_rows(
    b: Dim | int, sq: Dim | int, sk: Dim | int, q_offset: TensorValue, groups: int = 1
) -> TensorValue:
    """Boolean ``[b, groups*sq, sk]``: in batch row ``r``, row ``g*sq + i`` may see key ``j``
    iff ``j <= q_offset[r] + i`` (``q_offset`` int64 ``[b]``: rows at different positions).

    As :func:`causal_allowed`, from ONE flat ``range(b*groups*sq*sk)`` split with integer
    division; each element's row offset is gathered from ``q_offset`` (no broadcasting)."""
    cpu = _cpu()
    rows = groups * sq
    skt = scalar_dim(sk)
    per_b = scalar_dim(rows) * skt
    n = ops.range(0, b * rows * sk, 1, dtype=I64, device=cpu)
    bi = ops.floor_div(n, per_b)
    rem = n - bi * per_b
    r = ops.floor_div(rem, skt)
    j = rem - r * skt
    i = r % scalar_dim(sq) if groups > 1 else r
    off = ops.gather(ops.cast(q_offset, I64) if q_offset.dtype != I64 else q_offset, bi, axis=0)
    return ops.reshape(ops.greater_equal(i + off, j), [b, rows, sk])


def _per_row(q_offset: TensorValue | None) -> bool:
    return q_offset is not None and len(q_offset.shape) == 1


def _head_dims(q: TensorValue, k: TensorValue, v: TensorValue, n_heads: int, n_kv_heads: int):
    """(query heads per KV head, head dim), after checking the heads split the widths."""
    if n_heads % n_kv_heads:
        raise InputError(f"n_heads={n_heads} not a multiple of n_kv_heads={n_kv_heads}")
    dh = int(q.shape[2]) // n_heads
    if int(k.shape[2]) != n_kv_heads * dh or int(v.shape[2]) != n_kv_heads * dh:
        raise InputError("k/v last dim must be n_kv_heads * head_dim")
    return n_heads // n_kv_heads, dh


def attention(
    q: TensorValue,
    k: TensorValue,
    v: TensorValue,
    n_heads: int,
    n_kv_heads: int,
    causal: bool,
    q_offset: TensorValue | None,
    scale: float,
    bf16: bool = False,
) -> TensorValue:
    """Multi-head / grouped-query scaled dot-product attention.

    ``q`` ``[b, sq, H*dh]``, ``k``/``v`` ``[b, sk, KVH*dh]`` -> ``[b, sq, H*dh]``.
    Query head ``h`` uses KV head ``h // (H // KVH)``.  With ``causal`` query row
    ``i`` sees key ``j`` iff ``j <= q_offset + i`` (``q_offset=None`` means 0).
    ``bf16``: the ``bfloat16`` compute type emulated on float32 ops (``ir.Attention``'s
    definition: rounded q, k, v and numerators; slower than the float32 form, which MAX
    fuses into its flash attention): where :func:`attention_bf16_kernel` cannot serve.
    """
    if bf16:
        q, k, v = (ops.cast(ops.cast(x, DType.bfloat16), F32) for x in (q, k, v))
    H, KVH = n_heads, n_kv_heads
    G, dh = _head_dims(q, k, v, H, KVH)
    b, sq, hd = q.shape
    sk = k.shape[1]

    qh = ops.transpose(ops.reshape(q, [b, sq, H, dh]), 1, 2)  # [b, H, sq, dh]
    kh = ops.transpose(ops.reshape(k, [b, sk, KVH, dh]), 1, 2)  # [b, KVH, sk, dh]
    vh = ops.transpose(ops.reshape(v, [b, sk, KVH, dh]), 1, 2)
    if G > 1:
        # Fold the G query heads sharing a KV head into the row axis: row g*sq+i.
        qh = ops.reshape(qh, [b, KVH, G * sq, dh])

    scores = ops.matmul(qh, ops.transpose(kh, -1, -2)) * scale  # [b, KVH, G*sq, sk]
    if causal:
        if _per_row(q_offset):  # [b, 1, G*sq, sk]
            allowed = ops.unsqueeze(causal_allowed_rows(b, sq, sk, q_offset, G), 1)
        else:
            allowed = causal_allowed(sq, sk, q_offset, G)  # [G*sq, sk]
        # A finite fill, not -inf: when MAX fuses this into its masked flash
        # attention kernel it rewrites the select as ``scores + (!allowed) * fill``,
        # and 0 * -inf = NaN poisoned every row (seen on max 26.7 CPU).  Key 0 is
        # always visible (q_offset >= 0), so no row is ever fully masked.
        fill = -65504.0 if scores.dtype == DType.float16 else MASK_FILL
        scores = ops.where(allowed, scores, ops.constant(fill, scores.dtype, scores.device))
    if bf16:
        e = ops.exp(scores - ops.max(scores, axis=-1))
        out = (ops.cast(ops.cast(e, DType.bfloat16), F32) @ vh) / ops.sum(e, axis=-1)
    else:
        out = ops.softmax(scores) @ vh  # [b, KVH, G*sq, dh]
    if G > 1:
        out = ops.reshape(out, [b, H, sq, dh])
    return ops.reshape(ops.transpose(out, 1, 2), [b, sq, hd])


def attention_bf16_kernel(
    q: TensorValue, k: TensorValue, v: TensorValue, n_heads: int, scale: float, engine: str = "amx"
) -> TensorValue:
    """Unmasked attention in the ``bfloat16`` compute type on kvgraph's custom kernel
    ``kvgraph_attend_bf16_<engine>`` (``kvgraph/max/mojo/kvgraph_kernels/bf16.mojo``;
    ``ir.Attention``'s bfloat16 definition). ``q`` ``[b, sq, H*dh]``, ``k``/``v``
    ``[b, sk, KVH*dh]``, ``dh`` a multiple of 32. The graph must be built with the kernel package."""
    return ops.custom(
        _bf16_kernel("attend", engine),
        device=_cpu(),
        values=[q, k, v, _f32_arg(scale)],
        out_types=[TensorType(F32, list(q.shape), device=_cpu())],
        parameters={"heads": n_heads},
    )[0].tensor


def _f32_arg(x: float) -> TensorValue:
    """A float32 scalar for a custom kernel (``f32[1]`` on the CPU: the attention kernels'
    ``scale``)."""
    return ops.constant(np.full([1], x, np.float32), F32, device=_cpu())


#: head sizes ``kvgraph_attend_f32`` handles (its vectors per row are unrolled at compile time)
ATTEND_HEAD_DIMS = (64, 128)


def attention_context(
    q: TensorValue,
    k: TensorValue,
    v: TensorValue,
    n_heads: int,
    n_kv_heads: int,
    causal: bool,
    q_offset: TensorValue | None,
    scale: float,
    isa: _isa.Isa | None = None,
) -> TensorValue:
    """Unmasked :func:`attention` for a few query rows as kvgraph's custom kernel
    ``kvgraph_attend_f32`` (``kvgraph/max/mojo/kvgraph_kernels/attend.mojo``): per (row block,
    head) it reads K and V once, in their stored ``[b, sk, KVH*dh]`` layout, for all the
    block's query rows — the rows sharing a context (grouped beams) share the reads. Same
    arguments and result as :func:`attention`, which must be unmasked (``causal=False``,
    no ``q_offset``); head size in :data:`ATTEND_HEAD_DIMS`; the graph needs the kernel
    package in its ``custom_extensions``."""
    if causal or q_offset is not None:
        raise InputError("attention_context is unmasked attention: causal=False, q_offset=None")
    _head_dims(q, k, v, n_heads, n_kv_heads)
    return ops.custom(
        "kvgraph_attend_f32",
        device=_cpu(),
        values=[q, k, v, _f32_arg(scale)],
        out_types=[TensorType(F32, list(q.shape), device=_cpu())],
        parameters={"heads": n_heads, **(isa or _isa.host()).attend_parameters()},
    )[0].tensor


def attention_cache(
    q: TensorValue,
    k: BufferValue,
    v: BufferValue,
    n_heads: int,
    n_kv_heads: int,
    q_offset: TensorValue | None,
    end: TensorValue,
    scale: float,
    isa: _isa.Isa | None = None,
) -> TensorValue:
    """Causal :func:`attention` of a step's query rows over cache **buffers** read in place,
    as kvgraph's custom kernel ``kvgraph_cache_attend_f32`` (``attend.mojo``): no
    ``buffer_load`` (which copies the whole buffer every call). ``k``, ``v``:
    ``[b, capacity, KVH*dh]`` buffers already holding the step's own K/V; the keys are rows
    ``[0, end)`` (``end``: an int64 scalar, the view's length); query row ``i`` of batch
    row ``r`` sits at ``q_offset[r] + i`` (``q_offset``: an int64 scalar, ``i64[b]`` or None
    for 0) and sees keys up to its position. Head size in :data:`ATTEND_HEAD_DIMS`; the graph
    needs the kernel package."""
    _head_dims(q, k, v, n_heads, n_kv_heads)
    cpu = _cpu()
    if q_offset is None:
        past = ops.constant(np.zeros([1], np.int64), I64, device=cpu)
    elif _per_row(q_offset):
        past = q_offset
    else:
        past = ops.reshape(q_offset, [1])
    return ops.inplace_custom(
        "kvgraph_cache_attend_f32",
        device=cpu,
        values=[q, k, v, past, ops.reshape(end, [1]), _f32_arg(scale)],
        out_types=[TensorType(F32, list(q.shape), device=cpu)],
        parameters={"heads": n_heads, **(isa or _isa.host()).attend_parameters()},
    )[0].tensor


def store_rows(buf: BufferValue, new: TensorValue, past: TensorValue) -> None:
    """Row ``r`` of ``new [b, s, w]`` into rows ``[past[r], past[r] + s)`` of row ``r`` of the
    cache buffer ``buf [b, capacity, w]``, in place (kvgraph's ``kvgraph_store_rows_f32``:
    one call, where a graph-level loop over the rows costs tens of microseconds a row)."""
    ops.inplace_custom("kvgraph_store_rows_f32", device=_cpu(), values=[buf, new, past])


def attention_few(
    q: TensorValue,
    k: TensorValue,
    v: TensorValue,
    n_heads: int,
    n_kv_heads: int,
    causal: bool,
    q_offset: TensorValue | None,
    scale: float,
) -> TensorValue:
    """:func:`attention` for a few query rows (a decode step), same arguments and result.

    The two products are fused broadcast-multiply-sums that read K and V in the layout
    they are stored in (``[b, sk, KVH*dh]``, a cache's rows): the matmul form needs
    head-major copies of K and V, which MAX materialises as transposes every call, so a
    step over a long cache spent more on those copies than on the attention itself.
    The work grows with ``sq``, so this is only for programs run with few rows.
    """
    H, KVH = n_heads, n_kv_heads
    G, dh = _head_dims(q, k, v, H, KVH)
    b, sq, hd = q.shape
    sk = k.shape[1]
    q6 = ops.reshape(q, [b, sq, 1, KVH, G, dh])
    k6 = ops.reshape(k, [b, 1, sk, KVH, 1, dh])
    scores = ops.squeeze(ops.sum(q6 * k6, axis=-1), -1) * scale  # [b, sq, sk, KVH, G]
    if causal:
        if _per_row(q_offset):
            allowed = ops.reshape(causal_allowed_rows(b, sq, sk, q_offset), [b, sq, sk, 1, 1])
        else:
            allowed = ops.reshape(causal_allowed(sq, sk, q_offset), [1, sq, sk, 1, 1])
        scores = ops.where(allowed, scores, ops.constant(MASK_FILL, scores.dtype, scores.device))
    p = ops.unsqueeze(ops.softmax(scores, axis=2), -1)  # [b, sq, sk, KVH, G, 1]
    v6 = ops.reshape(v, [b, 1, sk, KVH, 1, dh])
    out = ops.sum(p * v6, axis=2)  # [b, sq, 1, KVH, G, dh]
    return ops.reshape(out, [b, sq, hd])


def attention_scores(
    q: TensorValue,
    k: TensorValue,
    n_heads: int,
    n_kv_heads: int,
    causal: bool,
    q_offset: TensorValue | None,
    scale: float,
    select: tuple[int, ...],
) -> TensorValue:
    """The pre-softmax scores of query heads ``select``: ``[b, len(select), sq, sk]``.

    Same arguments as :func:`attention` (no ``v``); head ``select[n]`` reads KV head
    ``select[n] // (H // KVH)``. Keys a causal mask hides are ``-inf`` (this result is
    a graph output, never fused into a softmax here, so the ``MASK_FILL`` trap of
    :func:`attention` does not apply; ``tests/test_max_kernels.py`` checks it).
    """
    H, KVH = n_heads, n_kv_heads
    G, dh = _head_dims(q, k, k, H, KVH)
    b, sq, _ = q.shape
    sk = k.shape[1]
    cpu = _cpu()
    heads = np.asarray(select, dtype=np.int64)
    qh = ops.transpose(ops.reshape(q, [b, sq, H, dh]), 1, 2)  # [b, H, sq, dh]
    kh = ops.transpose(ops.reshape(k, [b, sk, KVH, dh]), 1, 2)  # [b, KVH, sk, dh]
    if list(heads) != list(range(H)):
        qh = ops.gather(qh, ops.constant(heads, I64, cpu), axis=1)
    kv_of = heads // G
    if list(kv_of) != list(range(KVH)):
        kh = ops.gather(kh, ops.constant(kv_of, I64, cpu), axis=1)
    scores = ops.matmul(qh, ops.transpose(kh, -1, -2)) * scale  # [b, n, sq, sk]
    if causal:
        if _per_row(q_offset):  # [b, 1, sq, sk]
            allowed = ops.unsqueeze(causal_allowed_rows(b, sq, sk, q_offset), 1)
        else:
            allowed = causal_allowed(sq, sk, q_offset)  # [sq, sk]
        scores = ops.where(allowed, scores, ops.constant(-np.inf, scores.dtype, cpu))
    return scores


# --------------------------------------------------------------------------- #
# Sequence helpers
# --------------------------------------------------------------------------- #


def concat_seq(a: TensorValue, b: TensorValue) -> TensorValue:
    """Concatenate along axis 1 (cache append): ``[b, past, d] + [b, s, d]``."""
    return ops.concat([a, b], axis=1)


def take_last(x: TensorValue) -> TensorValue:
    """Last row along axis 1: ``[b, s, d]`` -> ``[b, 1, d]`` (symbolic ``s``)."""
    return x[:, -1:, :]


# --------------------------------------------------------------------------- #
# Convolution
# --------------------------------------------------------------------------- #


def conv1d_weight_constant(w: np.ndarray, device: DeviceRef | None = None) -> TensorValue:
    """A torch ``[c_out, c_in, k]`` numpy conv weight as the RSCF constant ``[1, k, c_in, c_out]``.

    Pass it to :func:`conv1d` with ``w_layout="rscf"``.
    """
    w = np.asarray(w, dtype=np.float32)
    return _f32_const(np.ascontiguousarray(w.transpose(2, 1, 0)[None]), device)


def conv1d_columns(x: TensorValue, k: int, stride: int = 1, padding: int = 0) -> TensorValue:
    """The im2col form of a 1-D convolution's input: ``x`` ``[b, t, c_in]`` -> ``[b, t_out,
    k * c_in]``, column ``j * c_in + c`` holding tap ``j`` of channel ``c``, so that a conv is
    this times its weight ``[c_out, c_in, k]`` laid out as ``[c_out, k * c_in]``."""
    bsz, t, c_in = x.shape
    # Same algebraic form as MAX conv2d shape inference, so both methods agree.
    t_out = (t + 2 * padding - k + stride) // stride
    xp = ops.pad(x, [0, 0, padding, padding, 0, 0]) if padding else x
    cols = []
    for j in range(k):
        # Symbolic slice bounds must be tensors: turn the Dim into a scalar.
        end = ops.reshape(ops.shape_to_tensor([j + stride * (t_out - 1) + 1]), [])
        cols.append(ops.slice_tensor(xp, [slice(None), (slice(j, end, stride), t_out), slice(None)]))
    return ops.concat(cols, axis=2) if k > 1 else cols[0]


def conv1d(
    x: TensorValue,
    w: TensorValue,
    b: TensorValue | None = None,
    stride: int = 1,
    padding: int = 0,
    *,
    w_layout: str = "torch",
    method: str = "conv2d",
) -> TensorValue:
    """1-D convolution, channels-last: ``x`` ``[b, t, c_in]`` -> ``[b, t_out, c_out]``.

    ``w`` is torch layout ``[c_out, c_in, k]`` (``w_layout="torch"``) or already
    RSCF ``[1, k, c_in, c_out]`` (``w_layout="rscf"``, see
    :func:`conv1d_weight_constant`).  ``t_out = (t + 2*padding - k)//stride + 1``.
    ``method`` is ``"conv2d"`` (MAX conv2d over a height-1 image) or
    ``"im2col"`` (strided slices + one matmul).
    """
    if w_layout == "torch":
        c_out, c_in, k = (int(d) for d in w.shape)
        w_rscf = ops.unsqueeze(ops.permute(w, [2, 1, 0]), 0)
    elif w_layout == "rscf":
        _, k, c_in, c_out = (int(d) for d in w.shape)
        w_rscf = w
    else:
        raise InputError(f"unknown w_layout {w_layout!r}")
    bsz, t, cx = x.shape
    if int(cx) != c_in:
        raise InputError(f"x channels {cx} != weight c_in {c_in}")
    if method == "conv2d":
        x4 = ops.reshape(x, [bsz, 1, t, c_in])
        y = ops.conv2d(x4, w_rscf, stride=(1, stride), padding=(0, 0, padding, padding), bias=b)
        return ops.squeeze(y, 1)
    if method == "im2col":
        xc = conv1d_columns(x, k, stride, padding)
        w2 = ops.reshape(ops.squeeze(w_rscf, 0), [k * c_in, c_out])
        y = xc @ w2
        if b is not None:
            y = y + b
        return y
    raise InputError(f"unknown conv1d method {method!r}")
