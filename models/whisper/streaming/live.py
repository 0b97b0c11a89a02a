"""A live source transcribed on a backend: :class:`LiveTranscriber` (the policy of
:mod:`~models.whisper.streaming.agreement` over a growing audio buffer) and :func:`listen` (the
loop that feeds it while the audio arrives, and times every committed word).

Each :meth:`LiveTranscriber.process` transcribes the whole buffer with word timestamps
(``transcribe(backend, buffer, word_timestamps=True, initial_prompt=<committed text before the
buffer>, condition_on_previous_text=False, temperature=0)``, a buffer of up to 30 s as one
window: :func:`transcribe_buffer`), commits what the last two transcriptions agree on, and
once the buffer is longer than ``trim_s`` cuts it at the end of the last finished segment
inside the committed text (or at the last committed word's start). A
buffer that reaches ``max_buffer_s`` (Whisper's 30 s window) without anything to cut at is cut
to its last ``trim_s`` seconds: audio on which no two transcriptions agree for that long is
rarely speech, and the transcriptions of a longer buffer only get slower.
"""

from __future__ import annotations

import bisect
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from models.whisper.streaming.agreement import (
    PROMPT_CHARS,
    LocalAgreement,
    Word,
    join,
    prompt_text,
    trim_point,
)
from models.whisper.streaming.source import SAMPLE_RATE

#: segments Whisper itself thinks are silence are left out of a hypothesis (whisper_streaming's
#: faster-whisper backend skips segments whose no-speech probability is above 0.9)
NO_SPEECH_SKIP = 0.9


class LiveTranscriber:
    """One stream's transcription: ``insert_audio(samples)`` as audio arrives, ``process()`` to
    transcribe the buffer and get the newly committed words, ``finish()`` at the end of the
    stream (the rest of the text). ``options``: more ``transcribe`` keywords (e.g. ``task``,
    ``no_speech_threshold``); ``language`` None detects it (then kept once text is committed)."""

    def __init__(
        self,
        backend,
        *,
        language: str | None = None,
        trim_s: float = 15.0,
        max_buffer_s: float = 30.0,
        prompt_chars: int = PROMPT_CHARS,
        **options,
    ):
        if not 0 < trim_s < max_buffer_s:
            raise ValueError(f"trim_s {trim_s} must be in (0, max_buffer_s = {max_buffer_s})")
        self.backend, self.language = backend, language
        self.trim_s, self.max_buffer_s, self.prompt_chars = trim_s, max_buffer_s, prompt_chars
        self.options = options
        self.policy = LocalAgreement()
        self._chunks: list[np.ndarray] = []
        self.buffer = np.zeros(0, np.float32)
        self.start_sample = 0  # the buffer's first sample in the stream
        self.received = 0  # samples inserted so far
        self.processed = 0  # samples the last transcription saw
        self.decodes = 0
        self.decode_s = 0.0
        self.detected: str | None = None  # the language of the last transcription

    # ------------------------------------------------------------------ audio in
    def insert_audio(self, samples) -> None:
        """Append float32 16 kHz mono ``samples`` to the buffer."""
        chunk = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._chunks.append(chunk)
        self.received += chunk.size

    @property
    def buffer_start(self) -> float:
        """The buffer's start, seconds from the start of the stream."""
        return self.start_sample / SAMPLE_RATE

    @property
    def audio_s(self) -> float:
        """Seconds of audio inserted so far."""
        return self.received / SAMPLE_RATE

    def _audio(self) -> np.ndarray:
        if self._chunks:
            self.buffer = np.concatenate([self.buffer, *self._chunks])
            self._chunks = []
        return self.buffer

    # ------------------------------------------------------------------ text out
    @property
    def committed(self) -> list[Word]:
        return self.policy.committed

    @property
    def pending(self) -> list[Word]:
        """The last transcription's words after the committed text (not yet confirmed)."""
        return self.policy.pending

    @property
    def text(self) -> str:
        return self.policy.text

    def hypothesis(self) -> tuple[list[Word], list[float]]:
        """Transcribe the buffer: ``(its words, its segments' ends)``, in stream time."""
        audio = self._audio()
        prompt = prompt_text(self.policy.committed, self.buffer_start, self.prompt_chars)
        t0 = time.perf_counter()
        result = transcribe_buffer(
            self.backend,
            audio,
            word_timestamps=True,
            initial_prompt=prompt or None,
            condition_on_previous_text=False,
            temperature=0.0,
            language=self.language,
            **self.options,
        )
        self.decode_s += time.perf_counter() - t0
        self.decodes += 1
        self.processed = self.received
        offset = self.buffer_start
        words, ends = [], []
        for seg in result["segments"]:
            if seg.get("no_speech_prob", 0.0) > NO_SPEECH_SKIP or not seg.get("words"):
                continue
            words.extend(Word(offset + w["start"], offset + w["end"], w["word"]) for w in seg["words"])
            ends.append(offset + seg["end"])
        if self.language is None and words:
            self.detected = result["language"]
        return words, ends

    def process(self) -> list[Word]:
        """Transcribe the buffer (when audio arrived since the last time), commit what this
        transcription and the last agree on, trim the buffer; the newly committed words."""
        if self.processed == self.received:
            return []
        words, ends = self.hypothesis()
        committed = self.policy.update(words)
        if committed and self.language is None:
            self.language = self.detected  # keep the language the committed text is in
        self._trim(ends)
        return committed

    def _trim(self, segment_ends: list[float]) -> None:
        length = self.buffer.size / SAMPLE_RATE
        if length <= self.trim_s:
            return
        last = self.policy.committed[-1] if self.policy.committed else None
        cut = trim_point(segment_ends, last)
        if (cut is None or cut <= self.buffer_start) and length >= self.max_buffer_s:
            cut = self.buffer_start + length - self.trim_s
            self.policy.pending = [w for w in self.policy.pending if w.start >= cut]
        if cut is not None and cut > self.buffer_start:
            self.cut_at(cut)

    def cut_at(self, time_s: float) -> None:
        """Drop the buffer's audio before ``time_s`` (stream seconds)."""
        self._audio()
        n = min(self.buffer.size, max(0, round(time_s * SAMPLE_RATE) - self.start_sample))
        self.buffer = self.buffer[n:]
        self.start_sample += n
        self.policy.trim(self.buffer_start)

    def finish(self) -> list[Word]:
        """The stream has ended: transcribe what arrived since the last time, and commit the
        rest of the last transcription. The words committed by this call."""
        words = self.process()
        return words + self.policy.finish()

    def warmup(self) -> None:
        """Load what the first real transcription needs before audio arrives: one
        transcription of silence (the encoder, the decoder, the tokenizer), then one forced
        alignment pass (silence has no words to time, and the word timestamps' program is
        loaded on first use). Changes nothing."""
        from models.whisper.transcription.transcribe import transcribe

        transcribe(self.backend, np.zeros(SAMPLE_RATE, np.float32), language=self.language)
        if hasattr(self.backend, "alignment"):
            dims = self.backend.dims
            features = self.backend.encode(np.zeros((1, dims.n_mels, 2 * dims.n_audio_ctx), np.float32))
            self.backend.alignment(np.zeros((1, 4), np.int64), features)


