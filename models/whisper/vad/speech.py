"""Speech timestamps from Silero VAD's speech probabilities.

:class:`VadOptions` has faster-whisper's ``VadOptions`` names and defaults (which differ from
silero-vad's own: no minimum speech length, 2 s of silence to end speech, 400 ms of padding).
:func:`speech_timestamps` is the segmentation silero-vad 6.2's ``get_speech_timestamps`` does on
the probabilities (read there, written anew): speech starts at a window whose probability
reaches ``threshold`` and ends once the probability has stayed below ``neg_threshold`` for
``min_silence_duration_ms`` (the end is where that silence began); speech shorter than
``min_speech_duration_ms`` is dropped; speech longer than ``max_speech_duration_s`` is cut at the
longest silence of more than 98 ms seen inside it (silero's ``use_max_poss_sil_at_max_speech``),
or right there when it has none; then every piece is padded by ``speech_pad_ms`` (neighbours
closer than two paddings split the gap between them) and kept within the recording.
:func:`detect_speech` runs the model over a recording block by block and returns the
timestamps, in samples at 16 kHz as silero's are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache

import numpy as np

from models.whisper.vad.silero import RUN_WINDOWS, SAMPLE_RATE, WINDOW_SAMPLES, SileroVad, check_audio

__all__ = [
    "BLOCK_SAMPLES",
    "VadOptions",
    "VadOptionsError",
    "default_model",
    "detect_speech",
    "speech_duration",
    "speech_timestamps",
]

#: silero-vad's ``min_silence_at_max_speech``: a silence shorter than this is no place to cut
MIN_SILENCE_AT_MAX_SPEECH_MS = 98
#: samples :func:`detect_speech` reads and runs at a time: 65.5 s, a whole number of the
#: model's runs, so the probabilities are those of the whole recording in one call
BLOCK_SAMPLES = 8 * RUN_WINDOWS * WINDOW_SAMPLES


class VadOptionsError(ValueError):
    """A voice-activity option that is unknown or out of range."""


def _number(name: str, value, low: float, high: float = math.inf, *, above: bool = False) -> None:
    """VadOptionsError naming ``name`` unless ``value`` is a real number in ``[low, high]``
    (``(low, high]`` when ``above``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise VadOptionsError(f"vad option {name}: expected a number, got {value!r}")
    if value < low or (above and value == low) or value > high:
        wanted = f"in [{low:g}, {high:g}]" if high < math.inf else f"{'>' if above else '>='} {low:g}"
        raise VadOptionsError(f"vad option {name}: expected a number {wanted}, got {value!r}")


@dataclass(frozen=True)
class VadOptions:
    """faster-whisper's voice-activity options (names, defaults, meaning)."""

    threshold: float = 0.5  # a window with this speech probability or more is speech
    neg_threshold: float | None = None  # speech ends below this; None: threshold - 0.15, at least 0.01
    min_speech_duration_ms: float = 0  # shorter speech is dropped
    max_speech_duration_s: float = math.inf  # longer speech is cut (at its longest silence if any)
    min_silence_duration_ms: float = 2000  # silence that ends speech
    speech_pad_ms: float = 400  # added to each end of the speech

    def __post_init__(self):
        _number("threshold", self.threshold, 0.0, 1.0)
        if self.neg_threshold is not None:
            _number("neg_threshold", self.neg_threshold, 0.0, 1.0)
        _number("min_speech_duration_ms", self.min_speech_duration_ms, 0.0)
        _number("max_speech_duration_s", self.max_speech_duration_s, 0.0, above=True)
        _number("min_silence_duration_ms", self.min_silence_duration_ms, 0.0)
        _number("speech_pad_ms", self.speech_pad_ms, 0.0)
        for name in ("min_speech_duration_ms", "min_silence_duration_ms", "speech_pad_ms"):
            if math.isinf(getattr(self, name)):
                raise VadOptionsError(
                    f"vad option {name}: expected a finite number, got {getattr(self, name)!r}"
                )

    @classmethod
    def from_mapping(cls, options: Mapping | None) -> VadOptions:
        """Options from a mapping of some of the field names (a request's or a config's);
        VadOptionsError naming the first unknown key or bad value."""
        if options is None:
            return cls()
        if not isinstance(options, Mapping):
            raise VadOptionsError(
                f"vad options: expected a mapping of option names, got {type(options).__name__}"
            )
        known = [f.name for f in fields(cls)]
        for key in options:
            if key not in known:
                raise VadOptionsError(f"vad option {key!r}: unknown (known: {', '.join(known)})")
        return cls(**options)

    @property
    def exit_threshold(self) -> float:
        """The probability below which speech ends: ``neg_threshold``, or silero's default."""
        return max(self.threshold - 0.15, 0.01) if self.neg_threshold is None else self.neg_threshold


def _segments(probs: list[float], n_samples: int, o: VadOptions) -> list[list[int]]:
    """silero's state machine over the windows: ``[start, end]`` of each piece of speech, in
    samples, before padding. One loop over one state (the open piece's start, where the current
    silence began, the silences seen inside the piece), its checks in silero's order."""
    min_speech = SAMPLE_RATE * o.min_speech_duration_ms / 1000
    pad = SAMPLE_RATE * o.speech_pad_ms / 1000
    max_speech = SAMPLE_RATE * o.max_speech_duration_s - WINDOW_SAMPLES - 2 * pad
    min_silence = SAMPLE_RATE * o.min_silence_duration_ms / 1000
    min_cut_silence = SAMPLE_RATE * MIN_SILENCE_AT_MAX_SPEECH_MS / 1000
    on, off = o.threshold, o.exit_threshold
    pieces: list[list[int]] = []
    start = None  # the open piece's first sample; None outside speech
    silent_from = 0  # where the current silence inside the piece began (0: none)
    silences: list[tuple[int, int]] = []  # (where, how long) of silences long enough to cut at
    for i, p in enumerate(probs):
        now = WINDOW_SAMPLES * i
        if p >= on and silent_from:  # speech again: the silence is over
            if now - silent_from > min_cut_silence:
                silences.append((silent_from, now - silent_from))
            silent_from = 0
        if p >= on and start is None:
            start = now
            continue
        if start is not None and now - start > max_speech:
            if not silences:  # no silence to cut at: cut here; the next speech window starts anew
                pieces.append([start, now])
                start, silent_from = None, 0
                continue
            cut, length = max(silences, key=lambda s: s[1])  # the first of the longest
            pieces.append([start, cut])
            start = cut + length if cut + length < cut + now else None
            silent_from, silences = 0, []
        if p < off and start is not None:
            if not silent_from:
                silent_from = now
            if now - silent_from < min_silence:
                continue
            if silent_from - start > min_speech:
                pieces.append([start, silent_from])
            start, silent_from, silences = None, 0, []
    if start is not None and n_samples - start > min_speech:
        pieces.append([start, n_samples])
    return pieces


def _pad(pieces: list[list[int]], n_samples: int, pad_ms: float) -> None:
    """Pads the pieces in place: the first start and the last end by ``pad_ms`` (within the
    recording), and each gap by ``pad_ms`` on both sides, or half to each side when shorter than
    two paddings (silero's arithmetic: float padding, floored sample counts)."""
    if not pieces:
        return
    pad = SAMPLE_RATE * pad_ms / 1000
    pieces[0][0] = int(max(0, pieces[0][0] - pad))
    for left, right in zip(pieces, pieces[1:]):
        gap = right[0] - left[1]
        if gap < 2 * pad:
            left[1] += int(gap // 2)
            right[0] = int(max(0, right[0] - gap // 2))
        else:
            left[1] = int(min(n_samples, left[1] + pad))
            right[0] = int(max(0, right[0] - pad))
    pieces[-1][1] = int(min(n_samples, pieces[-1][1] + pad))


def speech_timestamps(probs, n_samples: int, options: VadOptions | None = None) -> list[dict[str, int]]:
    """``[{"start": s, "end": e}, ...]``, the speech of a recording of ``n_samples`` 16 kHz
    samples in samples (end excluded), from its windows' speech probabilities (one per 512
    samples, ``ceil(n_samples / 512)`` of them): what silero-vad 6.2's ``get_speech_timestamps``
    returns for the same probabilities and options."""
    options = VadOptions() if options is None else options
    p = np.asarray(probs)
    if p.ndim != 1 or not np.issubdtype(p.dtype, np.floating) or not np.isfinite(p).all():
        raise ValueError(
            f"probs: expected a 1-D array of finite float probabilities, got {p.dtype}{list(p.shape)}"
        )
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 0:
        raise ValueError(f"n_samples: expected a sample count >= 0, got {n_samples!r}")
    n_samples = int(n_samples)
    if len(p) != -(-n_samples // WINDOW_SAMPLES):
        raise ValueError(
            f"probs: {len(p)} probabilities for {n_samples} samples, expected one per 512 samples"
        )
    # compared as Python floats (float64), as silero compares ``tensor.item()``: a float32 array
    # would round the thresholds to float32 first
    pieces = _segments(p.astype(np.float64).tolist(), n_samples, options)
    _pad(pieces, n_samples, options.speech_pad_ms)
    return [{"start": s, "end": e} for s, e in pieces]


@cache
def default_model() -> SileroVad:
    """The packaged model, loaded once per process (one thread)."""
    return SileroVad.load()


def detect_speech(
    audio, options: VadOptions | None = None, model: SileroVad | None = None
) -> list[dict[str, int]]:
    """The speech timestamps (samples at 16 kHz) of ``audio``: a 1-D float array of 16 kHz
    samples, an audio file's path, or a source from ``open_samples`` (anything with ``n`` and
    ``read(start, stop)``; left open for its owner), read :data:`BLOCK_SAMPLES` at a time: a
    file is never held whole. ``model`` None: the packaged Silero VAD (loaded once). Raises
    AudioError for an unreadable file, ValueError for bad samples."""
    from models.whisper.audio.features import open_samples

    model = default_model() if model is None else model
    if hasattr(audio, "read") and hasattr(audio, "n"):
        return _detect(audio, options, model)
    source = open_samples(check_audio(audio) if isinstance(audio, np.ndarray) else audio)
    try:
        return _detect(source, options, model)
    finally:
        source.close()


def _detect(source, options: VadOptions | None, model: SileroVad) -> list[dict[str, int]]:
    """:func:`detect_speech` of an open source, block by block."""
    state, parts = None, []
    for start in range(0, source.n, BLOCK_SAMPLES):
        probs, state = model.probs(source.read(start, min(start + BLOCK_SAMPLES, source.n)), state)
        parts.append(probs)
    probs = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return speech_timestamps(probs, source.n, options)


def speech_duration(timestamps: list[dict[str, int]]) -> float:
    """Seconds of audio that ``timestamps`` (samples at 16 kHz) cover."""
    return sum(t["end"] - t["start"] for t in timestamps) / SAMPLE_RATE
