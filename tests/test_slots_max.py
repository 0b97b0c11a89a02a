"""The per-row step on MAX (``step_rows``) and the slot pool, against the NumPy reference.

Decodes join a pool of cache rows at unequal prompt lengths, step together (some sitting
out some steps), one leaves and a new one reuses its rows (stale keys behind the mask); a
multi-token step checks the in-graph per-row masks with seq > 1 (MAX_NOTES' trap). Both
families: learned positions + cross-attention + GQA, and rope + GQA + SwiGLU.

The first family's spec has float16-exact weights (tests/decoder_fixtures.py): its
``prefill`` and ``step_rows`` run every custom kernel.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from decoder_fixtures import compiled
from tolerance import MAX_VS_REF, assert_close

from kvgraph.max import custom
from kvgraph.max import kernels as K
from kvgraph.max.lower import lower
from kvgraph.reference_decoder import ReferenceDecoder
from kvgraph.slots import SlotPool

pytestmark = pytest.mark.max


@pytest.fixture(scope="module", params=["gpt_cross_gqa", "llama_gqa"])
def case(request):
    spec, weights, dec = compiled(request.param)
    return spec, weights, dec, ReferenceDecoder(spec, weights)


def _stream(spec, rng, length, rows=1):
    tokens = rng.integers(0, spec.vocab_size, size=(1, length)).repeat(rows, 0)
    tokens[:, -1] = rng.integers(0, spec.vocab_size, size=rows)  # rows differ at the end
    ca = spec.cross_attention
    ctx = None if ca is None else rng.standard_normal((1, ca.context_len, ca.context_dim)).astype(np.float32)
    return tokens, (None if ctx is None else ctx.repeat(rows, 0))


def test_pool_decodes_equal_each_alone(case):
    spec, weights, dec, ref = case
    rng = np.random.default_rng(0)
    pool = SlotPool(dec, rows=5)
    streams = {}  # name -> (group, tokens, context, next index)
    for name, prompt, rows in (("a", 3, 1), ("b", 9, 2), ("c", 5, 1)):
        tokens, ctx = _stream(spec, rng, prompt + 8, rows)
        g = pool.acquire(rows)
        logits = pool.prefill(g, tokens[:, :prompt], ctx)
        assert_close(logits, ref.logits(tokens[:, :prompt], ctx)[:, -1], MAX_VS_REF, what=f"prefill {name}")
        streams[name] = [g, tokens, ctx, prompt]

    def step(names, s=1):
        reqs = [(streams[n][0], streams[n][1][:, streams[n][3] : streams[n][3] + s]) for n in names]
        for n, got in zip(names, pool.step(reqs)):
            g, tokens, ctx, i = streams[n]
            want = ref.logits(tokens[:, : i + s], ctx)[:, i:]
            assert_close(got, want, MAX_VS_REF, what=f"step {n} at {i}")
            streams[n][3] = i + s

    step(["a", "b", "c"])
    step(["a", "c"])  # b sits out: its rows get a dummy write at its next position
    step(["b"])
    step(["a", "b", "c"], s=2)  # several new rows per decode: per-row masks with seq > 1
    pool.release(streams.pop("a")[0])
    tokens, ctx = _stream(spec, rng, 12)
    g = pool.acquire(1)
    assert g.lo == 0  # a's row, reused: stale keys after the new prompt
    pool.prefill(g, tokens[:, :2], ctx)
    streams["d"] = [g, tokens, ctx, 2]
    step(["d", "b", "c"])
    step(["d", "c"])
    assert pool.steps == 6


def test_pool_reorder_matches_reference(case):
    spec, weights, dec, ref = case
    rng = np.random.default_rng(1)
    pool = SlotPool(dec, rows=3)
    tokens, ctx = _stream(spec, rng, 6, rows=3)
    g = pool.acquire(3)
    pool.prefill(g, tokens[:, :4], ctx)
    pool.step([(g, tokens[:, 4:5])])
    order = [2, 2, 0]
    pool.reorder(g, order, hoisted=False)
    (got,) = pool.step([(g, tokens[order, 5:6])])
    hist = np.concatenate([tokens[order, :5], tokens[order, 5:6]], axis=1)
    assert_close(got, ref.logits(hist, ctx)[:, -1:], MAX_VS_REF, what="after reorder")


def test_the_pool_runs_every_custom_kernel():
    """The float16-exact spec's prefill and per-row step use each of kvgraph's custom kernels,
    so the pool tests above run them all."""
    spec, weights, dec = compiled("gpt_cross_gqa")
    if custom.kernel_package() is None:
        pytest.skip("custom kernels unavailable on this machine (their fallback is tested elsewhere)")
    used = set()
    for name in ("prefill", "step_rows"):
        r = dec.request(name)
        mg, _ = lower(
            r.graph, weights, r.weights_mode, r.f16_weights, r.few_dims, r.always_few,
            few_attention=r.few_attention,
        )  # fmt: skip
        used |= set(re.findall(r'"(kvgraph_\w+)"', str(mg)))
    assert used == set(custom.kernel_names()) - K.COMPUTE_TYPE_KERNELS  # those: test_compute_types.py
    assert {"prefill", "step_rows"} <= set(dec.loaded)
