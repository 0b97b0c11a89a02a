"""The KV-cache rewrite is exact: prefill + steps through the rewritten programs give the
full graph's logits, for random specs of both families; and unsafe graphs are refused."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from tolerance import F32_PASS, F64_PASS, bound

import kvgraph
from kvgraph import ir
from kvgraph.decoder import Decoder, DecoderState
from kvgraph.ir import GraphBuilder, Node
from kvgraph.passes import DCE, HoistInvariant, KVCache, SinkTakeLast, default_pipeline
from kvgraph.passes.sink import sink_take_last
from kvgraph.reference_decoder import ReferenceDecoder
from kvgraph.types import dim_add, f32, i64, sym

B, S = sym("b"), sym("s")
PAST_S = dim_add(sym("past"), S)
N_SPECS = 60


# ----------------------------------------------------------------- random specs


def random_case(seed: int):
    """A random small spec (family by seed), weights, batch and prompt/step lengths."""
    rng = np.random.default_rng(seed)
    family = ("whisper", "llama", "mix")[seed % 3]
    heads = int(rng.choice([1, 2, 4]))
    hd = int(rng.choice([2, 4, 6, 8])) if heads > 1 else int(rng.choice([4, 6, 8]))
    kv_choices = [k for k in (1, 2, 4) if heads % k == 0]
    kv = int(rng.choice(kv_choices))
    if family == "whisper":
        norm, mlp, positions = "layernorm", "gelu", "learned"
    elif family == "llama":
        norm, mlp, positions = "rmsnorm", "swiglu", "rotary"
    else:
        norm = str(rng.choice(["layernorm", "rmsnorm"]))
        mlp = str(rng.choice(["gelu", "swiglu"]))
        positions = str(rng.choice(["learned", "sinusoidal", "rotary", "none"]))
    cross = None
    if rng.random() < 0.5:
        cross = kvgraph.CrossAttention(
            context_len=int(rng.integers(1, 7)), context_dim=int(rng.integers(3, 11))
        )
    tie = bool(rng.random() < 0.6)
    p, k, m = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(2, 4))
    spec = kvgraph.DecoderSpec(
        vocab_size=int(rng.integers(7, 41)),
        d_model=heads * hd,
        n_heads=heads,
        n_kv_heads=None if kv == heads and rng.random() < 0.5 else kv,
        n_layers=int(rng.integers(1, 4)),
        max_seq_len=p + k + m + int(rng.integers(0, 4)),
        mlp_hidden=int(rng.integers(3, 25)),
        norm=norm,
        mlp=mlp,
        positions=positions,
        rope_theta=float(rng.choice([100.0, 10000.0])),
        cross_attention=cross,
        tie_embeddings=tie,
        eps=float(rng.choice([1e-5, 1e-6])),
        bias=[None, True, False][int(rng.integers(0, 3))],
        naming=None if tie else "llama",
        name=f"rand{seed}",
    )
    batch = int(rng.integers(1, 3))
    tokens = rng.integers(0, spec.vocab_size, size=(batch, p + k + m))
    context = None if cross is None else rng.standard_normal((batch, cross.context_len, cross.context_dim))
    return spec, kvgraph.init_weights(spec, seed), tokens, context, (p, k, m)


def _decode_vs_full(spec, weights, tokens, context, lengths, dtype):
    """Max |cached - full| over prefill, k single steps and one multi-token step; checks
    the state along the way."""
    p, k, m = lengths
    dec = ReferenceDecoder(spec, weights, dtype=dtype)
    full = dec.logits(tokens, context)
    b = tokens.shape[0]
    assert full.shape == (b, p + k + m, spec.vocab_size)

    last, state = dec.prefill(tokens[:, :p], context)
    assert last.shape == (b, spec.vocab_size)
    errs = [np.abs(last - full[:, p - 1]).max()]
    hoisted0 = {n: a for n, a in state.buffers.items() if n.startswith("hoisted.")}
    _check_state(spec, state, b, p)
    for i in range(k):
        out, state = dec.step(tokens[:, p + i : p + i + 1], state)
        assert out.shape == (b, 1, spec.vocab_size)
        errs.append(np.abs(out[:, 0] - full[:, p + i]).max())
        _check_state(spec, state, b, p + i + 1)
    out, state = dec.step(tokens[:, p + k :], state)
    assert out.shape == (b, m, spec.vocab_size)
    errs.append(np.abs(out - full[:, p + k :]).max())
    _check_state(spec, state, b, p + k + m)
    for n, a in hoisted0.items():  # computed once in prefill, carried unchanged
        assert state.buffers[n] is a
    return max(errs), dec, full


def _check_state(spec, state, b, past):
    assert state.past == past
    caches = {n: a for n, a in state.buffers.items() if n.startswith("cache.")}
    hoisted = {n: a for n, a in state.buffers.items() if n.startswith("hoisted.")}
    assert set(state.buffers) == set(caches) | set(hoisted)
    assert len(caches) == 2 * spec.n_layers
    for n, a in caches.items():  # GQA: n_kv_heads * head_dim columns, not n_heads
        assert a.shape == (b, past, spec.kv_heads * spec.head_dim), n
    if spec.cross_attention is None:
        assert not hoisted
    else:
        assert len(hoisted) == 2 * spec.n_layers
        for n, a in hoisted.items():
            assert a.shape == (b, spec.cross_attention.context_len, spec.d_model), n


@pytest.mark.parametrize("seed", range(N_SPECS))
def test_cached_decode_equals_full_graph_float64(seed):
    spec, weights, tokens, context, lengths = random_case(seed)
    err, dec, full = _decode_vs_full(spec, weights, tokens, context, lengths, np.float64)
    assert err <= bound(full, F64_PASS, np.float64), f"{spec}: max abs error {err}"
    _check_step_program(spec, dec.result)


def test_random_specs_cover_the_space():
    specs = [random_case(s)[0] for s in range(N_SPECS)]
    assert {s.norm for s in specs} == {"layernorm", "rmsnorm"}
    assert {s.mlp for s in specs} == {"gelu", "swiglu"}
    assert {s.positions for s in specs} == {"learned", "sinusoidal", "rotary", "none"}
    assert any(s.cross_attention for s in specs) and any(s.cross_attention is None for s in specs)
    assert any(s.kv_heads < s.n_heads for s in specs)
    assert {s.n_layers for s in specs} == {1, 2, 3}
    assert {random_case(s)[2].shape[0] for s in range(N_SPECS)} == {1, 2}
    assert any(s.norm == "layernorm" and s.positions == "rotary" for s in specs)  # mixes


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_cached_decode_equals_full_graph_float32(seed):
    spec, weights, tokens, context, lengths = random_case(seed)
    err, _, full = _decode_vs_full(spec, weights, tokens, context, lengths, np.float32)
    # two float32 passes (cached and full) of the same maths: each is a few spacings from the truth
    assert err <= bound(full, F32_PASS), f"{spec}: max abs error {err}"


def _check_step_program(spec, result):
    step = result.step
    names = [v.name for v in step.inputs]
    assert names[:2] == ["tokens", "past"]
    assert "context" not in names
    assert not any(v.name == "context" for n in step.nodes for v in n.op.operands())
    # the step does no full-sequence work: every non-cache value has s (or fixed) rows
    for n in step.nodes:
        if n.out.type.rank == 3:
            rows = n.out.type.shape[1]
            assert rows == S or rows == PAST_S or isinstance(rows, int), n
            assert rows != PAST_S or isinstance(n.op, ir.Concat), n  # only the caches grow
    if spec.cross_attention is not None:
        hoisted = [v for v in step.inputs if v.name.startswith("hoisted.")]
        assert len(hoisted) == 2 * spec.n_layers
        # cross K/V projections are not recomputed per step
        assert not any(isinstance(n.op, ir.Linear) and n.op.x in hoisted for n in step.nodes)


def test_whisper_shape_cross_kv_hoisted_once():
    spec = kvgraph.DecoderSpec(
        vocab_size=30,
        d_model=16,
        n_heads=4,
        n_layers=2,
        max_seq_len=16,
        mlp_hidden=32,
        cross_attention=kvgraph.CrossAttention(6, 10),
    )
    result = kvgraph.run_passes(kvgraph.build(spec), default_pipeline())
    linears_on_context = [
        n for n in result.prefill.nodes if isinstance(n.op, ir.Linear) and n.op.x.name == "context"
    ]
    assert len(linears_on_context) == 4  # k and v, per layer, once (in prefill)
    assert "context" not in [v.name for v in result.step.inputs]
    hoisted = sorted(k for k, _ in result.prefill.outputs if k.startswith("hoisted."))
    assert hoisted == sorted(v.name for v in result.step.inputs if v.name.startswith("hoisted."))


def test_gqa_cache_width():
    spec = kvgraph.DecoderSpec(
        vocab_size=20,
        d_model=32,
        n_heads=8,
        n_kv_heads=2,
        n_layers=1,
        max_seq_len=16,
        mlp_hidden=40,
        norm="rmsnorm",
        mlp="swiglu",
        positions="rotary",
    )
    result = kvgraph.run_passes(kvgraph.build(spec), default_pipeline())
    caches = [v for v in result.step.inputs if v.name.startswith("cache.")]
    assert [str(v.type) for v in caches] == ["f32[b, past, 8]"] * 2


# ---------------------------------------------------------- the full-graph path


def test_full_graph_logits_path():
    """logits() (the cache-off fallback) runs the un-rewritten graph; it is causal: a
    prefix's logits are the first rows of the whole sequence's logits."""
    spec, weights, tokens, context, _ = random_case(3)
    dec = ReferenceDecoder(spec, weights, dtype=np.float64)
    full = dec.logits(tokens, context)
    direct = kvgraph.reference.run(
        kvgraph.build(spec),
        weights,
        dtype=np.float64,
        tokens=tokens,
        **({} if context is None else {"context": context}),
    )["logits"]
    np.testing.assert_array_equal(full, direct)
    for j in range(1, tokens.shape[1]):
        np.testing.assert_allclose(dec.logits(tokens[:, :j], context), full[:, :j], atol=1e-10)
    last, _ = dec.prefill(tokens, context)
    np.testing.assert_allclose(last, full[:, -1], atol=1e-10)


def test_reference_decoder_accepts_pass_result_and_keeps_state_immutable():
    spec, weights, tokens, context, (p, k, m) = random_case(4)
    result = kvgraph.run_passes(kvgraph.build(spec), default_pipeline())
    dec = ReferenceDecoder(result, weights, dtype=np.float64)
    assert dec.result is result
    _, st0 = dec.prefill(tokens[:, :p], context)
    snapshot = dict(st0.buffers)
    a, st1 = dec.step(tokens[:, p : p + 1], st0)
    assert st0.buffers.keys() == snapshot.keys() and all(st0.buffers[n] is snapshot[n] for n in snapshot)
    assert st0.past == p
    b, _ = dec.step(tokens[:, p : p + 1], st0)  # same state, same answer
    np.testing.assert_array_equal(a, b)
    assert st1.past == p + 1


def test_reference_decoder_is_a_decoder_and_reorders_batch_rows():
    spec, weights, tokens, context, (p, k, m) = random_case(5)
    dec = ReferenceDecoder(spec, weights, dtype=np.float64)
    assert isinstance(dec, Decoder)
    flip = tokens[::-1]
    _, st = dec.prefill(tokens[:, :p], context)
    swapped = dec.reorder(st, list(range(tokens.shape[0]))[::-1])
    assert isinstance(swapped, DecoderState) and swapped.past == st.past and swapped.batch == st.batch
    a, _ = dec.step(flip[:, p : p + 1], swapped)
    b, _ = dec.step(tokens[:, p : p + 1], st)
    np.testing.assert_allclose(a, b[::-1], atol=1e-12)
    with pytest.raises(ValueError, match="integer array"):
        dec.prefill(np.zeros((1, 0), np.int64), context)


# ------------------------------------------------------------------ refusals


def _assert_refused(graph_or_programs, node: str, *words, passes=None):
    with pytest.raises(kvgraph.PassError) as e:
        kvgraph.run_passes(graph_or_programs, passes or [KVCache()])
    msg = str(e.value)
    assert f"%{node}" in msg, msg
    lines = msg.splitlines()
    assert any(line.startswith(">>") and f"%{node} =" in line for line in lines), msg  # the IR window
    assert any(line.startswith("graph ") or line.strip() == "..." for line in lines[1:]), msg
    for w in words:
        assert w in msg, msg
    return msg


def _stream_graph(name="bad", tokens_type=None, context_type=None):
    g = GraphBuilder(name)
    tokens = g.input("tokens", tokens_type or i64(B, S))
    context = g.input("context", context_type) if context_type is not None else None
    x = g.add(ir.Embed(tokens, g.weight("emb", (10, 8))), "x")
    return g, x, context


def _finish(g, h):
    logits = g.add(ir.Linear(h, g.weight("emb", (10, 8))), "logits")
    return g.finish([("logits", logits)])


def _non_causal_b1():
    """A built decoder whose second layer's self-attention is made non-causal."""
    spec = kvgraph.DecoderSpec(vocab_size=10, d_model=8, n_heads=2, n_layers=2, max_seq_len=8, mlp_hidden=16)
    full = kvgraph.build(spec)
    nodes = [
        Node(attrs.evolve(n.op, causal=False), n.out) if n.out.name == "b1.attn" else n for n in full.nodes
    ]
    return kvgraph.Graph(full.name, full.inputs, nodes, full.outputs)


