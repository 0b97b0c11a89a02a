"""Speech regions grouped into chunks, and a chunk's times put back on the recording's timeline.

The voice-activity detector gives speech regions (sample ranges of the recording). A
:class:`Chunk` is what one stream transcribes: consecutive regions, their audio concatenated
with the silence between them left out, at most ``max_samples`` long (one 30 s Whisper window)
unless a single region is longer (then it alone, transcribed long-form). Times the transcription
gives inside a chunk are mapped back as faster-whisper's ``SpeechTimestampsMap`` does
(faster_whisper/vad.py): a time belongs to the region whose stretch of the chunk holds it, and
moves by the silence cut before that region; a word's start and end move with the region of its
middle, so a word is never torn across a cut.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
#: one Whisper window: what a chunk of several regions may hold
MAX_CHUNK_SAMPLES = 30 * SAMPLE_RATE


@dataclass(frozen=True)
class Chunk:
    """Speech regions ``spans`` (``(start, end)`` samples of the recording, in order, disjoint)
    transcribed together as one audio: their samples one after the other."""

    spans: tuple[tuple[int, int], ...]

    def __post_init__(self):
        if not self.spans:
            raise ValueError("Chunk: no speech spans")
        last = 0
        for start, end in self.spans:
            if not last <= start < end:
                raise ValueError(f"Chunk: span ({start}, {end}) is empty, reversed or overlaps the last")
            last = end

    @property
    def offsets(self) -> list[int]:
        """Where each span starts in the chunk's audio (samples)."""
        out, at = [], 0
        for start, end in self.spans:
            out.append(at)
            at += end - start
        return out

    @property
    def n_samples(self) -> int:
        return sum(end - start for start, end in self.spans)

    @property
    def start(self) -> int:
        """The first speech sample of the recording in this chunk."""
        return self.spans[0][0]

    def audio(self, source) -> np.ndarray:
        """The chunk's samples read from ``source`` (``read(start, stop)``, 16 kHz float32)."""
        return np.concatenate([np.asarray(source.read(s, e), np.float32) for s, e in self.spans])

    def span_at(self, seconds: float, is_end: bool = False) -> int:
        """The index of the span holding chunk time ``seconds`` (an end exactly on a cut
        belongs to the span before it)."""
        sample = seconds * SAMPLE_RATE
        offsets = self.offsets
        i = bisect.bisect_left(offsets, sample) - 1 if is_end else bisect.bisect_right(offsets, sample) - 1
        return min(max(i, 0), len(self.spans) - 1)

    def original(self, seconds: float, span: int | None = None, is_end: bool = False) -> float:
        """Chunk time ``seconds`` on the recording's timeline (seconds), moved with ``span``
        (default: the span that holds it)."""
        i = self.span_at(seconds, is_end) if span is None else span
        return (self.spans[i][0] - self.offsets[i]) / SAMPLE_RATE + seconds


def group(speech: Sequence[dict], max_samples: int = MAX_CHUNK_SAMPLES) -> list[Chunk]:
    """Consecutive speech regions (``{"start", "end"}`` in samples, in order) grouped into
    chunks of at most ``max_samples`` of speech; a longer region is a chunk of its own."""
    chunks: list[Chunk] = []
    spans: list[tuple[int, int]] = []
    size = 0
    for region in speech:
        start, end = int(region["start"]), int(region["end"])
        if end <= start:
            continue
        if spans and size + (end - start) > max_samples:
            chunks.append(Chunk(tuple(spans)))
            spans, size = [], 0
        spans.append((start, end))
        size += end - start
    if spans:
        chunks.append(Chunk(tuple(spans)))
    return chunks


def _seconds(value: float, digits: int) -> float:
    return round(float(value), digits)


def map_segment(segment: dict, chunk: Chunk) -> dict:
    """A copy of one chunk's segment (openai-whisper's dict) on the recording's timeline:
    words moved with the span of their middle, the segment's bounds then its first word's start
    and last word's end (without words: its start and end mapped alone), ``seek`` the mel frame
    of the chunk's window start."""
    out = dict(segment)
    words = [dict(w) for w in segment.get("words") or []]
    for w in words:
        span = chunk.span_at((w["start"] + w["end"]) / 2)
        w["start"] = _seconds(chunk.original(w["start"], span), 2)
        w["end"] = _seconds(chunk.original(w["end"], span), 2)
    if "words" in segment:
        out["words"] = words
    if words:
        out["start"], out["end"] = words[0]["start"], words[-1]["end"]
    else:
        out["start"] = _seconds(chunk.original(segment["start"]), 3)
        out["end"] = _seconds(chunk.original(segment["end"], is_end=True), 3)
    out["seek"] = int(round(chunk.original(segment["seek"] / 100) * 100))
    return out


def merge(results: Sequence[dict], chunks: Sequence[Chunk], language: str | None) -> dict:
    """The chunks' results (in the chunks' order) as one recording's: segments on its
    timeline numbered afresh, the texts joined, the first chunk's language (``language`` when
    nothing was spoken)."""
    segments = []
    for result, chunk in zip(results, chunks, strict=True):
        for seg in result["segments"]:
            segments.append({**map_segment(seg, chunk), "id": len(segments)})
    return dict(
        text="".join(r["text"] for r in results),
        segments=segments,
        language=results[0]["language"] if results else language,
    )
