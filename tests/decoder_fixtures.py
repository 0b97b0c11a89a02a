"""The small decoder specs of the MAX tier, and their compiled models shared by every test
module (``compiled(name)``: once per session).

A cold MAX compile costs minutes per call and little more for each further program in the
same call, so each spec's programs are compiled in one MAX Module: every program the tests run
(prefill and step, the full sequence, the GEMM step, the per-row step, the other cache layout,
attention scores); for ``llama_gqa`` two, its eager pair on its own as ``kvgraph.compile``
loads it for any user (the example and the store tests' child processes then find it in MAX's
own cache). The program store links each program's own key to its Module's artifact, so a test
that compiles one of these programs alone, in this process or another, loads it instead.

``gpt_cross_gqa``'s vocabulary and context sizes are **drawn anew each run**, and its weights
are float16-exact: no compile cache (MAX's own, the program store) can hold its programs, and
its Module uses every custom kernel. A fault in how kvgraph's kernel package reaches MAX fails
the suite on any machine, warm or cold, at the cost of one compile per run.
``KVGRAPH_TEST_SEED`` replays a run's draw (printed at the end of the run).
"""

from __future__ import annotations

import functools
import os
import secrets

import numpy as np

import kvgraph
import kvgraph.specs

SEED = int(os.environ.get("KVGRAPH_TEST_SEED") or secrets.randbelow(2**31))


def drawn_cross_gqa(seed: int) -> kvgraph.DecoderSpec:
    """Whisper/GPT-2 family with cross-attention and grouped-query self-attention; head size
    64, so its steps run kvgraph's attention kernels (grouped heads too). Vocabulary and
    context sizes drawn from ``seed``: no compile cache holds its programs."""
    rng = np.random.default_rng(seed)
    return kvgraph.DecoderSpec(
        vocab_size=int(rng.integers(64, 2048)),
        d_model=256,
        n_heads=4,
        n_kv_heads=2,
        n_layers=2,
        max_seq_len=64,
        mlp_hidden=96,
        norm="layernorm",
        mlp="gelu",
        positions="learned",
        cross_attention=kvgraph.CrossAttention(
            context_len=int(rng.integers(5, 40)), context_dim=int(rng.integers(8, 64))
        ),
        name="gpt_cross_gqa",
    )


SPECS = {
    "gpt_cross_gqa": drawn_cross_gqa(SEED),
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
#: Specs whose eager pair other processes compile too (examples/compile_llama_style.py, the
#: store tests' children): compiled as its own Module, which MAX's cache then holds for them.
#: The other specs' programs are all compiled in one Module.
SHARED_EAGER = {"llama_gqa"}
#: Specs also tested with the growing (concat) cache layout.
CONCAT = {"llama_gqa"}
#: The attention scores test_expose_attention asks of each spec.
SCORES = {"gpt_cross_gqa": {"b0.attn": [3, 0, 2], "b1.cross": [1], "b1.attn": None}}


@functools.cache
def weights_for(name: str) -> dict:
    """The spec's weights: one dict per session (the in-process program cache is keyed by
    the weights dict, so tests that share it share programs)."""
    weights = kvgraph.init_weights(SPECS[name], seed=3)
    return f16_exact(weights) if name in F16_EXACT else weights


@functools.cache
def compiled(name: str):
    """``(spec, weights, model)``: the spec compiled (default options) with every program the
    MAX tests run loaded, in one MAX compile (two for SHARED_EAGER; see the module docstring);
    ``model.concat``: the same spec with the growing (concat) cache layout (CONCAT), its
    programs compiled in the same Module."""
    spec, weights = SPECS[name], weights_for(name)
    model = kvgraph.compile(spec, weights, eager=name in SHARED_EAGER)  # eager: prefill + step
    concat = kvgraph.compile(spec, weights, cache_layout="concat", eager=False) if name in CONCAT else None
    extra = [concat.request(n) for n in concat.eager_programs] if concat else []
    if name in SCORES:
        extra.append(model.exposed_request(SCORES[name]))
    todo = [*model.eager_programs, *LATER[name]]
    model.load([n for n in todo if n not in model.loaded], extra=extra)  # one Module
    if concat:
        concat.load(concat.eager_programs)  # loaded just now: the in-process cache hands them out
    model.concat = concat
    return spec, weights, model


def f16_exact(weights: dict) -> dict:
    return {k: v.astype(np.float16).astype(np.float32) for k, v in weights.items()}
