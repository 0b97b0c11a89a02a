"""openai-whisper ``.pt`` checkpoints as float32 numpy weights keyed like its ``state_dict``."""

from __future__ import annotations

from pathlib import Path

from models.whisper.weights.shapes import check_shapes, in_state_dict_order

__all__ = ["load_pt"]

# Keys of openai's Whisper state that are not weights (non-persistent buffers in
# current releases, but present in some older dumps).
_NON_WEIGHT_KEYS = ("alignment_heads",)


def load_pt(path: Path, keep_float16: bool = False):
    """``(dims, weights)`` from an openai-whisper ``.pt`` checkpoint
    (``{"dims": {...}, "model_state_dict": {...}}``), every weight as float32 (with
    ``keep_float16``, float16 weights stay float16: the same values, half the bytes)."""
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
        keep = keep_float16 and t.dtype == torch.float16
        weights[k] = t.detach().to(torch.float16 if keep else torch.float32).contiguous().numpy().copy()
    weights = in_state_dict_order(dims, weights)
    check_shapes(dims, weights, str(path))
    return dims, weights
