"""Independent PyTorch oracles for the kvgraph reference interpreter.

``llama_logits`` is a from-scratch Llama-family decoder (RMSNorm, rotary embeddings in
Hugging Face's ``rotate_half`` form, grouped-query attention via ``repeat_interleave`` of
the kv heads, SwiGLU, untied ``lm_head``) that reads the kvgraph weight dict by its
Llama names. It deliberately does not use kvgraph's naming or shape code: the names
are spelled out here, the head size comes from the spec's plain fields.

It also covers the simple variants a spec can mix in with Llama naming: LayerNorm
(with biases), GELU MLP, learned / sinusoidal / no positions, linear biases, tied
embeddings and cross-attention over a context.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _t(a, dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a)).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Hugging Face Llama's ``rotate_half``: ``[x1, x2] -> [-x2, x1]`` over the last axis."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype):
    """HF ``LlamaRotaryEmbedding``: ``inv_freq = 1 / theta**(arange(0, hd, 2)/hd)``,
    ``emb = cat(freqs, freqs)``; returns cos, sin of shape [s, hd]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = torch.outer(positions.to(torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [b, heads, s, hd]; cos/sin [s, hd]."""
    return x * cos[None, None] + rotate_half(x) * sin[None, None]


def sinusoids(length: int, channels: int, dtype) -> torch.Tensor:
    """openai-whisper's ``sinusoids`` (written out again here)."""
    inc = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1).to(dtype)


class _W:
    def __init__(self, weights: dict, dtype):
        self.w, self.dtype, self.used = weights, dtype, set()

    def __call__(self, name: str) -> torch.Tensor:
        self.used.add(name)
        return _t(self.w[name], self.dtype)

    def get(self, name: str):
        return self(name) if name in self.w else None


def _linear(W: _W, base: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, W(base + ".weight"), W.get(base + ".bias"))


def _norm(spec, W: _W, base: str, x: torch.Tensor) -> torch.Tensor:
    if spec.norm == "rmsnorm":
        var = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + spec.eps) * W(base + ".weight")
    return F.layer_norm(x, (x.shape[-1],), W(base + ".weight"), W(base + ".bias"), spec.eps)


def _attend(q, k, v, n_heads, n_kv_heads, causal):
    """q [b, sq, H*hd], k/v [b, sk, KV*hd] -> [b, sq, H*hd]; GQA by repeat_interleave."""
    b, sq, _ = q.shape
    sk = k.shape[1]
    hd = q.shape[-1] // n_heads
    q = q.view(b, sq, n_heads, hd).transpose(1, 2)
    k = k.view(b, sk, n_kv_heads, hd).transpose(1, 2)
    v = v.view(b, sk, n_kv_heads, hd).transpose(1, 2)
    k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)
    v = v.repeat_interleave(n_heads // n_kv_heads, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if causal:
        mask = torch.ones(sq, sk, dtype=torch.bool).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return (p @ v).transpose(1, 2).reshape(b, sq, n_heads * hd)


def llama_logits(spec, weights: dict, tokens, context=None, dtype=torch.float32, return_used: bool = False):
    """Logits [b, s, vocab] of a Llama-named decoder described by ``spec``'s plain fields.

    With ``return_used`` also returns the set of weight names read (to check that the
    weight dict has no names the oracle ignored).
    """
    W = _W(weights, dtype)
    H, KV = spec.n_heads, (spec.n_kv_heads or spec.n_heads)
    hd = spec.d_model // H
    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    s = tokens.shape[1]
    positions = torch.arange(s)

    x = F.embedding(tokens, W("model.embed_tokens.weight"))
    if spec.positions == "learned":
        x = x + W("model.embed_positions.weight")[:s]
    elif spec.positions == "sinusoidal":
        x = x + sinusoids(s, spec.d_model, dtype)
    if spec.positions == "rotary":
        cos, sin = rope_cos_sin(positions, hd, spec.rope_theta, dtype)
    ctx = None if context is None else _t(context, dtype)

    for i in range(spec.n_layers):
        L = f"model.layers.{i}."
        h = _norm(spec, W, L + "input_layernorm", x)
        q = _linear(W, L + "self_attn.q_proj", h)
        k = _linear(W, L + "self_attn.k_proj", h)
        v = _linear(W, L + "self_attn.v_proj", h)
        if spec.positions == "rotary":
            b = q.shape[0]
            q = (
                apply_rotary(q.view(b, s, H, hd).transpose(1, 2), cos, sin)
                .transpose(1, 2)
                .reshape(b, s, H * hd)
            )
            k = (
                apply_rotary(k.view(b, s, KV, hd).transpose(1, 2), cos, sin)
                .transpose(1, 2)
                .reshape(b, s, KV * hd)
            )
        x = x + _linear(W, L + "self_attn.o_proj", _attend(q, k, v, H, KV, causal=True))
        if spec.cross_attention is not None:
            h = _norm(spec, W, L + "cross_attn_layernorm", x)
            q = _linear(W, L + "cross_attn.q_proj", h)
            k = _linear(W, L + "cross_attn.k_proj", ctx)
            v = _linear(W, L + "cross_attn.v_proj", ctx)
            x = x + _linear(W, L + "cross_attn.o_proj", _attend(q, k, v, H, H, causal=False))
        h = _norm(spec, W, L + "post_attention_layernorm", x)
        if spec.mlp == "swiglu":
            m = F.silu(_linear(W, L + "mlp.gate_proj", h)) * _linear(W, L + "mlp.up_proj", h)
            m = _linear(W, L + "mlp.down_proj", m)
        else:
            m = _linear(W, L + "mlp.fc2", F.gelu(_linear(W, L + "mlp.fc1", h)))
        x = x + m

    x = _norm(spec, W, "model.norm", x)
    head = W("model.embed_tokens.weight") if spec.tie_embeddings else W("lm_head.weight")
    logits = x @ head.T
    return (logits, W.used) if return_used else logits