def test_refuses_non_causal_self_attention():
    _assert_refused(_non_causal_b1(), "b1.attn", "non-causal")


def test_refuses_hand_built_non_causal_attention():
    g, x, _ = _stream_graph()
    a = g.add(ir.Attention(x, x, x, 2, 2, False, 0.5), "att")
    _assert_refused(_finish(g, a), "att", "non-causal")


def test_refuses_concat_along_sequence_of_token_values():
    g, x, _ = _stream_graph()
    c = g.add(ir.Concat(x, x, 1), "cat")
    _assert_refused(_finish(g, c), "cat", "mixes positions")


def test_refuses_concat_along_sequence_with_negative_axis():
    g, x, _ = _stream_graph(tokens_type=i64(B, 3))
    c = g.add(ir.Concat(x, x, -2), "cat")
    _assert_refused(_finish(g, c), "cat", "mixes positions")


def test_allows_concat_across_features():
    g, x, _ = _stream_graph()
    c = g.add(ir.Concat(x, x, 2), "cat")
    h = g.add(ir.Linear(c, g.weight("proj", (8, 16))), "h")
    a = g.add(ir.Attention(h, h, h, 2, 2, True, 0.5), "att")
    graph = _finish(g, a)
    result = kvgraph.run_passes(graph, default_pipeline())
    w = {
        "emb": np.random.default_rng(0).standard_normal((10, 8)),
        "proj": np.random.default_rng(1).standard_normal((8, 16)) / 4,
    }
    dec = ReferenceDecoder(result, w, dtype=np.float64)
    toks = np.array([[1, 2, 3, 4, 5]])
    full = dec.logits(toks)
    _, st = dec.prefill(toks[:, :2])
    out, _ = dec.step(toks[:, 2:], st)
    np.testing.assert_allclose(out, full[:, 2:], atol=1e-10)


