"""Built-in named decoder specs (``kvgraph show NAME``).

``BUILTIN`` maps a name to its :class:`~kvgraph.DecoderSpec`. Specs are made on first
access, so importing this module does not import :mod:`models` (which imports kvgraph).
"""
from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Callable, Iterator

from .spec import DecoderSpec

# openai-whisper's published ModelDimensions (the "dims" of each checkpoint).
WHISPER_DIMS = {
    "whisper-tiny.en": dict(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6,
                            n_audio_layer=4, n_vocab=51864, n_text_ctx=448, n_text_state=384,
                            n_text_head=6, n_text_layer=4),
    "whisper-base": dict(n_mels=80, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8,
                         n_audio_layer=6, n_vocab=51865, n_text_ctx=448, n_text_state=512,
                         n_text_head=8, n_text_layer=6),
}


def _whisper(name: str) -> Callable[[], DecoderSpec]:
    def make() -> DecoderSpec:
        from models.whisper import spec_from_dims  # lazy: models imports kvgraph
        return spec_from_dims(SimpleNamespace(**WHISPER_DIMS[name]))
    return make


def _llama_demo() -> DecoderSpec:
    """A small Llama-style decoder: RMSNorm, SwiGLU, rotary positions, grouped-query attention."""
    return DecoderSpec(vocab_size=512, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2,
                       max_seq_len=256, mlp_hidden=176, norm="rmsnorm", mlp="swiglu",
                       positions="rotary", rope_theta=10000.0, tie_embeddings=False,
                       eps=1e-5, naming="llama", name="llama_demo")


_MAKERS: dict[str, Callable[[], DecoderSpec]] = {
    "whisper-tiny.en": _whisper("whisper-tiny.en"),
    "whisper-base": _whisper("whisper-base"),
    "llama-demo": _llama_demo,
}


class _Builtins(Mapping):
    """Read-only, lazily filled ``{name: DecoderSpec}``."""

    def __init__(self, makers: dict[str, Callable[[], DecoderSpec]]):
        self._makers = makers
        self._cache: dict[str, DecoderSpec] = {}

    def __getitem__(self, name: str) -> DecoderSpec:
        if name not in self._makers:
            raise KeyError(name)
        if name not in self._cache:
            self._cache[name] = self._makers[name]()
        return self._cache[name]

    def __contains__(self, name) -> bool:
        return name in self._makers

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)

    def __repr__(self) -> str:
        return f"BUILTIN({', '.join(self._makers)})"


BUILTIN: Mapping[str, DecoderSpec] = _Builtins(_MAKERS)


def names() -> list[str]:
    return list(BUILTIN)


def get(name: str) -> DecoderSpec:
    """The built-in spec ``name``; ValueError listing the known names otherwise."""
    if name not in BUILTIN:
        raise ValueError(f"unknown spec {name!r}; built-in specs: {', '.join(BUILTIN)}")
    return BUILTIN[name]
