"""The NumPy reference interpreter: the oracle every pass and lowering is checked against.

``run(graph, weights, **inputs)`` evaluates nodes in order with one rule per op class
(``RULES``). Arithmetic runs in ``dtype`` (float32 by default; float64 for tight proofs).
"""

from __future__ import annotations

import math

import numpy as np

from . import ir
from .errors import ReferenceRunError
from .numerics import exact_top, quantize_int8, round_bf16
from .printer import window


def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf

        return erf(x)
    except ImportError:  # pragma: no cover - scipy ships with the test set-up
        return np.vectorize(math.erf, otypes=[x.dtype])(x)


def _offset(x):
    """An offset operand (``past``, ``q_offset``): 0 when absent, an int for an i64[]
    scalar, an int64 column [b, 1] for a per-row i64[b]."""
    if x is None:
        return 0
    x = np.asarray(x, dtype=np.int64)
    return int(x) if x.ndim == 0 else x[:, None]


def _positions(op, a, ctx):
    return _offset(a["offset"]) + np.arange(a["tokens"].shape[1], dtype=np.int64)


def _sinusoid(op, a, ctx):
    half = op.dim // 2
    inv = np.exp(-np.log(10000.0) / (half - 1) * np.arange(half, dtype=ctx.dtype))
    t = a["positions"].astype(ctx.dtype)[..., None] * inv
    return np.concatenate([np.sin(t), np.cos(t)], axis=-1)