def test_refuses_take_last_over_tokens():
    g, x, _ = _stream_graph()
    t = g.add(ir.TakeLast(x), "tl")
    _assert_refused(_finish(g, t), "tl", "mixes positions")


def test_refuses_transpose_over_tokens():
    g, x, _ = _stream_graph(tokens_type=i64(B, 8))
    t = g.add(ir.Transpose(x), "tr")
    _assert_refused(_finish(g, t), "tr", "mixes positions")


def test_refuses_conv1d_over_tokens():
    g, x, _ = _stream_graph(tokens_type=i64(B, 6))
    c = g.add(ir.Conv1d(x, g.weight("cw", (8, 8, 3)), g.weight("cb", (8,)), 1, 1), "conv")
    _assert_refused(_finish(g, c), "conv", "mixes positions")


def test_refuses_attention_with_k_from_tokens_and_v_from_context():
    g, x, ctx = _stream_graph(context_type=f32(B, S, 8))
    v = g.add(ir.Linear(ctx, g.weight("wv", (8, 8))), "cv")
    a = g.add(ir.Attention(x, x, v, 2, 2, True, 0.5), "att")
    _assert_refused(_finish(g, a), "att", "different kinds")


def test_refuses_graph_without_tokens():
    g = GraphBuilder("no_tokens")
    ids = g.input("ids", i64(B, S))
    x = g.add(ir.Embed(ids, g.weight("emb", (10, 8))), "x")
    graph = _finish(g, x)
    with pytest.raises(kvgraph.PassError, match="no 'tokens' input") as e:
        kvgraph.run_passes(graph, [KVCache()])
    assert "no_tokens" in str(e.value)