def transcribe_buffer(backend, audio: np.ndarray, **options) -> dict:
    """``transcribe(backend, audio, **options)`` (openai's keywords), but a buffer of one
    window (up to 30 s) is decoded as that window alone: ``{"segments", "language"}``.

    Long-form transcription goes on after the window's last complete segment with a second
    window for the rest: a whole encoder pass for the buffer's last second or less (27 of the
    49 transcriptions of benchmarks/listen.py's stream), where Whisper, given a fragment, often
    hears nothing or "Thank you." (tests/test_listen.py). The next transcription of the grown
    buffer reads that audio anyway; without the second window the median commit lag on that
    stream fell from 2.1 to 1.9 s, the final text the same (Intel Xeon SPR, 2 cores)."""
    from models.whisper.audio.features import N_SAMPLES, MelWindows  # lazy: the decoder's imports
    from models.whisper.decoding.protocol import DecodeTimings
    from models.whisper.transcription.transcribe import LongForm, Settings, transcribe

    if len(audio) > N_SAMPLES:
        return transcribe(backend, audio, **options)
    own = {k: options.pop(k) for k in list(options) if k in Settings.__dataclass_fields__}
    mel = MelWindows.from_array(np.asarray(audio, np.float32), backend.dims.n_mels)
    run = LongForm(backend, mel, Settings(**own), options, np.random.default_rng(0), DecodeTimings())
    run.window(0, mel.content_frames, None)
    return {"segments": run.segments, "language": run.language}


# ---------------------------------------------------------------------- the loop


