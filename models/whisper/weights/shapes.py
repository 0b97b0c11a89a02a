"""The shapes of openai-whisper's ``Whisper(dims).state_dict()``, computed without torch, and the
checks a loaded checkpoint must pass against them."""

from __future__ import annotations

__all__ = ["check_shapes", "in_state_dict_order", "state_dict_shapes"]


def state_dict_shapes(dims) -> dict[str, tuple]:
    """Shapes of openai-whisper's ``Whisper(dims).state_dict()``, computed
    without building the torch model (same key order)."""
    a, t = dims.n_audio_state, dims.n_text_state
    out: dict[str, tuple] = {
        "encoder.positional_embedding": (dims.n_audio_ctx, a),
        "encoder.conv1.weight": (a, dims.n_mels, 3),
        "encoder.conv1.bias": (a,),
        "encoder.conv2.weight": (a, a, 3),
        "encoder.conv2.bias": (a,),
    }

    def attn(prefix, n):
        out.update(
            {
                f"{prefix}.query.weight": (n, n),
                f"{prefix}.query.bias": (n,),
                f"{prefix}.key.weight": (n, n),
                f"{prefix}.value.weight": (n, n),
                f"{prefix}.value.bias": (n,),
                f"{prefix}.out.weight": (n, n),
                f"{prefix}.out.bias": (n,),
            }
        )

    def ln(prefix, n):
        out.update({f"{prefix}.weight": (n,), f"{prefix}.bias": (n,)})

    def block(prefix, n, cross):
        attn(f"{prefix}.attn", n)
        ln(f"{prefix}.attn_ln", n)
        if cross:
            attn(f"{prefix}.cross_attn", n)
            ln(f"{prefix}.cross_attn_ln", n)
        out.update(
            {
                f"{prefix}.mlp.0.weight": (4 * n, n),
                f"{prefix}.mlp.0.bias": (4 * n,),
                f"{prefix}.mlp.2.weight": (n, 4 * n),
                f"{prefix}.mlp.2.bias": (n,),
            }
        )
        ln(f"{prefix}.mlp_ln", n)

    for i in range(dims.n_audio_layer):
        block(f"encoder.blocks.{i}", a, False)
    ln("encoder.ln_post", a)
    out["decoder.positional_embedding"] = (dims.n_text_ctx, t)
    out["decoder.token_embedding.weight"] = (dims.n_vocab, t)
    for i in range(dims.n_text_layer):
        block(f"decoder.blocks.{i}", t, True)
    ln("decoder.ln", t)
    return out


def check_shapes(dims, weights: dict, source: str) -> None:
    """ValueError naming ``source`` unless ``weights`` has exactly the keys and shapes of
    openai-whisper's ``Whisper(dims).state_dict()``."""
    expected = state_dict_shapes(dims)
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    bad = [
        f"{k}: {tuple(weights[k].shape)} != {expected[k]}"
        for k in expected
        if k in weights and tuple(weights[k].shape) != expected[k]
    ]
    if missing or extra or bad:
        raise ValueError(
            f"{source}: checkpoint does not match openai-whisper's layout for {dims}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}, "
            f"wrong shapes {bad[:5]}"
        )


def in_state_dict_order(dims, weights: dict) -> dict:
    """``weights`` with openai's ``state_dict()`` keys first, in its order; other keys after."""
    order = state_dict_shapes(dims)
    return {k: weights[k] for k in order if k in weights} | {
        k: v for k, v in weights.items() if k not in order
    }
