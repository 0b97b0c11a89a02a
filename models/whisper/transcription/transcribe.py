"""A recording of any length transcribed on a backend: kvgraph's own long-form loop, torch-free.

The recording is read window by window (:class:`~models.whisper.audio.features.MelWindows`:
the mel of one 30 s window at a time, memory independent of the length). Each window is
encoded once and decoded with the temperature fallback (compression-ratio, log-probability
and no-speech checks); its timestamp tokens cut it into segments and say where the next
window starts; with word timestamps the alignment pass times every word and may move that
start, and the hallucination checks may skip silence. openai-whisper's ``transcribe.py`` is
the map of every rule here (this is kvgraph's code), so a deterministic setting (T = 0)
gives openai's segments token for token.

Two additions for streaming consumers, neither of which changes the result: ``on_segment``
hears each segment once it is final, early (before its window's decode ends) when no later
rule can replace it (:class:`EarlySegments`); ``token_logprobs=True`` adds each segment's
tokens' log-probabilities (``seg["token_logprobs"]``, aligned with ``seg["tokens"]``).
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.whisper.audio.features import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, SAMPLE_RATE, MelWindows
from models.whisper.decoding.options import DecodingOptions, DecodingResult
from models.whisper.decoding.protocol import DecodeTimings, TimedBackend
from models.whisper.decoding.task import DecodingTask, detect_language, is_multilingual, tokenizer_for
from models.whisper.decoding.tokenizer import LANGUAGES
from models.whisper.transcription.timing import add_word_timestamps

DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
#: openai-whisper's defaults: merged with the next word / with the previous word
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
#: what the hallucination checks leave out of a segment's words
PUNCTUATION = PREPEND_PUNCTUATIONS + APPEND_PUNCTUATIONS


@dataclass
class Settings:
    """``transcribe``'s own options (the rest are each window's :class:`DecodingOptions`)."""

    verbose: bool | None = None
    temperature: float | tuple[float, ...] = DEFAULT_TEMPERATURES
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = True
    initial_prompt: str | None = None
    carry_initial_prompt: bool = False
    word_timestamps: bool = False
    prepend_punctuations: str = PREPEND_PUNCTUATIONS
    append_punctuations: str = APPEND_PUNCTUATIONS
    clip_timestamps: str | list[float] = "0"
    hallucination_silence_threshold: float | None = None
    token_logprobs: bool = False  # kvgraph's: seg["token_logprobs"] beside seg["tokens"]


def transcribe(
    backend,
    audio,
    *,
    seed: int | None = None,
    timings: DecodeTimings | None = None,
    on_segment: Callable[[dict], None] | None = None,
    **options,
) -> dict:
    """Transcribe ``audio`` (a path, or float32 16 kHz mono samples) on ``backend``.

    ``options``: openai-whisper's ``transcribe`` keywords (``verbose``, ``temperature``, the
    thresholds, ``condition_on_previous_text``, ``initial_prompt``, ``carry_initial_prompt``,
    ``word_timestamps`` and its punctuations, ``clip_timestamps``,
    ``hallucination_silence_threshold``) and its ``DecodingOptions`` (``language``, ``task``,
    ``beam_size``, ``best_of``, ``patience``, ``length_penalty``, ``prefix``,
    ``suppress_tokens``, ``without_timestamps``, ...). ``seed``: the sampling generator's
    seed at T > 0 (draws are reproducible under it). ``on_segment``: called with each
    segment as soon as it is final (in order, from the thread that transcribes; a streaming
    consumer's hook): at the end of its window's decode, or during it when the decode cannot
    be replaced (:class:`EarlySegments`; such a segment's ``avg_logprob`` and
    ``compression_ratio`` are None, the window's being unknown yet). ``token_logprobs=True``:
    each segment also carries ``token_logprobs``, its tokens' log-probabilities (aligned with
    ``tokens``); off, the segments are openai's keys alone. ``vad_filter=True`` (with
    ``vad_parameters``, a dict of :class:`models.whisper.vad.speech.VadOptions` fields, and
    ``vad_model``, an ONNX file): only the speech that Silero VAD finds is transcribed, its
    times mapped back to the recording's (faster-whisper's options). Returns ``{"text",
    "segments", "language", "timings"}``."""
    if options.get("vad_filter"):
        return _speech_only(backend, audio, seed, on_segment, options)
    for key in ("vad_filter", "vad_parameters", "vad_model"):  # off: faster-whisper ignores them
        options.pop(key, None)
    own = {k: options.pop(k) for k in list(options) if k in Settings.__dataclass_fields__}
    if own.get("word_timestamps") and not hasattr(backend, "alignment"):
        raise ValueError(
            f"word_timestamps: backend {type(backend).__name__} has no alignment() "
            "(the alignment heads' cross-attention scores)"
        )
    options.pop("fp16", None)  # the backend computes as it was compiled
    timings = timings if timings is not None else DecodeTimings()
    t0 = time.perf_counter()
    mel = _windows(audio, backend.dims.n_mels)
    run = LongForm(backend, mel, Settings(**own), options, np.random.default_rng(seed), timings)
    run.on_segment = on_segment
    result = run.transcribe()
    timings.total_s = time.perf_counter() - t0
    result["timings"] = timings.as_dict()
    return result


def _speech_only(backend, audio, seed, on_segment, options: dict) -> dict:
    """``vad_filter=True``: the speech the detector finds, chunk by chunk, each chunk a
    transcription of its own (:mod:`models.whisper.vad.run`)."""
    from models.whisper.vad.run import transcribe_with_vad

    return transcribe_with_vad(
        audio,
        {**options, "seed": seed, "on_segment": on_segment},
        lambda samples, chunk: transcribe(backend, samples, **chunk),
        backend.dims,
    )


def _windows(audio, n_mels: int) -> MelWindows:
    if isinstance(audio, (str, os.PathLike)):
        return MelWindows.from_file(os.fspath(audio), n_mels)
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono audio (1-D array), got shape {samples.shape}")
    return MelWindows.from_array(samples, n_mels)


class LongForm:
    """One recording's transcription (see the module docstring): :meth:`transcribe` runs it."""

    def __init__(self, backend, mel: MelWindows, settings: Settings, decode_options: dict, rng, timings):
        self.backend, self.mel, self.s = backend, mel, settings
        self.options = dict(decode_options)
        self.rng, self.timings = rng, timings
        self.on_segment: Callable[[dict], None] | None = None
        self.timed = TimedBackend(backend, timings)
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # (mel, features) last encoded
        self.language = self._language()
        self.task = self.options.get("task", "transcribe")
        self.tokenizer = tokenizer_for(backend.dims, self.language, self.task)
        self.clips = seek_clips(settings.clip_timestamps, mel.content_frames)
        self.input_stride = N_FRAMES // backend.dims.n_audio_ctx  # mel frames per output token: 2
        self.time_precision = self.input_stride * HOP_LENGTH / SAMPLE_RATE  # 0.02 s per token
        self.all_tokens: list[int] = []
        self.segments: list[dict] = []
        self.prompt_reset_since = 0
        self.last_speech_timestamp = 0.0
        self.initial_prompt_tokens: list[int] = []
        self.remaining_prompt_length = backend.dims.n_text_ctx // 2 - 1
        if settings.initial_prompt is not None:
            self.initial_prompt_tokens = self.tokenizer.encode_text(
                " " + settings.initial_prompt.strip(), "initial_prompt"
            )
            self.all_tokens.extend(self.initial_prompt_tokens)
            self.remaining_prompt_length -= len(self.initial_prompt_tokens)
        if settings.word_timestamps and self.task == "translate":
            warnings.warn("Word-level timestamps on translations may not be reliable.", stacklevel=3)

    def _language(self) -> str:
        """The language asked, English for an English-only model, else the one detected in the
        first 30 s."""
        if self.options.get("language") is not None:
            return self.options["language"]
        if not is_multilingual(self.backend.dims):
            self.options["language"] = "en"
            return "en"
        if self.s.verbose:
            print(
                "Detecting language using up to the first 30 seconds. Use `--language` to specify the language"
            )
        features = self.encode(self.mel.window(0, N_FRAMES))
        _, probs = detect_language(self.backend, features, tokenizer_for(self.backend.dims), self.timings)
        language = max(probs[0], key=probs[0].get)
        if self.s.verbose is not None:
            print(f"Detected language: {LANGUAGES[language].title()}")
        self.options["language"] = language
        return language

    def encode(self, window: np.ndarray) -> np.ndarray:
        """The encoder's features of one window; those of the last window when it is the same
        mel (the language detection's first 30 s are the first window of a long recording)."""
        if self._last is not None and np.array_equal(self._last[0], window):
            return self._last[1]
        mel = window[None].astype(np.float32, copy=False)
        features = np.ascontiguousarray(self.timed.encode(mel), np.float32)
        self._last = (window, features)
        return features

    # ------------------------------------------------------------------ the loop
    def transcribe(self) -> dict:
        """Every clip's windows in turn; ``{"text", "segments", "language"}``."""
        bar = _progress(self.mel.content_frames, self.s.verbose is False)
        try:
            for start, end in self.clips:
                seek = start
                while seek < end:
                    seek = self.window(seek, end, bar)
        finally:
            if bar is not None:
                bar.close()
        text = self.tokenizer.decode(self.all_tokens[len(self.initial_prompt_tokens) :])
        return dict(text=text, segments=self.segments, language=self.language)

    def window(self, seek: int, clip_end: int, bar) -> int:
        """Decode the window at ``seek`` (within a clip ending at ``clip_end``); the next seek."""
        segment_size = min(N_FRAMES, self.mel.content_frames - seek, clip_end - seek)
        time_offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
        features = self.encode(self.mel.window(seek, segment_size))
        early = EarlySegments(self, seek, time_offset) if self.early_ok() else None
        result = self.decode_with_fallback(features, early)
        if self.is_silent(result):
            return seek + segment_size  # fast-forward to the next window
        tokens = result.tokens
        current, next_seek, single_ending = self.split_segments(
            tokens, result, seek, time_offset, segment_size
        )
        if self.s.word_timestamps:
            next_seek, discard = self.time_words(
                current, features, seek, segment_size, next_seek, single_ending
            )
            if discard:  # a hallucination after silence: decoded again from after the silence
                return next_seek
        if self.s.verbose:
            for seg in current:
                _print_safe(f"[{_timestamp(seg['start'])} --> {_timestamp(seg['end'])}] {seg['text']}")
        self.keep(current, result, early.sent if early is not None else 0)
        if bar is not None:
            bar.update(min(self.mel.content_frames, next_seek) - seek)
        return next_seek

    def temperatures(self) -> list[float]:
        """The temperatures a window may be decoded at, in order (the fallback schedule)."""
        temps = self.s.temperature
        return [temps] if isinstance(temps, (int, float)) else list(temps)

    def early_ok(self) -> bool:
        """Whether a window's segments can be final before its decode ends: someone listens,
        the first decode is the one kept (one temperature, or no threshold to fall back on),
        it is one greedy row (no beam search, no ``best_of`` > 1: its tokens are the
        result's), and no word timing moves or drops segments afterwards. The no-speech
        check is the one condition left, known after the decode's first step."""
        s, temps = self.s, self.temperatures()
        if self.on_segment is None or not temps or s.word_timestamps:
            return False
        if len(temps) > 1 and (s.compression_ratio_threshold is not None or s.logprob_threshold is not None):
            return False
        group = self.options.get("beam_size") if temps[0] == 0 else self.options.get("best_of")
        return group is None or (temps[0] > 0 and group == 1)

    def decode_with_fallback(
        self, features: np.ndarray, early: EarlySegments | None = None
    ) -> DecodingResult:
        """The window decoded at the first temperature whose result passes the checks (or the
        last temperature's result); ``early`` follows the first decode's tokens."""
        temps = self.temperatures()
        result = None
        for t in temps:
            kwargs = {**self.options, "prompt": self.prompt()}
            if t > 0:
                kwargs.pop("beam_size", None)
                kwargs.pop("patience", None)
            else:
                kwargs.pop("best_of", None)
            task = DecodingTask(
                self.backend,
                DecodingOptions(**kwargs, temperature=t),
                rng=self.rng,
                timings=self.timings,
                token_logprobs=self.s.token_logprobs,
                on_tokens=early if t == temps[0] else None,
            )
            result = task.run(features)[0]
            if not self.needs_fallback(result):
                break
        return result

    def prompt(self) -> list[int]:
        """The previous text this window is conditioned on."""
        if self.s.carry_initial_prompt:
            ignored = max(len(self.initial_prompt_tokens), self.prompt_reset_since)
            rest = self.all_tokens[ignored:][-self.remaining_prompt_length :]
            return self.initial_prompt_tokens + rest
        return self.all_tokens[self.prompt_reset_since :]

    def needs_fallback(self, r: DecodingResult) -> bool:
        s = self.s
        low_logprob = s.logprob_threshold is not None and r.avg_logprob < s.logprob_threshold
        if s.no_speech_threshold is not None and r.no_speech_prob > s.no_speech_threshold and low_logprob:
            return False  # silence: no retry
        too_repetitive = (
            s.compression_ratio_threshold is not None and r.compression_ratio > s.compression_ratio_threshold
        )
        return too_repetitive or low_logprob

    def is_silent(self, r: DecodingResult) -> bool:
        """No speech: a high no-speech probability, unless the text's log-probability is high."""
        s = self.s
        if s.no_speech_threshold is None:
            return False
        silent = r.no_speech_prob > s.no_speech_threshold
        if s.logprob_threshold is not None and r.avg_logprob > s.logprob_threshold:
            silent = False
        return silent

    # ------------------------------------------------------------------ segments
    def split_segments(self, tokens: list[int], result, seek: int, time_offset: float, segment_size: int):
        """``(segments, next seek, single timestamp ending)``: the window's text cut at each
        pair of consecutive timestamp tokens; the next window starts after the last complete
        segment (or after this window when the text ends with one timestamp, or has none)."""
        begin = self.tokenizer.timestamp_begin
        is_ts = [t >= begin for t in tokens]
        single_ending = is_ts[-2:] == [False, True]
        cuts = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
        lps = result.token_logprobs or []
        segments = []
        if cuts:
            if single_ending:
                cuts.append(len(tokens))
            last = 0
            for cut in cuts:
                segments.append(
                    self.closed_segment(seek, time_offset, tokens[last:cut], result, lps[last:cut])
                )
                last = cut
            if single_ending:
                return segments, seek + segment_size, True
            return segments, seek + (tokens[last - 1] - begin) * self.input_stride, False
        duration = segment_size * HOP_LENGTH / SAMPLE_RATE
        stamps = [t for t, ts in zip(tokens, is_ts) if ts]
        if stamps and stamps[-1] != begin:  # no pair, but a last timestamp: the text ends there
            duration = (stamps[-1] - begin) * self.time_precision
        piece = self.new_segment(seek, time_offset, time_offset + duration, tokens, result, lps)
        segments.append(piece)
        return segments, seek + segment_size, single_ending

    def closed_segment(self, seek: int, time_offset: float, piece: list[int], r, logprobs) -> dict:
        """The segment of ``piece``, tokens between two cuts (it starts and ends with a
        timestamp token, which give its times)."""
        begin = self.tokenizer.timestamp_begin
        start = time_offset + (piece[0] - begin) * self.time_precision
        end = time_offset + (piece[-1] - begin) * self.time_precision
        return self.new_segment(seek, start, end, piece, r, logprobs)

    def new_segment(self, seek: int, start: float, end: float, tokens: list[int], r, logprobs=()) -> dict:
        """openai's segment dict (``token_logprobs`` added when asked: ``logprobs[:len(tokens)]``)."""
        text_tokens = [t for t in tokens if t < self.tokenizer.eot]
        seg = {
            "seek": seek,
            "start": start,
            "end": end,
            "text": self.tokenizer.decode(text_tokens),
            "tokens": list(tokens),
            "temperature": r.temperature,
            "avg_logprob": r.avg_logprob,
            "compression_ratio": r.compression_ratio,
            "no_speech_prob": r.no_speech_prob,
        }
        if self.s.token_logprobs:
            seg["token_logprobs"] = [float(x) for x in logprobs[: len(tokens)]]
        return seg

    def keep(self, current: list[dict], result: DecodingResult, sent_early: int = 0) -> None:
        """Add the window's segments (an instantaneous or empty one cleared) to the result, and
        their tokens to the next windows' prompt (reset after a high temperature); those after
        the first ``sent_early`` (which :class:`EarlySegments` sent) go to ``on_segment``."""
        for seg in current:
            clear_if_empty(seg)
        first = len(self.segments)
        self.segments.extend({"id": i, **seg} for i, seg in enumerate(current, start=first))
        if self.on_segment is not None:
            for seg in self.segments[first + sent_early :]:
                self.on_segment(seg)
        self.all_tokens.extend(t for seg in current for t in seg["tokens"])
        if not self.s.condition_on_previous_text or result.temperature > 0.5:
            self.prompt_reset_since = len(self.all_tokens)

    # ------------------------------------------------------------------ words
    def time_words(self, current, features, seek, segment_size, next_seek, single_ending):
        """Word timestamps for ``current``; ``(next seek, discard the window)``: the next window
        starts after the last word, and the hallucination checks may skip silence."""
        add_word_timestamps(
            segments=current,
            backend=self.timed,
            tokenizer=self.tokenizer,
            audio_features=features,
            num_frames=segment_size,
            prepend_punctuations=self.s.prepend_punctuations,
            append_punctuations=self.s.append_punctuations,
            last_speech_timestamp=self.last_speech_timestamp,
        )
        time_offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
        if not single_ending:
            last_word_end = last_end(current)
            if last_word_end is not None and last_word_end > time_offset:
                next_seek = round(last_word_end * FRAMES_PER_SECOND)
        if self.s.hallucination_silence_threshold is not None:
            next_seek, discard = self.skip_hallucinations(
                current, seek, segment_size, next_seek, single_ending
            )
            if discard:
                return next_seek, True
        end = last_end(current)
        if end is not None:
            self.last_speech_timestamp = end
        return next_seek, False

    def skip_hallucinations(self, current, seek, segment_size, next_seek, single_ending) -> tuple[int, bool]:
        """``(next seek, discard the window)`` when words look hallucinated around long silences
        (openai's ``hallucination_silence_threshold``); cuts ``current`` at a suspect segment."""
        threshold = self.s.hallucination_silence_threshold
        time_offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
        window_end = float((seek + N_FRAMES) * HOP_LENGTH / SAMPLE_RATE)
        if not single_ending:
            last_word_end = last_end(current)
            if last_word_end is not None and last_word_end > time_offset:
                if window_end - last_word_end > threshold:
                    next_seek = round(last_word_end * FRAMES_PER_SECOND)
                else:
                    next_seek = seek + segment_size
        first = _with_words(current)
        if first is not None and is_anomaly(first):
            gap = first["start"] - time_offset
            if gap > threshold:
                return seek + round(gap * FRAMES_PER_SECOND), True
        return self._cut_suspects(current, time_offset, window_end, segment_size, threshold, next_seek), False

    def _cut_suspects(self, current, time_offset, window_end, segment_size, threshold, next_seek) -> int:
        """Drop the first anomalous segment surrounded by silence (or more anomalies) and all
        after it; the next window starts at it."""
        previous_end = self.last_speech_timestamp
        duration = self.mel.content_frames * HOP_LENGTH / SAMPLE_RATE
        for i, seg in enumerate(current):
            if not seg["words"]:
                continue
            if is_anomaly(seg):
                following = _with_words(current[i + 1 :])
                next_start = (
                    following["words"][0]["start"]
                    if following
                    else time_offset + segment_size * HOP_LENGTH / SAMPLE_RATE
                )
                before = (
                    seg["start"] - previous_end > threshold
                    or seg["start"] < threshold
                    or seg["start"] - time_offset < 2.0
                )
                after = (
                    next_start - seg["end"] > threshold
                    or is_anomaly(following)
                    or window_end - seg["end"] < 2.0
                )
                if before and after:
                    next_seek = round(max(time_offset + 1, seg["start"]) * FRAMES_PER_SECOND)
                    if duration - seg["end"] < threshold:
                        next_seek = self.mel.content_frames
                    current[i:] = []
                    break
            previous_end = seg["end"]
        return next_seek


