"""kvgraph's NumPy reference interpreter against independent PyTorch oracles.

Whisper family: openai-whisper's own ``TextDecoder``. Llama family: the from-scratch
implementation in ``helpers_torch.py``. Both read the same random weights
(``kvgraph.init_weights``).

Each case is checked twice, with bounds scaled to the logits' magnitude (``tolerance.py``):
in float64 on both sides (the maths must agree to float64 rounding), and kvgraph's float32
reference against that float64 truth (float32 rounding only). A difference between two float32
runs is no measure of either: at |logit| ~ 200 one float32 spacing is 1.5e-5, and CPUs with
different summation orders land several spacings apart.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import whisper.model as wm
from helpers_torch import llama_logits
from tolerance import F32_PASS, F64_PASS, assert_close, check, max_diff

import kvgraph
from models.whisper import spec_from_dims

SMALL_DIMS = wm.ModelDimensions(
    n_mels=80,
    n_audio_ctx=30,
    n_audio_state=48,
    n_audio_head=4,
    n_audio_layer=2,
    n_vocab=211,
    n_text_ctx=24,
    n_text_state=48,
    n_text_head=4,
    n_text_layer=2,
)
TINY_DIMS = wm.ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=384,
    n_audio_head=6,
    n_audio_layer=4,
    n_vocab=51865,
    n_text_ctx=448,
    n_text_state=384,
    n_text_head=6,
    n_text_layer=4,
)


def _max_diff(a, b) -> float:
    return max_diff(a, b)


# ------------------------------------------------------------------ whisper family


def _whisper_decoder(dims, weights) -> wm.TextDecoder:
    dec = wm.TextDecoder(
        dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer
    )
    prefix = "decoder."
    assert all(k.startswith(prefix) for k in weights), sorted(k for k in weights if not k.startswith(prefix))
    state = {k[len(prefix) :]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    # strict: kvgraph's whisper names/shapes must be exactly openai-whisper's state_dict
    # (this also fills positional_embedding, which openai creates with torch.empty).
    dec.load_state_dict(state, strict=True)
    return dec.eval()


def _whisper_logits(dec, tokens, xa) -> np.ndarray:
    with torch.no_grad(), wm.disable_sdpa():
        return dec(torch.from_numpy(tokens), torch.from_numpy(xa)).numpy()


def _whisper_logits64(dec, tokens, xa, monkeypatch) -> np.ndarray:
    """openai-whisper's TextDecoder run in float64 throughout.

    Its code rounds to float32 in three places, there so that fp16 models compute in fp32:
    ``LayerNorm.forward`` (``x.float()``), the non-SDPA attention's ``qk.float()``, and the
    final ``.float()`` on the logits. For a float64 run: the LayerNorm subclass falls back to
    ``torch.nn.LayerNorm.forward`` (the same maths without the cast), attention takes the SDPA
    path (dtype-preserving; its default scale ``hd**-0.5`` equals openai's ``(hd**-0.25)**2``),
    and the logits are taken from the final LayerNorm's output (a forward hook) times the token
    embedding, as ``TextDecoder.forward`` computes them before its cast.
    """
    dec = dec.double()
    monkeypatch.setattr(wm.LayerNorm, "forward", torch.nn.LayerNorm.forward)
    monkeypatch.setattr(wm.MultiHeadAttention, "use_sdpa", True)
    assert wm.SDPA_AVAILABLE
    seen = {}
    hook = dec.ln.register_forward_hook(lambda mod, args, out: seen.__setitem__("h", out))
    try:
        with torch.no_grad():
            dec(torch.from_numpy(tokens), torch.from_numpy(xa).double())
            logits = seen["h"] @ dec.token_embedding.weight.T
    finally:
        hook.remove()
    assert logits.dtype == torch.float64
    return logits.numpy()


def _whisper_case(dims, seq_len, seed):
    spec = spec_from_dims(dims)
    weights = kvgraph.init_weights(spec, seed=seed)
    rng = np.random.default_rng(seed + 100)
    tokens = rng.integers(0, dims.n_vocab, size=(2, seq_len), dtype=np.int64)
    xa = rng.standard_normal((2, dims.n_audio_ctx, dims.n_audio_state)).astype(np.float32)
    return spec, weights, tokens, xa


def _whisper_compare(dims, spec, weights, ours_weights, tokens, xa, monkeypatch, report=True):
    """``(float64 check, float32 check, truth)`` of kvgraph's reference (run with
    ``ours_weights``) against openai-whisper's TextDecoder in float64 (run with ``weights``)."""
    g = kvgraph.verify(kvgraph.build(spec))
    truth = _whisper_logits64(_whisper_decoder(dims, weights), tokens, xa, monkeypatch)
    ours64 = kvgraph.reference.run(g, ours_weights, dtype=np.float64, tokens=tokens, context=xa)["logits"]
    ours32 = kvgraph.reference.run(g, ours_weights, tokens=tokens, context=xa)["logits"]
    assert ours64.dtype == np.float64 and ours32.dtype == np.float32
    assert ours32.shape == truth.shape == (2, tokens.shape[1], dims.n_vocab)
    what = "whisper reference {} vs openai float64" if report else ""
    return (
        check(ours64, truth, F64_PASS, np.float64, what.format("float64")),
        check(ours32, truth, F32_PASS, np.float32, what.format("float32")),
        truth,
    )


