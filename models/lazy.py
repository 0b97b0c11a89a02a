"""Packages that name their rooms' public names without importing them.

``__getattr__, __dir__ = exports(__name__, {"name": "module", ...})`` in a package's
``__init__``: a name's module is imported on its first access (PEP 562), so importing the
package (``import models.whisper``) stays cheap: no MAX, torch or web framework."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def exports(package: str, table: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps each public name to the module
    that defines it."""

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(set(table) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
