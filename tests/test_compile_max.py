"""kvgraph.compile on MAX against the NumPy reference (each model compiled once per session,
every program of a spec in one MAX compile: tests/decoder_fixtures.py)."""

import attrs
import numpy as np
import pytest
from decoder_fixtures import F16_EXACT, SPECS, compiled
from decoder_fixtures import weights_for as _weights
from tolerance import MAX_VS_REF, assert_close, check

import kvgraph
from kvgraph import ir
from kvgraph.errors import LoweringError
from kvgraph.reference_decoder import ReferenceDecoder
from kvgraph.store import default_store

pytestmark = pytest.mark.max


@pytest.fixture(scope="session", params=sorted(SPECS))
def case(request):
    return compiled(request.param)


def _inputs(spec, batch, length, seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, spec.vocab_size, (batch, length))
    ctx = None
    if spec.cross_attention is not None:
        ca = spec.cross_attention
        ctx = rng.standard_normal((batch, ca.context_len, ca.context_dim)).astype(np.float32)
    return tokens, ctx


def test_prefill_and_steps_match_reference(case):
    spec, weights, model = case
    tokens, ctx = _inputs(spec, 2, 11, seed=1)
    full = kvgraph.reference.run(
        kvgraph.build(spec),
        weights,
        np.float64,
        tokens=tokens,
        **({"context": ctx} if ctx is not None else {}),
    )["logits"]
    p = 5
    logits, state = model.prefill(tokens[:, :p], ctx)
    assert logits.shape == (2, spec.vocab_size)
    assert_close(logits, full[:, p - 1], MAX_VS_REF, what="test_prefill_and_steps_match_reference")
    past = p
    for n in (1, 1, 3, 1):
        logits, state = model.step(tokens[:, past : past + n], state)
        assert logits.shape == (2, n, spec.vocab_size)
        assert_close(
            logits, full[:, past : past + n], MAX_VS_REF, what="test_prefill_and_steps_match_reference"
        )
        past += n
    assert state.past == past == 11


def test_full_sequence_fallback_matches_reference(case):
    spec, weights, model = case
    tokens, ctx = _inputs(spec, 2, 7, seed=2)
    ref = ReferenceDecoder(spec, weights).logits(tokens, ctx)
    assert_close(
        model.logits(tokens, ctx), ref, MAX_VS_REF, what="test_full_sequence_fallback_matches_reference"
    )


def test_prefill_length_one_and_batch_one(case):
    spec, weights, model = case
    tokens, ctx = _inputs(spec, 1, 4, seed=5)
    ref = ReferenceDecoder(spec, weights)
    rl, rs = ref.prefill(tokens[:, :1], ctx)
    ml, ms = model.prefill(tokens[:, :1], ctx)
    assert_close(ml, rl, MAX_VS_REF, what="test_prefill_length_one_and_batch_one")
    rl, rs = ref.step(tokens[:, 1:3], rs)
    ml, ms = model.step(tokens[:, 1:3], ms)
    assert_close(ml, rl, MAX_VS_REF, what="test_prefill_length_one_and_batch_one")
    rl, rs = ref.step(tokens[:, 3:4], rs)  # one row: the float16 GEMV where weights allow
    ml, ms = model.step(tokens[:, 3:4], ms)
    assert_close(ml, rl, MAX_VS_REF, what="test_prefill_length_one_and_batch_one")


def test_max_bound_fails_on_a_1e3_perturbation():
    """The MAX-vs-reference bound can fail: the same program (one compile serves any weights
    of its shapes) run with one weight moved by 1e-3 * N(0, 1) is caught. The program alone is
    read from the store, where it is linked to the session's Module (nothing compiled)."""
    name = "mixed_mqa"  # float32 weights: the perturbed set lowers to the same graph
    spec, weights = SPECS[name], _weights(name)
    tokens, ctx = _inputs(spec, 2, 6, seed=3)
    ref = ReferenceDecoder(spec, weights).logits(tokens, ctx)
    for w in ("model.layers.1.self_attn.v_proj.weight", "model.norm.weight"):
        bad = dict(weights)
        bad[w] = (weights[w] + 1e-3 * np.random.default_rng(0).standard_normal(weights[w].shape)).astype(
            np.float32
        )
        model = kvgraph.compile(spec, bad, eager=False)
        assert not check(model.logits(tokens, ctx), ref, MAX_VS_REF)[0], w
        if default_store().enabled:  # compiled in the session's Module: found through its link
            assert model.program("full").source == "store"