def test_refuses_already_cached_graph():
    spec = kvgraph.DecoderSpec(vocab_size=10, d_model=8, n_heads=2, n_layers=1, max_seq_len=8, mlp_hidden=16)
    full = kvgraph.build(spec)
    # running KVCache twice
    _assert_refused(full, "pos", "cached already", passes=[KVCache(), KVCache()])
    _assert_refused(full, "pos", "cached already", passes=default_pipeline() + [KVCache()])
    # a step program handed in as a full graph
    step = kvgraph.run_passes(full, [KVCache()]).step
    _assert_refused(step, "pos", "cached already")


def _one_layer_no_positions() -> kvgraph.DecoderSpec:
    """One layer, no position op: only the attention shows a graph is cached already."""
    return kvgraph.DecoderSpec(
        vocab_size=10,
        d_model=8,
        n_heads=2,
        n_layers=1,
        max_seq_len=8,
        mlp_hidden=16,
        norm="rmsnorm",
        mlp="swiglu",
        positions="none",
    )


def test_refuses_already_cached_attention_without_positions():
    spec = _one_layer_no_positions()
    step = kvgraph.run_passes(kvgraph.build(spec), default_pipeline()).step
    assert not any(isinstance(n.op, ir.Positions) for n in step.nodes)  # DCE dropped it
    _assert_refused(step, "b0.attn.k_all", "mixes positions")


