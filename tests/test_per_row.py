"""``KVCache(per_row=True)``: rows at different positions in one step (continuous batching).

The step takes ``past: i64[b]``; every row has its own positions, causal mask and cache
writes. Checked on the random specs of ``test_kv_cache`` (both families: learned positions
with cross-attention, rope with grouped-query attention, and mixes) against the full graph
run on each row alone, in float64: rows prefilled one at a time at unequal lengths, their
caches pooled (with stale garbage after each row's rows, as a reused slot holds), then
single-token and multi-token steps of all rows together.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_kv_cache import random_case
from tolerance import F64_PASS, bound

import kvgraph
from kvgraph import ir, reference
from kvgraph.errors import IRTypeError, PassError
from kvgraph.passes import KVCache, default_pipeline
from kvgraph.types import f32, i64, sym

N_SPECS = 24
ROWS = 3


def per_row_result(spec, capacity):
    return kvgraph.run_passes(kvgraph.build(spec), default_pipeline("buffer", capacity, per_row=True))


def _row_case(seed):
    """A random spec and ROWS independent rows: tokens, contexts, unequal prompt lengths."""
    spec, weights, _, _, (_, k, m) = random_case(seed)
    rng = np.random.default_rng(1000 + seed)
    cap = spec.max_seq_len
    steps = k + m
    prompts = [int(rng.integers(1, cap - steps + 1)) for _ in range(ROWS)]
    if len(set(prompts)) == 1 and cap - steps > 1:  # make the rows unequal when room allows
        prompts[0] = 1 if prompts[0] > 1 else 2
    tokens = [rng.integers(0, spec.vocab_size, size=(1, p + steps)) for p in prompts]
    ca = spec.cross_attention
    contexts = [
        None if ca is None else rng.standard_normal((1, ca.context_len, ca.context_dim)) for _ in range(ROWS)
    ]
    return spec, weights, cap, prompts, (k, m), tokens, contexts


def _run(g, weights, **inputs):
    return reference.run(g, weights, dtype=np.float64, **inputs)


@pytest.mark.parametrize("seed", range(N_SPECS))
def test_rows_at_unequal_positions_equal_each_row_alone(seed):
    spec, weights, cap, prompts, (k, m), tokens, contexts = _row_case(seed)
    result = per_row_result(spec, cap)
    prefill, step = result.prefill, result.step
    assert step.input("past").type == i64(sym("b"))
    state_names = [v.name for v in step.inputs if v.name not in ("tokens", "past")]
    full = [_run(result.full, weights, **_ctx(tokens[r], contexts[r]))["logits"][0] for r in range(ROWS)]

    # each row prefilled alone (its own prompt length), into a pool of rows
    rng = np.random.default_rng(seed)
    pool: dict[str, list] = {n: [] for n in state_names}
    errs = []
    for r, p in enumerate(prompts):
        inputs = _ctx(tokens[r][:, :p], contexts[r])
        for v in prefill.inputs:
            if v.name.startswith("cache."):
                inputs[v.name] = np.zeros((1, *v.type.shape[1:]))
        out = _run(prefill, weights, **inputs)
        errs.append(np.abs(out["logits"][0, -1] - full[r][p - 1]).max())
        for n in state_names:
            a = out[n].copy()
            if n.startswith("cache."):  # a reused slot: stale rows after this row's own
                a[:, p:] = rng.standard_normal(a[:, p:].shape)
            pool[n].append(a)
    state = {n: np.concatenate(a, axis=0) for n, a in pool.items()}

    past = np.array(prompts, np.int64)
    for s in [1] * k + [m]:
        new = np.concatenate([tokens[r][:, past[r] : past[r] + s] for r in range(ROWS)], axis=0)
        out = _run(step, weights, tokens=new, past=past, **state)
        assert out["logits"].shape == (ROWS, s, spec.vocab_size)
        for r in range(ROWS):
            errs.append(np.abs(out["logits"][r] - full[r][past[r] : past[r] + s]).max())
        for n in state_names:
            if n in out:
                state[n] = out[n]
        past = past + s
    worst = max(errs)
    assert worst <= bound(np.concatenate(full), F64_PASS, np.float64), f"{spec}: max abs error {worst}"


def _ctx(tokens, context):
    return {"tokens": tokens} if context is None else {"tokens": tokens, "context": context}


def test_per_row_step_prints_and_verifies():
    from kvgraph import specs

    spec = specs.get("llama-demo")
    step = per_row_result(spec, 16).step
    text = kvgraph.format_graph(step)
    assert "%past: i64[b]" in text
    assert "positions %tokens, %past : i64[b, s]" in text
    kvgraph.verify(step)


def test_per_row_needs_the_buffer_layout():
    with pytest.raises(PassError, match="per_row=True"):
        KVCache(per_row=True)


def test_per_row_offsets_are_typed():
    b = sym("b")
    tok = ir.Value("tokens", i64(b, sym("s")))
    with pytest.raises(IRTypeError, match=r"i64\[\] or i64\[b\]"):
        ir.Positions(tok, ir.Value("past", i64(3))).infer_type()
    assert ir.Positions(tok, ir.Value("past", i64(b))).infer_type() == i64(b, sym("s"))
    q = ir.Value("q", f32(b, 1, 8))
    with pytest.raises(IRTypeError, match="q_offset"):
        ir.Attention(q, q, q, 2, 2, True, 0.5, ir.Value("o", i64(2, 2))).infer_type()


def test_kvgraph_show_per_row(capsys):
    from kvgraph.cli import main

    assert main(["show", "whisper-tiny.en", "--per-row", "--stage", "dce", "--program", "step"]) == 0
    out = capsys.readouterr().out
    assert "graph whisper_decoder.step_rows(%tokens: i64[b, s], %past: i64[b]," in out
    assert "gather_rows @decoder.positional_embedding, %pos : f32[b, s, 384]" in out
    assert "%hoisted.b0.ck: f32[b, 1500, 384]" in out
