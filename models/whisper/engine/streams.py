"""A stream: one file's transcription (kvgraph's decode loop) over a backend whose calls go to
the :class:`~models.whisper.engine.scheduler.Scheduler`: its rows of the pool, given back when
each decode ends."""

from __future__ import annotations

import numpy as np

from kvgraph.slots import Group
from models.whisper.engine.scheduler import Scheduler


class _RowState:
    """A stream's decoder state: its rows of the pool (the pool tracks their position)."""

    __slots__ = ("group", "shared_audio")

    def __init__(self, group: Group, shared_audio: bool):
        self.group, self.shared_audio = group, shared_audio


class StreamBackend:
    """One stream's view of the scheduler, with the ``WhisperBackend`` protocol of
    :mod:`models.whisper.decoding.protocol`. A stream holds at most one decode's rows at a
    time: they are given back when the decode ends (``release``, which the decoding task
    calls) or, at the latest, when its next decode prefills."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self.dims = scheduler.backend.dims
        self.alignment_heads = scheduler.backend.alignment_heads
        self.group: Group | None = None

    def release(self) -> None:
        self.scheduler.release(self.group)
        self.group = None

    def encode(self, mel):
        return self.scheduler.call("encode", np.ascontiguousarray(mel, dtype=np.float32))

    def prefill(self, tokens, audio_features):
        self.release()
        features = np.ascontiguousarray(audio_features, dtype=np.float32)
        shared = all(np.array_equal(features[0], f) for f in features[1:])
        logits, self.group = self.scheduler.call("prefill", np.asarray(tokens, np.int64), features)
        return logits, _RowState(self.group, shared)

    def step(self, tokens, state: _RowState):
        logits = self.scheduler.call("step", state.group, np.ascontiguousarray(tokens, dtype=np.int64))
        return logits, state

    def reorder(self, state: _RowState, indices):
        idx = np.asarray(indices, np.int64)
        group = self.scheduler.call("reorder", state.group, idx, not state.shared_audio)
        if group is not state.group:  # rows moved (one prompt row made one row per beam)
            self.group = group
            return _RowState(group, state.shared_audio)
        return state

    def alignment(self, tokens, audio_features):
        return self.scheduler.call("align", tokens, audio_features)
