"""Many transcriptions at once on one compiled Whisper: :class:`BatchedTranscriber` (submit a
file, get a future) and :func:`transcribe_many` (a list in, results in order)."""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from models.whisper.engine.protocol import EngineClosed, EngineFull
from models.whisper.engine.scheduler import Scheduler
from models.whisper.engine.streams import StreamBackend, Turns
from models.whisper.transcription.transcribe import transcribe

__all__ = ["BatchedTranscriber", "transcribe_many", "default_rows", "audio_seconds", "batchable"]


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
    concurrently, their steps batched (see :mod:`models.whisper.engine`). ``close(wait=True)``
    finishes the submitted files and stops the scheduler; also a context manager.

    ``backend``: a :class:`models.whisper.model.backend.MaxWhisperBackend` (``load_backend``).
    ``rows``: slot-pool rows (default :func:`default_rows` of the first file's options).
    ``max_queue``: requests in flight beyond ``batch_size`` (more: ``EngineFull``).
    ``turns``: who decodes when more than ``batch_size`` requests are in flight
    (:class:`~models.whisper.engine.streams.Turns`): ``"fifo"`` (the default, for batches of
    files: a file keeps its place until it is done) or ``"round_robin"`` (a server's: every
    request in flight decodes one 30 s window a turn, so a short request is not stuck behind
    long ones)."""

    def __init__(
        self,
        backend,
        batch_size: int = 8,
        rows: int | None = None,
        max_queue: int | None = None,
        turns: str = "fifo",
        **default_options,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.turns = Turns(batch_size, turns)
        self.backend = backend
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.default_options = default_options
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified as requests end
        self._submitted = self._started = self._done = 0
        self._queued: set[concurrent.futures.Future] = set()  # not started yet
        self.scheduler = Scheduler(backend, rows or default_rows(batch_size, default_options))
        self._closed = False

    def submit(self, audio, **transcribe_options) -> concurrent.futures.Future:
        """A future of ``transcribe(audio, **options)``'s result dict. Raises
        ``EngineClosed`` after ``close`` and ``EngineFull`` when ``batch_size + max_queue``
        requests are already in flight (what ``kvgraph serve`` answers 503 to)."""
        options = {**self.default_options, **transcribe_options}
        need = default_rows(1, options)
        if need > self.scheduler.pool.rows:
            raise ValueError(
                f"a decode with these options takes {need} rows; the pool has {self.scheduler.pool.rows}"
            )
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is shutting down")
            waiting = self._submitted - self._done - self.batch_size
            if self.max_queue is not None and waiting >= self.max_queue:
                raise EngineFull(f"{waiting} requests are waiting (the queue holds {self.max_queue})")
            self._submitted += 1
            self._queued.add(fut)
            key = self.turns.ticket()
        fut.add_done_callback(self._settle)
        self.turns.ask(lambda: self._start(fut, audio, options, key), key)
        return fut

    def _settle(self, fut: concurrent.futures.Future) -> None:
        """A request cancelled before it started never runs ``_run``: count it as taken and
        done, so it stops counting against ``max_queue``."""
        if fut.cancelled():
            with self._lock:
                self._queued.discard(fut)
                self._started += 1
                self._done += 1
                self._idle.notify_all()

    def _start(self, fut: concurrent.futures.Future, audio, options: dict, key: int) -> bool:
        """The request's turn came: its thread starts (False: it was cancelled meanwhile)."""
        with self._lock:
            self._queued.discard(fut)
        if not fut.set_running_or_notify_cancel():
            return False
        with self._lock:
            self._started += 1
        threading.Thread(target=self._run, args=(fut, audio, options, key), name="kvgraph-stream").start()
        return True

    def _run(self, fut: concurrent.futures.Future, audio, options: dict, key: int) -> None:
        """The request's transcription on its own thread, which holds a turn from the start;
        its outcome goes to ``fut`` once its turn and its counts are given back."""
        holding = True
        result = error = None
        try:
            if options.get("vad_filter"):
                self.turns.release()  # its chunks take turns of their own
                holding = False
                result = self._speech_only(audio, dict(options), key)
            else:
                result = self._stream(audio, options)
        except BaseException as e:  # noqa: BLE001 - the request's failure, not the engine's
            error = e
        finally:
            if holding:
                self.turns.release()
            with self._lock:
                self._done += 1
                self._idle.notify_all()
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def _stream(self, audio, options: dict, key: int | None = None) -> dict:
        """One transcription as a stream of the scheduler. ``key``: the stream has no turn
        yet: it waits for one at that place in line (a VAD chunk: its request's place) and
        gives it back when done."""
        if key is not None:
            self.turns.wait_turn(key)
        self.scheduler.register()
        backend = StreamBackend(self.scheduler, self.turns)
        try:
            return transcribe(backend, audio, **options)
        finally:
            backend.release()
            self.scheduler.unregister()
            if key is not None:
                self.turns.release()

    def _speech_only(self, audio, options: dict, key: int) -> dict:
        """``vad_filter=True``: the detected speech's chunks, up to ``batch_size`` of them at
        once, each a stream of its own (their steps batch with every other stream's), each
        waiting for a turn at the request's place in line."""
        from models.whisper.vad.run import transcribe_with_vad

        def chunk(samples, chunk_options: dict) -> dict:
            return self._stream(samples, chunk_options, key)

        return transcribe_with_vad(audio, options, chunk, self.backend.dims, self.batch_size)

    def stats(self) -> dict:
        """Queue figures (``kvgraph serve``'s ``/health``) and the scheduler's counters."""
        with self._lock:
            out = {
                "engine": type(self).__name__,
                "waiting": self._submitted - self._started,
                "running": self._started - self._done,
                "paused": self.turns.paused,
                "turns": self.turns.policy,
                "turns_passed": self.turns.passes,
                "max_queue": self.max_queue,
                "completed": self._done,
                "batch_size": self.batch_size,
            }
        out["scheduler"] = dict(self.scheduler.stats)
        return out

    def close(self, wait: bool = True) -> None:
        """Take no more requests. ``wait``: every submitted request finishes, then the
        scheduler stops; otherwise the requests not started yet are cancelled and those
        running finish in the background."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            queued = [] if wait else list(self._queued)
        for fut in queued:
            fut.cancel()
        if wait:
            with self._lock:
                while self._done < self._submitted:
                    self._idle.wait()
            self.scheduler.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def batchable(backend) -> bool:
    """Can ``backend`` run rows at different positions in one step (what batching needs: a
    cached decoder with a fixed capacity)?"""
    dec = getattr(backend, "decoder", None)
    return getattr(dec, "kv_cache", False) and getattr(dec, "capacity", None) is not None


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
