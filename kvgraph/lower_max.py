"""Lowering to MAX Graph: an interpreter over the IR, one rule per op class (``RULES``).

Weights become MAX ``Weight`` s bound once, when the compiled model is loaded, from a
registry this module builds. A rule may ask for a weight in a layout that suits its
kernel (a Linear weight pre-transposed to ``[in, out]``, a conv weight as RSCF); the
registry then holds that layout, computed once on the host. Nothing weight-sized is
ever a per-call input.

Errors raised while emitting a node are re-raised as :class:`LoweringError` carrying
that node's printed IR line.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import ir
from .errors import LoweringError
from .printer import format_node, window
from .types import TensorType

WEIGHT_MODES = ("registry", "constant")

# layout name -> host transform of a torch-layout array
LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "plain": lambda a: a,
    "T": lambda a: a.T,                                  # Linear: [out, in] -> [in, out]
    "rscf": lambda a: a.transpose(2, 1, 0)[None],         # Conv1d: [cout, cin, k] -> [1, k, cin, cout]
}


def _max():
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType as MaxTensorType, Weight as MaxWeight, ops
    return DType, DeviceRef, Graph, MaxTensorType, MaxWeight, ops


def max_dim(d):
    if isinstance(d, int):
        return d
    if len(d.terms) == 1 and not d.const:
        return d.terms[0]
    raise LoweringError(f"input dim {d} is a sum; graph inputs take plain symbols")


def max_type(t: TensorType):
    DType, DeviceRef, _, MaxTensorType, _, _ = _max()
    dt = DType.float32 if t.dtype == "f32" else DType.int64
    return MaxTensorType(dt, [max_dim(d) for d in t.shape], device=DeviceRef.CPU())


class LowerCtx:
    """State of one lowering: the weight registry and the MAX weights emitted so far."""

    def __init__(self, weights: dict[str, np.ndarray], mode: str = "registry"):
        if mode not in WEIGHT_MODES:
            raise LoweringError(f"weights mode {mode!r}: expected one of {WEIGHT_MODES}")
        self.weights, self.mode = weights, mode
        self.registry: dict[str, np.ndarray] = {}
        self._emitted: dict[str, object] = {}

    def weight(self, w: ir.Weight, layout: str = "plain"):
        key = w.name if layout == "plain" else f"{w.name}@{layout}"
        if key not in self._emitted:
            DType, DeviceRef, _, _, MaxWeight, _ = _max()
            if w.name not in self.weights:
                raise LoweringError(f"missing weight {w.name!r} ({w.type})")
            src = np.asarray(self.weights[w.name], dtype=np.float32)
            if src.shape != tuple(w.type.shape):
                raise LoweringError(f"weight {w.name!r} expects {w.type}, got shape {src.shape}")
            arr = np.ascontiguousarray(LAYOUTS[layout](src))
            if self.mode == "constant":
                ops = _max()[5]
                self._emitted[key] = ops.constant(arr, DType.float32, DeviceRef.CPU())
            else:
                self.registry[key] = arr
                self._emitted[key] = MaxWeight(key, DType.float32, list(arr.shape), DeviceRef.CPU())
        return self._emitted[key]


def _arg(ctx, env, v, layout="plain"):
    if v is None:
        return None
    if isinstance(v, ir.Weight):
        return ctx.weight(v, layout)
    return env[v]


def _rule_linear(op, env, ctx, K):
    return K.linear(_arg(ctx, env, op.x), _arg(ctx, env, op.w, "T"), _arg(ctx, env, op.bias), w_transposed=True)


def _rule_positions(op, env, ctx, K):
    _, DeviceRef, _, _, _, ops = _max()
    from max.dtype import DType
    off = env[op.offset] if op.offset is not None else ops.constant(np.int64(0), DType.int64, DeviceRef.CPU())
    return K.positions(off, env[op.tokens], axis=1)


def _rule_attention(op, env, ctx, K):
    return K.attention(_arg(ctx, env, op.q), _arg(ctx, env, op.k), _arg(ctx, env, op.v), op.heads,
                       op.kv_heads, op.causal, _arg(ctx, env, op.q_offset), op.scale)


def _rule_conv1d(op, env, ctx, K):
    return K.conv1d(_arg(ctx, env, op.x), _arg(ctx, env, op.w, "rscf"), _arg(ctx, env, op.bias),
                    op.stride, op.padding, w_layout="rscf")


RULES: dict[type, Callable] = {
    ir.Embed: lambda op, env, ctx, K: K.embed(_arg(ctx, env, op.tokens), _arg(ctx, env, op.table)),
    ir.Positions: _rule_positions,
    ir.GatherRows: lambda op, env, ctx, K: K.gather_rows(_arg(ctx, env, op.table), _arg(ctx, env, op.index)),
    ir.Sinusoid: lambda op, env, ctx, K: K.sinusoid(env[op.positions], op.dim),
    ir.Rope: lambda op, env, ctx, K: K.rope(env[op.x], env[op.positions], op.heads, op.theta),
    ir.Add: lambda op, env, ctx, K: K.add(_arg(ctx, env, op.a), _arg(ctx, env, op.b)),
    ir.Mul: lambda op, env, ctx, K: K.mul(_arg(ctx, env, op.a), _arg(ctx, env, op.b)),
    ir.Linear: _rule_linear,
    ir.LayerNorm: lambda op, env, ctx, K: K.layer_norm(env[op.x], _arg(ctx, env, op.weight), _arg(ctx, env, op.bias), op.eps),
    ir.RMSNorm: lambda op, env, ctx, K: K.rms_norm(env[op.x], _arg(ctx, env, op.weight), op.eps),
    ir.Gelu: lambda op, env, ctx, K: K.gelu(env[op.x]),
    ir.Silu: lambda op, env, ctx, K: K.silu(env[op.x]),
    ir.Attention: _rule_attention,
    ir.Concat: lambda op, env, ctx, K: _max()[5].concat([env[op.a], env[op.b]], axis=op.axis),
    ir.TakeLast: lambda op, env, ctx, K: K.take_last(env[op.x]),
    ir.Transpose: lambda op, env, ctx, K: _max()[5].transpose(env[op.x], 1, 2),
    ir.Conv1d: _rule_conv1d,
}


def lower(g: ir.Graph, weights: dict[str, np.ndarray], mode: str = "registry"):
    """Emit ``g`` as a MAX ``Graph``; returns ``(max_graph, registry)`` where ``registry``
    maps MAX weight names to host arrays (bind them once, at load).

    ``mode="registry"``: weights are MAX ``Weight`` s bound at load (one compiled graph
    serves every weight set of the same shapes). ``mode="constant"``: weights are baked
    into the graph as constants (a compile per weight set, faster steps)."""
    from . import max_kernels as K
    _, _, Graph, _, _, _ = _max()
    ctx = LowerCtx(weights, mode)
    try:
        in_types = [max_type(v.type) for v in g.inputs]
    except LoweringError as e:
        raise LoweringError(f"graph {g.name}: {e}") from None
    mg = Graph(g.name.replace(".", "_"), input_types=in_types)
    with mg:
        env: dict = {v: mg.inputs[i].tensor for i, v in enumerate(g.inputs)}
        for i, n in enumerate(g.nodes):
            rule = RULES.get(type(n.op))
            if rule is None:
                have = ", ".join(sorted(c.NAME for c in RULES))
                raise LoweringError(f"no MAX lowering rule for op {n.op.NAME!r} (rules exist for: {have})\n"
                                    f"{window(g, i)}")
            try:
                env[n.out] = rule(n.op, env, ctx, K)
            except LoweringError as e:
                raise LoweringError(f"{e}\n  while lowering: {format_node(n)}\n{window(g, i)}") from e
            except Exception as e:  # MAX's own errors, re-raised with the IR line
                raise LoweringError(f"MAX rejected {n.op.NAME}: {type(e).__name__}: {e}\n"
                                    f"  IR: {format_node(n)}\n{window(g, i)}") from e
        mg.output(*[env[v] if not isinstance(v, ir.Weight) else ctx.weight(v) for _, v in g.outputs])
    return mg, ctx.registry
