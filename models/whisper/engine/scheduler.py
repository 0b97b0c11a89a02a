"""The scheduler of continuous batching: one thread that owns a Whisper backend's MAX programs
and a slot pool of cache rows, and serves many streams' calls in rounds, their single-token
steps batched into one call of the per-row step program (see :mod:`models.whisper.engine`)."""

from __future__ import annotations

import threading
import time
from typing import Any

from kvgraph.slots import Group, SlotPool

#: seconds a round waits for streams that are still computing (logit filters, mel) before
#: it runs with the calls it has
MAX_WAIT_S = 0.02


class _Call:
    __slots__ = ("kind", "args", "done", "result", "error", "stream")

    def __init__(self, kind: str, args: tuple, stream: Any = None):
        self.kind, self.args, self.stream = kind, args, stream
        self.done = threading.Event()
        self.result = self.error = None

    def finish(self, result=None, error: BaseException | None = None):
        self.result, self.error = result, error
        self.done.set()


class Scheduler:
    """The one thread that runs a :class:`~models.whisper.model.backend.MaxWhisperBackend`'s programs for
    many streams (see :mod:`models.whisper.engine`). ``rows``: rows of the slot pool (decodes of
    ``n`` beams or samples take ``n``)."""

    def __init__(self, backend, rows: int, max_wait: float = MAX_WAIT_S):
        self.backend = backend
        self.pool = SlotPool(backend.decoder, rows)
        backend.decoder.program("step_rows")  # compiled (or read from the store) up front
        self.max_wait = max_wait
        self.cv = threading.Condition()
        self.pending: list[_Call] = []
        self.live = 0
        self.closed = False
        self._released: list[Group] = []
        self.stats = {"rounds": 0, "step_calls": 0, "step_rows": 0, "busy_rows": 0, "encode_calls": 0}
        self.stats.update(encode_s=0.0, step_s=0.0, prefill_s=0.0, other_s=0.0)
        self.thread = threading.Thread(target=self._loop, name="kvgraph-scheduler", daemon=True)
        self.thread.start()

    # -------------------------------------------------------------- streams' side
    def register(self) -> None:
        with self.cv:
            self.live += 1

    def unregister(self) -> None:
        with self.cv:
            self.live -= 1
            self.cv.notify_all()

    def call(self, kind: str, *args):
        c = _Call(kind, args)
        with self.cv:
            if self.closed:
                raise RuntimeError("the batching scheduler is closed")
            self.pending.append(c)
            self.cv.notify_all()
        c.done.wait()
        if c.error is not None:
            raise c.error
        return c.result

    def release(self, group: Group | None) -> None:
        """Give a decode's rows back (applied at the start of the next round)."""
        if group is not None:
            with self.cv:
                self._released.append(group)
                self.cv.notify_all()

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        self.thread.join()

    # -------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.pending and not self.closed:
                    self.cv.wait()
                if not self.pending and self.closed:
                    for g in self._released:
                        self.pool.release(g)
                    self._released = []
                    return
                deadline = time.monotonic() + self.max_wait
                while len(self.pending) < self.live and not self.closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.cv.wait(left)
                calls, self.pending = self.pending, []
                released, self._released = self._released, []
            for g in released:
                self.pool.release(g)
            waiting = self._serve(calls)
            if waiting:
                with self.cv:
                    self.pending[:0] = waiting
                if len(waiting) == len(calls):  # only prefills without rows: let rows free up
                    time.sleep(0.001)

    def _serve(self, calls: list[_Call]) -> list[_Call]:
        self.stats["rounds"] += 1
        steps = []
        for c in calls:
            if c.kind == "step" and c.args[1].shape[1] == 1:
                try:  # a bad request fails alone, not the whole batch
                    self.pool.check(*c.args)
                except Exception as e:  # noqa: BLE001 - reported to the stream that asked
                    c.finish(error=e)
                else:
                    steps.append(c)
        if steps:
            t0 = time.perf_counter()
            try:
                outs = self.pool.step([c.args for c in steps])
            except BaseException as e:  # noqa: BLE001 - each stream gets the error
                for c in steps:
                    c.finish(error=e)
            else:
                for c, o in zip(steps, outs):
                    c.finish(o)
                self.stats["step_calls"] += 1
                self.stats["step_rows"] += max(g.hi for g in self.pool.groups)
                self.stats["busy_rows"] += sum(c.args[0].size for c in steps)
            self.stats["step_s"] += time.perf_counter() - t0
        waiting = []
        for c in calls:
            if c.done.is_set():
                continue
            t0 = time.perf_counter()
            try:
                if c.kind == "prefill":
                    tokens, features = c.args
                    group = self.pool.acquire(tokens.shape[0])
                    if group is None:
                        waiting.append(c)
                        continue
                    try:
                        logits = self.pool.prefill(group, tokens, features)
                    except BaseException:
                        self.pool.release(group)
                        raise
                    c.finish((logits, group))
                    self.stats["prefill_s"] += time.perf_counter() - t0
                    continue
                if c.kind == "encode":
                    c.finish(self.backend.encode(c.args[0]))
                    self.stats["encode_calls"] += 1
                    self.stats["encode_s"] += time.perf_counter() - t0
                    continue
                if c.kind == "step":  # several new tokens (a prompt's rest): its rows alone
                    c.finish(self.pool.step([c.args])[0])
                elif c.kind == "reorder":
                    group = self.pool.reorder(*c.args)
                    if group is None:  # more rows than are free: wait for a later round
                        waiting.append(c)
                        continue
                    c.finish(group)
                elif c.kind == "align":
                    c.finish(self.backend.alignment(*c.args))
                else:
                    raise ValueError(f"unknown call {c.kind!r}")
            except BaseException as e:  # noqa: BLE001 - reported to the stream that asked
                c.finish(error=e)
            self.stats["other_s"] += time.perf_counter() - t0
        return waiting