def test_float16_copies_only_where_lossless(case):
    """A float16-exact weight set gets float16 copies for the GEMV kernels (and the
    embedding); any other weight set stays float32 throughout."""
    from kvgraph.max.lower import lower

    spec, weights, model = case
    step = model.passes.step
    _, registry = lower(step, weights, few_dims={"b", "s"}, always_few=True)
    half = {k for k, a in registry.items() if a.dtype == np.float16}
    linears = {n.op.w.name for n in step.nodes if isinstance(n.op, ir.Linear)}
    assert model.few_steps == (spec.name in F16_EXACT)
    if spec.name in F16_EXACT:
        assert {k.split("#")[0] for k in half} >= linears  # every linear reads float16 ...
        assert not any(
            k.split("@")[0] in linears for k, a in registry.items() if a.dtype == np.float32
        )  # only
        for k in half:
            np.testing.assert_array_equal(registry[k].astype(np.float32), weights[k.split("#")[0]])
        tokens, ctx = _inputs(spec, 1, 3, seed=7)
        _, state = model.prefill(tokens[:, :2], ctx)
        before = dict(model._progs)
        model.step(tokens[:, 2:], state)
        assert "step_few" in before and model._progs == before  # compiled eagerly; nothing new ran
        # a step of more rows than step_few serves (STEP_FEW_ROWS, or the class's threshold with
        # kvgraph's custom GEMV) runs the float32 GEMM program "step"
        b, n = 2, model.step_few_rows // 2 + 1
        tokens, ctx = _inputs(spec, b, 3 + n, seed=8)
        full = ReferenceDecoder(spec, weights).logits(tokens, ctx)
        _, state = model.prefill(tokens[:, :3], ctx)
        logits, _ = model.step(tokens[:, 3:], state)
        assert "step" in model._progs
        assert_close(logits, full[:, 3:], MAX_VS_REF, what="test_float16_copies_only_where_lossless")
    else:
        assert not half and "step_few" not in model._progs
    _, registry = lower(step, weights, f16_weights=False, few_dims={"b", "s"}, always_few=True)
    assert all(a.dtype == np.float32 for a in registry.values())


def test_prefill_last_row_projection_holds_no_float32_copy(case):
    """Prefill's last-row linears (``[b, d]``: the logits projection) run the float16 GEMV for
    at most FEW_ROWS rows and otherwise a GEMM on the float16 weight widened in the graph:
    no float32 ``[in, out]`` copy of that weight is held (the vocabulary projection's would
    be the largest weight array), and many rows still give the float32 results."""
    from kvgraph.max.lower import FEW_ROWS, lower

    spec, weights, model = case
    if spec.name not in F16_EXACT:
        pytest.skip("float16 copies only for float16-exact weights")
    prefill = model.passes.programs["prefill"]
    _, registry = lower(prefill, weights, few_dims={"b"})
    last_row = {  # linears over [b, 1, d]: after the sunk take_last
        n.op.w.name for n in prefill.nodes if isinstance(n.op, ir.Linear) and n.op.x.type.shape[1:-1] == (1,)
    }
    assert last_row
    for w in last_row:
        assert f"{w}#f16" in registry and f"{w}@T" not in registry
    for batch in (FEW_ROWS, FEW_ROWS + 1):
        tokens, ctx = _inputs(spec, batch, 4, seed=9)
        full = ReferenceDecoder(spec, weights).logits(tokens, ctx)
        logits, _ = model.prefill(tokens, ctx)
        assert_close(logits, full[:, -1], MAX_VS_REF, what=f"prefill of {batch} rows")


