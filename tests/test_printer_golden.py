"""Printed IR of ``build(spec)`` against golden files in tests/golden/core/.

Regenerate on purpose with ``KVGRAPH_UPDATE_GOLDEN=1 pytest tests/test_printer_golden.py``
and review the diff before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import whisper.model as wm

import kvgraph
from models.whisper import spec_from_dims

GOLDEN = Path(__file__).resolve().parent / "golden" / "core"
UPDATE = os.environ.get("KVGRAPH_UPDATE_GOLDEN") == "1"

TINY_EN = wm.ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=384,
    n_audio_head=6,
    n_audio_layer=4,
    n_vocab=51864,
    n_text_ctx=448,
    n_text_state=384,
    n_text_head=6,
    n_text_layer=4,
)


def _llama_gqa() -> kvgraph.DecoderSpec:
    return kvgraph.DecoderSpec(
        vocab_size=128,
        d_model=64,
        n_heads=8,
        n_kv_heads=2,
        n_layers=2,
        max_seq_len=64,
        mlp_hidden=160,
        norm="rmsnorm",
        mlp="swiglu",
        positions="rotary",
        rope_theta=500000.0,
        tie_embeddings=False,
        eps=1e-6,
        name="llama_gqa",
    )


SPECS = {
    "whisper_tiny_en": lambda: spec_from_dims(TINY_EN),
    "llama_gqa_rotary": _llama_gqa,
}


@pytest.mark.parametrize("key", sorted(SPECS))
def test_printed_graph_matches_golden(key):
    text = kvgraph.format_graph(kvgraph.build(SPECS[key]())) + "\n"
    path = GOLDEN / f"{key}.txt"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; create it with KVGRAPH_UPDATE_GOLDEN=1"
    expected = path.read_text()
    if text != expected:
        import difflib

        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), text.splitlines(True), "golden/" + path.name, "printed", n=1
            )
        )
        pytest.fail(f"printed IR differs from {path} (KVGRAPH_UPDATE_GOLDEN=1 regenerates):\n{diff[:4000]}")


@pytest.mark.parametrize("key", sorted(SPECS))
def test_printing_is_deterministic(key):
    a, b = kvgraph.build(SPECS[key]()), kvgraph.build(SPECS[key]())
    assert a is not b
    assert kvgraph.format_graph(a) == kvgraph.format_graph(b)
    assert kvgraph.format_graph(a, weights=True) == kvgraph.format_graph(b, weights=True)
    assert str(a) == kvgraph.format_graph(a)


def test_golden_content_sanity():
    """The goldens say what they should: one line per node, types on every node line."""
    text = (GOLDEN / "whisper_tiny_en.txt").read_text()
    lines = text.splitlines()
    assert lines[0] == ("graph whisper_decoder(%tokens: i64[b, s], %context: f32[b, 1500, 384]) {")
    assert lines[-2:] == ["  return logits=%logits", "}"]
    g = kvgraph.build(spec_from_dims(TINY_EN))
    assert len(lines) == len(g.nodes) + 3
    assert all(" : " in ln for ln in lines[1:-2])
    assert "@decoder.token_embedding.weight : f32[b, s, 51864]" in text  # tied logits
    llama = (GOLDEN / "llama_gqa_rotary.txt").read_text()
    assert "{heads=8, kv_heads=2, causal=true" in llama
    assert "rope %b0.k, %pos {heads=2, theta=500000}" in llama
    assert "@lm_head.weight : f32[b, s, 128]" in llama
