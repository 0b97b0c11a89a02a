"""Rows sharing a context (``ShareContexts``), multi-row steps and ``reorder``: on random specs
of both families and both cache layouts, every row's logits equal the full-sequence graph's
on that row's own token history and context; rows of one context hold one copy of its
hoisted state."""

from __future__ import annotations

import numpy as np
import pytest
from test_kv_cache import random_case
from tolerance import F64_PASS

import kvgraph
import kvgraph.specs
from kvgraph import names
from kvgraph.analysis import per_context_state
from kvgraph.decoder import regroup
from kvgraph.errors import InputError
from kvgraph.passes import ShareContexts, default_pipeline
from kvgraph.reference_decoder import ReferenceDecoder

N_SPECS = 24


def beam_walk(dec, spec, weights, seed: int):
    """Drive ``dec`` like beam search over 2 contexts x 3 rows, checking every step's logits
    against the full graph (``ReferenceDecoder(...).logits`` in float64); returns the worst
    error and its bound, and the states seen."""
    rng = np.random.default_rng(seed)
    c, g, prompt = 2, 3, 2
    cross = spec.cross_attention
    ctx = None if cross is None else rng.standard_normal((c, cross.context_len, cross.context_dim))
    oracle = ReferenceDecoder(spec, weights, dtype=np.float64)
    hist = rng.integers(0, spec.vocab_size, (c, prompt))
    rows_ctx = np.arange(c)  # context of each row
    worst, scale = 0.0, 0.0
    states = []

    def check(logits, n_new):
        nonlocal worst, scale
        full = oracle.logits(hist, None if ctx is None else ctx[rows_ctx])
        want = full[:, -n_new:]
        got = np.asarray(logits).reshape(want.shape)
        worst = max(worst, float(np.abs(got - want).max()))
        scale = max(scale, float(np.abs(want).max()))

    last, state = dec.prefill(hist, ctx)
    check(last[:, None], 1)
    # expand each context's prompt into g rows (a batch-1 prefill + reorder([0]*g) per audio)
    idx = np.repeat(np.arange(c), g)
    plan = [
        idx,
        np.array([1, 1, 0, 5, 3, 4]),  # within each context's rows, repeated and permuted
        np.array([2, 0, 1, 3, 4, 5]),
        np.array([3, 4, 0, 1, 5, 3]),  # rows change context: gathered, one copy per run
        np.array([5, 0]),
        np.array([1, 1, 1, 0]),
    ]
    for step, idx in enumerate(plan):
        state = dec.reorder(state, idx)
        hist, rows_ctx = hist[idx], rows_ctx[idx]
        states.append(state)
        n_new = 2 if step == 2 else 1  # one multi-token step along the way
        if hist.shape[1] + n_new > spec.max_seq_len:
            break
        new = rng.integers(0, spec.vocab_size, (len(idx), n_new))
        logits, state = dec.step(new, state)
        hist = np.concatenate([hist, new], axis=1)
        check(logits, n_new)
    return worst, scale, states


def _shared_rows(state):
    return {k: a.shape[0] for k, a in state.buffers.items() if k.startswith(names.HOISTED_PREFIX)}


@pytest.mark.parametrize("layout", ["concat", "buffer"])
@pytest.mark.parametrize("seed", range(N_SPECS))
def test_rows_sharing_contexts_equal_the_full_graph(seed, layout):
    spec, weights, *_ = random_case(seed)
    cap = spec.max_seq_len if layout == "buffer" else None
    result = kvgraph.run_passes(kvgraph.build(spec), default_pipeline(layout, cap))
    dec = ReferenceDecoder(result, weights, dtype=np.float64)
    worst, scale, states = beam_walk(dec, spec, weights, seed)
    # tolerance.bound's rule: k spacings of float64 at the scale of the values compared
    assert worst <= F64_PASS * np.finfo(np.float64).eps * max(1.0, scale), f"{spec}: error {worst}"
    if spec.cross_attention is not None:
        shared = per_context_state(result.step)
        assert shared and all(n.startswith(names.HOISTED_PREFIX) for n in shared)
        # the 3 rows of each context read one copy while they stay grouped
        assert set(_shared_rows(states[0]).values()) == {2} and states[0].batch == 6
        if len(states) > 3:  # (short specs stop early: max_seq_len)
            assert set(_shared_rows(states[2]).values()) == {2}
            assert set(_shared_rows(states[3]).values()) == {3}  # contexts [1, 0, 1]: runs of 2


def test_shared_state_is_only_attention_kv_of_a_context():
    spec = kvgraph.specs.get("whisper-tiny.en")
    r = kvgraph.run_passes(kvgraph.build(spec), default_pipeline())
    shared = per_context_state(r.step)
    assert shared == {v.name for v in r.step.inputs if v.name.startswith(names.HOISTED_PREFIX)}
    for v in r.step.inputs:
        if v.name in shared:
            assert str(v.type.shape[0]) == names.CONTEXTS
    # prefill is untouched: it returns one row per batch row (run with one row per context)
    assert "share_contexts" in [s.name for s in r.history]
    assert r.history[3].programs["prefill"] is r.history[2].programs["prefill"]
    # a graph without hoisted state is left as it is
    llama = kvgraph.run_passes(kvgraph.build(kvgraph.specs.get("llama-demo")), default_pipeline())
    assert llama.history[3].programs["step"] is llama.history[2].programs["step"]
    assert ShareContexts().apply(llama.programs) == llama.programs


def test_hoisted_value_read_elsewhere_is_not_shared():
    """A hoisted value that feeds anything but an attention's k/v keeps one row per batch row."""
    from kvgraph import ir
    from kvgraph.ir import GraphBuilder
    from kvgraph.passes.share import share_contexts
    from kvgraph.types import f32, i64, sym

    b = GraphBuilder("t.step")
    b.input("tokens", i64(sym("b"), sym("s")))
    b.input("past", i64())
    h = b.input("hoisted.x", f32(sym("b"), 4, 8))
    q = b.input("q", f32(sym("b"), sym("s"), 8))
    a = b.add(ir.Attention(q, h, h, 2, 2, False, 0.5), "att")
    bad = b.add(ir.Add(h, h), "twice")
    g = b.finish([("logits", a), ("other", bad)])
    assert share_contexts(g) is g


def test_regroup():
    # beams of one context: kept
    assert regroup(1, 1, np.array([0, 0, 0, 0, 0])) == (None, 1)
    rows, n = regroup(6, 2, np.array([1, 1, 0, 5, 3, 4]))
    assert rows is None and n == 2
    rows, n = regroup(6, 2, np.array([3, 4, 0, 1, 5, 3]))  # contexts 1 1 | 0 0 | 1 1
    assert list(rows) == [1, 0, 1] and n == 3
    rows, n = regroup(6, 2, np.array([4, 1, 1]))  # runs of unequal length: one per row
    assert list(rows) == [1, 0, 0] and n == 3
    assert regroup(4, 4, np.array([3, 2, 1, 0]))[1] == 4


def test_reorder_refuses_bad_indices():
    spec, weights, tokens, context, _ = random_case(0)
    dec = ReferenceDecoder(spec, weights)
    _, state = dec.prefill(tokens[:, :2], context)
    for bad in ([], [state.batch], [-1], [[0]], [0.5]):
        with pytest.raises(InputError, match="reorder"):
            dec.reorder(state, bad)