class EarlySegments:
    """A window's segments handed to ``on_segment`` while it is being decoded
    (``DecodingTask``'s ``on_tokens`` hook), for a decode that :meth:`LongForm.early_ok`
    found cannot be replaced. A segment goes out when a pair of consecutive timestamp tokens
    closes it (openai's rule: every piece before the window's last such pair is kept, cut
    exactly there) and the window cannot be skipped as silence (its no-speech probability,
    known from the first step, is not above the threshold). What it sends equals the
    segments that :meth:`LongForm.keep` adds later (which then sends only the rest), but for
    ``avg_logprob`` and ``compression_ratio``, unknown until the decode ends: None here."""

    def __init__(self, loop: LongForm, seek: int, time_offset: float):
        self.loop, self.seek, self.time_offset = loop, seek, time_offset
        self.sent = 0  # segments handed out
        self.cut = 0  # tokens they cover

    def __call__(self, tokens: list[int], no_speech_prob: float, logprobs: list[float] | None) -> None:
        loop = self.loop
        begin = loop.tokenizer.timestamp_begin
        if len(tokens) < 2 or tokens[-1] < begin or tokens[-2] < begin:
            return
        threshold = loop.s.no_speech_threshold
        if threshold is not None and no_speech_prob > threshold:
            return  # the window may yet be skipped as silence
        cut = len(tokens) - 1
        result = DecodingResult(
            audio_features=None,
            language=loop.language,
            avg_logprob=None,
            no_speech_prob=no_speech_prob,
            temperature=loop.temperatures()[0],
            compression_ratio=None,
        )
        piece = tokens[self.cut : cut]
        seg = loop.closed_segment(
            self.seek, self.time_offset, piece, result, (logprobs or [])[self.cut : cut]
        )
        clear_if_empty(seg)
        seg = {"id": len(loop.segments) + self.sent, **seg}
        self.sent, self.cut = self.sent + 1, cut
        loop.on_segment(seg)


