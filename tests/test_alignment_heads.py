"""models.whisper.weights.alignment_heads: a checkpoint's alignment heads, as openai-whisper would use them."""

from __future__ import annotations

import base64
import gzip

import numpy as np
import pytest
import torch
import whisper
from whisper.model import ModelDimensions

from models.whisper.weights.alignment_heads import default_alignment_heads, heads_from, load_alignment_heads

DIMS = ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=64,
    n_audio_head=2,
    n_audio_layer=1,
    n_vocab=51864,
    n_text_ctx=448,
    n_text_state=64,
    n_text_head=4,
    n_text_layer=3,
)


def _openai_table(name, layers):
    mask = np.frombuffer(gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[name])), dtype=bool)
    return tuple(tuple(int(x) for x in p) for p in np.argwhere(mask.reshape(layers, -1)))


@pytest.mark.parametrize("name,layers,heads", [("tiny.en", 4, 6), ("base", 6, 8)])
def test_packaged_checkpoints_carry_openais_heads(name, layers, heads):
    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=1,
        n_vocab=51864,
        n_text_ctx=448,
        n_text_state=64,
        n_text_head=heads,
        n_text_layer=layers,
    )
    try:
        got = load_alignment_heads(name, dims)
    except ImportError as e:
        pytest.skip(f"{name} weights not installed: {e}")
    assert got == _openai_table(name, layers)


def test_default_is_openais_upper_half():
    assert default_alignment_heads(DIMS) == ((1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3))
    mask = whisper.model.Whisper(DIMS).alignment_heads
    assert default_alignment_heads(DIMS) == tuple(tuple(p) for p in mask.indices().T.tolist())


@pytest.mark.parametrize("entry", ["top", "state_dict", None])
def test_pt_entry_or_default(tmp_path, entry):
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, 3] = mask[2, 1] = True
    ckpt = {"dims": DIMS.__dict__, "model_state_dict": {}}
    if entry == "top":
        ckpt["alignment_heads"] = mask.to_sparse()
    elif entry == "state_dict":
        ckpt["model_state_dict"]["alignment_heads"] = mask
    path = tmp_path / "m.pt"
    torch.save(ckpt, path)
    want = ((0, 3), (2, 1)) if entry else default_alignment_heads(DIMS)
    assert load_alignment_heads(path, DIMS) == want


def test_malformed_heads_name_the_source():
    assert heads_from([[2, 1], [0, 3]], DIMS, "x") == ((0, 3), (2, 1))
    with pytest.raises(ValueError, match=r"cfg.json: alignment heads \[\(3, 0\)\] out of range for 3 layers"):
        heads_from([[3, 0]], DIMS, "cfg.json")
    with pytest.raises(ValueError, match="cfg.json: alignment_heads mask has shape"):
        heads_from(np.zeros((2, 4), bool), DIMS, "cfg.json")
    with pytest.raises(ValueError, match="selects no head"):
        heads_from(np.zeros((3, 4), bool), DIMS, "cfg.json")
    with pytest.raises(ValueError, match=r"must be \[\[layer, head\], ...\]"):
        heads_from([1, 2, 3], DIMS, "cfg.json")