# ------------------------------------------------- regressions of pass fixes


def _context_encoder_graph():
    """Tokens cross-attend a context that first goes through causal self-attention with
    positions of its own: those nodes read only the fixed context, so caching must not
    shift them by ``past``, and hoisting moves them to prefill."""
    g, x, ctx = _stream_graph("ctx_enc", context_type=f32(B, 4, 8))
    cpos = g.add(ir.Positions(ctx), "cpos")
    cpe = g.add(ir.Sinusoid(cpos, 8), "cpe")
    c = g.add(ir.Add(ctx, cpe), "c")
    cself = g.add(ir.Attention(c, c, c, 2, 2, True, 0.5), "cself")
    pos = g.add(ir.Positions(x), "pos")
    h = g.add(ir.Rope(x, pos, 2, 10000.0), "h")
    sa = g.add(ir.Attention(h, h, x, 2, 2, True, 0.5), "sa")
    x1 = g.add(ir.Add(x, sa), "x1")
    ca = g.add(ir.Attention(x1, cself, cself, 2, 2, False, 0.5), "ca")
    x2 = g.add(ir.Add(x1, ca), "x2")
    return _finish(g, x2)


def test_fixed_context_nodes_are_not_offset_by_past():
    graph = _context_encoder_graph()
    result = kvgraph.run_passes(graph, default_pipeline())
    step = result.step
    assert "context" not in [v.name for v in step.inputs]
    assert {n.out.name for n in step.nodes}.isdisjoint({"cpos", "cpe", "c", "cself"})
    rng = np.random.default_rng(0)
    dec = ReferenceDecoder(result, {"emb": rng.standard_normal((10, 8))}, dtype=np.float64)
    toks = rng.integers(0, 10, (2, 6))
    ctx = rng.standard_normal((2, 4, 8))
    full = dec.logits(toks, ctx)
    _, st = dec.prefill(toks[:, :2], ctx)
    for i in range(2, 4):
        out, st = dec.step(toks[:, i : i + 1], st)
        np.testing.assert_allclose(out[:, 0], full[:, i], atol=1e-10)
    out, st = dec.step(toks[:, 4:], st)
    np.testing.assert_allclose(out, full[:, 4:], atol=1e-10)


