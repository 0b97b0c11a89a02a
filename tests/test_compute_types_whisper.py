"""Compute types on Whisper tiny.en (``compute_type=...``): the int8 decoder modes and the
bfloat16 encoder against the float32 model (itself openai-whisper's). Their programs are
tiny.en's compiled anew in each mode, so they sit apart from the small graphs of
``test_compute_types.py``: the two files' compiles can run in the suite's two processes."""

from __future__ import annotations

import numpy as np
import pytest
from whisper_fixtures import *  # noqa: F401,F403


@pytest.mark.parametrize("mode", ["int8_bfloat16", "int8vocab_bfloat16", "int8", "int8vocab"])
def test_whisper_int8_modes_read_jfk_the_same(tiny_model, jfk_audio, mode):
    """Int8 decoder linears (int8, int8_bfloat16), or only the vocabulary projection int8 with
    its top logits float32 (int8vocab, int8vocab_bfloat16), with either encoder: JFK word for
    word the float32 text (the documented bound on the bundled clip; the corpus figures are in
    docs/compute_types.md) — and, for the int8vocab modes, token for token, timestamps
    included. (The float32-encoder modes reuse the others' decoder programs and float32's
    encoder: nothing more to compile.)"""
    from whisper_fixtures import _bf16_backend

    from models.whisper import WhisperModel

    backend = _bf16_backend("tiny.en", mode)
    assert backend.compute_type == mode
    got = WhisperModel(backend).transcribe(jfk_audio, language="en")
    want = tiny_model.transcribe(jfk_audio, language="en")
    assert got["text"] == want["text"]
    if mode.startswith("int8vocab"):
        assert [s["tokens"] for s in got["segments"]] == [s["tokens"] for s in want["segments"]]


def test_whisper_bfloat16_encoder_is_close_to_openai_whisper_and_jfk_reads_the_same(
    tiny_backend_bf16, tiny_model, torch_tiny, jfk_mel, jfk_audio
):
    """The documented bound on the bundled clip (docs/compute_types.md): the bfloat16 encoder's
    features within 2 % (relative RMS) of openai-whisper's float32 encoder, and JFK's
    transcription word for word the float32 one (itself openai-whisper's)."""
    import torch

    from models.whisper import WhisperModel

    with torch.no_grad():
        want = torch_tiny.encoder(jfk_mel[None]).numpy()
    got = tiny_backend_bf16.encode(jfk_mel[None].numpy())
    rel = np.sqrt(((got - want) ** 2).mean() / (want**2).mean())
    assert 1e-4 < rel < 0.02, rel  # bfloat16 (not float32), and close
    assert tiny_backend_bf16.decoder is not tiny_model.backend.decoder
    bf16 = WhisperModel(tiny_backend_bf16).transcribe(jfk_audio, language="en")
    f32 = tiny_model.transcribe(jfk_audio, language="en")
    assert bf16["text"] == f32["text"]


def test_a_deferred_backend_loads_nothing_until_asked(tiny_backend, jfk_mel):
    """``defer=True`` (how the compute types' programs above compile in one call): the requests
    are handed out, nothing runs before ``finish_loading``, and then it is the same backend (its
    programs the in-process cache's: float32's, loaded by ``tiny_backend``)."""
    from whisper_fixtures import _backend_of_mode

    from kvgraph.errors import KvgraphError

    backend = _backend_of_mode("tiny.en", "float32", defer=True)
    names = sorted(r.graph.name for r in backend.pending_requests())
    assert names == ["whisper_decoder.prefill", "whisper_decoder.step", "whisper_encoder"]
    with pytest.raises(KvgraphError, match="defer=True; call finish_loading"):
        backend.encode(jfk_mel[None].numpy())
    backend.finish_loading()
    assert backend.pending_requests() == []
    np.testing.assert_array_equal(
        backend.encode(jfk_mel[None].numpy()), tiny_backend.encode(jfk_mel[None].numpy())
    )
