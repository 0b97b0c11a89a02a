"""Tests for models.whisper.weights.ct2: the CTranslate2 model.bin reader."""

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from ct2_files import write_model_bin

from models.whisper.weights.ct2 import CT2FormatError, read_model_bin
from models.whisper.weights.load import load_checkpoint
from models.whisper.weights.packages import resolve_source


@pytest.fixture(scope="module")
def tiny_bin():
    return resolve_source("tiny.en")["parts"][0]


@pytest.fixture(scope="module")
def tiny_raw(tiny_bin):
    return read_model_bin(tiny_bin)


def test_read_model_bin_header(tiny_raw):
    variables, aliases, meta = tiny_raw
    assert meta["binary_version"] == 6
    assert meta["spec_name"] == "WhisperSpec"
    assert meta["spec_revision"] == 3
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert variables["decoder/embeddings/weight"].shape == (51864, 384)
    assert variables["decoder/embeddings/weight"].dtype == np.float16
    assert int(variables["encoder/num_heads"]) == 6
    assert int(variables["decoder/num_heads"]) == 6
    assert variables["encoder/layer_0/self_attention/linear_0/weight"].shape == (1152, 384)
    assert variables["decoder/layer_3/attention/linear_1/weight"].shape == (768, 384)
    assert not variables["encoder/conv1/weight"].flags.writeable


def test_read_all_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    bf16_bits = (f32.view(np.uint32) >> 16).astype(np.uint16)
    src = {
        "a/f32": (0, f32),
        "a/i8": (1, np.arange(-5, 5, dtype=np.int8)),
        "a/i16": (2, np.array(-7, dtype=np.int16)),  # rank 0
        "a/i32": (3, np.arange(6, dtype=np.int32).reshape(1, 2, 3)),
        "a/f16": (4, f32.astype(np.float16)),
        "a/bf16": (5, bf16_bits),
    }
    path = tmp_path / "model.bin"
    write_model_bin(path, src, aliases=[("b/alias", "a/f32")], spec="TestSpec", revision=7)
    variables, aliases, meta = read_model_bin(path)
    assert meta["spec_name"] == "TestSpec" and meta["spec_revision"] == 7
    assert aliases == {"b/alias": "a/f32"}
    for name, (_, arr) in src.items():
        if name == "a/bf16":
            continue
        assert variables[name].dtype == arr.dtype and variables[name].shape == arr.shape
        np.testing.assert_array_equal(variables[name], arr)
    bf = variables["a/bf16"]
    assert bf.dtype == np.float32 and meta["dtypes"]["a/bf16"] == "bfloat16"
    np.testing.assert_allclose(bf, f32, rtol=1e-2)
    np.testing.assert_array_equal(bf.view(np.uint32) >> 16, bf16_bits)
    # the same bytes split in two parts read as a sequence
    data = path.read_bytes()
    (tmp_path / "p1").write_bytes(data[:50])
    (tmp_path / "p2").write_bytes(data[50:])
    v2, a2, _ = read_model_bin([tmp_path / "p1", tmp_path / "p2"])
    assert a2 == aliases and all(np.array_equal(v2[k], variables[k]) for k in variables)


@pytest.mark.parametrize(
    "cut,where",
    [
        (2, "binary version"),
        (10, "spec name"),
        (30, "variable count"),
        (2000, "variable #"),
        (1_000_000, "decoder/embeddings/weight"),
        (-5, "alias"),
    ],
)
def test_truncated_model_bin(tmp_path, tiny_bin, cut, where):
    data = Path(tiny_bin).read_bytes()
    path = tmp_path / "model.bin"
    path.write_bytes(data[:cut])
    with pytest.raises(CT2FormatError) as ei:
        read_model_bin(path)
    msg = str(ei.value)
    assert str(path) in msg and "truncated" in msg and "offset" in msg
    assert where in msg
    # load_checkpoint on the directory surfaces the same error
    with pytest.raises(CT2FormatError, match=re.escape(str(path))):
        load_checkpoint(tmp_path)


def test_corrupt_model_bin(tmp_path, tiny_bin):
    data = bytearray(Path(tiny_bin).read_bytes()[:4096])
    path = tmp_path / "model.bin"
    for bad, needle in [
        (b"", "empty"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", "binary version"),
        (bytes(data), "truncated"),
    ]:
        path.write_bytes(bad)
        with pytest.raises(CT2FormatError, match=needle) as ei:
            read_model_bin(path)
        assert str(path) in str(ei.value)
    # a payload byte count that does not match the shape
    src = {"x": (0, np.zeros((2, 2), np.float32))}
    write_model_bin(path, src)
    raw = bytearray(path.read_bytes())
    i = raw.index(struct.pack("<BI", 0, 16))
    raw[i + 1 : i + 5] = struct.pack("<I", 12)
    path.write_bytes(bytes(raw))
    with pytest.raises(CT2FormatError, match="variable #0 'x'"):
        read_model_bin(path)
    # trailing garbage (e.g. a wrong part appended)
    write_model_bin(path, src)
    path.write_bytes(path.read_bytes() + b"\0\0\0")
    with pytest.raises(CT2FormatError, match="trailing"):
        read_model_bin(path)
