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
from models.whisper.engine.streams import StreamBackend
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
        self._closed = False

    def submit(self, audio, **transcribe_options) -> concurrent.futures.Future:
        """A future of ``transcribe(audio, **options)``'s result dict. Raises
        ``EngineClosed`` after ``close`` and ``EngineFull`` when
        ``max_queue`` files are already waiting (what ``kvgraph serve`` answers 503 to)."""
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
            fut = self.executor.submit(self._run, audio, options)
        fut.add_done_callback(self._settle)
        return fut

    def _settle(self, fut: concurrent.futures.Future) -> None:
        """A request cancelled before it started never runs ``_run``: count it as taken and
        done, so it stops counting against ``max_queue``."""
        if fut.cancelled():
            with self._lock:
                self._started += 1
                self._done += 1

    def _run(self, audio, options: dict) -> dict:
        with self._lock:
            self._started += 1
        try:
            if options.get("vad_filter"):
                return self._speech_only(audio, options)
            return self._stream(audio, options)
        finally:
            with self._lock:
                self._done += 1

    def _stream(self, audio, options: dict) -> dict:
        """One transcription as a stream of the scheduler."""
        self.scheduler.register()
        backend = StreamBackend(self.scheduler)
        try:
            return transcribe(backend, audio, **options)
        finally:
            backend.release()
            self.scheduler.unregister()

    def _speech_only(self, audio, options: dict) -> dict:
        """``vad_filter=True``: the detected speech's chunks, up to ``batch_size`` of them at
        once, each a stream of its own (their steps batch with every other stream's)."""
        from models.whisper.vad.run import transcribe_with_vad

        return transcribe_with_vad(audio, options, self._stream, self.backend.dims, self.batch_size)

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
