""":class:`SequentialEngine` runs one request at a time; :func:`make_engine` picks it or the
continuous-batching :class:`~models.whisper.engine.batched.BatchedTranscriber`."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from models.whisper.engine.batched import BatchedTranscriber, batchable
from models.whisper.engine.protocol import DEFAULT_BATCH, DEFAULT_MAX_QUEUE, EngineClosed, EngineFull


class SequentialEngine:
    """A :class:`TranscriptionEngine` that runs ``model.transcribe`` for one request at a time
    on one worker thread, in arrival order, with at most ``max_queue`` requests waiting
    (:class:`EngineFull` beyond that). One request's exception is its future's; the worker
    goes on with the next. ``close(wait=True)`` finishes every submitted request, then joins
    the worker; ``close(wait=False)`` lets it finish them in the background."""

    def __init__(self, model, *, max_queue: int = DEFAULT_MAX_QUEUE):
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.model = model
        self.max_queue = max_queue
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting = 0  # submitted, not yet taken by the worker
        self._running = False
        self._done = 0
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="kvgraph-serve-engine", daemon=True)
        self._thread.start()

    def submit(self, audio, **options) -> Future:
        fut: Future = Future()
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is shutting down")
            if self._waiting >= self.max_queue:
                raise EngineFull(f"{self._waiting} requests are waiting (the queue holds {self.max_queue})")
            self._waiting += 1
            self._queue.put((fut, audio, options))
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, audio, options = item
            with self._lock:
                self._waiting -= 1
                self._running = True
            try:
                if fut.set_running_or_notify_cancel():  # False: cancelled while waiting
                    try:
                        result = self.model.transcribe(audio, **options)
                    except BaseException as e:  # noqa: BLE001 - the request's failure, not the worker's
                        fut.set_exception(e)
                    else:
                        fut.set_result(result)
            finally:
                with self._lock:
                    self._running = False
                    self._done += 1

    def stats(self) -> dict:
        with self._lock:
            return {
                "engine": type(self).__name__,
                "waiting": self._waiting,
                "running": int(self._running),
                "max_queue": self.max_queue,
                "completed": self._done,
            }

    def close(self, wait: bool = True) -> None:
        with self._lock:
            first = not self._closed
            self._closed = True
        if first:
            self._queue.put(None)  # after every submitted request
        if wait and self._thread is not threading.current_thread():
            self._thread.join()


def make_engine(model, *, batch_size: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE):
    """The engine ``kvgraph serve`` decodes with. With ``batch_size`` (``--batch-size``; None:
    :data:`DEFAULT_BATCH`) of 2 or more and a model whose decoder can step rows at different
    positions, the continuous-batching engine (:class:`models.whisper.engine.batched.BatchedTranscriber`: up
    to ``batch_size`` requests decode at once, their steps batched; each result equals
    ``transcribe``'s; with more requests in flight they take turns, one 30 s window each, so
    a short request is not stuck behind long ones); otherwise :class:`SequentialEngine`, one
    request at a time."""
    if batch_size is None:
        batch_size = DEFAULT_BATCH
    if batch_size > 1:
        backend = getattr(model, "backend", None)
        if backend is not None and batchable(backend):
            return BatchedTranscriber(
                backend, batch_size=batch_size, max_queue=max_queue, turns="round_robin"
            )
    return SequentialEngine(model, max_queue=max_queue)
