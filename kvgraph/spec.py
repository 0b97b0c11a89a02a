"""The user DSL: frozen attrs classes that declare a transformer decoder.

Two naming styles cover the two families: ``"whisper"`` (parameter names equal
openai-whisper's ``state_dict`` keys, ``decoder.blocks.0.attn.query.weight`` ...) and
``"llama"`` (Hugging Face Llama names, ``model.layers.0.self_attn.q_proj.weight`` ...).
The style only names parameters; the passes never look at it.
"""

from __future__ import annotations

import attrs

from .errors import SpecError

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
POSITIONS = ("learned", "sinusoidal", "rotary", "none")
NAMINGS = ("whisper", "llama")


def _positive(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(name, value, "must be an int")
    if value <= 0:
        raise SpecError(name, value, "must be positive")


@attrs.frozen
class CrossAttention:
    """Attention from the token stream to a context sequence fixed across steps
    (Whisper's audio features): ``context`` is f32[b, context_len, context_dim]."""

    context_len: int
    context_dim: int

    def __attrs_post_init__(self):
        _positive("cross_attention.context_len", self.context_len)
        _positive("cross_attention.context_dim", self.context_dim)


@attrs.frozen
class DecoderSpec:
    """A decoder-only transformer over a token stream, optionally cross-attending a context."""

    vocab_size: int
    d_model: int
    n_heads: int
    n_layers: int
    max_seq_len: int
    mlp_hidden: int
    n_kv_heads: int | None = None
    norm: str = "layernorm"
    mlp: str = "gelu"
    positions: str = "learned"
    rope_theta: float = 10000.0
    cross_attention: CrossAttention | None = None
    tie_embeddings: bool = True
    eps: float = 1e-5
    bias: bool | None = None
    naming: str | None = None
    name: str = "decoder"

    def __attrs_post_init__(self):
        for f in ("vocab_size", "d_model", "n_heads", "n_layers", "max_seq_len", "mlp_hidden"):
            _positive(f, getattr(self, f))
        _positive("n_kv_heads", self.n_kv_heads, allow_none=True)
        if self.d_model % self.n_heads:
            raise SpecError("d_model", self.d_model, f"not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise SpecError("n_kv_heads", self.n_kv_heads, f"n_heads={self.n_heads} is not a multiple of it")
        if self.norm not in NORMS:
            raise SpecError("norm", self.norm, f"unknown norm; expected one of {NORMS}")
        if self.mlp not in MLPS:
            raise SpecError("mlp", self.mlp, f"unknown mlp; expected one of {MLPS}")
        if self.positions not in POSITIONS:
            raise SpecError("positions", self.positions, f"unknown positions; expected one of {POSITIONS}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise SpecError(
                "positions", self.positions, f"rotary needs an even head size, got {self.head_dim}"
            )
        if self.positions == "sinusoidal" and (self.d_model % 2 or self.d_model < 4):
            raise SpecError(
                "positions", self.positions, f"sinusoidal needs an even d_model >= 4, got {self.d_model}"
            )
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 1):
            raise SpecError("rope_theta", self.rope_theta, "must be a number > 1")
        if not (isinstance(self.eps, (int, float)) and 0 < self.eps < 1):
            raise SpecError("eps", self.eps, "must be in (0, 1)")
        if self.cross_attention is not None and not isinstance(self.cross_attention, CrossAttention):
            raise SpecError(
                "cross_attention", self.cross_attention, "must be a kvgraph.CrossAttention or None"
            )
        if self.naming is not None and self.naming not in NAMINGS:
            raise SpecError("naming", self.naming, f"unknown naming; expected one of {NAMINGS}")
        if self.naming_style == "whisper" and not self.tie_embeddings:
            raise SpecError(
                "tie_embeddings", self.tie_embeddings, "whisper naming has no separate output head"
            )
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            raise SpecError("name", self.name, "must be an identifier")

    # ---- derived facts
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def naming_style(self) -> str:
        return self.naming or ("whisper" if self.norm == "layernorm" else "llama")

    @property
    def has_bias(self) -> bool:
        return self.norm == "layernorm" if self.bias is None else self.bias

    def names(self) -> ParamNames:
        return ParamNames(self)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape, in a stable order (the weights contract)."""
        return dict(self.names().all())


# -------------------------------------------------------------------- naming

_STYLE = {
    "whisper": dict(
        tok="decoder.token_embedding.weight",
        pos="decoder.positional_embedding",
        layer="decoder.blocks.{i}.",
        attn="attn.",
        cross="cross_attn.",
        attn_norm="attn_ln",
        cross_norm="cross_attn_ln",
        mlp_norm="mlp_ln",
        q="query",
        k="key",
        v="value",
        o="out",
        fc1="mlp.0",
        fc2="mlp.2",
        gate="mlp.gate",
        up="mlp.up",
        down="mlp.down",
        final_norm="decoder.ln",
        head="decoder.lm_head.weight",
        key_bias=False,
    ),
    "llama": dict(
        tok="model.embed_tokens.weight",
        pos="model.embed_positions.weight",
        layer="model.layers.{i}.",
        attn="self_attn.",
        cross="cross_attn.",
        attn_norm="input_layernorm",
        cross_norm="cross_attn_layernorm",
        mlp_norm="post_attention_layernorm",
        q="q_proj",
        k="k_proj",
        v="v_proj",
        o="o_proj",
        fc1="mlp.fc1",
        fc2="mlp.fc2",
        gate="mlp.gate_proj",
        up="mlp.up_proj",
        down="mlp.down_proj",
        final_norm="model.norm",
        head="lm_head.weight",
        key_bias=True,
    ),
}


class ParamNames:
    """Names and shapes of a spec's parameters. ``linear(...)`` gives (weight, bias-or-None)."""

    def __init__(self, spec: DecoderSpec):
        self.spec, self.s = spec, _STYLE[spec.naming_style]

    def _norm(self, base: str):
        out = [(f"{base}.weight", (self.spec.d_model,))]
        if self.spec.norm == "layernorm":
            out.append((f"{base}.bias", (self.spec.d_model,)))
        return out

    def norm(self, base: str) -> tuple[str, str | None]:
        ps = self._norm(base)
        return ps[0][0], (ps[1][0] if len(ps) > 1 else None)

    def _linear(self, base: str, out_dim: int, in_dim: int, is_key: bool = False):
        out = [(f"{base}.weight", (out_dim, in_dim))]
        if self.spec.has_bias and not (is_key and not self.s["key_bias"]):
            out.append((f"{base}.bias", (out_dim,)))
        return out

    def linear(self, base: str, out_dim: int, in_dim: int, is_key: bool = False):
        ps = self._linear(base, out_dim, in_dim, is_key)
        return ps[0][0], (ps[1][0] if len(ps) > 1 else None)

    def layer(self, i: int) -> str:
        return self.s["layer"].format(i=i)

    def attn_base(self, i: int, cross: bool) -> str:
        return self.layer(i) + self.s["cross" if cross else "attn"]

    def all(self):
        sp, s = self.spec, self.s
        d, hd = sp.d_model, sp.head_dim
        yield s["tok"], (sp.vocab_size, d)
        if sp.positions == "learned":
            yield s["pos"], (sp.max_seq_len, d)
        for i in range(sp.n_layers):
            L = self.layer(i)
            yield from self._norm(L + s["attn_norm"])
            a = self.attn_base(i, False)
            yield from self._linear(a + s["q"], d, d)
            yield from self._linear(a + s["k"], sp.kv_heads * hd, d, is_key=True)
            yield from self._linear(a + s["v"], sp.kv_heads * hd, d)
            yield from self._linear(a + s["o"], d, d)
            if sp.cross_attention is not None:
                cd = sp.cross_attention.context_dim
                yield from self._norm(L + s["cross_norm"])
                c = self.attn_base(i, True)
                yield from self._linear(c + s["q"], d, d)
                yield from self._linear(c + s["k"], d, cd, is_key=True)
                yield from self._linear(c + s["v"], d, cd)
                yield from self._linear(c + s["o"], d, d)
            yield from self._norm(L + s["mlp_norm"])
            if sp.mlp == "gelu":
                yield from self._linear(L + s["fc1"], sp.mlp_hidden, d)
                yield from self._linear(L + s["fc2"], d, sp.mlp_hidden)
            else:
                yield from self._linear(L + s["gate"], sp.mlp_hidden, d)
                yield from self._linear(L + s["up"], sp.mlp_hidden, d)
                yield from self._linear(L + s["down"], d, sp.mlp_hidden)
        yield from self._norm(s["final_norm"])
        if not sp.tie_embeddings:
            yield s["head"], (sp.vocab_size, d)
