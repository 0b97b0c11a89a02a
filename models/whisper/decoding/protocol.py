"""What decoding needs of a Whisper model: the backend protocol (the neural compute: encoder,
cached decoder prefill / step / reorder, and the forced pass of word timestamps), and the
counters and seconds of each call (:class:`DecodeTimings`). No torch."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class WhisperBackend(Protocol):
    """The neural-compute contract (implemented by the compiled MAX model). The logits
    ``prefill`` and ``step`` return are the caller's: the decode loop masks them in place."""

    dims: Any  # openai's ModelDimensions fields (n_mels, n_audio_ctx, n_vocab, n_text_ctx, ...)

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """f32[b, n_mels, 3000] -> f32[b, n_audio_ctx, n_audio_state]"""

    def prefill(self, tokens: np.ndarray, audio_features: np.ndarray) -> tuple[np.ndarray, Any]:
        """tokens i64[b, t] -> (logits f32[b, vocab] of the LAST position, state)"""

    def step(self, tokens: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """tokens i64[b, n] (n >= 1 new tokens) -> (logits f32[b, n, vocab], state)"""

    def reorder(self, state: Any, indices: np.ndarray) -> Any:
        """Reindex the batch rows of ``state`` (beam search)."""

    # -- optional ------------------------------------------------------------
    def release(self) -> None:
        """Called when a decode ends: the rows of its states are no longer needed (a batching
        engine gives them back to its pool). Backends without it keep nothing between decodes."""

    # -- for word timestamps only (optional) --------------------------------
    alignment_heads: Sequence[tuple[int, int]]
    """The cross-attention heads ``(layer, head)`` word timestamps read."""

    def alignment(self, tokens: np.ndarray, audio_features: np.ndarray):
        """tokens i64[b, t] -> (logits f32[b, t, vocab] of every position,
        {(layer, head): f32[b, t, n_audio_ctx]}): the pre-softmax cross-attention
        scores q·kᵀ/sqrt(d_head) of each alignment head, unmasked."""


@dataclass
class DecodeTimings:
    """Counters and wall-clock seconds spent in each backend entry point.

    ``tokens_decoded`` counts autoregressive decoding iterations (one per
    generated position, independent of the batch/beam width), summed over all
    ``DecodingTask`` runs including temperature-fallback retries;
    ``prefill_tokens`` / ``step_tokens`` count token positions (batch rows
    included) pushed through ``prefill`` / ``step``.
    """

    encode_calls: int = 0
    encode_s: float = 0.0
    prefill_calls: int = 0
    prefill_s: float = 0.0
    prefill_tokens: int = 0
    step_calls: int = 0
    step_s: float = 0.0
    step_tokens: int = 0
    reorder_calls: int = 0
    reorder_s: float = 0.0
    decode_calls: int = 0
    tokens_decoded: int = 0
    align_calls: int = 0
    align_s: float = 0.0
    align_tokens: int = 0
    total_s: float = 0.0

    @property
    def decoder_s(self) -> float:
        return self.prefill_s + self.step_s + self.reorder_s

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["decoder_s"] = self.decoder_s
        d["tokens_per_s"] = self.tokens_decoded / self.decoder_s if self.decoder_s > 0 else 0.0
        return d


class TimedBackend:
    """A backend whose calls are counted and timed into a :class:`DecodeTimings`."""

    def __init__(self, backend: WhisperBackend, timings: DecodeTimings):
        self.backend = backend
        self.timings = timings

    @property
    def dims(self):
        return self.backend.dims

    @property
    def alignment_heads(self):
        return self.backend.alignment_heads

    def encode(self, mel: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.backend.encode(mel)
        self.timings.encode_s += time.perf_counter() - t0
        self.timings.encode_calls += 1
        return out

    def prefill(self, tokens: np.ndarray, audio_features: np.ndarray):
        t0 = time.perf_counter()
        out = self.backend.prefill(tokens, audio_features)
        self.timings.prefill_s += time.perf_counter() - t0
        self.timings.prefill_calls += 1
        self.timings.prefill_tokens += int(tokens.size)
        return out

    def step(self, tokens: np.ndarray, state: Any):
        t0 = time.perf_counter()
        out = self.backend.step(tokens, state)
        self.timings.step_s += time.perf_counter() - t0
        self.timings.step_calls += 1
        self.timings.step_tokens += int(tokens.size)
        return out

    def reorder(self, state: Any, indices: np.ndarray):
        t0 = time.perf_counter()
        out = self.backend.reorder(state, indices)
        self.timings.reorder_s += time.perf_counter() - t0
        self.timings.reorder_calls += 1
        return out

    def alignment(self, tokens: np.ndarray, audio_features: np.ndarray):
        t0 = time.perf_counter()
        out = self.backend.alignment(tokens, audio_features)
        self.timings.align_s += time.perf_counter() - t0
        self.timings.align_calls += 1
        self.timings.align_tokens += int(tokens.size)
        return out
