"""openai-whisper's own decoding code (torch) on top of a kvgraph Whisper backend: the
reference the tests compare kvgraph's own loop with (``whisper.transcribe(WhisperAdapter(backend),
...)``); the product decodes with :mod:`models.whisper.decoding.task` instead.

The neural compute of Whisper (encoder, decoder prefill, incremental decoder
steps, beam reordering) is delegated to a :class:`WhisperBackend`; everything
else -- the 30 s seek loop, temperature fallback, compression-ratio / logprob /
no-speech thresholds, ``condition_on_previous_text``, the SOT sequence, the
logit filters (SuppressBlank, SuppressTokens, ApplyTimestampRules), greedy /
sampling / beam-search decoding and segment timestamps -- is openai-whisper's
own code, reused rather than copied:

* :class:`WhisperAdapter` is an object that ``whisper.transcribe`` accepts as
  its ``model``.  It exposes exactly the attributes openai-whisper reads
  (``dims``, ``device``, ``is_multilingual``, ``num_languages``, ``encoder``,
  ``logits``, ``detect_language``, ``decode``).
* :meth:`WhisperAdapter.decode` builds a stock ``whisper.decoding.DecodingTask``
  and swaps its ``inference`` for :class:`BackendInference` (a
  ``whisper.decoding.Inference`` subclass) before running it.

Word-level timestamps (``word_timestamps=True``) are openai-whisper's too
(``whisper.timing.add_word_timestamps``: ``find_alignment``'s forced pass, median
filter, DTW, punctuation merging). Its forced pass ``model(mel, tokens)`` is
:meth:`WhisperAdapter.__call__`, which runs the backend's ``alignment`` (logits and
the alignment heads' cross-attention scores, computed by the backend) and fires the
forward hooks openai installs on ``model.decoder.blocks[i].cross_attn`` (small torch
modules, :class:`CrossAttentionTap`) with those scores; ``model.alignment_heads`` is
the backend's heads as openai's sparse mask.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import whisper
import whisper.decoding
from whisper.decoding import DecodingOptions, DecodingResult, DecodingTask, Inference
from whisper.model import ModelDimensions

from models.whisper.decoding.protocol import DecodeTimings, TimedBackend, WhisperBackend

__all__ = [
    "WhisperBackend",
    "DecodeTimings",
    "BackendInference",
    "WhisperAdapter",
]


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """torch's intra-op thread count for the block, restored after.

    The backend computes on its own runtime; torch only edits small logit tensors between
    steps. With more than one thread, torch's OpenMP workers keep spinning after each of
    those tiny ops and take the cores the backend's next step needs: JFK's 26 decoder
    steps on MAX took 0.18-0.20 s with torch's default 2 threads here, 0.09 s with 1."""
    prev = torch.get_num_threads()
    if prev == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _to_numpy_f32(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _to_numpy_i64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.int64)


