"""kvgraph's NumPy reference interpreter against independent PyTorch oracles.

Whisper family: openai-whisper's own ``TextDecoder``. Llama family: the from-scratch
implementation in ``helpers_torch.py``. Both read the same random weights
(``kvgraph.init_weights``); logits must agree to 1e-4 in float32.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import whisper.model as wm

import kvgraph
from helpers_torch import llama_logits
from models.whisper import spec_from_dims

TOL = 1e-4

SMALL_DIMS = wm.ModelDimensions(
    n_mels=80, n_audio_ctx=30, n_audio_state=48, n_audio_head=4, n_audio_layer=2,
    n_vocab=211, n_text_ctx=24, n_text_state=48, n_text_head=4, n_text_layer=2)
TINY_DIMS = wm.ModelDimensions(
    n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
    n_vocab=51865, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


# ------------------------------------------------------------------ whisper family

def _whisper_decoder(dims, weights) -> wm.TextDecoder:
    dec = wm.TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer)
    prefix = "decoder."
    assert all(k.startswith(prefix) for k in weights), sorted(k for k in weights if not k.startswith(prefix))
    state = {k[len(prefix):]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    # strict: kvgraph's whisper names/shapes must be exactly openai-whisper's state_dict
    # (this also fills positional_embedding, which openai creates with torch.empty).
    dec.load_state_dict(state, strict=True)
    return dec.eval()


def _whisper_logits(dec, tokens, xa) -> np.ndarray:
    with torch.no_grad(), wm.disable_sdpa():
        return dec(torch.from_numpy(tokens), torch.from_numpy(xa)).numpy()


def _whisper_case(dims, seq_len, seed):
    spec = spec_from_dims(dims)
    weights = kvgraph.init_weights(spec, seed=seed)
    rng = np.random.default_rng(seed + 100)
    tokens = rng.integers(0, dims.n_vocab, size=(2, seq_len), dtype=np.int64)
    xa = rng.standard_normal((2, dims.n_audio_ctx, dims.n_audio_state)).astype(np.float32)
    return spec, weights, tokens, xa


def _check_whisper(dims, seq_len, seed):
    spec, weights, tokens, xa = _whisper_case(dims, seq_len, seed)
    assert set(weights) == set(spec.param_shapes())
    g = kvgraph.verify(kvgraph.build(spec))
    ours = kvgraph.reference.run(g, weights, tokens=tokens, context=xa)["logits"]
    theirs = _whisper_logits(_whisper_decoder(dims, weights), tokens, xa)
    assert ours.shape == theirs.shape == (2, seq_len, dims.n_vocab)
    assert ours.dtype == np.float32
    diff = _max_diff(ours, theirs)
    assert diff <= TOL, f"reference vs openai-whisper TextDecoder: max |diff| {diff:.3g} > {TOL}"
    # the comparison is not vacuous: logits are O(1) or larger and differ across positions
    assert np.abs(theirs).max() > 1.0
    assert _max_diff(theirs[:, 0], theirs[:, -1]) > 1e-2
    return spec, weights, tokens, xa, theirs


def test_whisper_small_random_matches_openai_textdecoder():
    _check_whisper(SMALL_DIMS, seq_len=7, seed=1)


def test_whisper_tiny_dims_match_openai_textdecoder():
    _check_whisper(TINY_DIMS, seq_len=6, seed=2)


@pytest.mark.parametrize("name, delta", [
    ("decoder.blocks.0.attn.query.bias", 1.0),
    ("decoder.blocks.1.cross_attn.value.weight", 0.5),
    ("decoder.positional_embedding", 1.0),
    ("decoder.ln.bias", 0.5),
])
def test_whisper_perturbed_weight_is_detected(name, delta):
    """Sanity: the 1e-4 comparison can fail. Perturb one weight on the kvgraph side only
    (random noise: a constant shift of e.g. the positions would cancel in LayerNorm)."""
    spec, weights, tokens, xa = _whisper_case(SMALL_DIMS, seq_len=7, seed=1)
    theirs = _whisper_logits(_whisper_decoder(SMALL_DIMS, weights), tokens, xa)
    bad = dict(weights)
    noise = np.random.default_rng(0).standard_normal(weights[name].shape)
    bad[name] = (weights[name] + delta * noise).astype(np.float32)
    ours = kvgraph.reference.run(kvgraph.build(spec), bad, tokens=tokens, context=xa)["logits"]
    diff = _max_diff(ours, theirs)
    assert diff > 1e-2, f"perturbing {name} by {delta} moved the logits only by {diff:.3g}"


def test_whisper_context_matters():
    """Sanity: a different audio context changes the logits beyond the tolerance."""
    spec, weights, tokens, xa = _whisper_case(SMALL_DIMS, seq_len=5, seed=3)
    g = kvgraph.build(spec)
    a = kvgraph.reference.run(g, weights, tokens=tokens, context=xa)["logits"]
    b = kvgraph.reference.run(g, weights, tokens=tokens, context=xa[::-1].copy())["logits"]
    assert _max_diff(a, b) > 1e-2


# -------------------------------------------------------------------- llama family

def _llama(**kw) -> kvgraph.DecoderSpec:
    base = dict(vocab_size=97, d_model=64, n_heads=8, n_layers=2, max_seq_len=32, mlp_hidden=96,
                norm="rmsnorm", mlp="swiglu", positions="rotary", tie_embeddings=False)
    base.update(kw)
    return kvgraph.DecoderSpec(**base)


LLAMA_SPECS = {
    "mha": _llama(),
    "gqa_8q_2kv": _llama(n_kv_heads=2),
    "mqa_theta_eps": _llama(n_kv_heads=1, rope_theta=500000.0, eps=1e-6, n_layers=3),
    "gqa_tied": _llama(d_model=48, n_heads=6, n_kv_heads=3, tie_embeddings=True),
    "rotary_cross": _llama(d_model=32, n_heads=4, n_kv_heads=2,
                           cross_attention=kvgraph.CrossAttention(context_len=5, context_dim=24)),
    "mixed_sinusoidal_layernorm_swiglu": _llama(norm="layernorm", positions="sinusoidal", naming="llama"),
    "learned_gelu_bias": _llama(positions="learned", mlp="gelu", bias=True, n_kv_heads=4),
    "nopos_rmsnorm": _llama(positions="none", n_kv_heads=2),
}


@pytest.mark.parametrize("key", sorted(LLAMA_SPECS))
def test_llama_family_matches_torch(key):
    spec = LLAMA_SPECS[key]
    assert spec.naming_style == "llama"
    weights = kvgraph.init_weights(spec, seed=7)
    rng = np.random.default_rng(11)
    tokens = rng.integers(0, spec.vocab_size, size=(2, 8), dtype=np.int64)
    context = None
    inputs = dict(tokens=tokens)
    if spec.cross_attention is not None:
        ca = spec.cross_attention
        context = rng.standard_normal((2, ca.context_len, ca.context_dim)).astype(np.float32)
        inputs["context"] = context
    g = kvgraph.verify(kvgraph.build(spec))
    ours = kvgraph.reference.run(g, weights, **inputs)["logits"]
    theirs, used = llama_logits(spec, weights, tokens, context, return_used=True)
    assert used == set(spec.param_shapes()), (
        f"oracle read {sorted(used ^ set(spec.param_shapes()))} differently from param_shapes()")
    assert ours.shape == tuple(theirs.shape) == (2, 8, spec.vocab_size)
    diff = _max_diff(ours, theirs.numpy())
    assert diff <= TOL, f"{key}: reference vs torch Llama max |diff| {diff:.3g} > {TOL}"
    assert theirs.abs().max().item() > 1.0


def test_llama_float64_reference_is_tighter():
    spec = LLAMA_SPECS["gqa_8q_2kv"]
    weights = kvgraph.init_weights(spec, seed=3)
    tokens = np.random.default_rng(0).integers(0, spec.vocab_size, size=(2, 8))
    ours = kvgraph.reference.run(kvgraph.build(spec), weights, dtype=np.float64, tokens=tokens)["logits"]
    assert ours.dtype == np.float64
    theirs = llama_logits(spec, weights, tokens, dtype=torch.float64).numpy()
    assert _max_diff(ours, theirs) <= 1e-10


@pytest.mark.parametrize("what", ["rope_convention", "kv_head_grouping", "weight"])
def test_llama_oracle_detects_differences(what):
    """Sanity: the comparison fails for a wrong rotary convention, a wrong GQA grouping
    (kv head h % KV instead of h // (H/KV)) or a perturbed weight."""
    spec = LLAMA_SPECS["gqa_8q_2kv"]
    weights = kvgraph.init_weights(spec, seed=5)
    tokens = np.random.default_rng(1).integers(0, spec.vocab_size, size=(2, 8))
    ours = kvgraph.reference.run(kvgraph.build(spec), weights, tokens=tokens)["logits"]
    w = dict(weights)
    hd, KV = spec.head_dim, spec.kv_heads
    if what == "rope_convention":
        # interleaved (GPT-J) pairs instead of rotate-half: permute q/k rows per head
        perm = np.concatenate([np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)]) + h * hd
                               for h in range(spec.n_heads)])
        kperm = perm[: KV * hd]
        for i in range(spec.n_layers):
            L = f"model.layers.{i}.self_attn."
            w[L + "q_proj.weight"] = weights[L + "q_proj.weight"][perm]
            w[L + "k_proj.weight"] = weights[L + "k_proj.weight"][kperm]
    elif what == "kv_head_grouping":
        # H=8, KV=2: query heads 0..3 read kv head 0. Swapping the two kv heads' rows in
        # k/v is what a tiled (h % KV) grouping would effectively see for half the heads.
        swap = np.concatenate([np.arange(hd, 2 * hd), np.arange(0, hd)])
        for i in range(spec.n_layers):
            L = f"model.layers.{i}.self_attn."
            w[L + "k_proj.weight"] = weights[L + "k_proj.weight"][swap]
            w[L + "v_proj.weight"] = weights[L + "v_proj.weight"][swap]
    else:
        w["model.layers.1.mlp.up_proj.weight"] = weights["model.layers.1.mlp.up_proj.weight"] * 1.5
    theirs = llama_logits(spec, w, tokens).numpy()
    assert _max_diff(ours, theirs) > 1e-2