def test_state_stays_in_max_buffers_and_step_takes_no_weights(case):
    from max.driver import Buffer

    spec, weights, model = case
    tokens, ctx = _inputs(spec, 1, 3, seed=4)
    _, state = model.prefill(tokens, ctx)
    assert state.buffers and all(isinstance(b, Buffer) for b in state.buffers.values())
    step = model.program("step")
    names = step.input_names
    assert names[:2] == ["tokens", "past"]
    assert set(names[2:]) == set(state.buffers)
    assert all(n.startswith(("cache.", "hoisted.")) for n in names[2:])
    assert not set(names) & set(weights)
    # GQA: the cache holds kv_heads * head_dim columns
    k0 = [n for n in names if n.startswith("cache.") and n.endswith(".k")][0]
    assert state.buffers[k0].shape[-1] == spec.kv_heads * spec.head_dim
    # hoisted cross-attention K/V are computed in prefill, never in step
    if spec.cross_attention is not None:
        assert any(n.startswith("hoisted.") for n in names)
        assert "context" not in names


def test_compiled_decoder_implements_the_decoder_protocol(case):
    from kvgraph.decoder import Decoder, DecoderState

    spec, weights, model = case
    assert isinstance(model, Decoder) and isinstance(ReferenceDecoder(spec, weights), Decoder)
    tokens, ctx = _inputs(spec, 1, 2, seed=9)
    _, state = model.prefill(tokens, ctx)
    assert isinstance(state, DecoderState) and state.past == 2 and state.batch == 1


def test_beam_reorder(case):
    spec, weights, model = case
    tokens, ctx = _inputs(spec, 2, 6, seed=6)
    _, state = model.prefill(tokens[:, :4], ctx)
    swapped = model.reorder(state, [1, 0])
    a, _ = model.step(tokens[::-1, 4:5], swapped)
    b, _ = model.step(tokens[:, 4:5], state)
    np.testing.assert_allclose(a, b[::-1], atol=1e-5)


def test_rows_sharing_contexts_multi_row_steps_and_reorder(case):
    """Beam-search-like walk (2 contexts x 3 rows, reorders within and across contexts, a
    multi-token step) on MAX: every row equals the full graph on its own history; rows of
    one context read one copy of its hoisted K/V."""
    from test_share_contexts import beam_walk

    spec, weights, model = case
    worst, scale, states = beam_walk(model, spec, weights, seed=11)
    ulps = worst / (np.finfo(np.float32).eps * max(1.0, scale))
    assert ulps <= MAX_VS_REF, f"{spec.name}: {ulps:.1f} float32 spacings"
    if spec.cross_attention is not None:
        assert model.per_context
        hoisted = {k: b.shape[0] for k, b in states[1].buffers.items() if k in model.per_context}
        assert set(hoisted.values()) == {2} and states[1].batch == 6
        # a reorder shares untouched buffers, copies only what moved
        assert all(states[1].buffers[k] is states[2].buffers[k] for k in model.per_context)


def test_reorder_copies_only_written_rows(case):
    spec, weights, model = case
    tokens, ctx = _inputs(spec, 2, 4, seed=5)
    _, state = model.prefill(tokens, ctx)
    new = model.reorder(state, [1, 1, 0])
    for k, b in new.buffers.items():
        if k.startswith("cache."):
            got, old = b.to_numpy(), state.buffers[k].to_numpy()
            np.testing.assert_array_equal(got[:, :4], old[[1, 1, 0], :4])
    assert new.batch == 3 and new.past == 4


def test_programs_are_cached_in_process(case):
    spec, weights, model = case
    again = kvgraph.compile(spec, weights)
    assert again.program("step") is model.program("step")
    assert again.program("prefill") is model.program("prefill")


# ------------------------------------------------------------- errors (no MAX compile)


@attrs.frozen(eq=False)
class _Mystery(ir.Op):
    NAME = "mystery"
    OPERANDS = ("x",)
    x: ir.Value

    def infer_type(self):
        return self.x.type


def test_op_without_rule_names_op_and_rules():
    from kvgraph.max.lower import lower

    spec = SPECS["llama_gqa"]
    g = kvgraph.build(spec)
    node = g.nodes[3]
    bad = ir.Node(_Mystery(node.out), ir.Value("odd", node.out.type))
    g2 = ir.Graph(g.name, g.inputs, g.nodes[:4] + (bad,), (("logits", bad.out),))
    with pytest.raises(LoweringError) as e:
        lower(g2, kvgraph.init_weights(spec))
    msg = str(e.value)
    assert "'mystery'" in msg and "attention" in msg and "linear" in msg and ">>%odd = mystery" in msg