# ---------------------------------------------------------------------- helpers


def clear_if_empty(seg: dict) -> None:
    """openai's rule for a kept segment that is instantaneous or has no text: no text, no
    tokens, no words (no log-probabilities)."""
    if seg["start"] == seg["end"] or seg["text"].strip() == "":
        seg["text"], seg["tokens"], seg["words"] = "", [], []
        if "token_logprobs" in seg:
            seg["token_logprobs"] = []


def seek_clips(clip_timestamps, content_frames: int) -> list[tuple[int, int]]:
    """``[(start frame, end frame), ...]`` of ``"start,end,start,end,..."`` seconds (the last
    end defaults to the end of the recording). An end past the recording's end is its end:
    openai-whisper keeps decoding empty windows there forever (its seek stops moving once it
    reaches the recording's end short of the clip's), so a clip such as ``"0,60"`` over a 30 s
    file never finishes there; kvgraph gives the windows openai decodes before that, then stops.
    Times must be finite and >= 0 (ValueError naming them)."""
    if isinstance(clip_timestamps, str):
        try:
            clip_timestamps = [float(ts) for ts in clip_timestamps.split(",")] if clip_timestamps else []
        except ValueError:
            raise ValueError(
                f"clip_timestamps: expected comma-separated seconds, got {clip_timestamps!r}"
            ) from None
    bad = [ts for ts in clip_timestamps if not (math.isfinite(ts) and ts >= 0)]
    if bad:
        raise ValueError(f"clip_timestamps: times must be finite and >= 0, got {bad[0]!r}")
    points = [round(ts * FRAMES_PER_SECOND) for ts in clip_timestamps] or [0]
    if len(points) % 2 == 1:
        points.append(content_frames)
    return [(start, min(end, content_frames)) for start, end in zip(points[::2], points[1::2])]


