"""Transcription of the speech alone: detect it, transcribe its chunks, put them back in place.

``transcribe(..., vad_filter=True)`` and the batching engine hand a recording here with a
function that transcribes one chunk's audio. The recording is read by range (never held whole):
the detector runs over it block by block (:func:`models.whisper.vad.speech.detect_speech`), the
speech regions are grouped into chunks (:mod:`models.whisper.vad.chunks`), each chunk's audio is
read and transcribed — one after the other, or ``parallel`` at once as separate streams of the
engine — and the results are merged on the recording's timeline. Segments reach ``on_segment``
in the recording's order, as soon as every chunk before theirs is done.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from models.whisper.audio.features import open_samples
from models.whisper.decoding.task import is_multilingual
from models.whisper.vad.chunks import Chunk, group, map_segment, merge
from models.whisper.vad.silero import SileroVad
from models.whisper.vad.speech import VadOptions, detect_speech

#: transcribe's keywords that this module takes (faster-whisper's names, plus the model file)
VAD_KEYWORDS = ("vad_filter", "vad_parameters", "vad_model")

_models: dict[str | None, SileroVad] = {}
_models_lock = threading.Lock()


@dataclass(frozen=True)
class VadRequest:
    """What ``vad_filter=True`` asked: the detector's options and its model file (None: the
    packaged Silero VAD)."""

    options: VadOptions
    model_path: str | None = None


def vad_request(options: dict) -> VadRequest | None:
    """Takes the VAD keywords out of ``options`` (transcribe's keyword arguments); the request,
    or None when ``vad_filter`` is off. ``vad_parameters``: a dict of :class:`VadOptions`'
    fields or a ``VadOptions``."""
    enabled = options.pop("vad_filter", False)
    params = options.pop("vad_parameters", None)
    path = options.pop("vad_model", None)
    if not enabled:
        return None
    if params is None:
        vad_options = VadOptions()
    elif isinstance(params, VadOptions):
        vad_options = params
    elif isinstance(params, Mapping):
        vad_options = VadOptions.from_mapping(dict(params))
    else:
        raise ValueError(f"vad_parameters: expected a dict or VadOptions, got {type(params).__name__}")
    if options.get("clip_timestamps", "0") not in ("0", [0], [0.0], None):
        raise ValueError("clip_timestamps: cannot be combined with vad_filter (the detector picks the clips)")
    return VadRequest(vad_options, None if path is None else str(path))


def vad_model(path: str | None = None) -> SileroVad:
    """The detector of ``path`` (None: the packaged one), loaded once per process."""
    with _models_lock:
        if path not in _models:
            _models[path] = SileroVad.load(path)
        return _models[path]


class _InOrder:
    """Hands chunks' segments, mapped to the recording's timeline, to ``sink`` in the
    recording's order: a chunk's segments wait until every chunk before it is done."""

    def __init__(self, chunks: list[Chunk], sink: Callable[[dict], None] | None):
        self.chunks, self.sink = chunks, sink
        self.lock = threading.Lock()
        self.waiting: list[list[dict]] = [[] for _ in chunks]
        self.done = [False] * len(chunks)
        self.next = 0  # the chunk whose segments go out as they come
        self.count = 0
        self.error: BaseException | None = None

    def hook(self, i: int) -> Callable[[dict], None] | None:
        if self.sink is None:
            return None
        return lambda seg: self._add(i, map_segment(seg, self.chunks[i]))

    def abort(self, error: BaseException) -> None:
        """Chunks still running stop at their next segment, with ``error``."""
        with self.lock:
            self.error = error

    def _add(self, i: int, seg: dict) -> None:
        with self.lock:
            if self.error is not None:
                raise self.error
            if i == self.next:
                self._emit(seg)
            else:
                self.waiting[i].append(seg)

    def finish(self, i: int) -> None:
        with self.lock:
            self.done[i] = True
            while self.next < len(self.chunks) and self.done[self.next]:
                self.next += 1
                if self.next < len(self.chunks):
                    for seg in self.waiting[self.next]:
                        self._emit(seg)
                    self.waiting[self.next] = []

    def _emit(self, seg: dict) -> None:
        seg = {**seg, "id": self.count}
        self.count += 1
        self.sink(seg)


def _printer(sink: Callable[[dict], None] | None) -> Callable[[dict], None]:
    """``verbose=True``'s lines (openai's ``[start --> end] text``), then ``sink``."""

    def stamp(seconds: float) -> str:
        minutes, secs = divmod(round(seconds * 1000) / 1000, 60)
        return f"{int(minutes):02d}:{secs:06.3f}"

    def show(seg: dict) -> None:
        print(f"[{stamp(seg['start'])} --> {stamp(seg['end'])}] {seg['text']}", flush=True)
        if sink is not None:
            sink(seg)

    return show


def _sum_timings(results: list[dict], vad_s: float, total_s: float) -> dict:
    out: dict = {}
    for r in results:
        for k, v in r.get("timings", {}).items():
            if isinstance(v, (int, float)):
                out[k] = out.get(k, 0) + v
    decoder_s = out.get("decoder_s", 0.0)
    out["tokens_per_s"] = out.get("tokens_decoded", 0) / decoder_s if decoder_s > 0 else 0.0
    out.update(vad_s=vad_s, total_s=total_s)
    return out


def transcribe_speech(
    audio,
    transcribe_chunk: Callable[[object, int, Callable[[dict], None] | None], dict],
    request: VadRequest,
    *,
    language: str | None = None,
    verbose: bool | None = None,
    on_segment: Callable[[dict], None] | None = None,
    parallel: int = 1,
) -> dict:
    """``audio`` (a path or 16 kHz float32 samples) transcribed chunk by chunk:
    ``transcribe_chunk(samples, index, on_segment)`` returns one chunk's result dict. Returns
    the recording's ``{"text", "segments", "language", "timings", "speech"}`` (``speech``: the
    detected regions in seconds); ``language`` is the result's when nothing was spoken."""
    t0 = time.perf_counter()
    source = open_samples(audio)
    try:
        speech = detect_speech(source, request.options, vad_model(request.model_path))
        vad_s = time.perf_counter() - t0
        chunks = group(speech)
        if verbose:
            kept = sum(c.n_samples for c in chunks) / 16000
            print(f"VAD: {len(speech)} speech regions, {kept:.1f} s of {source.n / 16000:.1f} s kept")
        order = _InOrder(chunks, _printer(on_segment) if verbose else on_segment)
        read_lock = threading.Lock()

        def run(i: int) -> dict:
            with read_lock:  # a file source seeks: one reader at a time
                samples = chunks[i].audio(source)
            try:
                return transcribe_chunk(samples, i, order.hook(i))
            finally:
                order.finish(i)

        if parallel <= 1 or len(chunks) <= 1:
            results = [run(i) for i in range(len(chunks))]
        else:
            with concurrent.futures.ThreadPoolExecutor(min(parallel, len(chunks))) as pool:
                futures = [pool.submit(run, i) for i in range(len(chunks))]
                try:
                    results = [f.result() for f in futures]
                except BaseException as e:  # one chunk failed (or its consumer left): stop the rest
                    for f in futures:
                        f.cancel()
                    order.abort(e)
                    raise
    finally:
        source.close()
    out = merge(results, chunks, language)
    out["timings"] = _sum_timings(results, vad_s, time.perf_counter() - t0)
    out["speech"] = [{"start": r["start"] / 16000, "end": r["end"] / 16000} for r in speech]
    return out


