"""Named decoder specs (``kvgraph show NAME``, ``kvgraph list``).

``BUILTIN`` maps a name to its :class:`~kvgraph.DecoderSpec`: the specs that plugins register
(a model family's, e.g. Whisper's from the ``models`` package: see :mod:`kvgraph.plugins`),
then the core's own (``llama-demo``). Plugins are discovered and specs made on first access,
so importing this module imports no plugin.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from . import plugins
from .errors import InputError
from .spec import DecoderSpec


class _Builtins(Mapping):
    """Read-only, lazily filled ``{name: DecoderSpec}`` over a plugin registry."""

    def __init__(self, registry: plugins.Registry):
        self._registry = registry
        self._cache: dict[str, DecoderSpec] = {}

    def __getitem__(self, name: str) -> DecoderSpec:
        entries = self._registry.specs()
        if name not in entries:
            raise KeyError(name)
        if name not in self._cache:
            self._cache[name] = entries[name].make()
        return self._cache[name]

    def __contains__(self, name) -> bool:
        return name in self._registry.specs()

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry.specs())

    def __len__(self) -> int:
        return len(self._registry.specs())

    def __repr__(self) -> str:
        return f"BUILTIN({', '.join(self)})"


BUILTIN: Mapping[str, DecoderSpec] = _Builtins(plugins.REGISTRY)


def names() -> list[str]:
    return list(BUILTIN)


def get(name: str) -> DecoderSpec:
    """The built-in spec ``name``; ValueError listing the known names otherwise."""
    if name not in BUILTIN:
        raise InputError(f"unknown spec {name!r}; built-in specs: {', '.join(BUILTIN)}")
    return BUILTIN[name]