def _match_batch(audio_features: np.ndarray, n_batch: int) -> np.ndarray:
    """DecodingTask repeats the *tokens* ``n_group`` times (repeat_interleave)
    but not the audio features, relying on torch broadcasting.  The backend
    contract wants one row of audio features per token row."""
    n_audio = audio_features.shape[0]
    if n_audio == n_batch:
        return audio_features
    if n_batch % n_audio != 0:
        raise ValueError(f"token batch {n_batch} is not a multiple of audio batch {n_audio}")
    return np.repeat(audio_features, n_batch // n_audio, axis=0)


class BackendInference(Inference):
    """``whisper.decoding.Inference`` whose forward passes run on the backend.

    First call (the whole initial prompt ``tokens[:, :T]``, where ``T`` is the
    DecodingTask's ``sample_begin``): DecodingTask reads both
    ``logits[:, sot_index]`` (no-speech probability) and ``logits[:, -1]``.
    Using only the backend contract we run

    * ``prefill(tokens[:, :sot_index + 1])``  -> the logits of row ``sot_index``
    * ``step(tokens[:, sot_index + 1:])``     -> rows ``sot_index + 1 .. T - 1``
      (skipped when the SOT is the last initial token, e.g. English-only
      models with timestamps and no prompt).

    The returned tensor has shape ``[b, T, vocab]``; rows ``sot_index .. T-1``
    are exact and rows ``0 .. sot_index - 1`` (the ``<|startofprev|>`` prompt,
    never read by openai-whisper) are not computed: they are zero, in memory that
    is never touched (``np.zeros`` of a large array maps zero pages lazily). Filling
    them with NaN cost a write of the whole ``[b, T, vocab]`` tensor per window
    (46 MB for a 224-token prompt, ~8 ms; five beams' copies ~23 ms, measured).

    Later calls feed only the tokens the backend has not seen yet (always the
    single last token in openai-whisper's loop) to ``step`` and return
    ``[b, n_new, vocab]``.
    """

    def __init__(
        self,
        backend: WhisperBackend,
        initial_token_length: int,
        sot_index: int,
        timings: DecodeTimings | None = None,
    ):
        self.timings = timings if timings is not None else DecodeTimings()
        self.backend = TimedBackend(backend, self.timings)
        self.initial_token_length = initial_token_length
        self.sot_index = sot_index
        self.state: Any = None
        self.n_seen = 0  # tokens per row already consumed by the backend

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        toks = _to_numpy_i64(tokens)
        n_batch, n_tokens = toks.shape
        self.timings.tokens_decoded += 1

        if self.state is None:
            return self._first(toks, _to_numpy_f32(audio_features))

        if n_tokens <= self.n_seen:
            raise RuntimeError(
                f"decoder called with {n_tokens} tokens but {self.n_seen} were "
                "already consumed; nothing new to decode"
            )
        new = toks[:, self.n_seen :]
        logits, self.state = self.backend.step(new, self.state)
        self.n_seen = n_tokens
        logits = np.asarray(logits, dtype=np.float32).reshape(n_batch, new.shape[1], -1)
        return torch.from_numpy(logits)

    def _first(self, toks: np.ndarray, audio: np.ndarray) -> torch.Tensor:
        """The first call: the prompt of every row. DecodingTask repeats each audio's prompt
        for its ``n_group`` beams / best_of samples (rows grouped by audio); those rows are
        identical, so the prompt runs once per audio and ``reorder`` makes the group's rows
        from it (a backend that shares per-audio state, such as kvgraph's cross-attention
        K/V, then keeps one copy of it per audio)."""
        n_batch, n_tokens = toks.shape
        n_audio = audio.shape[0]
        group = n_batch // n_audio if n_audio and n_batch % n_audio == 0 else 1
        if group > 1 and (toks.reshape(n_audio, group, n_tokens) == toks[::group, None]).all():
            rows = self._prompt(toks[::group], audio)
            self.state = self.backend.reorder(self.state, np.repeat(np.arange(n_audio), group))
            return self._logits_tensor(rows, n_tokens, group)
        return self._logits_tensor(self._prompt(toks, _match_batch(audio, n_batch)), n_tokens, 1)

    def _prompt(self, toks: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Run the prompt; returns the logits of rows ``sot_index .. T-1``: ``[b, T - sot_index, vocab]``."""
        n_batch, n_tokens = toks.shape
        split = self.sot_index + 1
        sot_logits, state = self.backend.prefill(toks[:, :split], features)
        sot_logits = np.asarray(sot_logits, dtype=np.float32).reshape(n_batch, 1, -1)
        if n_tokens > split:
            rest, state = self.backend.step(toks[:, split:], state)
            rest = np.asarray(rest, dtype=np.float32).reshape(n_batch, n_tokens - split, -1)
            sot_logits = np.concatenate([sot_logits, rest], axis=1)
        self.state = state
        self.n_seen = n_tokens
        return sot_logits

    def _logits_tensor(self, rows: np.ndarray, n_tokens: int, group: int) -> torch.Tensor:
        """``[b * group, n_tokens, vocab]``: each of ``rows``' ``b`` rows ``group`` times at
        positions ``sot_index ..``; the prompt's positions before it untouched zeros (see the
        class docstring)."""
        b, _, vocab = rows.shape
        out = np.zeros((b, group, n_tokens, vocab), dtype=np.float32)
        out[:, :, self.sot_index :] = rows[:, None]
        return torch.from_numpy(out.reshape(b * group, n_tokens, vocab))

    def rearrange_kv_cache(self, source_indices) -> None:
        indices = [int(i) for i in source_indices]
        if self.state is None or indices == list(range(len(indices))):
            return  # identity permutation, same shortcut as PyTorchInference
        self.state = self.backend.reorder(self.state, np.asarray(indices, dtype=np.int64))

    def cleanup_caching(self) -> None:
        self.state = None
        self.n_seen = 0


class _BackendEncoder:
    """Stands in for ``model.encoder``: torch mel in, torch features out."""

    def __init__(self, adapter: WhisperAdapter):
        self._adapter = adapter
        self.last: tuple[np.ndarray, np.ndarray] | None = None  # (mel, features) of the last call

    def features(self, mel_np: np.ndarray) -> np.ndarray:
        """The backend's features of ``mel_np`` f32[b, n_mels, frames]: those of the last call
        when its mel was equal. openai's ``DecodingTask`` encodes its mel
        on every attempt, so a window that falls back through the temperatures was encoded
        once per temperature (the 66 s long form with beam 5: 13 encoder calls for its
        windows' 13 attempts, 1.6 s of 8.7 s); word timestamps' forced pass re-encodes the
        window the decoding just encoded. The encoder is a pure function of the mel, so the
        features are the ones a new call would give; comparing two mels costs ~0.1 ms."""
        if self.last is not None and np.array_equal(self.last[0], mel_np):
            return self.last[1]
        timed = TimedBackend(self._adapter.backend, self._adapter.timings)
        features = np.ascontiguousarray(np.asarray(timed.encode(mel_np), dtype=np.float32))
        self.last = (mel_np.copy(), features)
        return features

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        single = mel.ndim == 2
        mel_np = _to_numpy_f32(mel)
        if single:
            mel_np = mel_np[None]
        out = torch.from_numpy(self.features(mel_np))
        return out[0] if single else out


class CrossAttentionTap(torch.nn.Module):
    """Stands in for ``model.decoder.blocks[i].cross_attn``: it computes nothing.
    Calling it with scores ``qk`` f32[b, n_head, t, n_audio_ctx] returns ``(None, qk)``,
    the shape of openai's ``MultiHeadAttention`` output, so forward hooks registered on
    it (``find_alignment``'s) see ``outs[-1]`` = the scores."""

    def forward(self, qk: torch.Tensor):
        return None, qk


class _Block:
    """Stands in for ``model.decoder.blocks[i]``: ``cross_attn`` is a
    :class:`CrossAttentionTap`; ``attn.key`` / ``attn.value`` are read (never run)
    by the ``PyTorchInference`` that ``DecodingTask.__init__`` constructs."""

    def __init__(self):
        self.cross_attn = CrossAttentionTap()
        self.attn = torch.nn.Module()
        self.attn.key = self.attn.value = None


class _NoTorchDecoder:
    """Stands in for ``model.decoder``.

    ``DecodingTask.__init__`` unconditionally constructs a ``PyTorchInference``
    which only reads ``model.decoder.blocks``; we replace that inference right
    after construction.  Any attempt to actually run a torch decoder is a bug.
    ``blocks[i].cross_attn`` are the taps word timestamps hook (see
    :meth:`WhisperAdapter.__call__`).
    """

    def __init__(self, n_layer: int = 0):
        self.blocks: Sequence[_Block] = tuple(_Block() for _ in range(n_layer))

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            "WhisperAdapter has no torch decoder: decoder compute must go "
            "through the backend (BackendInference)"
        )


class WhisperAdapter:
    """Duck-typed ``whisper.model.Whisper`` whose compute runs on a backend."""

    def __init__(self, backend: WhisperBackend, timings: DecodeTimings | None = None):
        self.backend = backend
        self.dims: ModelDimensions = backend.dims
        self.timings = timings if timings is not None else DecodeTimings()
        self.encoder = _BackendEncoder(self)
        self.decoder = _NoTorchDecoder(self.dims.n_text_layer)

    # -- attributes openai-whisper reads ------------------------------------
    @property
    def device(self) -> torch.device:
        # Tensors handed to us are host tensors; the backend owns placement.
        return torch.device("cpu")

    @property
    def is_multilingual(self) -> bool:
        return self.dims.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        return self.dims.n_vocab - 51765 - int(self.is_multilingual)

    @property
    def alignment_heads(self) -> torch.Tensor:
        """The backend's alignment heads as openai's buffer: a sparse bool
        ``[n_text_layer, n_text_head]`` tensor."""
        heads = getattr(self.backend, "alignment_heads", None)
        if heads is None:
            raise AttributeError(
                f"backend {type(self.backend).__name__} has no alignment_heads: word timestamps need them"
            )
        mask = torch.zeros(self.dims.n_text_layer, self.dims.n_text_head, dtype=torch.bool)
        for layer, head in heads:
            mask[layer, head] = True
        return mask.to_sparse()

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder(mel)

    def __call__(self, mel: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """openai's ``Whisper.forward`` as ``find_alignment`` uses it: logits ``[b, t, vocab]``
        of every position of ``tokens``, with the cross-attention taps
        (``decoder.blocks[i].cross_attn``) called on scores ``f32[b, n_text_head, t,
        n_audio_ctx]`` holding the alignment heads' (other heads NaN; a layer without
        alignment heads gets an all-NaN view that allocates nothing). The audio features
        are the backend encoder's, reused when ``mel`` is the window last encoded."""
        if not hasattr(self.backend, "alignment"):
            raise RuntimeError(
                f"backend {type(self.backend).__name__} has no alignment(): "
                "word timestamps need the cross-attention scores"
            )
        mel_np = _to_numpy_f32(mel)
        toks = _to_numpy_i64(tokens)
        features = _match_batch(self.encoder.features(mel_np), toks.shape[0])
        logits, scores = TimedBackend(self.backend, self.timings).alignment(toks, features)
        b, t = toks.shape
        shape = (b, self.dims.n_text_head, t, features.shape[1])
        nan = torch.full((), float("nan"))
        for layer, block in enumerate(self.decoder.blocks):
            mine = {h: s for (lay, h), s in scores.items() if lay == layer}
            if not mine:
                block.cross_attn(nan.expand(shape))
                continue
            qk = torch.full(shape, float("nan"))
            for h, s in mine.items():
                qk[:, h] = torch.from_numpy(np.asarray(s, dtype=np.float32).reshape(b, t, -1))
            block.cross_attn(qk)
        return torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))

    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """Full-sequence logits ``[b, t, vocab]`` (used by language detection
        with ``tokens == [[sot]]``): prefill of the first token, multi-token
        step for the rest, so every row is exact."""
        toks = _to_numpy_i64(tokens)
        features = _match_batch(_to_numpy_f32(audio_features), toks.shape[0])
        timed = TimedBackend(self.backend, self.timings)
        first, state = timed.prefill(toks[:, :1], features)
        rows = [np.asarray(first, dtype=np.float32).reshape(toks.shape[0], 1, -1)]
        if toks.shape[1] > 1:
            rest, _ = timed.step(toks[:, 1:], state)
            rows.append(np.asarray(rest, dtype=np.float32).reshape(toks.shape[0], toks.shape[1] - 1, -1))
        return torch.from_numpy(np.concatenate(rows, axis=1))

    # openai-whisper's own language detection (runs encoder + logits above)
    detect_language = whisper.decoding.detect_language

    @torch.no_grad()
    def decode(
        self,
        mel: torch.Tensor,
        options: DecodingOptions = DecodingOptions(),  # noqa: B008 - frozen dataclass, as openai-whisper's signature
        **kwargs,
    ) -> DecodingResult | list[DecodingResult]:
        """Same contract as ``whisper.decoding.decode`` (and ``Whisper.decode``)."""
        if single := mel.ndim == 2:
            mel = mel.unsqueeze(0)
        if kwargs:
            options = replace(options, **kwargs)
        if options.fp16:
            options = replace(options, fp16=False)  # backend works in fp32 I/O
        task = DecodingTask(self, options)
        inference = BackendInference(self.backend, len(task.initial_tokens), task.sot_index, self.timings)
        task.inference = inference
        if hasattr(task.decoder, "inference"):  # BeamSearchDecoder holds a ref
            task.decoder.inference = inference
        self.timings.decode_calls += 1
        with torch_threads(1):
            result = task.run(mel)
        return result[0] if single else result