def test_lowering_error_carries_ir_line():
    from kvgraph.max.lower import lower

    spec = SPECS["llama_gqa"]
    w = kvgraph.init_weights(spec)
    w["model.layers.0.self_attn.q_proj.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(LoweringError) as e:
        lower(kvgraph.build(spec), w)
    msg = str(e.value)
    assert "model.layers.0.self_attn.q_proj.weight" in msg and "(3, 3)" in msg
    assert "%b0.q = linear" in msg


def test_compile_rejects_bad_arguments():
    with pytest.raises(TypeError):
        kvgraph.compile("not a spec", {})
    with pytest.raises(LoweringError, match="device"):
        kvgraph.compile(SPECS["llama_gqa"], {}, device="tpu")


def test_bad_tokens_are_refused_before_max_runs(case):
    spec, weights, model = case
    tokens, ctx = _inputs(spec, 1, 3, seed=7)
    with pytest.raises(ValueError, match="token ids"):
        model.prefill(np.array([[spec.vocab_size]]), ctx)
    with pytest.raises(ValueError, match="integer array"):
        model.prefill(np.zeros((1, 0), np.int64), ctx)
    _, state = model.prefill(tokens, ctx)
    with pytest.raises(ValueError, match="batch"):
        model.step(np.zeros((2, 1), np.int64), state)
    if spec.positions == "learned":
        with pytest.raises(ValueError, match="learned positions"):
            model.step(np.zeros((1, spec.max_seq_len), np.int64), state)


# ------------------------------------------------- the fixed-capacity buffer layout


@pytest.fixture(scope="module")
def buffer_case():
    """llama_gqa's default compile: rotary positions, so "auto" gives in-place buffers of the
    spec's max_seq_len rows."""
    return compiled("llama_gqa")


def test_buffer_layout_matches_reference_in_place(buffer_case):
    from max.driver import Buffer
    from max.graph import BufferType

    from kvgraph.max.lower import lower

    spec, weights, model = buffer_case
    cap = model.capacity
    assert cap == spec.max_seq_len
    tokens, ctx = _inputs(spec, 2, 10, seed=1)
    full = kvgraph.reference.run(kvgraph.build(spec), weights, np.float64, tokens=tokens)["logits"]
    p = 5
    logits, state = model.prefill(tokens[:, :p])
    assert_close(logits, full[:, p - 1], MAX_VS_REF, what="test_buffer_layout_matches_reference_in_place")
    caches = {k: b for k, b in state.buffers.items() if k.startswith("cache.")}
    assert len(caches) == 2 * spec.n_layers
    assert all(isinstance(b, Buffer) for b in caches.values())
    kv = spec.kv_heads * spec.head_dim
    assert all(tuple(b.shape) == (2, cap, kv) for b in caches.values())
    past = p
    for n in (1, 1, 3):
        logits, new = model.step(tokens[:, past : past + n], state)
        assert_close(
            logits, full[:, past : past + n], MAX_VS_REF, what="test_buffer_layout_matches_reference_in_place"
        )
        assert all(new.buffers[k] is b for k, b in caches.items())  # written in place
        state, past = new, past + n
    assert state.past == past == 10
    for k, b in caches.items():
        a = b.to_numpy()
        assert np.abs(a[:, :past]).max() > 0 and not a[:, past:].any(), k
    step = model.program("step")
    assert step.output_names == ["logits"] and set(step.buffer_outputs) == set(caches)
    mg, _ = lower(step.graph, weights)
    in_types = {v.name: x.type for v, x in zip(step.graph.inputs, mg.inputs)}
    assert all(isinstance(in_types[k], BufferType) for k in caches)
    assert not isinstance(in_types["tokens"], BufferType)
    with pytest.raises(ValueError, match="capacity"):
        model.step(np.zeros((2, cap - past + 1), np.int64), state)
    model.step(np.zeros((2, cap - past), np.int64), state)  # exactly full: fine
    swapped = model.reorder(state, [1, 0])
    assert all(swapped.buffers[k] is not b for k, b in caches.items())


def test_buffer_layout_refuses_a_stale_state(buffer_case):
    """Two branches stepped from one state share its in-place cache: the branch whose rows
    the other overwrote is refused, not silently run on the other's keys; a state copied
    with reorder() branches safely, and an earlier state may always be stepped again."""
    spec, weights, model = buffer_case
    tokens, _ = _inputs(spec, 2, 9, seed=4)
    other = (tokens + 1) % spec.vocab_size
    full = kvgraph.reference.run(kvgraph.build(spec), weights, np.float64, tokens=tokens)["logits"]
    _, s0 = model.prefill(tokens[:, :5])
    copy = model.reorder(s0, [0, 1])
    _, s1 = model.step(tokens[:, 5:7], s0)
    _, s2 = model.step(other[:, 5:6], s0)  # writes row 5 again: s1 is now stale
    with pytest.raises(kvgraph.KvgraphError, match=r"stale: rows 5\.\.5"):
        model.step(tokens[:, 7:8], s1)
    with pytest.raises(kvgraph.KvgraphError, match="stale"):
        model.reorder(s1, [0, 1])
    model.step(other[:, 6:7], s2)  # the newest branch is fine
    logits, c1 = model.step(tokens[:, 5:8], copy)  # the copy was not touched by either
    assert_close(logits, full[:, 5:8], MAX_VS_REF, what="test_buffer_layout_refuses_a_stale_state")
    logits, _ = model.step(tokens[:, 5:6], s0)  # the common ancestor stays valid
    assert_close(logits[:, 0], full[:, 5], MAX_VS_REF, what="test_buffer_layout_refuses_a_stale_state")


def test_buffer_layout_needs_a_capacity_without_learned_positions():
    graph = kvgraph.build(SPECS["llama_gqa"])  # rotary: no table bounds the positions
    with pytest.raises(ValueError, match="capacity"):
        kvgraph.compile(graph, {}, cache_layout="buffer")
    with pytest.raises(ValueError, match="capacity"):
        kvgraph.compile(SPECS["llama_gqa"], {}, cache_layout="concat", capacity=16)
    with pytest.raises(ValueError, match="cache_layout"):
        kvgraph.compile(SPECS["llama_gqa"], {}, cache_layout="paged")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_default_layout_is_buffer_when_the_capacity_is_known(name):
    """ "auto" (the default): in-place buffers of the spec's max_seq_len rows (the learned
    table's for learned positions), or capacity=; concat for a graph with no known bound."""
    spec = SPECS[name]
    lazy = dict(eager=False)  # no MAX compile: only the passes run
    assert kvgraph.compile(spec, {}, **lazy).capacity == spec.max_seq_len
    assert kvgraph.compile(spec, {}, capacity=20, **lazy).capacity == 20
    assert kvgraph.compile(spec, {}, cache_layout="concat", **lazy).capacity is None
    graph = kvgraph.build(spec)
    expect = spec.max_seq_len if spec.positions == "learned" else None
    assert kvgraph.compile(graph, {}, **lazy).capacity == expect


@pytest.fixture(scope="module")
def concat_case():
    spec, weights, model = compiled("llama_gqa")
    return spec, weights, model.concat


def test_concat_layout_matches_reference_and_keeps_states_immutable(concat_case):
    spec, weights, model = concat_case
    assert model.capacity is None
    tokens, _ = _inputs(spec, 2, 9, seed=5)
    full = kvgraph.reference.run(kvgraph.build(spec), weights, np.float64, tokens=tokens)["logits"]
    logits, s0 = model.prefill(tokens[:, :4])
    assert_close(
        logits, full[:, 3], MAX_VS_REF, what="test_concat_layout_matches_reference_and_keeps_states_immutable"
    )
    caches = [k for k in s0.buffers if k.startswith("cache.")]
    assert caches and all(s0.buffers[k].shape[1] == 4 for k in caches)
    _, s1 = model.step(tokens[:, 4:6], s0)
    _, other = model.step((tokens[:, 4:5] + 1) % spec.vocab_size, s0)  # a second branch
    assert all(s1.buffers[k].shape[1] == 6 for k in caches)  # a grown copy, s0 untouched
    logits, _ = model.step(tokens[:, 6:9], s1)  # still valid: nothing is written in place
    assert_close(
        logits,
        full[:, 6:9],
        MAX_VS_REF,
        what="test_concat_layout_matches_reference_and_keeps_states_immutable",
    )
    logits, _ = model.step(tokens[:, 4:5], s0)
    assert_close(
        logits[:, 0],
        full[:, 4],
        MAX_VS_REF,
        what="test_concat_layout_matches_reference_and_keeps_states_immutable",
    )