def _rope(op, a, ctx):
    x, pos = a["x"], a["positions"]
    b, s, w = x.shape
    hd = w // op.heads
    inv = op.theta ** (-np.arange(0, hd, 2, dtype=ctx.dtype) / hd)
    f = pos.astype(ctx.dtype)[..., None] * inv
    f = np.concatenate([f, f], axis=-1)[..., None, :]  # [s, 1, hd] or per row [b, s, 1, hd]
    xh = x.reshape(b, s, op.heads, hd)
    rot = np.concatenate([-xh[..., hd // 2 :], xh[..., : hd // 2]], axis=-1)
    out = xh * np.cos(f) + rot * np.sin(f)
    return out.reshape(b, s, w)


def _layer_norm(op, a, ctx):
    x = a["x"]
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + op.eps) * a["weight"] + a["bias"]


def _rms_norm(op, a, ctx):
    x = a["x"]
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + op.eps) * a["weight"]


def _scores(op, a, heads=None):
    """Pre-softmax scores f32[b, len(heads), sq, sk] of query heads ``heads`` (all by
    default), ``-inf`` where a causal mask hides a key; and the value heads they read."""
    q, k = a["q"], a["k"]
    b, sq, w = q.shape
    sk = k.shape[1]
    H, KV = op.heads, op.kv_heads
    hd = w // H
    heads = np.arange(H) if heads is None else np.asarray(heads, dtype=np.int64)
    kv_of = heads // (H // KV)
    qh = q.reshape(b, sq, H, hd).transpose(0, 2, 1, 3)[:, heads]
    kh = k.reshape(b, sk, KV, hd).transpose(0, 2, 1, 3)[:, kv_of]
    scores = (qh @ kh.transpose(0, 1, 3, 2)) * op.scale
    if op.causal:
        off = _offset(a["q_offset"])  # 0, an int, or per row [b, 1]
        last = np.reshape(off + np.arange(sq), (-1, sq, 1))  # [1 or b, sq, 1]: last key seen
        visible = np.arange(sk) <= last
        scores = np.where(visible[:, None], scores, -np.inf)
    return scores, kv_of


def _attention(op, a, ctx):
    q, k = a["q"], a["k"]
    if q.shape[0] != k.shape[0]:  # rows sharing a context: row i reads k/v row i // g
        b, sq, w = q.shape
        c = k.shape[0]
        if c == 0 or b % c:
            raise ReferenceRunError(f"attention: {b} rows cannot be grouped over {c} contexts")
        grouped = dict(a, q=q.reshape(c, (b // c) * sq, w))
        return _attention(op, grouped, ctx).reshape(b, sq, w)
    bf16 = op.compute == "bfloat16"
    if bf16:  # q, k, v rounded to bfloat16
        a = dict(a, **{n: round_bf16(a[n]).astype(a[n].dtype) for n in ("q", "k", "v")})
    v = a["v"]
    b, sq, w = a["q"].shape
    scores, kv_of = _scores(op, a)
    vh = v.reshape(b, v.shape[1], op.kv_heads, w // op.heads).transpose(0, 2, 1, 3)[:, kv_of]
    scores = scores - scores.max(-1, keepdims=True)
    p = np.exp(scores)
    if bf16:  # the numerators rounded to bfloat16 for the product, their sum not
        out = (round_bf16(p).astype(p.dtype) @ vh) / p.sum(-1, keepdims=True)
    else:
        out = (p / p.sum(-1, keepdims=True)) @ vh
    return out.transpose(0, 2, 1, 3).reshape(b, sq, w)


def _attention_scores(op, a, ctx):
    return _scores(op, a, op.select)[0]


def _cache_rows(op, a, what):
    """(past per row as an int64 [b] array, s): rows ``[past[r], past[r]+s)`` of row ``r``."""
    b, cap = a["cache"].shape[:2]
    s = a["new"].shape[1]
    past = np.zeros(b, np.int64) if a["past"] is None else np.broadcast_to(np.asarray(a["past"]), (b,))
    if b and (past.min() < 0 or past.max() + s > cap):
        raise ReferenceRunError(
            f"{what}: rows [{past.min()}, {past.max() + s}) do not fit a cache of capacity {cap}"
        )
    return past, s


def _cache_store(op, a, ctx):
    past, s = _cache_rows(op, a, "cache_store")
    out = a["cache"].copy()  # functional: the input array is left as it was
    for r, p in enumerate(past.tolist()):
        out[r, p : p + s] = a["new"][r]
    return out


def _cache_view(op, a, ctx):
    past, s = _cache_rows(op, a, "cache_view")
    return a["cache"][:, : int(past.max(initial=0)) + s]


def _conv1d(op, a, ctx):
    x, w, bias = a["x"], a["w"], a["bias"]  # x [b, t, cin], w [cout, cin, k]
    if op.compute == "bfloat16":
        x, w = round_bf16(x).astype(x.dtype), round_bf16(w).astype(w.dtype)
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (op.padding, op.padding), (0, 0)))
    t_out = (xp.shape[1] - k) // op.stride + 1
    cols = np.stack([xp[:, j : j + op.stride * (t_out - 1) + 1 : op.stride, :] for j in range(k)], axis=-1)
    return np.einsum("btck,ock->bto", cols, w) + bias


def _linear(op, a, ctx):
    x, w = a["x"], a["w"]
    bias = 0 if a["bias"] is None else a["bias"]
    if op.compute == "int8":  # per-row int8 weights, float32 activations, the scale last
        q, s = quantize_int8(w)
        y = (x @ q.T.astype(x.dtype)) * s.astype(x.dtype) + bias
        if op.exact_top:
            return exact_top(y, x, w, s, a["bias"], op.exact_top, op.exact_top_splits)
        return y
    if op.compute == "bfloat16":  # both operands rounded to bfloat16 (as float32 values)
        x, w = round_bf16(x).astype(x.dtype), round_bf16(w).astype(w.dtype)
    return x @ w.T + bias


RULES = {
    ir.Embed: lambda op, a, ctx: a["table"][a["tokens"]],
    ir.Positions: _positions,
    ir.GatherRows: lambda op, a, ctx: a["table"][a["index"]],  # [s, d] or per row [b, s, d]
    ir.Sinusoid: _sinusoid,
    ir.Rope: _rope,
    ir.Add: lambda op, a, ctx: a["a"] + a["b"],
    ir.Mul: lambda op, a, ctx: a["a"] * a["b"],
    ir.Linear: _linear,
    ir.LayerNorm: _layer_norm,
    ir.RMSNorm: _rms_norm,
    ir.Gelu: lambda op, a, ctx: 0.5 * a["x"] * (1.0 + _erf(a["x"] / np.sqrt(2.0))),
    ir.Silu: lambda op, a, ctx: a["x"] / (1.0 + np.exp(-a["x"])),
    ir.Attention: _attention,
    ir.AttentionScores: _attention_scores,
    ir.Concat: lambda op, a, ctx: np.concatenate([a["a"], a["b"]], axis=op.axis),
    ir.CacheStore: _cache_store,
    ir.CacheView: _cache_view,
    ir.TakeLast: lambda op, a, ctx: a["x"][:, -1:, :],
    ir.Transpose: lambda op, a, ctx: a["x"].transpose(0, 2, 1),
    ir.Conv1d: _conv1d,
}


class _Ctx:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


def _check_shape(g, v, arr, env_dims, what):
    t = v.type
    if arr.ndim != t.rank:
        raise ReferenceRunError(
            f"graph {g.name}: {what} %{v.name} expects {t}, got an array of shape {arr.shape}"
        )
    for d, n in zip(t.shape, arr.shape):
        if isinstance(d, int):
            if d != n:
                raise ReferenceRunError(
                    f"graph {g.name}: {what} %{v.name} expects {t}, got shape {arr.shape}"
                )
        elif len(d.terms) == 1 and not d.const:
            seen = env_dims.setdefault(d.terms[0], n)
            if seen != n:
                raise ReferenceRunError(
                    f"graph {g.name}: {what} %{v.name}: dim {d} is {n} here but {seen} elsewhere"
                )


def run(g: ir.Graph, weights: dict, dtype=np.float32, **inputs) -> dict[str, np.ndarray]:
    """Evaluate ``g``; returns ``{output name: array}``. Float inputs/weights are cast to ``dtype``."""
    ctx = _Ctx(dtype)
    env: dict = {}
    dims: dict[str, int] = {}
    for v in g.inputs:
        if v.name not in inputs or inputs[v.name] is None:
            raise ReferenceRunError(f"graph {g.name}: missing input {v.name!r} ({v.type})")
        arr = np.asarray(inputs[v.name])
        arr = arr.astype(np.int64) if v.type.dtype == "i64" else arr.astype(ctx.dtype)
        _check_shape(g, v, arr, dims, "input")
        env[v] = arr
    extra = set(inputs) - {v.name for v in g.inputs}
    if extra:
        raise ReferenceRunError(
            f"graph {g.name}: unknown inputs {sorted(extra)}; it takes {[v.name for v in g.inputs]}"
        )
    for w in g.weights():
        if w.name not in weights:
            raise ReferenceRunError(f"graph {g.name}: missing weight {w.name!r} {w.type}")
        arr = np.asarray(weights[w.name], dtype=ctx.dtype)
        if arr.shape != tuple(w.type.shape):
            raise ReferenceRunError(
                f"graph {g.name}: weight {w.name!r} expects {w.type}, got shape {arr.shape}"
            )
        env[w] = arr
    for i, n in enumerate(g.nodes):
        rule = RULES.get(type(n.op))
        if rule is None:
            raise ReferenceRunError(f"no reference rule for op {n.op.NAME!r}\n{window(g, i)}")
        args = {f: (None if getattr(n.op, f) is None else env[getattr(n.op, f)]) for f in n.op.OPERANDS}
        out = rule(n.op, args, ctx)
        if out.dtype != np.int64:
            out = out.astype(ctx.dtype, copy=False)
        env[n.out] = out
    return {k: env[v] for k, v in g.outputs}
