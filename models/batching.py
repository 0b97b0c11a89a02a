"""Continuous batching of Whisper transcriptions: many files, one batched decoder step.

Each file's transcription is openai-whisper's own ``transcribe`` (the seek loop, SOT
sequence, logit filters, temperature fallback, timestamps, beam search), run in its own
thread with its own :class:`~models.whisper_decode.WhisperAdapter`. The adapter's backend
is a :class:`StreamBackend`: its ``encode`` / ``prefill`` / ``step`` / ``reorder`` calls
do not compute, they are handed to one :class:`Scheduler` thread, which owns the MAX
programs and a :class:`kvgraph.slots.SlotPool` of cache rows:

- a decode (one ``DecodingTask``: a 30 s window at one temperature) *joins* with its
  prefill, which takes rows of the pool (one per beam or sample) and writes its caches
  and cross-attention K/V there;
- every decode's next-token ``step`` waiting at the same time runs as **one** call of the
  per-row step program (``KVCache(per_row=True)``: each row at its own position);
- it *leaves* when the ``DecodingTask`` returns: its rows go back to the pool.

The scheduler serves in rounds: it waits until every live stream is blocked on a call
(or ``max_wait`` passed since the first one arrived), runs all waiting single-token steps
together, then the rest (encoder windows, prefills, multi-token steps, beam reorders,
word-timestamp passes) one by one. A prefill that finds no free rows waits for a later
round. Decoding semantics stay openai-whisper's: only where the logits are computed
changes, so each file's result is a sequential ``transcribe``'s (tests check text,
segments, tokens and timestamps).

Sampling (temperature fallback) draws from torch's global RNG; each stream gets a private
copy of its state taken when the file is submitted, swapped in (under a lock) around the
stream's sampling only, so a file's samples do not depend on the other files: its result
equals ``transcribe`` of that file with torch's RNG in the state it had at submission.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from kvgraph.slots import Group, SlotPool
from models.whisper_decode import WhisperAdapter, transcribe

__all__ = ["Scheduler", "StreamBackend", "BatchedTranscriber", "transcribe_many", "default_rows"]

#: seconds a round waits for streams that are still computing (logit filters, mel) before
#: it runs with the calls it has
MAX_WAIT_S = 0.02
_RNG_LOCK = threading.Lock()


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
    """The one thread that runs a :class:`~models.whisper.MaxWhisperBackend`'s programs for
    many streams (see the module docstring). ``rows``: rows of the slot pool (decodes of
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


class _RowState:
    """A stream's decoder state: its rows of the pool (the pool tracks their position)."""

    __slots__ = ("group", "shared_audio")

    def __init__(self, group: Group, shared_audio: bool):
        self.group, self.shared_audio = group, shared_audio


class StreamBackend:
    """One stream's view of the scheduler, with the ``WhisperBackend`` protocol of
    :mod:`models.whisper_decode`. A stream holds at most one decode's rows at a time:
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


class _StreamAdapter(WhisperAdapter):
    """The adapter of one stream: rows back to the pool when a decode ends; sampling from
    the stream's own copy of torch's RNG state (see the module docstring)."""

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


def default_rows(batch_size: int, options: dict) -> int:
    """Pool rows for ``batch_size`` concurrent files: a beam-search decode takes
    ``beam_size`` rows; a sampled fallback ``best_of``; greedy one. Beam search gives every
    stream its beam; greedy streams share room for one sampled fallback at a time (more
    wait for rows)."""
    beam = options.get("beam_size") or 1
    temps = options.get("temperature", (0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
    temps = (temps,) if isinstance(temps, (int, float)) else tuple(temps)
    best_of = (options.get("best_of") or 5) if any(t > 0 for t in temps) else 1
    if beam > 1:
        return batch_size * max(beam, best_of)
    return batch_size + best_of - 1


class BatchedTranscriber:
    """An engine that transcribes many audios at once on one compiled Whisper: ``submit``
    returns a ``Future`` of ``transcribe``'s result dict; up to ``batch_size`` files decode
    concurrently, their steps batched (see the module docstring). ``close(wait=True)``
    finishes the submitted files and stops the scheduler; also a context manager.

    ``backend``: a :class:`models.whisper.MaxWhisperBackend` (``load_backend``).
    ``rows``: slot-pool rows (default :func:`default_rows` of the first file's options)."""

    def __init__(
        self,
        backend,
        batch_size: int = 8,
        rows: int | None = None,
        max_queue: int | None = None,
        **default_options,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.backend = backend
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.default_options = default_options
        self._lock = threading.Lock()
        self._submitted = self._started = self._done = 0
        self.scheduler = Scheduler(backend, rows or default_rows(batch_size, default_options))
        self.executor = concurrent.futures.ThreadPoolExecutor(batch_size, thread_name_prefix="kvgraph-stream")
        torch.set_num_threads(1)  # torch only edits logits here; MAX has the cores (see torch_threads)
        self._closed = False

    def submit(self, audio, **transcribe_options) -> concurrent.futures.Future:
        """A future of ``transcribe(audio, **options)``'s result dict. Raises
        ``models.serve.EngineClosed`` after ``close`` and ``models.serve.EngineFull`` when
        ``max_queue`` files are already waiting (what ``kvgraph serve`` answers 503 to)."""
        from models.serve import EngineClosed, EngineFull

        options = {**self.default_options, **transcribe_options}
        need = default_rows(1, options)
        if need > self.scheduler.pool.rows:
            raise ValueError(
                f"a decode with these options takes {need} rows; the pool has {self.scheduler.pool.rows}"
            )
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is shutting down")
            waiting = self._submitted - self._started
            if self.max_queue is not None and waiting >= self.max_queue:
                raise EngineFull(f"{waiting} requests are waiting (the queue holds {self.max_queue})")
            self._submitted += 1
            return self.executor.submit(self._run, audio, options, torch.get_rng_state())

    def _run(self, audio, options: dict, rng_state) -> dict:
        with self._lock:
            self._started += 1
        self.scheduler.register()
        backend = StreamBackend(self.scheduler)
        try:
            return transcribe(_StreamAdapter(backend, rng_state), audio, **options)
        finally:
            backend.release()
            self.scheduler.unregister()
            with self._lock:
                self._done += 1

    def stats(self) -> dict:
        """Queue figures (``kvgraph serve``'s ``/health``) and the scheduler's counters."""
        with self._lock:
            out = {
                "engine": type(self).__name__,
                "waiting": self._submitted - self._started,
                "running": self._started - self._done,
                "max_queue": self.max_queue,
                "completed": self._done,
                "batch_size": self.batch_size,
            }
        out["scheduler"] = dict(self.scheduler.stats)
        return out

    def close(self, wait: bool = True) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.executor.shutdown(wait=wait, cancel_futures=not wait)
        if wait:
            self.scheduler.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def audio_seconds(audio) -> float | None:
    """Duration of an audio array (16 kHz) or file, None when it cannot be read cheaply."""
    if isinstance(audio, (str, os.PathLike)):
        try:
            import soundfile

            return float(soundfile.info(os.fspath(audio)).duration)
        except Exception:  # noqa: BLE001 - only for progress figures
            return None
    return len(audio) / 16000.0


def transcribe_many(
    backend,
    audios: Sequence | Iterable,
    *,
    batch_size: int = 8,
    errors: str = "raise",
    progress: Any = None,
    **options,
) -> list:
    """``transcribe`` of every audio (paths or 16 kHz float32 arrays), ``batch_size`` files at
    a time with their decoder steps batched; one result per input, in order, each equal to
    a sequential ``transcribe`` of that input with the same options.

    ``errors="raise"``: the first failure is raised once every file has finished;
    ``"return"``: a failed input's entry is its exception. ``progress(done, result_or_error,
    index)`` is called as each file finishes."""
    if errors not in ("raise", "return"):
        raise ValueError(f"errors={errors!r}: expected 'raise' or 'return'")
    audios = list(audios)
    results: list = [None] * len(audios)
    with BatchedTranscriber(backend, batch_size=max(1, min(batch_size, len(audios) or 1)), **options) as eng:
        futures = {eng.submit(a): i for i, a in enumerate(audios)}
        for done, f in enumerate(concurrent.futures.as_completed(futures), 1):
            i = futures[f]
            results[i] = f.exception() if f.exception() is not None else f.result()
            if progress is not None:
                progress(done, results[i], i)
    if errors == "raise":
        for r in results:
            if isinstance(r, BaseException):
                raise r
    return results
