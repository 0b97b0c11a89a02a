"""CTranslate2 Whisper models as openai-whisper ``state_dict`` weights: the name mapping and the
splitting of fused projections.

CTranslate2 -> openai mapping (WhisperSpec revision 3, see
``python/ctranslate2/specs/whisper_spec.py`` and ``transformer_spec.py`` in
CTranslate2; names verified by dumping tiny.en and base):

  encoder/conv{1,2}/{weight,bias}                 encoder.conv{1,2}.*
  encoder/position_encodings/encodings            encoder.positional_embedding
  encoder/layer_N/self_attention/linear_0         attn.{query,key,value} (fused Q|K|V on dim 0)
  encoder/layer_N/self_attention/linear_1         attn.out
  encoder/layer_N/self_attention/layer_norm       attn_ln  (gamma->weight, beta->bias)
  encoder/layer_N/ffn/linear_0 | linear_1         mlp.0 | mlp.2
  encoder/layer_N/ffn/layer_norm                  mlp_ln
  encoder/layer_norm                              encoder.ln_post
  decoder/embeddings/weight                       decoder.token_embedding.weight
  decoder/position_encodings/encodings            decoder.positional_embedding
  decoder/layer_N/self_attention/...              like the encoder (attn, attn_ln)
  decoder/layer_N/attention/linear_0              cross_attn.query
  decoder/layer_N/attention/linear_1              cross_attn.{key,value} (fused K|V on dim 0)
  decoder/layer_N/attention/linear_2              cross_attn.out
  decoder/layer_N/attention/layer_norm            cross_attn_ln
  decoder/layer_norm                              decoder.ln
  decoder/projection/weight                       alias of decoder/embeddings/weight (tied)
  {encoder,decoder}/num_heads (int16 scalars)     n_audio_head / n_text_head

The fused biases carry explicit zeros for the key projection (openai's key
Linear has no bias); they are dropped. A key bias only adds a per-query
constant to the attention logits, which softmax ignores, so dropping it is
exact even if it were non-zero. No query scaling is folded into the stored
weights (CTranslate2 scales at run time, as openai does).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from models.whisper.weights.ct2 import CT2FormatError, CT2Variables, read_model_bin
from models.whisper.weights.shapes import check_shapes, in_state_dict_order

__all__ = ["ct2_to_openai", "load_ct2"]

# openai-whisper's model table: heads by d_model (tiny, base, small, medium, large).
_HEADS_BY_WIDTH = {384: 6, 512: 8, 768: 12, 1024: 16, 1280: 20}


def _linear(ct: CT2Variables, src: str, dst: str, out: dict, bias=True):
    out[f"{dst}.weight"] = ct.get(f"{src}/weight")
    if bias:
        out[f"{dst}.bias"] = ct.get(f"{src}/bias")


def _ln(ct: CT2Variables, src: str, dst: str, out: dict):
    out[f"{dst}.weight"] = ct.get(f"{src}/gamma")
    out[f"{dst}.bias"] = ct.get(f"{src}/beta")


def _split_fused(ct: CT2Variables, src: str, names: list[str], dst: str, out: dict, no_bias: str):
    """Splits a fused linear (outputs concatenated along dim 0) into openai's
    separate ``query``/``key``/``value`` Linears; ``no_bias`` names the one
    without bias in openai-whisper (the key)."""
    w = ct.get(f"{src}/weight")
    b = ct.get(f"{src}/bias") if ct.has(f"{src}/bias") else None
    n = len(names)
    if w.shape[0] % n:
        raise CT2FormatError(f"{ct.label}: '{src}/weight' has {w.shape[0]} rows, not divisible by {n}")
    d = w.shape[0] // n
    for i, nm in enumerate(names):
        out[f"{dst}.{nm}.weight"] = np.ascontiguousarray(w[i * d : (i + 1) * d])
        if nm == no_bias:
            if b is not None and np.any(b[i * d : (i + 1) * d]):
                warnings.warn(
                    f"{ct.label}: '{src}/bias' has a non-zero {nm} part; dropped "
                    "(a key bias does not change attention outputs)",
                    stacklevel=3,
                )
            continue
        if b is None:
            out[f"{dst}.{nm}.bias"] = np.zeros(d, np.float32)
        else:
            out[f"{dst}.{nm}.bias"] = np.ascontiguousarray(b[i * d : (i + 1) * d])
    del w, b


def ct2_to_openai(
    variables, aliases, meta, config: dict | None = None, keep_float16: bool = False, dims_class=None
):
    """Maps parsed CTranslate2 Whisper variables to ``(dims, weights)`` (float32 arrays; with
    ``keep_float16``, float16 variables stay float16 views of the file). ``dims`` is a
    ``whisper.model.ModelDimensions``, or a ``dims_class`` with its fields (no torch import:
    see ``models.whisper.load_backend``)."""
    if dims_class is None:
        from whisper.model import ModelDimensions as dims_class

    label = meta.get("path", "model.bin")
    if meta.get("spec_name") not in ("WhisperSpec", ""):
        raise CT2FormatError(
            f"{label}: CTranslate2 spec is '{meta.get('spec_name')}', not a Whisper model (WhisperSpec)"
        )
    ct = CT2Variables(variables, aliases, meta, keep_float16)
    dims = _dims(ct, label, config or {}, dims_class)
    _check_tied_projection(ct, label)
    w = _weights(ct, dims)
    w = in_state_dict_order(dims, w)  # same key order as openai's state_dict()
    check_shapes(dims, w, label)
    return dims, w


def _dims(ct: CT2Variables, label: str, config: dict, dims_class):
    """openai's ``ModelDimensions`` fields read off the variables' shapes (and the head counts
    from the file, its config.json, or the widths openai's checkpoints use)."""
    conv1 = ct.raw("encoder/conv1/weight")
    n_audio_state, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    emb = ct.raw("decoder/embeddings/weight")
    n_vocab, n_text_state = int(emb.shape[0]), int(emb.shape[1])

    def heads(side, width):
        h = ct.scalar(f"{side}/num_heads")
        if h is None:
            h = config.get("num_heads") or _HEADS_BY_WIDTH.get(width)
        if not h or width % h:
            raise CT2FormatError(f"{label}: cannot determine the {side} head count (d_model {width})")
        return int(h)

    return dims_class(
        n_mels=n_mels,
        n_audio_ctx=int(ct.raw("encoder/position_encodings/encodings").shape[0]),
        n_audio_state=n_audio_state,
        n_audio_head=heads("encoder", n_audio_state),
        n_audio_layer=ct.count_layers("encoder"),
        n_vocab=n_vocab,
        n_text_ctx=int(ct.raw("decoder/position_encodings/encodings").shape[0]),
        n_text_state=n_text_state,
        n_text_head=heads("decoder", n_text_state),
        n_text_layer=ct.count_layers("decoder"),
    )


def _check_tied_projection(ct: CT2Variables, label: str) -> None:
    """openai ties the output projection to the token embedding and has no bias there."""
    emb = ct.raw("decoder/embeddings/weight")
    if ct.has("decoder/projection/weight") and ct.resolve("decoder/projection/weight") != ct.resolve(
        "decoder/embeddings/weight"
    ):
        if not np.array_equal(ct.raw("decoder/projection/weight"), emb):
            raise CT2FormatError(f"{label}: decoder/projection/weight is not tied to the embeddings")
    if ct.has("decoder/projection/bias") and np.any(ct.raw("decoder/projection/bias")):
        raise CT2FormatError(f"{label}: decoder/projection/bias is non-zero; openai-whisper has none")


def _weights(ct: CT2Variables, dims) -> dict[str, np.ndarray]:
    """Every openai ``state_dict`` entry from its CTranslate2 variables (fused projections split)."""
    w: dict[str, np.ndarray] = {}
    w["encoder.positional_embedding"] = ct.get("encoder/position_encodings/encodings")
    _linear(ct, "encoder/conv1", "encoder.conv1", w)
    _linear(ct, "encoder/conv2", "encoder.conv2", w)

    def self_attn_and_ffn(src, dst):
        _split_fused(ct, f"{src}/self_attention/linear_0", ["query", "key", "value"], f"{dst}.attn", w, "key")
        _linear(ct, f"{src}/self_attention/linear_1", f"{dst}.attn.out", w)
        _ln(ct, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln", w)

    def ffn(src, dst):
        _linear(ct, f"{src}/ffn/linear_0", f"{dst}.mlp.0", w)
        _linear(ct, f"{src}/ffn/linear_1", f"{dst}.mlp.2", w)
        _ln(ct, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln", w)

    for i in range(dims.n_audio_layer):
        self_attn_and_ffn(f"encoder/layer_{i}", f"encoder.blocks.{i}")
        ffn(f"encoder/layer_{i}", f"encoder.blocks.{i}")
    _ln(ct, "encoder/layer_norm", "encoder.ln_post", w)

    w["decoder.positional_embedding"] = ct.get("decoder/position_encodings/encodings")
    w["decoder.token_embedding.weight"] = ct.get("decoder/embeddings/weight")
    for i in range(dims.n_text_layer):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        self_attn_and_ffn(src, dst)
        _linear(ct, f"{src}/attention/linear_0", f"{dst}.cross_attn.query", w)
        _split_fused(ct, f"{src}/attention/linear_1", ["key", "value"], f"{dst}.cross_attn", w, "key")
        _linear(ct, f"{src}/attention/linear_2", f"{dst}.cross_attn.out", w)
        _ln(ct, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln", w)
        ffn(src, dst)
    _ln(ct, "decoder/layer_norm", "decoder.ln", w)
    return w


def load_ct2(parts, config_path=None, keep_float16: bool = False, dims_class=None):
    """``(dims, weights)`` from a CTranslate2 Whisper model.bin (``parts``: its file, or the
    files whose concatenation it is) and its optional config.json; ``keep_float16``,
    ``dims_class``: see :func:`ct2_to_openai`."""
    config = {}
    if config_path is not None and Path(config_path).is_file():
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    for p in parts:
        if not Path(p).is_file():
            raise CT2FormatError(f"{p}: CTranslate2 model file is missing")
    variables, aliases, meta = read_model_bin(parts[0] if len(parts) == 1 else parts)
    return ct2_to_openai(variables, aliases, meta, config, keep_float16, dims_class)