def test_sink_take_last_keeps_values_that_are_outputs():
    g, x, _ = _stream_graph("two_outs")
    h = g.add(ir.Gelu(x), "h")
    lg = g.add(ir.Linear(h, g.weight("emb", (10, 8))), "lg")
    t = g.add(ir.TakeLast(lg), "t")
    graph = g.finish([("last", t), ("hidden", h)])
    sunk = kvgraph.verify(sink_take_last(graph))
    assert str(sunk.output("hidden").type) == "f32[b, s, 8]"
    w = {"emb": np.random.default_rng(0).standard_normal((10, 8))}
    toks = np.array([[1, 2, 3]])
    a = kvgraph.reference.run(graph, w, dtype=np.float64, tokens=toks)
    b = kvgraph.reference.run(sunk, w, dtype=np.float64, tokens=toks)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-12)


def test_each_pass_is_a_frozen_value():
    for p in (KVCache(), HoistInvariant(), SinkTakeLast(), DCE()):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            p.name = "x"


# --------------------------------------------- the fixed-capacity buffer layout

N_BUFFER_SPECS = 20


def _buffer_result(spec, capacity):
    return kvgraph.run_passes(kvgraph.build(spec), default_pipeline("buffer", capacity))


@pytest.mark.parametrize("seed", range(N_BUFFER_SPECS))
def test_buffer_layout_cached_decode_equals_full_graph_float64(seed):
    """layout="buffer": prefill, single steps and one multi-token step give the full
    graph's rows; caches keep their capacity, hold the rows seen and zeros after them."""
    spec, weights, tokens, context, (p, k, m) = random_case(seed)
    cap = p + k + m + seed % 3
    result = _buffer_result(spec, cap)
    dec = ReferenceDecoder(result, weights, dtype=np.float64)
    full = dec.logits(tokens, context)
    b = tokens.shape[0]
    kv = spec.kv_heads * spec.head_dim

    def check(state, past):
        assert state.past == past
        caches = {n: a for n, a in state.buffers.items() if n.startswith("cache.")}
        assert len(caches) == 2 * spec.n_layers
        for n, a in caches.items():
            assert a.shape == (b, cap, kv), n
            assert not a[:, past:].any(), n  # rows not yet written are still zero
            assert np.abs(a[:, :past]).max() > 0, n

    last, state = dec.prefill(tokens[:, :p], context)
    errs = [np.abs(last - full[:, p - 1]).max()]
    check(state, p)
    for i in range(k):
        out, state = dec.step(tokens[:, p + i : p + i + 1], state)
        assert out.shape == (b, 1, spec.vocab_size)
        errs.append(np.abs(out[:, 0] - full[:, p + i]).max())
        check(state, p + i + 1)
    out, state = dec.step(tokens[:, p + k :], state)
    assert out.shape == (b, m, spec.vocab_size)
    errs.append(np.abs(out - full[:, p + k :]).max())
    check(state, p + k + m)
    assert max(errs) <= bound(full, F64_PASS, np.float64), f"{spec}: max abs error {max(errs)}"