def _bump_one(weights, name, by=1e-3):
    """``weights`` with one element of ``name`` moved by ``by``: row 1 (a position or output
    row every test input reads), middle column."""
    out = dict(weights)
    a = out[name] = weights[name].copy()
    a[(1,) + tuple(n // 2 for n in a.shape[1:])] += np.float32(by)
    return out


def _check_whisper(dims, seq_len, seed, monkeypatch):
    spec, weights, tokens, xa = _whisper_case(dims, seq_len, seed)
    assert set(weights) == set(spec.param_shapes())
    ok64, ok32, truth = _whisper_compare(dims, spec, weights, weights, tokens, xa, monkeypatch)
    assert ok64[0], ok64[1]
    assert ok32[0], ok32[1]
    # openai-whisper's own float32 run meets the float32 bound too: the bound is one that a
    # correct float32 implementation meets, not one tuned to kvgraph's summation order
    assert_close(
        _whisper_logits(_whisper_decoder(dims, weights), tokens, xa),
        truth,
        F32_PASS,
        what="openai float32 vs openai float64",
    )
    # the comparison is not vacuous: logits are O(1) or larger and differ across positions
    assert np.abs(truth).max() > 1.0
    assert _max_diff(truth[:, 0], truth[:, -1]) > 1e-2
    return spec, weights, tokens, xa, truth


def test_whisper_small_random_matches_openai_textdecoder(monkeypatch):
    _check_whisper(SMALL_DIMS, seq_len=7, seed=1, monkeypatch=monkeypatch)


def test_whisper_tiny_dims_match_openai_textdecoder(monkeypatch):
    # tiny.en's shapes: random logits reach |200|, where a float32 spacing is ~1.5e-5
    _check_whisper(TINY_DIMS, seq_len=6, seed=2, monkeypatch=monkeypatch)


@pytest.mark.parametrize("dims", [SMALL_DIMS, TINY_DIMS], ids=["small", "tiny"])
@pytest.mark.parametrize(
    "name",
    [
        "decoder.blocks.0.attn.query.bias",
        "decoder.blocks.1.cross_attn.value.weight",
        "decoder.blocks.0.mlp.0.weight",
        "decoder.positional_embedding",
        "decoder.ln.weight",
    ],
)
def test_whisper_bounds_fail_on_a_1e3_perturbation(dims, name, monkeypatch):
    """Both bounds can fail: adding 1e-3 to ONE element of one weight on the kvgraph side is
    caught by the float64 comparison, and adding 1e-3 * N(0, 1) noise to that whole weight
    is caught by the float32 one (a real error moves logits by a fraction of their scale)."""
    spec, weights, tokens, xa = _whisper_case(dims, seq_len=6, seed=2)
    ok64, _, _ = _whisper_compare(
        dims, spec, weights, _bump_one(weights, name), tokens, xa, monkeypatch, report=False
    )
    assert not ok64[0], f"float64 bound missed a 1e-3 change of one element of {name}"
    noisy = dict(weights)
    noise = np.random.default_rng(0).standard_normal(weights[name].shape)
    noisy[name] = (weights[name] + 1e-3 * noise).astype(np.float32)
    _, ok32, _ = _whisper_compare(dims, spec, weights, noisy, tokens, xa, monkeypatch, report=False)
    assert not ok32[0], f"float32 bound missed 1e-3 noise on {name}"


def test_whisper_context_matters():
    """Sanity: a different audio context changes the logits beyond the tolerance."""
    spec, weights, tokens, xa = _whisper_case(SMALL_DIMS, seq_len=5, seed=3)
    g = kvgraph.build(spec)
    a = kvgraph.reference.run(g, weights, tokens=tokens, context=xa)["logits"]
    b = kvgraph.reference.run(g, weights, tokens=tokens, context=xa[::-1].copy())["logits"]
    assert _max_diff(a, b) > 1e-2


# -------------------------------------------------------------------- llama family


def _llama(**kw) -> kvgraph.DecoderSpec:
    base = dict(
        vocab_size=97,
        d_model=64,
        n_heads=8,
        n_layers=2,
        max_seq_len=32,
        mlp_hidden=96,
        norm="rmsnorm",
        mlp="swiglu",
        positions="rotary",
        tie_embeddings=False,
    )
    base.update(kw)
    return kvgraph.DecoderSpec(**base)


LLAMA_SPECS = {
    "mha": _llama(),
    "gqa_8q_2kv": _llama(n_kv_heads=2),
    "mqa_theta_eps": _llama(n_kv_heads=1, rope_theta=500000.0, eps=1e-6, n_layers=3),
    "gqa_tied": _llama(d_model=48, n_heads=6, n_kv_heads=3, tie_embeddings=True),
    "rotary_cross": _llama(
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        cross_attention=kvgraph.CrossAttention(context_len=5, context_dim=24),
    ),
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
    ours64 = kvgraph.reference.run(g, weights, dtype=np.float64, **inputs)["logits"]
    truth, used = llama_logits(spec, weights, tokens, context, dtype=torch.float64, return_used=True)
    assert used == set(spec.param_shapes()), (
        f"oracle read {sorted(used ^ set(spec.param_shapes()))} differently from param_shapes()"
    )
    truth = truth.numpy()
    assert ours.shape == truth.shape == (2, 8, spec.vocab_size)
    assert_close(ours64, truth, F64_PASS, np.float64, f"{key}: llama reference float64 vs torch float64")
    assert_close(ours, truth, F32_PASS, np.float32, f"{key}: llama reference float32 vs torch float64")
    assert_close(
        llama_logits(spec, weights, tokens, context).numpy(),
        truth,
        F32_PASS,
        np.float32,
        f"{key}: torch float32 vs torch float64",
    )
    assert np.abs(truth).max() > 1.0


def test_llama_float64_reference_is_tighter():
    spec = LLAMA_SPECS["gqa_8q_2kv"]
    weights = kvgraph.init_weights(spec, seed=3)
    tokens = np.random.default_rng(0).integers(0, spec.vocab_size, size=(2, 8))
    ours = kvgraph.reference.run(kvgraph.build(spec), weights, dtype=np.float64, tokens=tokens)["logits"]
    assert ours.dtype == np.float64
    theirs = llama_logits(spec, weights, tokens, dtype=torch.float64).numpy()
    assert _max_diff(ours, theirs) <= 1e-10
    # ... far inside the scaled float64 bound the family test uses
    assert_close(ours, theirs, F64_PASS, np.float64, "llama float64")


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
        perm = np.concatenate(
            [np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)]) + h * hd for h in range(spec.n_heads)]
        )
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


@pytest.mark.parametrize(
    "name",
    [
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ],
)
def test_llama_bounds_fail_on_a_1e3_perturbation(name):
    """As for Whisper: 1e-3 on one element fails the float64 bound, 1e-3 noise on the whole
    weight fails the float32 bound."""
    spec = LLAMA_SPECS["gqa_8q_2kv"]
    weights = kvgraph.init_weights(spec, seed=7)
    tokens = np.random.default_rng(11).integers(0, spec.vocab_size, size=(2, 8))
    truth = llama_logits(spec, weights, tokens, dtype=torch.float64).numpy()
    g = kvgraph.build(spec)
    ours64 = kvgraph.reference.run(g, _bump_one(weights, name), dtype=np.float64, tokens=tokens)["logits"]
    assert not check(ours64, truth, F64_PASS, np.float64)[0]
    noisy = dict(weights)
    noisy[name] = (
        weights[name] + 1e-3 * np.random.default_rng(0).standard_normal(weights[name].shape)
    ).astype(np.float32)
    ours32 = kvgraph.reference.run(g, noisy, tokens=tokens)["logits"]
    assert not check(ours32, truth, F32_PASS, np.float32)[0]
