"""``transcribe``: openai-whisper's long-form transcription (the 30 s seek loop, temperature
fallback, prompts, word timestamps) with all neural compute on a kvgraph backend."""

from __future__ import annotations

import os
import time
import warnings
from typing import Union

import numpy as np
import torch
import whisper

from models.whisper.decoding.adapter import DecodeTimings, WhisperAdapter, WhisperBackend, torch_threads

AudioInput = Union[str, "os.PathLike[str]", np.ndarray, torch.Tensor]


def transcribe(backend: WhisperBackend | WhisperAdapter, audio: AudioInput, **decode_options) -> dict:
    """``whisper.transcribe`` with all neural compute on ``backend``.

    ``audio`` is a path (decoded with ``models.whisper.audio.load.load_audio``) or a float32
    16 kHz mono waveform.  ``decode_options`` are ``whisper.transcribe``'s
    keyword arguments (``verbose``, ``temperature``, thresholds,
    ``condition_on_previous_text``, ``initial_prompt``, ``beam_size``, ...);
    ``fp16`` is forced to False.  ``verbose=False`` gives openai-whisper's tqdm
    progress bar over audio frames.

    ``word_timestamps=True`` adds openai's ``words`` to every segment (with
    ``prepend_punctuations`` / ``append_punctuations`` / ``hallucination_silence_threshold``
    as there); the backend's ``alignment`` is its forced pass (see :mod:`models.whisper.decoding.adapter`).

    Returns openai-whisper's dict (``text``, ``segments``, ``language``) plus
    ``timings`` (see :class:`DecodeTimings`).
    """
    adapter = backend if isinstance(backend, WhisperAdapter) else WhisperAdapter(backend)
    if decode_options.get("word_timestamps") and not hasattr(adapter.backend, "alignment"):
        raise ValueError(
            f"word_timestamps: backend {type(adapter.backend).__name__} has no alignment() "
            "(the alignment heads' cross-attention scores)"
        )

    if isinstance(audio, (str, os.PathLike)):
        from models.whisper.audio.load import load_audio

        audio = load_audio(os.fspath(audio))
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.ascontiguousarray(np.asarray(audio, dtype=np.float32))
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-D array), got shape {audio.shape}")

    decode_options["fp16"] = False
    adapter.timings = timings = DecodeTimings()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # the adapter reports a "cpu" device (host tensors) even when the
        # backend runs on an accelerator: openai's CPU-vs-CUDA hint is moot.
        warnings.filterwarnings("ignore", message="Performing inference on CPU when CUDA is available")
        with torch_threads(1):
            result = whisper.transcribe(adapter, audio, **decode_options)
    timings.total_s = time.perf_counter() - t0
    result["timings"] = timings.as_dict()
    return result
