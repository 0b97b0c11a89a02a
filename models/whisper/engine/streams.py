"""A stream: one file's transcription (kvgraph's decode loop) over a backend whose calls go to
the :class:`~models.whisper.engine.scheduler.Scheduler`: its rows of the pool, given back when
each decode ends; and the :class:`Turns` that bound how many streams decode at once and who
waits for whom."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable

import numpy as np

from kvgraph.slots import Group
from models.whisper.engine.scheduler import Scheduler

#: how a :class:`Turns` hands its turns out
TURN_POLICIES = ("fifo", "round_robin")


class _RowState:
    """A stream's decoder state: its rows of the pool (the pool tracks their position)."""

    __slots__ = ("group", "shared_audio")

    def __init__(self, group: Group, shared_audio: bool):
        self.group, self.shared_audio = group, shared_audio


class _Wake:
    """A waiting thread's place in a :class:`Turns` line: taking the turn wakes it."""

    __slots__ = ("event",)

    def __init__(self):
        self.event = threading.Event()

    def __call__(self) -> bool:
        self.event.set()
        return True


class Turns:
    """Who may decode now: ``slots`` turns, each held by one stream (one request's decoding
    thread) at a time, so at most ``slots`` decodes hold rows of the pool (what sizes the pool:
    :func:`~models.whisper.engine.batched.default_rows`). The others wait in one line, lowest
    key first (a key is a ticket: the order of asking).

    ``policy``: ``"fifo"``, a holder keeps its turn until its request ends (throughput for a
    batch of files: few requests started at once); ``"round_robin"``, a holder whose next 30 s
    window is about to start while others wait hands its turn to the first of them and waits
    at the back of the line (:meth:`pass_turn`): every request in flight gets one window a
    turn, so a short request submitted behind long ones waits for one window of each stream
    ahead of it, not for whole requests. Either way no step runs with fewer rows than before
    (a turn passes straight from one stream to the next) and no decode's result changes."""

    def __init__(self, slots: int, policy: str = "fifo"):
        if policy not in TURN_POLICIES:
            raise ValueError(f"turns policy {policy!r}: expected one of {', '.join(TURN_POLICIES)}")
        if slots < 1:
            raise ValueError(f"turns: slots must be >= 1, got {slots}")
        self.policy = policy
        self.free = slots
        self.line: list[tuple[int, int, Callable[[], bool]]] = []  # a heap of (key, order, grant)
        self.paused = 0  # holders waiting for their turn to come round again
        self.passes = 0  # turns passed on by a holder between its windows
        self._tickets = itertools.count()
        self._order = itertools.count()
        self.lock = threading.Lock()

    def ticket(self) -> int:
        """A key after every key handed out so far (the back of the line)."""
        return next(self._tickets)

    def ask(self, grant: Callable[[], bool], key: int | None = None) -> None:
        """``grant()`` is called once a turn is free for it (now, in this thread, or later, in
        the thread that gives a turn back); it returns False when it no longer wants the turn
        (a request cancelled while it waited), which then goes to the next in line. ``key``:
        its place in line (default: the back)."""
        with self.lock:
            if self.free == 0:  # (free turns mean an empty line)
                key = self.ticket() if key is None else key
                heapq.heappush(self.line, (key, next(self._order), grant))
                return
            self.free -= 1
        if not grant():
            self.release()

    def wait_turn(self, key: int | None = None) -> None:
        """Block this thread until it holds a turn."""
        wake = _Wake()
        self.ask(wake, key)
        wake.event.wait()

    def release(self) -> None:
        """A holder gives its turn back: to the first in line that takes it, else it is free."""
        while True:
            with self.lock:
                if not self.line:
                    self.free += 1
                    return
                _, _, grant = heapq.heappop(self.line)
            if grant():
                return

    def others_waiting(self) -> bool:
        return bool(self.line)

    def pass_turn(self) -> bool:
        """Round robin, between a holder's windows: when others wait, the turn goes to the first
        of them and the holder waits at the back of the line until it comes round; True if it
        waited. FIFO: nothing (False)."""
        if self.policy != "round_robin":
            return False
        wake = _Wake()
        with self.lock:
            if not self.line:
                return False
            heapq.heappush(self.line, (self.ticket(), next(self._order), wake))
            self.paused += 1
            self.passes += 1
        self.release()
        wake.event.wait()
        with self.lock:
            self.paused -= 1
        return True


class StreamBackend:
    """One stream's view of the scheduler, with the ``WhisperBackend`` protocol of
    :mod:`models.whisper.decoding.protocol`. A stream holds at most one decode's rows at a
    time: they are given back when the decode ends (``release``, which the decoding task
    calls) or, at the latest, when its next decode prefills.

    ``turns``: the :class:`Turns` whose turn this stream holds; before each window after its
    first (``encode``) it offers the turn to the streams waiting (:meth:`Turns.pass_turn`),
    out of the scheduler's rounds while it waits, holding no rows."""

    def __init__(self, scheduler: Scheduler, turns: Turns | None = None):
        self.scheduler = scheduler
        self.dims = scheduler.backend.dims
        self.alignment_heads = scheduler.backend.alignment_heads
        self.group: Group | None = None
        self.turns = turns
        self.windows = 0

    def release(self) -> None:
        self.scheduler.release(self.group)
        self.group = None

    def encode(self, mel):
        if self.windows and self.turns is not None and self.turns.others_waiting():
            self.take_turns()
        self.windows += 1
        return self.scheduler.call("encode", np.ascontiguousarray(mel, dtype=np.float32))

    def take_turns(self) -> None:
        """Between two windows: the turn offered to the streams waiting; while this one waits,
        the scheduler's rounds do not wait for it."""
        self.release()
        self.scheduler.unregister()
        try:
            self.turns.pass_turn()
        finally:
            self.scheduler.register()

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
