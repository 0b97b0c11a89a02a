"""Whisper's text decoder as a kvgraph spec and its audio encoder as kvgraph IR."""

from __future__ import annotations

import kvgraph


def spec_from_dims(dims) -> kvgraph.DecoderSpec:
    """The Whisper text decoder as a kvgraph spec, for an openai-whisper ``ModelDimensions``.

    Pre-LayerNorm blocks with causal self-attention, cross-attention over the audio
    features, a 4x GELU MLP, learned positions and logits tied to the token embedding;
    parameter names equal openai-whisper's ``state_dict`` keys.
    """
    return kvgraph.DecoderSpec(
        vocab_size=dims.n_vocab,
        d_model=dims.n_text_state,
        n_heads=dims.n_text_head,
        n_layers=dims.n_text_layer,
        max_seq_len=dims.n_text_ctx,
        mlp_hidden=4 * dims.n_text_state,
        norm="layernorm",
        mlp="gelu",
        positions="learned",
        cross_attention=kvgraph.CrossAttention(context_len=dims.n_audio_ctx, context_dim=dims.n_audio_state),
        tie_embeddings=True,
        eps=1e-5,
        naming="whisper",
        name="whisper_decoder",
    )


def build_encoder(dims) -> kvgraph.Graph:
    """Whisper's audio encoder as kvgraph IR: ``mel f32[b, n_mels, 2*n_audio_ctx]`` ->
    ``features f32[b, n_audio_ctx, n_audio_state]``.

    Two GELU convolutions (kernel 3, padding 1; the second with stride 2), the stored
    sinusoidal positional embedding, non-causal pre-LN blocks, a final LayerNorm.
    """
    from kvgraph import ir
    from kvgraph.ir import GraphBuilder
    from kvgraph.types import f32, sym

    d, H, T = dims.n_audio_state, dims.n_audio_head, dims.n_audio_ctx
    g = GraphBuilder("whisper_encoder")
    mel = g.input("mel", f32(sym("b"), dims.n_mels, 2 * T))

    def w(name, *shape):
        return g.weight(name, shape)

    def ln(base, x, hint):
        return g.add(ir.LayerNorm(x, w(base + ".weight", d), w(base + ".bias", d), 1e-5), hint)

    def lin(base, x, out_dim, in_dim, hint, bias=True):
        return g.add(
            ir.Linear(x, w(base + ".weight", out_dim, in_dim), w(base + ".bias", out_dim) if bias else None),
            hint,
        )

    x = g.add(ir.Transpose(mel), "mel_t")
    x = g.add(
        ir.Conv1d(x, w("encoder.conv1.weight", d, dims.n_mels, 3), w("encoder.conv1.bias", d), 1, 1), "conv1"
    )
    x = g.add(ir.Gelu(x), "conv1_gelu")
    x = g.add(ir.Conv1d(x, w("encoder.conv2.weight", d, d, 3), w("encoder.conv2.bias", d), 2, 1), "conv2")
    x = g.add(ir.Gelu(x), "conv2_gelu")
    x = g.add(ir.Add(x, w("encoder.positional_embedding", T, d)), "x")
    for i in range(dims.n_audio_layer):
        B, p = f"encoder.blocks.{i}.", f"e{i}."
        h = ln(B + "attn_ln", x, p + "attn_ln")
        q = lin(B + "attn.query", h, d, d, p + "q")
        k = lin(B + "attn.key", h, d, d, p + "k", bias=False)
        v = lin(B + "attn.value", h, d, d, p + "v")
        a = g.add(ir.Attention(q, k, v, H, H, False, ir.scale_for(d // H)), p + "attn")
        x = g.add(ir.Add(x, lin(B + "attn.out", a, d, d, p + "attn_out")), p + "x1")
        h = ln(B + "mlp_ln", x, p + "mlp_ln")
        u = g.add(ir.Gelu(lin(B + "mlp.0", h, 4 * d, d, p + "fc1")), p + "gelu")
        x = g.add(ir.Add(x, lin(B + "mlp.2", u, d, 4 * d, p + "fc2")), p + "x2")
    out = ln("encoder.ln_post", x, "features")
    return g.finish([("features", out)])


def cross_attention_name(layer: int) -> str:
    """The value name ``kvgraph.build`` gives layer ``layer``'s cross-attention (``b1.cross``)."""
    return f"b{layer}.cross"
