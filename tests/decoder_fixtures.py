"""The small decoder specs of the MAX tier, and their compiled models shared by every test
module (``compiled(name)``: once per session).

A cold MAX compile costs a minute or more per call, whatever the graphs' depth, and less
for each further program in the same call, so the tests' programs are compiled in few MAX
Modules: gpt_cross_gqa's and mixed_mqa's together (their weight names are disjoint, so one
weights dict serves both: ``TOGETHER``), every program the tests run (prefill and step, the full
sequence, the GEMM step, the per-row step, attention scores); llama_gqa's in one more (prefill
and step, full sequence, per-row step, the concat layout). The program store links each
program's own key to its Module's artifact, so a test that compiles one of these programs
alone, in this process or another (the example's ``kvgraph.compile``), loads it instead; a
process with an empty store of its own (the store tests' children) builds the same Module
through :func:`compiled` and finds it in MAX's own cache.

gpt_cross_gqa's weights are float16-exact, so its ``prefill`` + ``step_rows`` use every custom
kernel (the slot-pool tests run them). The program no compile cache can hold — sizes drawn
anew each run (``SEED``, replayed with ``KVGRAPH_TEST_SEED``, printed at the end of the run) —
is a small step program in ``tests/test_custom_kernels.py`` lowered as ``kvgraph.compile``
lowers one, so a fault in how kvgraph's kernel package reaches MAX fails the suite on any
machine, warm or cold, for ~30 s of compile a run.
"""

from __future__ import annotations

import functools
import os
import secrets

import numpy as np

import kvgraph
import kvgraph.specs

SEED = int(os.environ.get("KVGRAPH_TEST_SEED") or secrets.randbelow(2**31))


SPECS = {
    # Whisper/GPT-2 family with cross-attention and grouped-query self-attention; head size
    # 64, so its steps' cross-attention runs kvgraph's attention kernel (grouped heads too).
    "gpt_cross_gqa": kvgraph.DecoderSpec(
        vocab_size=97,
        d_model=256,
        n_heads=4,
        n_kv_heads=2,
        n_layers=2,
        max_seq_len=64,
        mlp_hidden=96,
        norm="layernorm",
        mlp="gelu",
        positions="learned",
        cross_attention=kvgraph.CrossAttention(context_len=12, context_dim=40),
        name="gpt_cross_gqa",
    ),
    # A mix neither family uses: sinusoidal positions, RMSNorm with GELU and biases,
    # multi-query attention (one KV head), cross-attention to a context wider than d_model.
    "mixed_mqa": kvgraph.DecoderSpec(
        vocab_size=71,
        d_model=32,
        n_heads=4,
        n_kv_heads=1,
        n_layers=3,
        max_seq_len=64,
        mlp_hidden=80,
        norm="rmsnorm",
        mlp="gelu",
        positions="sinusoidal",
        bias=True,
        naming="llama",
        cross_attention=kvgraph.CrossAttention(context_len=9, context_dim=56),
        name="mixed_mqa",
    ),
    # Llama family: RMSNorm, rotary, GQA, SwiGLU, untied head, no cross-attention. The
    # built-in demo spec, so examples/compile_llama_style.py reuses these compiled graphs.
    "llama_gqa": kvgraph.specs.get("llama-demo"),
}

# Specs whose random weights are rounded to float16 values, as an fp16 checkpoint's are:
# their one-row linears and embeddings read float16 copies (kvgraph.max.lower.LowerCtx), which
# must give the float32 results.
F16_EXACT = {"gpt_cross_gqa"}

#: The programs tests load beyond the eager pair, per spec (compiled together, see above).
LATER = {
    "gpt_cross_gqa": ("full", "step", "step_rows"),
    "llama_gqa": ("full", "step_rows"),
    "mixed_mqa": ("full",),
}
#: Specs also tested with the growing (concat) cache layout.
CONCAT = {"llama_gqa"}
#: The attention scores test_expose_attention asks of each spec.
SCORES = {"gpt_cross_gqa": {"b0.attn": [3, 0, 2], "b1.cross": [1], "b1.attn": None}}


#: Specs compiled together, in one MAX Module: their weight names are disjoint, so one
#: weights dict serves them all (programs are grouped into a Module by weights dict).
TOGETHER = ("gpt_cross_gqa", "mixed_mqa")


@functools.cache
def _own_weights(name: str) -> dict:
    weights = kvgraph.init_weights(SPECS[name], seed=3)
    return f16_exact(weights) if name in F16_EXACT else weights


@functools.cache
def weights_for(name: str) -> dict:
    """The spec's weights: one dict per session (the in-process program cache is keyed by
    the weights dict, so tests that share it share programs); for the specs compiled
    TOGETHER, one dict holding all of theirs."""
    return _together_weights() if name in TOGETHER else _own_weights(name)


@functools.cache
def _together_weights() -> dict:
    assert not set.intersection(*(set(_own_weights(n)) for n in TOGETHER))
    return {k: v for n in TOGETHER for k, v in _own_weights(n).items()}


def _requests(name: str):
    """``(model, its program names, other requests)``: the spec's decoders (default options;
    ``model.concat`` with the growing cache layout for CONCAT) and what the tests load of them."""
    spec, weights = SPECS[name], weights_for(name)
    model = kvgraph.compile(spec, weights, eager=False)
    model.concat = (
        kvgraph.compile(spec, weights, cache_layout="concat", eager=False) if name in CONCAT else None
    )
    extra = [model.concat.request(n) for n in model.concat.eager_programs] if model.concat else []
    if name in SCORES:
        extra.append(model.exposed_request(SCORES[name]))
    names = [n for n in (*model.eager_programs, *LATER[name]) if n not in model.loaded]
    return model, names, extra


def compiled(name: str):
    """``(spec, weights, model)``: the spec compiled (default options) with every program the
    MAX tests run loaded, in one MAX compile (with the other specs compiled TOGETHER; see the
    module docstring); ``model.concat``: the same spec with the growing
    (concat) cache layout (CONCAT), its programs compiled in the same Module."""
    if name not in _COMPILED:
        group = TOGETHER if name in TOGETHER else (name,)
        built = {n: _requests(n) for n in group}
        first, *others = built.values()
        # one load, one MAX Module: the group's programs share one weights dict
        more = [r for m, ks, ex in others for r in (*(m.request(k) for k in ks), *ex)]
        first[0].load(first[1], extra=[*first[2], *more])
        for n, (m, ks, _) in built.items():  # each decoder takes its programs from the in-process cache
            m.load(ks)
            if m.concat:
                m.concat.load(m.concat.eager_programs)
            _COMPILED[n] = (SPECS[n], weights_for(n), m)
    return _COMPILED[name]


_COMPILED: dict = {}


def f16_exact(weights: dict) -> dict:
    return {k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}
