"""The flat ``models.*`` module paths of before the ``models/whisper/`` package, importable for
one release: each import warns (``DeprecationWarning``) and names the new home.

A path whose module was split names every module its public names went to; its public names
are looked up in them in order (private names did not survive the move)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

#: old path -> the modules its public names live in now
MOVED: dict[str, tuple[str, ...]] = {
    "models.alignment_heads": ("models.whisper.weights.alignment_heads",),
    "models.audio": ("models.whisper.audio.load",),
    "models.batching": ("models.whisper.engine",),
    "models.ct2": ("models.whisper.weights.ct2",),
    "models.ct2_whisper": ("models.whisper.weights.from_ct2",),
    "models.plugin": ("models.whisper.plugin",),
    "models.prepare_cli": ("models.whisper.apps.cli.prepare",),
    "models.pt_checkpoint": ("models.whisper.weights.pt",),
    "models.serve": ("models.whisper.apps.server", "models.whisper.apps.cli.serve"),
    "models.transcribe_cli": (
        "models.whisper.apps.cli.transcribe",
        "models.whisper.apps.cli.options",
        "models.whisper.transcription.outputs",
        "models.whisper.apps.errors",
    ),
    "models.weight_packages": ("models.whisper.weights.packages",),
    "models.whisper_decode": ("models.whisper.decoding.adapter", "models.whisper.transcription.transcribe"),
    "models.whisper_shapes": ("models.whisper.weights.shapes",),
    "models.whisper_weights": ("models.whisper.weights.load",),
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the paths of :data:`MOVED`: one new home is that module itself; several are a
    module whose attributes are looked up in each in turn."""

    def find_spec(self, name, path=None, target=None):
        if name in MOVED:
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        homes = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {' and '.join(homes)}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        if len(homes) == 1:
            return importlib.import_module(homes[0])
        module = types.ModuleType(spec.name, f"Moved: {', '.join(homes)}.")
        module.__getattr__ = _lookup(spec.name, homes)
        return module

    def exec_module(self, module) -> None:
        pass


def _lookup(old: str, homes: tuple[str, ...]):
    def __getattr__(name: str):
        for home in homes:
            module = importlib.import_module(home)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved to {', '.join(homes)})")

    return __getattr__


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