def last_end(segments: list[dict]) -> float | None:
    """The end of the last word of ``segments``, else of the last segment; None for none."""
    for seg in reversed(segments):
        for word in reversed(seg.get("words", [])):
            return word["end"]
    return segments[-1]["end"] if segments else None


def word_anomaly(word: dict) -> float:
    """How unlike speech a word looks: improbable, very short or very long."""
    probability = word.get("probability", 0.0)
    duration = word["end"] - word["start"]
    score = 0.0
    if probability < 0.15:
        score += 1.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def is_anomaly(segment: dict | None) -> bool:
    """A segment whose first eight words (punctuation aside) look hallucinated."""
    if segment is None or not segment["words"]:
        return False
    words = [w for w in segment["words"] if w["word"] not in PUNCTUATION][:8]
    score = sum(word_anomaly(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def _with_words(segments: list[dict]) -> dict | None:
    return next((s for s in segments if s["words"]), None)


def _timestamp(seconds: float) -> str:
    """``[hh:]mm:ss.mmm``, as openai-whisper prints segments."""
    ms = round(seconds * 1000.0)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return (f"{hours:02d}:" if hours > 0 else "") + f"{minutes:02d}:{secs:02d}.{ms:03d}"


def _print_safe(line: str) -> None:
    """``line`` on stdout, characters the console cannot encode replaced."""
    encoding = sys.getdefaultencoding()
    print(line.encode(encoding, errors="replace").decode(encoding), flush=True)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="frames")
