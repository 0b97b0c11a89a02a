"""``build(spec)``: the full-sequence (no cache) decoder graph, logits ``f32[b, s, vocab]``."""

from __future__ import annotations

from . import ir
from .errors import InputTypeError
from .ir import GraphBuilder, Value
from .names import BATCH, CONTEXT, LOGITS, SEQ, TOKENS
from .spec import DecoderSpec
from .types import f32, i64, sym

B, S = sym(BATCH), sym(SEQ)


def _norm(g: GraphBuilder, spec: DecoderSpec, base: str, x: Value, hint: str) -> Value:
    wn, bn = spec.names().norm(base)
    w = g.weight(wn, (spec.d_model,))
    if spec.norm == "layernorm":
        return g.add(ir.LayerNorm(x, w, g.weight(bn, (spec.d_model,)), spec.eps), hint)
    return g.add(ir.RMSNorm(x, w, spec.eps), hint)


def _linear(
    g: GraphBuilder,
    spec: DecoderSpec,
    base: str,
    x: Value,
    out_dim: int,
    in_dim: int,
    hint: str,
    is_key: bool = False,
) -> Value:
    wn, bn = spec.names().linear(base, out_dim, in_dim, is_key)
    w = g.weight(wn, (out_dim, in_dim))
    b = g.weight(bn, (out_dim,)) if bn else None
    return g.add(ir.Linear(x, w, b), hint)


def build(spec: DecoderSpec) -> ir.Graph:
    """The decoder over a whole sequence: inputs ``tokens`` (and ``context`` with cross
    attention), output ``logits`` for every position."""
    if not isinstance(spec, DecoderSpec):
        raise InputTypeError(f"build() takes a kvgraph.DecoderSpec, got {type(spec).__name__}")
    names, st = spec.names(), spec.names().s
    d, hd, H, KV = spec.d_model, spec.head_dim, spec.n_heads, spec.kv_heads
    g = GraphBuilder(spec.name)
    tokens = g.input(TOKENS, i64(B, S))
    context = None
    if spec.cross_attention is not None:
        ca = spec.cross_attention
        context = g.input(CONTEXT, f32(B, ca.context_len, ca.context_dim))

    x = g.add(ir.Embed(tokens, g.weight(st["tok"], (spec.vocab_size, d))), "tok_emb")
    pos = g.add(ir.Positions(tokens), "pos")
    if spec.positions == "learned":
        pe = g.add(ir.GatherRows(g.weight(st["pos"], (spec.max_seq_len, d)), pos), "pos_emb")
        x = g.add(ir.Add(x, pe), "x")
    elif spec.positions == "sinusoidal":
        pe = g.add(ir.Sinusoid(pos, d), "pos_emb")
        x = g.add(ir.Add(x, pe), "x")

    for i in range(spec.n_layers):
        L, p = names.layer(i), f"b{i}."
        # causal self-attention
        h = _norm(g, spec, L + st["attn_norm"], x, p + "attn_ln")
        a = names.attn_base(i, False)
        q = _linear(g, spec, a + st["q"], h, d, d, p + "q")
        k = _linear(g, spec, a + st["k"], h, KV * hd, d, p + "k", is_key=True)
        v = _linear(g, spec, a + st["v"], h, KV * hd, d, p + "v")
        if spec.positions == "rotary":
            q = g.add(ir.Rope(q, pos, H, float(spec.rope_theta)), p + "q_rope")
            k = g.add(ir.Rope(k, pos, KV, float(spec.rope_theta)), p + "k_rope")
        att = g.add(ir.Attention(q, k, v, H, KV, True, ir.scale_for(hd)), p + "attn")
        x = g.add(ir.Add(x, _linear(g, spec, a + st["o"], att, d, d, p + "attn_out")), p + "x1")
        # cross-attention over the fixed context
        if context is not None:
            cd = spec.cross_attention.context_dim
            h = _norm(g, spec, L + st["cross_norm"], x, p + "cross_ln")
            c = names.attn_base(i, True)
            q = _linear(g, spec, c + st["q"], h, d, d, p + "cq")
            k = _linear(g, spec, c + st["k"], context, d, cd, p + "ck", is_key=True)
            v = _linear(g, spec, c + st["v"], context, d, cd, p + "cv")
            att = g.add(ir.Attention(q, k, v, H, H, False, ir.scale_for(hd)), p + "cross")
            x = g.add(ir.Add(x, _linear(g, spec, c + st["o"], att, d, d, p + "cross_out")), p + "x2")
        # MLP
        h = _norm(g, spec, L + st["mlp_norm"], x, p + "mlp_ln")
        F = spec.mlp_hidden
        if spec.mlp == "gelu":
            u = g.add(ir.Gelu(_linear(g, spec, L + st["fc1"], h, F, d, p + "fc1")), p + "gelu")
            m = _linear(g, spec, L + st["fc2"], u, d, F, p + "fc2")
        else:
            gate = g.add(ir.Silu(_linear(g, spec, L + st["gate"], h, F, d, p + "gate")), p + "silu")
            up = _linear(g, spec, L + st["up"], h, F, d, p + "up")
            m = _linear(g, spec, L + st["down"], g.add(ir.Mul(gate, up), p + "glu"), d, F, p + "down")
        x = g.add(ir.Add(x, m), p + "x3" if context is not None else p + "x2")

    h = _norm(g, spec, st["final_norm"], x, "ln_f")
    head = st["tok"] if spec.tie_embeddings else st["head"]
    logits = g.add(ir.Linear(h, g.weight(head, (spec.vocab_size, d))), LOGITS)
    return g.finish([(LOGITS, logits)])