@dataclass
class ListenResult:
    """What :func:`listen` committed, and when: ``words`` in order, ``committed_at[i]`` the
    clock when word ``i`` was committed, ``arrivals`` ``(clock, samples received by then)``
    for every chunk read; ``final`` words were committed at the end of the stream."""

    words: list[Word] = field(default_factory=list)
    committed_at: list[float] = field(default_factory=list)
    final: list[bool] = field(default_factory=list)
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    interrupted: bool = False
    audio_s: float = 0.0
    decodes: int = 0
    decode_s: float = 0.0

    @property
    def text(self) -> str:
        return join(self.words)

    def arrived_at(self, t: float) -> float:
        """The clock when the stream's audio up to ``t`` seconds had been read (the last
        chunk's arrival for a time past the end of the stream)."""
        return self._arrival([n for _, n in self.arrivals], t)

    def lags(self) -> list[float]:
        """Per word: when it was committed less when the audio up to its end had arrived."""
        counts = [n for _, n in self.arrivals]
        return [c - self._arrival(counts, w.end) for w, c in zip(self.words, self.committed_at)]

    def _arrival(self, counts: list[int], t: float) -> float:
        i = min(bisect.bisect_left(counts, round(t * SAMPLE_RATE)), len(counts) - 1)
        return self.arrivals[i][0]


_END = object()


def listen(
    backend,
    source,
    *,
    on_commit: Callable[[list[Word], bool], None] | None = None,
    on_step: Callable[[LiveTranscriber, float], None] | None = None,
    min_chunk_s: float = 1.0,
    max_chunk_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    **options,
) -> ListenResult:
    """Transcribe ``source`` while it arrives: an iterable of float32 16 kHz mono chunks, or a
    :class:`~models.whisper.streaming.source.PcmSource` (its :meth:`chunks`).

    A thread reads the source; the loop waits for ``min_chunk_s`` seconds of new audio (or the
    end), takes what has arrived (at most ``max_chunk_s`` seconds a step, so that a file read
    faster than real time is still transcribed in steps), and runs
    :meth:`LiveTranscriber.process`. ``on_commit(words, final)`` is called with each batch of
    committed words (``final``: at the end of the stream), ``on_step(transcriber, seconds)``
    after each transcription. ``options`` go to :class:`LiveTranscriber`. Ctrl-C ends the
    stream early (the rest of the text is still committed, ``result.interrupted`` set); an
    error reading the source is raised here."""
    live = LiveTranscriber(backend, **options)
    result = ListenResult()
    chunks: queue.Queue = queue.Queue(maxsize=4096)
    if hasattr(source, "chunks"):
        source = source.chunks()
    threading.Thread(target=_read, args=(source, chunks, clock), daemon=True, name="listen-source").start()

    def commit(words: list[Word], final: bool) -> None:
        if words:
            now = clock()
            result.words.extend(words)
            result.committed_at.extend([now] * len(words))
            result.final.extend([final] * len(words))
            if on_commit is not None:
                on_commit(words, final)

    ended = False
    try:
        while not ended:
            ended = _gather(live, chunks, result.arrivals, min_chunk_s, max_chunk_s)
            t0 = time.perf_counter()
            commit(live.process(), False)
            if on_step is not None:
                on_step(live, time.perf_counter() - t0)
    except KeyboardInterrupt:
        result.interrupted = True
    commit(live.finish(), True)
    result.audio_s, result.decodes, result.decode_s = live.audio_s, live.decodes, live.decode_s
    return result


def _read(source: Iterable[np.ndarray], chunks: queue.Queue, clock) -> None:
    """The reader thread: every chunk with the clock when it arrived, then the end (or the
    error that ended it)."""
    try:
        for chunk in source:
            chunks.put((clock(), chunk))
        chunks.put((clock(), _END))
    except BaseException as e:  # handed to the loop, which raises it
        chunks.put((clock(), e))


def _gather(live: LiveTranscriber, chunks: queue.Queue, arrivals: list, min_s: float, max_s: float) -> bool:
    """Move chunks into ``live``: block until ``min_s`` seconds of new audio have arrived,
    then take what else is there, up to ``max_s`` seconds. True at the end of the stream."""
    new = 0
    while True:
        want_more = new < min_s * SAMPLE_RATE
        if not want_more and new >= max_s * SAMPLE_RATE:
            return False
        try:
            arrived, item = chunks.get(block=want_more)
        except queue.Empty:
            return False
        if item is _END:
            return True
        if isinstance(item, BaseException):
            raise item
        live.insert_audio(item)
        new += len(item)
        arrivals.append((arrived, live.received))
