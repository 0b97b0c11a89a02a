"""DecoderSpec / CrossAttention validation: every rule raises SpecError naming field and value."""

from __future__ import annotations

import attrs
import pytest

import kvgraph
from kvgraph import CrossAttention, DecoderSpec, SpecError

BASE = dict(vocab_size=100, d_model=32, n_heads=4, n_layers=2, max_seq_len=16, mlp_hidden=64)
INT_FIELDS = ("vocab_size", "d_model", "n_heads", "n_layers", "max_seq_len", "mlp_hidden")


def spec(**kw) -> DecoderSpec:
    return DecoderSpec(**{**BASE, **kw})


def _raises(field: str, value, make, why: str | None = None) -> SpecError:
    with pytest.raises(SpecError) as ei:
        make()
    err = ei.value
    assert err.field == field, f"expected field {field!r}, got {err.field!r}: {err}"
    assert err.value == value or (err.value is value)
    msg = str(err)
    assert field in msg and repr(value) in msg, msg
    if why is not None:
        assert why in msg, msg
    return err


def test_spec_error_is_value_error():
    assert issubclass(SpecError, ValueError)
    assert issubclass(SpecError, kvgraph.KvgraphError)
    with pytest.raises(ValueError):
        spec(d_model=0)


def test_valid_specs_construct():
    spec()
    spec(n_kv_heads=2, norm="rmsnorm", mlp="swiglu", positions="rotary", tie_embeddings=False)
    spec(positions="sinusoidal", cross_attention=CrossAttention(context_len=3, context_dim=5))
    spec(positions="none", naming="llama", tie_embeddings=False, eps=0.5, rope_theta=2)
    spec(n_kv_heads=None, name="_x1")


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize(
    "value, why",
    [
        (0, "must be positive"),
        (-3, "must be positive"),
        (4.0, "must be an int"),
        ("8", "must be an int"),
        (True, "must be an int"),
        (None, "must be an int"),
    ],
)
def test_int_fields(field, value, why):
    _raises(field, value, lambda: spec(**{field: value}), why)


@pytest.mark.parametrize(
    "value, why",
    [
        (0, "must be positive"),
        (-2, "must be positive"),
        (2.0, "must be an int"),
        ("2", "must be an int"),
        (False, "must be an int"),
    ],
)
def test_n_kv_heads(value, why):
    _raises("n_kv_heads", value, lambda: spec(n_kv_heads=value), why)


@pytest.mark.parametrize("field", ["context_len", "context_dim"])
@pytest.mark.parametrize(
    "value, why",
    [(0, "must be positive"), (-1, "must be positive"), (1.5, "must be an int"), ("3", "must be an int")],
)
def test_cross_attention_fields(field, value, why):
    kw = dict(context_len=10, context_dim=8)
    kw[field] = value
    _raises(f"cross_attention.{field}", value, lambda: CrossAttention(**kw), why)


def test_cross_attention_wrong_type():
    value = {"context_len": 10, "context_dim": 8}
    _raises("cross_attention", value, lambda: spec(cross_attention=value), "kvgraph.CrossAttention")


def test_d_model_not_divisible_by_n_heads():
    _raises("d_model", 30, lambda: spec(d_model=30, n_heads=4), "not divisible by n_heads=4")


def test_n_heads_not_multiple_of_n_kv_heads():
    _raises("n_kv_heads", 3, lambda: spec(d_model=48, n_heads=4, n_kv_heads=3), "n_heads=4")


def test_n_kv_heads_larger_than_n_heads():
    _raises("n_kv_heads", 8, lambda: spec(n_kv_heads=8))


@pytest.mark.parametrize(
    "field, value",
    [
        ("norm", "batchnorm"),
        ("norm", "LayerNorm"),
        ("norm", None),
        ("mlp", "relu"),
        ("mlp", None),
        ("positions", "alibi"),
        ("positions", None),
        ("naming", "hf"),
        ("naming", "Whisper"),
    ],
)
def test_unknown_choices(field, value):
    _raises(field, value, lambda: spec(**{field: value}), "unknown")


def test_rotary_needs_even_head_size():
    # d_model 12 / 4 heads = head size 3
    _raises(
        "positions",
        "rotary",
        lambda: spec(d_model=12, n_heads=4, positions="rotary"),
        "even head size, got 3",
    )


@pytest.mark.parametrize("d_model, n_heads", [(5, 1), (2, 1)])
def test_sinusoidal_needs_even_d_model_at_least_4(d_model, n_heads):
    _raises(
        "positions",
        "sinusoidal",
        lambda: spec(d_model=d_model, n_heads=n_heads, positions="sinusoidal"),
        f"got {d_model}",
    )


@pytest.mark.parametrize("value", [0, -1e-5, 1, 1.5, "1e-5", None, float("nan")])
def test_bad_eps(value):
    with pytest.raises(SpecError) as ei:
        spec(eps=value)
    assert ei.value.field == "eps"
    assert "eps" in str(ei.value) and repr(value) in str(ei.value)


@pytest.mark.parametrize("value", [1, 0.5, 0, -10000.0, "10000", None])
def test_bad_rope_theta(value):
    _raises("rope_theta", value, lambda: spec(positions="rotary", rope_theta=value), "> 1")


def test_whisper_naming_must_tie_embeddings():
    _raises("tie_embeddings", False, lambda: spec(naming="whisper", tie_embeddings=False), "whisper")
    # the default naming for layernorm is whisper too
    _raises("tie_embeddings", False, lambda: spec(norm="layernorm", tie_embeddings=False))
    spec(norm="layernorm", naming="llama", tie_embeddings=False)  # fine with llama naming


@pytest.mark.parametrize("value", ["my-model", "", "1abc", "a b", 3, None])
def test_bad_name(value):
    _raises("name", value, lambda: spec(name=value), "identifier")


def test_specs_are_frozen_and_hashable():
    s = spec()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.d_model = 64
    assert s == spec() and hash(s) == hash(spec())
    assert s != spec(n_layers=3)


def test_derived_facts():
    s = spec(n_kv_heads=2, norm="rmsnorm")
    assert (s.kv_heads, s.head_dim, s.naming_style, s.has_bias) == (2, 8, "llama", False)
    w = spec()
    assert (w.kv_heads, w.naming_style, w.has_bias) == (4, "whisper", True)
    assert spec(norm="rmsnorm", bias=True).has_bias is True


def test_param_shapes_gqa_and_untied():
    s = spec(n_kv_heads=2, norm="rmsnorm", mlp="swiglu", positions="rotary", tie_embeddings=False)
    p = s.param_shapes()
    assert p["model.embed_tokens.weight"] == (100, 32)
    assert p["model.layers.1.self_attn.q_proj.weight"] == (32, 32)
    assert p["model.layers.1.self_attn.k_proj.weight"] == (16, 32)
    assert p["model.layers.1.self_attn.v_proj.weight"] == (16, 32)
    assert p["model.layers.0.mlp.gate_proj.weight"] == (64, 32)
    assert p["model.layers.0.mlp.down_proj.weight"] == (32, 64)
    assert p["lm_head.weight"] == (100, 32)
    assert not any(k.endswith(".bias") for k in p)
    assert list(p) == list(s.param_shapes())  # stable order
    assert set(kvgraph.init_weights(s)) == set(p)
