"""What one window's decoding is asked (:class:`DecodingOptions`) and what it gives back
(:class:`DecodingResult`): openai-whisper's fields and defaults, as plain dataclasses."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DecodingOptions:
    """openai-whisper's ``DecodingOptions``, field for field (``fp16`` is accepted and ignored:
    the backend computes as it was compiled)."""

    task: str = "transcribe"  # "transcribe" (X -> X), "translate" (X -> English) or "lang_id"
    language: str | None = None  # None: detected from the audio
    temperature: float = 0.0
    sample_len: int | None = None  # at most this many sampled tokens (default: half the text context)
    best_of: int | None = None  # independent samples at T > 0
    beam_size: int | None = None  # beams of the beam search at T == 0
    patience: float | None = None  # beam search patience (arXiv:2204.05424)
    length_penalty: float | None = None  # None: length normalisation; else Google NMT's alpha
    prompt: str | list[int] | None = None  # the previous context
    prefix: str | list[int] | None = None  # the start of this window's text
    suppress_tokens: str | Iterable[int] | None = "-1"  # "-1": the tokenizer's non-speech tokens
    suppress_blank: bool = True
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0
    fp16: bool = True

    def check(self) -> DecodingOptions:
        """``self``, or ValueError naming the options that cannot go together (or a value
        no decode can take: a temperature that is negative or not finite fails in openai-whisper
        too, inside torch's sampler)."""
        try:
            t = float(self.temperature)
        except (TypeError, ValueError):
            t = math.nan
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.beam_size is not None and self.best_of is not None:
            raise ValueError("beam_size and best_of can't be given together")
        if self.temperature == 0 and self.best_of is not None:
            raise ValueError("best_of with greedy sampling (T=0) is not compatible")
        if self.patience is not None and self.beam_size is None:
            raise ValueError("patience requires beam_size to be given")
        if self.length_penalty is not None and not 0 <= self.length_penalty <= 1:
            raise ValueError("length_penalty (alpha) should be a value between 0 and 1")
        return self


@dataclass(frozen=True)
class DecodingResult:
    """One window's decoding: its text tokens (after the prompt, before the end of text) and
    the figures the fallback decides on. ``token_logprobs`` (only when the decode was asked
    for them, else None; kvgraph's, not openai's): the log-probability of each of ``tokens``
    then of the end of text (0.0 when the decode stopped at its length limit before one),
    the values whose float32 running sum is the score ``avg_logprob`` is taken from
    (``avg_logprob == score / len(token_logprobs)``)."""

    audio_features: Any
    language: str
    language_probs: dict[str, float] | None = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    avg_logprob: float = math.nan
    no_speech_prob: float = math.nan
    temperature: float = math.nan
    compression_ratio: float = math.nan
    token_logprobs: list[float] | None = None


def compression_ratio(text: str) -> float:
    """How well ``text`` compresses (UTF-8 bytes over zlib's): a repetitive decoding compresses
    well, and openai-whisper retries a window whose ratio passes 2.4."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))
