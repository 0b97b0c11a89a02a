"""What an engine is: ``submit(audio, **options)`` returns a future of ``transcribe``'s result
dict at once, or raises :class:`EngineFull` / :class:`EngineClosed`; ``close(wait)``. Cheap to
import (the servers' and CLIs' defaults live here)."""

from __future__ import annotations

import queue
from concurrent.futures import Future
from typing import Protocol

#: requests (or files) decoded together by default
DEFAULT_BATCH = 8
#: requests allowed to wait for an engine
DEFAULT_MAX_QUEUE = 64


class TranscriptionEngine(Protocol):
    """What the server needs of a decoder: ``submit`` returns at once (``queue.Full`` when
    the engine cannot take more), the future resolves to ``WhisperModel.transcribe``'s result
    dict for ``audio`` (float32 mono 16 kHz) and ``options`` (``whisper.transcribe``'s keyword
    arguments) or to its exception. A future cancelled before it runs is skipped."""

    def submit(self, audio, **options) -> Future: ...

    def close(self, wait: bool = True) -> None: ...


class EngineFull(queue.Full):
    """``submit`` refused a request: the engine's queue is full (the server answers 503)."""


class EngineClosed(RuntimeError):
    """``submit`` after ``close`` (the server answers 503)."""
