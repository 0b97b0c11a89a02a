"""The transcription step of a corpus job: a Ray Data callable class whose instances (actors)
each load the model once and decode the batches given to them with the batching engine.

Each actor holds one :class:`~models.whisper.engine.batched.BatchedTranscriber` (what
:func:`~models.whisper.engine.batched.transcribe_many` runs): every file of a call is submitted
to it, up to ``batch_size`` decode at once with their decoder steps batched, and each file's
outputs are written (atomically) as it finishes. The job hands an actor one file a call and up
to ``batch_size`` calls at once (:mod:`models.whisper.corpus.ray_job`), so the engine stays full
and a finished file makes room for the next one at once.

A file whose outputs all exist when its batch reaches the actor is not decoded again: a
batch retried after its actor died (Ray restarts the actor and sends the batch again) writes
only the files the dead actor had not finished, so each file is written once.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from models.whisper.corpus.outputs import is_done, recorded_language, write_transcript

__all__ = ["WorkerConfig", "CorpusWorker", "ROW_COLUMNS"]

#: the columns a worker returns per file (``index``: the file's place in the inputs)
ROW_COLUMNS = ("index", "file", "status", "duration", "language", "error", "node", "load_s")


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker of a job is built with. ``on_written(file, paths)``, when given, is
    called on the worker after a file's outputs are in place (picklable: it travels to the
    workers)."""

    model: str
    output_dir: str
    output_format: str = "all"
    batch_size: int = 8
    kv_cache: bool = True
    writer_args: Mapping = field(default_factory=dict)
    options: Mapping = field(default_factory=dict)
    on_written: Callable[[str, list], None] | None = None


class CorpusWorker:
    """Ray Data's callable class for the transcription step (one instance per actor)."""

    def __init__(self, config: WorkerConfig):
        import pyarrow  # noqa: F401 - loaded before MAX, as the driver's (models.whisper.corpus.ray_job)

        from models.whisper.engine.batched import BatchedTranscriber, batchable
        from models.whisper.transcription.model import load_model

        t0 = time.perf_counter()
        self.config = config
        self.model = load_model(config.model, kv_cache=config.kv_cache)
        self.load_s = time.perf_counter() - t0
        self.node = _node_address()
        options = dict(config.options, verbose=None)  # Ray Data's bars are the progress
        self.options = options
        self.engine = None
        if batchable(self.model.backend):
            self.engine = BatchedTranscriber(self.model.backend, batch_size=config.batch_size, **options)
        self.lock = threading.Lock()  # the sequential path: one file at a time

    def __call__(self, batch: dict) -> dict:
        """Transcribes the batch's files (columns ``index``, ``file``, ``name``, ``samples``,
        ``duration``, ``error`` from the read step); one row per file (:data:`ROW_COLUMNS`)."""
        cfg = self.config
        rows: dict[int, dict] = {}
        pending: dict[concurrent.futures.Future, int] = {}
        for k in range(len(batch["file"])):
            name = str(batch["name"][k])
            row = self._row(batch, k)
            if row["error"]:
                row["status"] = "error"
            elif is_done(name, cfg.output_dir, cfg.output_format):  # an earlier attempt wrote it
                row.update(status="ok", language=recorded_language(name, cfg.output_dir) or "")
            else:
                audio = np.frombuffer(batch["samples"][k], dtype=np.float32)
                pending[self._submit(audio)] = k
            rows[k] = row
        for fut in concurrent.futures.as_completed(pending):
            k = pending[fut]
            rows[k].update(self._finish(fut, str(batch["file"][k]), str(batch["name"][k])))
        return {c: np.asarray([rows[k][c] for k in range(len(rows))], dtype=_dtype(c)) for c in ROW_COLUMNS}

    def _row(self, batch: dict, k: int) -> dict:
        duration = float(batch["duration"][k])
        return {
            "index": int(batch["index"][k]),
            "file": str(batch["file"][k]),
            "status": "",
            "duration": duration if math.isfinite(duration) else math.nan,
            "language": "",
            "error": str(batch["error"][k] or ""),
            "node": self.node,
            "load_s": self.load_s,
        }

    def _submit(self, audio: np.ndarray) -> concurrent.futures.Future:
        if self.engine is not None:
            return self.engine.submit(audio)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            with self.lock:
                fut.set_result(self.model.transcribe(audio, **self.options))
        except Exception as e:  # noqa: BLE001 - the file's failure, reported in its row
            fut.set_exception(e)
        return fut

    def _finish(self, fut: concurrent.futures.Future, file: str, name: str) -> dict:
        """The decoded file's outputs written; its row's status, language and error."""
        cfg = self.config
        try:
            result = fut.result()
            paths = write_transcript(result, name, cfg.output_dir, cfg.output_format, cfg.writer_args)
        except Exception as e:  # noqa: BLE001 - the file's failure, reported in its row
            text = " ".join(str(e).split())
            return {
                "status": "error",
                "error": text if isinstance(e, ValueError) else f"{type(e).__name__}: {text}",
            }
        if cfg.on_written is not None:
            cfg.on_written(file, paths)
        return {"status": "ok", "language": result.get("language") or ""}


def _dtype(column: str):
    return {"index": np.int64, "duration": np.float64, "load_s": np.float64}.get(column, object)


def _node_address() -> str:
    """This worker's node address (empty outside Ray)."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - only a label in the manifest
        return ""
