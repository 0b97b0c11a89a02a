"""Static cost: a cached step does constant dense work; only attention grows with past."""

from __future__ import annotations

import pytest

import kvgraph
from kvgraph import specs
from kvgraph.cost import flops, node_count, node_flops
from kvgraph.passes import default_pipeline

SPECS = ("whisper-tiny.en", "llama-demo")


@pytest.fixture(scope="module", params=SPECS)
def case(request):
    spec = specs.get(request.param)
    return spec, kvgraph.run_passes(kvgraph.build(spec), default_pipeline())


def _step(result, past, s=1, b=1):
    return flops(result.step, {"b": b, "s": s, "past": past})


def test_step_dense_work_is_independent_of_past(case):
    spec, r = case
    a, b = _step(r, 10), _step(r, 300)
    assert a["dense"] == b["dense"] > 0
    assert a["by_op"]["linear"] == b["by_op"]["linear"]
    assert a["total"] == a["dense"] + a["attention"]
    # node by node: the same nodes run, and only attentions cost more with a longer past
    na, nb = (
        node_flops(r.step, {"b": 1, "s": 1, "past": 10}),
        node_flops(r.step, {"b": 1, "s": 1, "past": 300}),
    )
    assert len(na) == len(nb) == node_count(r.step)
    grown = [x[0] for x, y in zip(na, nb) if x != y]
    assert grown and all(x[1] == "attention" for x, y in zip(na, nb) if x != y)
    assert len(grown) == spec.n_layers  # the self-attentions; cross-attention keys are fixed
    # the step is the full graph plus two cache concats per self-attention, minus the
    # cross K/V projections hoisted into prefill
    hoisted = 2 * spec.n_layers if spec.cross_attention is not None else 0
    assert node_count(r.step) == node_count(r.full) + 2 * spec.n_layers - hoisted


def test_step_attention_grows_linearly_in_past_plus_one(case):
    spec, r = case
    att = {p: _step(r, p)["attention"] for p in (10, 100, 300)}
    assert att[10] < att[100] < att[300]
    # affine in past: equal increments per added key
    assert (att[300] - att[100]) * 90 == (att[100] - att[10]) * 200
    if spec.cross_attention is None:  # self-attention only: proportional to past + 1 keys
        assert att[300] * 11 == att[10] * 301


def test_full_graph_recomputes_the_sequence(case):
    """The sanity check can fail: the un-cached graph's dense work per new token scales
    with the sequence, and is far above the step's."""
    spec, r = case
    past = 300
    full = flops(r.full, {"b": 1, "s": past + 1})
    step = _step(r, past)
    assert full["dense"] > 100 * step["dense"]
    assert flops(r.full, {"b": 1, "s": 11})["dense"] != full["dense"]


def test_multi_token_step_scales_dense_work_with_s(case):
    _, r = case
    one, four = _step(r, 50, s=1), _step(r, 50, s=4)
    assert four["dense"] > 3 * one["dense"]


def test_linear_flops_exact():
    spec = kvgraph.DecoderSpec(
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
    g = kvgraph.build(spec)
    f = flops(g, {"b": 2, "s": 3})
    rows = 2 * 3
    # q, k, v, o (8x8), gate, up (16x8), down (8x16), logits (10x8); llama naming: no biases
    want = 2 * rows * (4 * 64 + 2 * 128 + 128 + 80)
    assert f["by_op"]["linear"] == want
    assert f["by_op"]["attention"] == f["attention"] == 2 * 2 * 3 * 3 * (4 * 4 + 5)


def test_unbound_dim_is_a_clear_error(case):
    _, r = case
    with pytest.raises(ValueError, match="past"):
        flops(r.step, {"b": 1, "s": 1})


def test_buffer_layout_step_costs_what_the_concat_step_costs(case):
    """cache_store / cache_view are data movement: the in-place cache adds no FLOPs."""
    spec, r = case
    buf = kvgraph.run_passes(kvgraph.build(spec), default_pipeline("buffer", spec.max_seq_len))
    a, b = _step(buf, 10), _step(r, 10)
    totals = ("dense", "attention", "total")
    assert [a[k] for k in totals] == [b[k] for k in totals]
    assert a["by_op"]["cache_store"] == a["by_op"]["cache_view"] == b["by_op"]["concat"] == 0
