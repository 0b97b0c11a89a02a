"""A Whisper checkpoint's alignment heads: the cross-attention heads (layer, head) whose
weights openai-whisper reads for word-level timestamps (``whisper.timing.find_alignment``).

``load_alignment_heads(name_or_path, dims)``:
  * a CTranslate2 checkpoint (``"tiny.en"``, ``"base"``, a model directory): the
    ``alignment_heads`` list (``[[layer, head], ...]``) of its ``config.json``;
  * an openai-whisper ``.pt`` file: an ``alignment_heads`` entry it carries (top level or in
    its ``model_state_dict``: a bool ``[n_text_layer, n_text_head]`` mask, dense or sparse,
    or ``[[layer, head], ...]``). openai's ``load_model`` gives a file path no heads of its
    own, so a file without the entry gets openai's default, as it does there;
  * otherwise openai's default (``Whisper.__init__``): every head of the upper half of the
    text decoder's layers.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.whisper.weights.packages import PathLike, resolve_source

__all__ = ["default_alignment_heads", "heads_from", "load_alignment_heads"]


def default_alignment_heads(dims) -> tuple[tuple[int, int], ...]:
    """openai-whisper's default: all heads of layers ``n_text_layer // 2`` and up."""
    return tuple(
        (l, h) for l in range(dims.n_text_layer // 2, dims.n_text_layer) for h in range(dims.n_text_head)
    )


def heads_from(value, dims, where: str) -> tuple[tuple[int, int], ...]:
    """``((layer, head), ...)`` in (layer, head) order from a bool mask ``[layers, heads]``
    (NumPy, torch dense or sparse) or pairs; ValueError naming ``where`` if malformed."""
    import numpy as np

    if hasattr(value, "to_dense"):  # a torch (sparse) tensor
        value = value.to_dense()
    if hasattr(value, "numpy"):
        value = value.numpy()
    arr = np.asarray(value)
    L, H = dims.n_text_layer, dims.n_text_head
    if arr.dtype == bool:
        if arr.shape != (L, H):
            raise ValueError(f"{where}: alignment_heads mask has shape {arr.shape}, expected ({L}, {H})")
        pairs = [tuple(int(x) for x in p) for p in np.argwhere(arr)]
    else:
        if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"{where}: alignment_heads must be [[layer, head], ...] or a bool mask, got {value!r:.80}"
            )
        pairs = sorted({(int(l), int(h)) for l, h in arr})
        bad = [p for p in pairs if not (0 <= p[0] < L and 0 <= p[1] < H)]
        if bad:
            raise ValueError(f"{where}: alignment heads {bad} out of range for {L} layers of {H} heads")
    if not pairs:
        raise ValueError(f"{where}: alignment_heads selects no head")
    return tuple(pairs)


def _from_pt(path: Path):
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip checkpoint: no mmap
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "alignment_heads" in ckpt:
        return ckpt["alignment_heads"]
    return ckpt.get("model_state_dict", {}).get("alignment_heads")


def load_alignment_heads(name_or_path: PathLike, dims) -> tuple[tuple[int, int], ...]:
    """The alignment heads of the checkpoint ``name_or_path`` (see the module docstring)."""
    src = resolve_source(name_or_path)
    found, where = None, str(name_or_path)
    if src["kind"] == "ct2" and src["config"] is not None and Path(src["config"]).is_file():
        where = str(src["config"])
        with open(src["config"], encoding="utf-8") as f:
            found = json.load(f).get("alignment_heads")
    elif src["kind"] == "pt":
        where = str(src["path"])
        found = _from_pt(src["path"])
    return default_alignment_heads(dims) if found is None else heads_from(found, dims, where)
