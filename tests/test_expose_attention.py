"""``attention_scores`` and ``ExposeAttention``: chosen heads' pre-softmax scores as extra
outputs of the full-sequence program, equal to scores computed in NumPy from the ``q`` and
``k`` the attention reads; the program's logits unchanged; on MAX equal to the reference."""

from __future__ import annotations

import numpy as np
import pytest
from test_kv_cache import random_case
from tolerance import F64_PASS, MAX_VS_REF, assert_close

import kvgraph
from kvgraph import ir, specs
from kvgraph.cost import node_flops
from kvgraph.errors import InputError, IRTypeError
from kvgraph.passes import ExposeAttention
from kvgraph.passes.expose import expose_attention

N_SPECS = 24


def _attentions(g):
    return [n for n in g.nodes if isinstance(n.op, ir.Attention)]


def _numpy_scores(q, k, op, heads):
    """Scores by hand: per chosen head, its q columns times its KV head's k columns."""
    H, KV = op.heads, op.kv_heads
    hd = q.shape[2] // H
    sq, sk = q.shape[1], k.shape[1]
    out = np.empty((q.shape[0], len(heads), sq, sk))
    for n, h in enumerate(heads):
        g = h // (H // KV)
        out[:, n] = (
            np.einsum("bid,bjd->bij", q[:, :, h * hd : (h + 1) * hd], k[:, :, g * hd : (g + 1) * hd])
            * op.scale
        )
    if op.causal:  # the full-sequence graph: no offset
        out[:, :, np.triu_indices(sq, 1, sk)[0], np.triu_indices(sq, 1, sk)[1]] = -np.inf
    return out


def _run(g, weights, tokens, context, extra=()):
    probe = ir.Graph(g.name, g.inputs, g.nodes, tuple(g.outputs) + tuple(extra))
    kw = {"context": context} if context is not None else {}
    return kvgraph.reference.run(probe, weights, np.float64, tokens=tokens, **kw)


@pytest.mark.parametrize("seed", range(N_SPECS))
def test_exposed_scores_equal_numpy_scores_from_q_and_k(seed):
    spec, weights, tokens, context, _ = random_case(seed)
    g = kvgraph.build(spec)
    rng = np.random.default_rng(100 + seed)
    which = {}
    for n in _attentions(g):
        if rng.random() < 0.3:
            which[n.out.name] = None
        else:
            k = int(rng.integers(1, n.op.heads + 1))
            which[n.out.name] = [int(h) for h in rng.permutation(n.op.heads)[:k]]
    r = kvgraph.run_passes(g, [ExposeAttention(which)])  # verifies the result
    exposed = r["full"]
    assert [k for k, _ in exposed.outputs] == ["logits"] + [f"scores.{a}" for a in which]
    qk = [(f"q.{n.out.name}", n.op.q) for n in _attentions(g)] + [
        (f"k.{n.out.name}", n.op.k) for n in _attentions(g)
    ]
    got = _run(exposed, weights, tokens, context, qk)
    base = _run(g, weights, tokens, context)
    np.testing.assert_array_equal(got["logits"], base["logits"])
    for n in _attentions(g):
        a = n.out.name
        heads = list(range(n.op.heads)) if which[a] is None else which[a]
        want = _numpy_scores(got[f"q.{a}"], got[f"k.{a}"], n.op, heads)
        s = got[f"scores.{a}"]
        assert s.shape == (tokens.shape[0], len(heads), tokens.shape[1], got[f"k.{a}"].shape[1])
        assert np.array_equal(np.isneginf(s), np.isneginf(want)), a
        fin = np.isfinite(want)
        assert_close(s[fin], want[fin], F64_PASS, what="test_exposed_scores_equal_numpy_scores_from_q_and_k")
        if n.op.causal:  # a softmax of the scores gives the weights the attention used
            p = np.exp(s - s.max(-1, keepdims=True))
            assert np.allclose((p / p.sum(-1, keepdims=True)).sum(-1), 1.0)


