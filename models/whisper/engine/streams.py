"""A stream: one file's transcription, openai-whisper's own decoding over a backend whose calls go
to the :class:`~models.whisper.engine.scheduler.Scheduler` (its rows of the pool, its own
sampling RNG)."""

from __future__ import annotations

import threading

import numpy as np
import torch

from kvgraph.slots import Group
from models.whisper.decoding.adapter import WhisperAdapter
from models.whisper.engine.scheduler import Scheduler

_RNG_LOCK = threading.Lock()


class _RowState:
    """A stream's decoder state: its rows of the pool (the pool tracks their position)."""

    __slots__ = ("group", "shared_audio")

    def __init__(self, group: Group, shared_audio: bool):
        self.group, self.shared_audio = group, shared_audio


class StreamBackend:
    """One stream's view of the scheduler, with the ``WhisperBackend`` protocol of
    :mod:`models.whisper.decoding.adapter`. A stream holds at most one decode's rows at a time:
    they are given back when its next decode prefills, and when the decode ends
    (:class:`_StreamAdapter`)."""

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


class StreamAdapter(WhisperAdapter):
    """The adapter of one stream: rows back to the pool when a decode ends; sampling from
    the stream's own copy of torch's RNG state (see :mod:`models.whisper.engine`)."""

    def __init__(self, backend: StreamBackend, rng_state: torch.Tensor):
        super().__init__(backend)
        self.rng_state = rng_state

    def prepare_task(self, task) -> None:
        if task.options.temperature == 0:
            return  # greedy and beam search draw nothing
        update = task.decoder.update

        def private_rng_update(*args, **kwargs):
            with _RNG_LOCK:
                saved = torch.get_rng_state()
                torch.set_rng_state(self.rng_state)
                try:
                    return update(*args, **kwargs)
                finally:
                    self.rng_state = torch.get_rng_state()
                    torch.set_rng_state(saved)

        task.decoder.update = private_rng_update

    def decode(self, mel, *args, **kwargs):
        try:
            return super().decode(mel, *args, **kwargs)
        finally:
            self.backend.release()
