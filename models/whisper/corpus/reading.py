"""One corpus file to 16 kHz float32 samples: a local path through the project's reader
(:func:`models.whisper.audio.load.load_audio`), a URI's bytes through ``pyarrow.fs`` decoded by
:func:`models.whisper.audio.load.decode_audio` (same formats, checks and one-line errors)."""

from __future__ import annotations

import numpy as np

from models.whisper.audio.load import SAMPLE_RATE, AudioError, decode_audio, load_audio
from models.whisper.corpus.inputs import is_uri

__all__ = ["read_samples", "read_batch", "Reader", "SAMPLE_RATE"]


def read_samples(file: str) -> np.ndarray:
    """``file`` (local path or URI) as float32 mono samples at 16 kHz. Raises
    :class:`~models.whisper.audio.load.AudioError` naming the file when it cannot be read."""
    if not is_uri(file):
        return load_audio(file)
    from pyarrow import fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(file)
        with filesystem.open_input_file(path) as f:
            data = f.read()
    except (OSError, ValueError) as e:
        raise AudioError(f"{file}: cannot read ({' '.join(str(e).split())})") from None
    return decode_audio(data, name=file)


def read_batch(batch: dict) -> dict:
    """The read step of the Ray Data pipeline: for each row's ``file``, its samples as float32
    bytes (``samples``), ``duration`` (s) and ``error`` ("" when read). A file that cannot be
    read is an error row, not a failed task: the job goes on."""
    samples, durations, errors = [], [], []
    for file in batch["file"]:
        try:
            audio = read_samples(str(file))
        except Exception as e:  # noqa: BLE001 - any failure is this file's, reported in its row
            text = " ".join(str(e).split())
            samples.append(b"")
            durations.append(np.nan)
            errors.append(text if isinstance(e, AudioError) else f"{type(e).__name__}: {text}")
        else:
            samples.append(audio.tobytes())
            durations.append(len(audio) / SAMPLE_RATE)
            errors.append("")
    out = dict(batch)
    out["samples"] = _objects(samples)
    out["duration"] = np.asarray(durations, dtype=np.float64)
    out["error"] = np.asarray(errors, dtype=object)
    return out


def _objects(items: list) -> np.ndarray:
    """``items`` as a 1-D object array (NumPy would make a 2-D array of equal-length bytes)."""
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


class Reader:
    """The read step as a Ray Data callable class: :func:`read_batch` in a long-lived actor.
    A pool of these replaces a pool of tasks because Ray starts a worker process for a task
    when none is idle, and stops idle workers beyond one per CPU after a second
    (``idle_worker_killing_time_threshold_ms``, 1,000 ms by default): reads spaced out between
    decodes each paid a new Python process (~0.8 s of CPU measured on a 2-core node, Ray 2.60),
    on the cores the transcription needs."""

    def __call__(self, batch: dict) -> dict:
        return read_batch(batch)