def test_scores_printed_and_costed():
    spec = specs.get("llama-demo")
    g = expose_attention(kvgraph.build(spec), {"b0.attn": (3, 0)})
    text = kvgraph.format_graph(g)
    assert (
        "%scores.b0.attn = attention_scores %b0.q_rope, %b0.k_rope {heads=4, kv_heads=2, causal=true, "
        "scale=0.25, select=[3, 0]} : f32[b, 2, s, s]"
    ) in text
    assert text.splitlines()[-2].endswith("logits=%logits, scores.b0.attn=%scores.b0.attn")
    cost = {name: (kind, f) for name, kind, f in node_flops(g, {"b": 1, "s": 10})}
    assert cost["scores.b0.attn"] == ("attention", 2 * 10 * 10 * (2 * 16 + 1))


def test_refusals_name_the_attention():
    g = kvgraph.build(specs.get("llama-demo"))
    with pytest.raises(InputError, match=r"no attention %b9.attn; its attentions: \[.b0.attn., .b1.attn.\]"):
        expose_attention(g, {"b9.attn": None})
    with pytest.raises(InputError, match=r"heads \[4\] of %b0.attn: expected distinct heads in \[0, 4\)"):
        expose_attention(g, {"b0.attn": [4]})
    with pytest.raises(InputError, match="heads \\[1, 1\\] of %b0.attn"):
        expose_attention(g, {"b0.attn": [1, 1]})
    with pytest.raises(InputError, match="heads of 'b0.attn' must be ints"):
        ExposeAttention({"b0.attn": ["x"]})
    with pytest.raises(InputError, match="already has an output 'scores.b0.attn'"):
        expose_attention(expose_attention(g, {"b0.attn": None}), {"b0.attn": [0]})
    with pytest.raises(InputError, match="no program 'full'"):
        ExposeAttention({"b0.attn": None}).apply(kvgraph.passes.Programs.of(step=g))
    a = _attentions(g)[0].op
    with pytest.raises(IRTypeError, match="select=\\(\\) must name heads"):
        ir.AttentionScores(a.q, a.k, a.heads, a.kv_heads, True, a.scale, ()).infer_type()


@pytest.mark.max
def test_max_scores_equal_reference():
    """One small compiled program: causal grouped-query self-attention heads (gathered out
    of order) and cross-attention heads, against the NumPy reference."""
    from decoder_fixtures import SCORES, compiled
    from test_compile_max import _inputs

    spec, weights, _ = compiled("gpt_cross_gqa")  # its Modules hold this scores program
    which = SCORES["gpt_cross_gqa"]
    model = kvgraph.compile(spec, weights, kv_cache=False, eager=False)
    tokens, ctx = _inputs(spec, 2, 9, seed=4)
    logits, scores = model.logits_and_scores(tokens, ctx, which=which)
    ref = kvgraph.reference.run(
        expose_attention(kvgraph.build(spec), which), weights, np.float64, tokens=tokens, context=ctx
    )
    assert_close(logits, ref["logits"], MAX_VS_REF, what="test_max_scores_equal_reference")
    assert sorted(scores) == sorted(which)
    for a in which:
        want = ref[f"scores.{a}"]
        assert scores[a].shape == want.shape and scores[a].dtype == np.float32
        assert np.array_equal(np.isneginf(scores[a]), np.isneginf(want)), a
        fin = np.isfinite(want)
        assert_close(scores[a][fin], want[fin], MAX_VS_REF, what="test_max_scores_equal_reference")
    assert model.exposed_program(dict(which)) is model.exposed_program(which)


def test_kv_cache_refuses_exposed_scores():
    """Scores over the whole sequence are not a cached step's business: KVCache says so."""
    g = expose_attention(kvgraph.build(specs.get("llama-demo")), {"b0.attn": [0]})
    with pytest.raises(
        kvgraph.PassError, match="node %scores.b0.attn \\(attention_scores\\) mixes positions"
    ):
        kvgraph.run_passes(g, kvgraph.passes.default_pipeline())