def test_buffer_layout_programs():
    """IR sanity: fixed-capacity cache inputs in both programs, returned under the same
    names, no concat; attention reads a cache_view, the only value with past+s rows."""
    spec = kvgraph.DecoderSpec(
        vocab_size=20,
        d_model=32,
        n_heads=8,
        n_kv_heads=2,
        n_layers=2,
        max_seq_len=16,
        mlp_hidden=40,
        norm="rmsnorm",
        mlp="swiglu",
        positions="rotary",
        cross_attention=kvgraph.CrossAttention(3, 5),
    )
    result = _buffer_result(spec, 12)
    for g in (result.prefill, result.step):
        caches = [v for v in g.inputs if v.name.startswith("cache.")]
        assert [str(v.type) for v in caches] == ["f32[b, 12, 8]"] * 4, g.name
        assert sorted(v.name for v in caches) == sorted(k for k, _ in g.outputs if k.startswith("cache."))
        assert not any(isinstance(n.op, ir.Concat) for n in g.nodes), g.name
        stores = [n for n in g.nodes if isinstance(n.op, ir.CacheStore)]
        assert {n.op.cache.name for n in stores} == {v.name for v in caches}
        for k, v in g.outputs:
            if k.startswith("cache."):
                assert any(n.out is v and n.op.cache.name == k for n in stores), k
        for n in g.nodes:
            if isinstance(n.op, ir.Attention) and n.op.causal:
                assert isinstance(result_producer(g, n.op.k), ir.CacheView)
                assert isinstance(result_producer(g, n.op.v), ir.CacheView)
    names = [v.name for v in result.step.inputs]
    assert names[:2] == ["tokens", "past"] and "context" not in names
    assert [v.name for v in result.prefill.inputs][:2] == ["tokens", "context"]
    for n in result.step.nodes:
        if n.out.type.rank == 3 and n.out.type.shape[1] == PAST_S:
            assert isinstance(n.op, ir.CacheView), n
    assert "cache_store %cache.b0.attn.v, %b0.v, %past : f32[b, 12, 8]" in str(result.step)
    # the concat layout is still the default
    assert any(
        isinstance(n.op, ir.Concat)
        for n in kvgraph.run_passes(kvgraph.build(spec), default_pipeline()).step.nodes
    )


def result_producer(g, v):
    return g.producers()[v].op


def test_buffer_layout_needs_a_capacity():
    with pytest.raises(kvgraph.PassError, match="capacity"):
        KVCache(layout="buffer")
    with pytest.raises(kvgraph.PassError, match="capacity"):
        KVCache(layout="buffer", capacity=0)
    with pytest.raises(kvgraph.PassError, match="no capacity"):
        KVCache(capacity=8)
    assert KVCache(layout="buffer", capacity=8).capacity == 8


def test_buffer_layout_refuses_rows_past_capacity():
    spec, weights, tokens, context, (p, k, m) = random_case(7)
    cap = p + 1
    dec = ReferenceDecoder(_buffer_result(spec, cap), weights, dtype=np.float64)
    _, state = dec.prefill(tokens[:, :p], context)
    out, state = dec.step(tokens[:, p : p + 1], state)  # exactly full: fine
    assert state.past == cap
    with pytest.raises(kvgraph.KvgraphError, match=f"capacity {cap}"):
        dec.step(tokens[:, p + 1 : p + 2], state)
    with pytest.raises(kvgraph.KvgraphError, match=f"capacity {cap}"):
        dec.prefill(tokens[:, : cap + 1], context)


def test_buffer_layout_step_is_refused_as_already_cached():
    spec = _one_layer_no_positions()
    step = _buffer_result(spec, 8).step
    _assert_refused(step, "b0.attn.k_store", "mixes positions")


def test_buffer_layout_keeps_the_refusals():
    _assert_refused(_non_causal_b1(), "b1.attn", "non-causal", passes=[KVCache("buffer", capacity=8)])