def chunk_options(options: dict, seed: int | None, index: int) -> dict:
    """A chunk's transcribe keywords: the recording's, quiet (the merged segments are what
    ``verbose`` prints), with a seed of its own derived from the recording's."""
    out = dict(options, verbose=None)
    out["seed"] = None if seed is None else [seed, index]
    return out


def transcribe_with_vad(
    audio, options: dict, transcribe_one: Callable[[object, dict], dict], dims, parallel: int = 1
) -> dict:
    """``transcribe``'s keywords ``options`` with ``vad_filter=True``, applied to ``audio``:
    the VAD keywords, ``seed`` and ``on_segment`` are taken out, each chunk is
    ``transcribe_one(samples, chunk_keywords)`` (its own seed and ``on_segment`` hook), up to
    ``parallel`` at once. What ``transcribe`` and the batching engine share."""
    options = dict(options)
    request = vad_request(options)
    seed = options.pop("seed", None)
    on_segment = options.pop("on_segment", None)

    def chunk(samples, i: int, hook):
        return transcribe_one(samples, {**chunk_options(options, seed, i), "on_segment": hook})

    language = options.get("language") or (None if is_multilingual(dims) else "en")
    return transcribe_speech(
        audio,
        chunk,
        request,
        language=language,
        verbose=options.get("verbose"),
        on_segment=on_segment,
        parallel=parallel,
    )
