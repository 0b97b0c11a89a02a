"""One 30 s window decoded on a backend: kvgraph's own decoding task, torch-free.

The initial tokens (``<|startofprev|>`` and the prompt, the SOT sequence, the prefix), the
language detection, the logit filters, greedy / beam search / sampling, the ranking of a
group's candidates and the result's figures follow openai-whisper's ``DecodingTask`` (its
``decoding.py`` is the map; this is kvgraph's code). The backend computes the logits: the
prompt once per audio (``prefill`` up to the SOT token, whose logits give the no-speech
probability, then ``step`` over the rest), one ``step`` per sampled token for every row, and
``reorder`` where beam search moves rows. Everything between steps is NumPy on float32, as
openai's is on torch float32.

Two additions of kvgraph's, both off by default (and then the results are openai's as
before): ``token_logprobs=True`` carries each chosen token's log-probability (the value the
decoder adds into the candidate's score) into :attr:`DecodingResult.token_logprobs`, and
``on_tokens`` shows a lone greedy row's tokens after every step, so that a caller can act on
text that no later step can change (the long-form loop's early segments).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from models.whisper.decoding.filters import ApplyTimestampRules, SuppressBlank, SuppressTokens
from models.whisper.decoding.options import DecodingOptions, DecodingResult, compression_ratio
from models.whisper.decoding.protocol import DecodeTimings, TimedBackend
from models.whisper.decoding.search import BeamSearchDecoder, GreedyDecoder, MaximumLikelihoodRanker
from models.whisper.decoding.tokenizer import Tokenizer, get_tokenizer

#: seconds of audio per encoder output position (openai-whisper's 30 s window over n_audio_ctx)
CHUNK_LENGTH = 30


def is_multilingual(dims) -> bool:
    """openai-whisper's test: a multilingual vocabulary has 51,865 tokens or more."""
    return dims.n_vocab >= 51865


def num_languages(dims) -> int:
    """Language tokens in the vocabulary (openai-whisper's count from ``n_vocab``)."""
    return dims.n_vocab - 51765 - int(is_multilingual(dims))


def tokenizer_for(dims, language: str | None = None, task: str | None = None) -> Tokenizer:
    """The tokenizer of a model of ``dims``."""
    return get_tokenizer(
        is_multilingual(dims), num_languages=num_languages(dims), language=language, task=task
    )


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32 (``-inf`` entries give 0)."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def detect_language(backend, audio_features: np.ndarray, tokenizer: Tokenizer, timings=None):
    """``(language tokens i64[n_audio], [{code: probability}, ...])``: the decoder's next token
    after ``<|startoftranscript|>`` restricted to the language tokens, for each audio."""
    if tokenizer.language is None or tokenizer.language_token not in tokenizer.sot_sequence:
        raise ValueError("This model doesn't have language tokens so it can't perform lang id")
    n_audio = audio_features.shape[0]
    timed = TimedBackend(backend, timings if timings is not None else DecodeTimings())
    logits, _ = timed.prefill(np.full((n_audio, 1), tokenizer.sot, dtype=np.int64), audio_features)
    logits = np.array(logits, dtype=np.float32).reshape(n_audio, -1)
    keep = np.zeros(logits.shape[-1], dtype=bool)
    keep[list(tokenizer.all_language_tokens)] = True
    logits[:, ~keep] = -np.inf
    tokens = logits.argmax(axis=-1)
    probs = softmax(logits)
    pairs = list(zip(tokenizer.all_language_tokens, tokenizer.all_language_codes))
    return tokens, [{code: float(probs[i, tok]) for tok, code in pairs} for i in range(n_audio)]


def _maskable(logits, n_rows: int) -> np.ndarray:
    """A step's logits as f32[n_rows, vocab] for the filters to mask in place: the backend's
    own array where it is one (the protocol gives the caller its logits), else a copy."""
    out = np.asarray(logits, dtype=np.float32).reshape(n_rows, -1)
    return out if out.flags.writeable else out.copy()


class DecodingTask:
    """Decodes windows of audio features with ``options`` (see the module docstring).

    ``rng``: the NumPy generator sampling draws from at T > 0 (each stream owns one);
    ``timings``: the counters the backend's calls add to; ``token_logprobs``: keep each
    chosen token's log-probability (:attr:`DecodingResult.token_logprobs`); ``on_tokens``:
    called after every step with ``(tokens, no_speech_prob, logprobs)`` of the decode's only
    row: its sampled tokens so far (a list, until and without the end of text), the window's
    no-speech probability, and the tokens' log-probabilities (a list, or None without
    ``token_logprobs``). It needs one greedy row (no beam search, no ``best_of`` > 1, one
    audio): then those tokens are the result's, whatever comes after them."""

    def __init__(
        self,
        backend,
        options: DecodingOptions,
        *,
        rng=None,
        timings: DecodeTimings | None = None,
        token_logprobs: bool = False,
        on_tokens: Callable[[list, float, list | None], None] | None = None,
    ):
        self.backend, self.dims = backend, backend.dims
        self.options = options.check()
        self.timings = timings if timings is not None else DecodeTimings()
        self.timed = TimedBackend(backend, self.timings)
        self.tokenizer = tok = tokenizer_for(self.dims, options.language or "en", options.task)
        self.n_group = options.beam_size or options.best_of or 1
        self.n_ctx = self.dims.n_text_ctx
        self.sample_len = options.sample_len or self.n_ctx // 2
        self.sot_sequence = (
            tok.sot_sequence_including_notimestamps if options.without_timestamps else tok.sot_sequence
        )
        self.initial_tokens = self._initial_tokens()
        self.sample_begin = len(self.initial_tokens)
        self.sot_index = self.initial_tokens.index(tok.sot)
        self.ranker = MaximumLikelihoodRanker(options.length_penalty)
        self.token_logprobs = token_logprobs
        if options.beam_size is not None:
            self.decoder = BeamSearchDecoder(
                options.beam_size, tok.eot, options.patience, keep_logprobs=token_logprobs
            )
        else:
            rng = rng if rng is not None else np.random.default_rng()
            self.decoder = GreedyDecoder(options.temperature, tok.eot, rng, keep_logprobs=token_logprobs)
        if on_tokens is not None and (options.beam_size is not None or self.n_group != 1):
            raise ValueError(
                "DecodingTask: on_tokens needs one greedy row per audio "
                f"(beam_size={options.beam_size}, best_of={options.best_of})"
            )
        self.on_tokens = on_tokens
        self.filters = self._filters()

    # ------------------------------------------------------------------ set-up
    def _initial_tokens(self) -> tuple[int, ...]:
        """``[<|startofprev|> prompt] SOT-sequence [prefix]``, prompt and prefix cut to fit."""
        tok, opt = self.tokenizer, self.options
        tokens = list(self.sot_sequence)
        if opt.prefix:
            prefix = (
                tok.encode_text(" " + opt.prefix.strip(), "prefix")
                if isinstance(opt.prefix, str)
                else list(opt.prefix)
            )
            if self.sample_len is not None:
                prefix = prefix[-(self.n_ctx // 2 - self.sample_len) :]
            tokens += prefix
        if opt.prompt:
            prompt = (
                tok.encode_text(" " + opt.prompt.strip(), "prompt")
                if isinstance(opt.prompt, str)
                else list(opt.prompt)
            )
            tokens = [tok.sot_prev, *prompt[-(self.n_ctx // 2 - 1) :], *tokens]
        return tuple(tokens)

    def _suppress_tokens(self) -> tuple[int, ...]:
        tok, value = self.tokenizer, self.options.suppress_tokens
        ids = [int(t) for t in value.split(",")] if isinstance(value, str) else list(value or [])
        if -1 in ids:
            ids = [t for t in ids if t >= 0] + list(tok.non_speech_tokens)
        ids += [tok.transcribe, tok.translate, tok.sot, tok.sot_prev, tok.sot_lm]
        if tok.no_speech is not None:
            ids.append(tok.no_speech)  # its probability is read separately
        return tuple(sorted(set(ids)))

    def _filters(self) -> list:
        opt, filters = self.options, []
        if opt.suppress_blank:
            filters.append(SuppressBlank(self.tokenizer, self.sample_begin))
        if opt.suppress_tokens:
            filters.append(SuppressTokens(self._suppress_tokens()))
        if not opt.without_timestamps:
            precision = CHUNK_LENGTH / self.dims.n_audio_ctx  # 0.02 s per timestamp step
            index = None
            if opt.max_initial_timestamp:
                index = round(opt.max_initial_timestamp / precision)
            filters.append(ApplyTimestampRules(self.tokenizer, self.sample_begin, index))
        return filters

    # ------------------------------------------------------------------ running
    def run(self, audio_features: np.ndarray) -> list[DecodingResult]:
        """One result per audio of ``audio_features`` f32[n_audio, n_audio_ctx, n_audio_state]."""
        self.timings.decode_calls += 1
        self.decoder.reset()
        n_audio = audio_features.shape[0]
        if self.on_tokens is not None and n_audio != 1:
            raise ValueError(f"DecodingTask: on_tokens follows one audio's row, got {n_audio} audios")
        tokens = np.tile(np.asarray(self.initial_tokens, dtype=np.int64), (n_audio, 1))
        languages, language_probs = self._languages(audio_features, tokens)
        if self.options.task == "lang_id":
            return [
                DecodingResult(audio_features=f, language=lang, language_probs=p)
                for f, lang, p in zip(audio_features, languages, language_probs)
            ]
        tokens = np.repeat(tokens, self.n_group, axis=0)
        try:
            tokens, sum_logprobs, no_speech = self._main_loop(audio_features, tokens)
        finally:
            release = getattr(self.backend, "release", None)
            if release is not None:  # the decode's rows are free (a batching engine's pool)
                release()
        return self._results(audio_features, languages, tokens, sum_logprobs, no_speech[:: self.n_group])

    def _languages(self, audio_features: np.ndarray, tokens: np.ndarray):
        n_audio = audio_features.shape[0]
        if self.options.language is not None and self.options.task != "lang_id":
            return [self.options.language] * n_audio, None
        lang_tokens, probs = detect_language(self.backend, audio_features, self.tokenizer, self.timings)
        if self.options.language is None:
            tokens[:, self.sot_index + 1] = lang_tokens  # the detected language's token
        return [max(p, key=p.get) for p in probs], probs

    def _main_loop(self, audio_features: np.ndarray, tokens: np.ndarray):
        n_rows = tokens.shape[0]
        sum_logprobs = np.zeros(n_rows, dtype=np.float32)
        no_speech = [math.nan] * n_rows
        logits, at_sot, state = self._prompt(audio_features, tokens)
        if self.tokenizer.no_speech is not None:
            no_speech = softmax(at_sot)[:, self.tokenizer.no_speech].tolist()
        for i in range(self.sample_len):
            if i > 0:
                logits, state = self.timed.step(tokens[:, -1:], state)
                logits = _maskable(logits, n_rows)
            self.timings.tokens_decoded += 1
            for f in self.filters:
                f.apply(logits, tokens)
            tokens, completed, source = self.decoder.update(tokens, logits, sum_logprobs)
            if source is not None and not np.array_equal(source, np.arange(len(source))):
                state = self.timed.reorder(state, np.asarray(source, dtype=np.int64))
            if self.on_tokens is not None and tokens[0, -1] != self.tokenizer.eot:
                self._show_progress(tokens, no_speech[0])
            if completed or tokens.shape[-1] > self.n_ctx:
                break
        return tokens, sum_logprobs, no_speech

    def _show_progress(self, tokens: np.ndarray, no_speech_prob: float) -> None:
        """``on_tokens`` with the only row's sampled tokens (and their log-probabilities)."""
        kept = self.decoder.token_logprobs if self.token_logprobs else None
        self.on_tokens(
            tokens[0, self.sample_begin :].tolist(),
            no_speech_prob,
            None if kept is None else kept[0].tolist(),
        )

    def _prompt(self, audio_features: np.ndarray, tokens: np.ndarray):
        """The initial tokens of every row: ``(logits f32[rows, vocab] of the last position,
        logits of the SOT position, state)``. A group's rows (beams, samples) start alike, so
        the prompt runs once per audio and ``reorder`` makes the group's rows of it (a
        backend that shares per-audio state, as kvgraph's cross-attention K/V, keeps one)."""
        n_audio, group = audio_features.shape[0], self.n_group
        rows = tokens[::group]
        split = self.sot_index + 1
        at_sot, state = self.timed.prefill(rows[:, :split], audio_features)
        at_sot = np.asarray(at_sot, dtype=np.float32).reshape(n_audio, -1)
        last = at_sot
        if rows.shape[1] > split:
            rest, state = self.timed.step(rows[:, split:], state)
            last = np.asarray(rest, dtype=np.float32).reshape(n_audio, rows.shape[1] - split, -1)[:, -1]
        if group > 1:
            state = self.timed.reorder(state, np.repeat(np.arange(n_audio), group))
        return np.repeat(last, group, axis=0), np.repeat(at_sot, group, axis=0), state

    def _results(self, audio_features, languages, tokens, sum_logprobs, no_speech) -> list[DecodingResult]:
        n_audio, tok = audio_features.shape[0], self.tokenizer
        tokens = tokens.reshape(n_audio, self.n_group, -1)
        sum_logprobs = sum_logprobs.reshape(n_audio, self.n_group)
        candidates, scores = self.decoder.finalize(tokens, sum_logprobs)
        ends = [[_first(t, tok.eot) for t in group] for group in candidates]
        candidates = [[t[self.sample_begin : e] for t, e in zip(g, es)] for g, es in zip(candidates, ends)]
        chosen = self.ranker.rank(candidates, scores)
        picked = [[int(x) for x in group[i]] for i, group in zip(chosen, candidates)]
        logprobs = [float(group[i]) for i, group in zip(chosen, scores)]
        per_token = [None] * n_audio
        if self.token_logprobs:  # the chosen candidate's, its end of text included
            kept = self.decoder.final_logprobs
            per_token = [
                [float(x) for x in kept[a][i][: ends[a][i] - self.sample_begin + 1]]
                for a, i in enumerate(chosen)
            ]
        out = []
        for features, language, toks, lp, ns, lps in zip(
            audio_features, languages, picked, logprobs, no_speech, per_token
        ):
            text = tok.decode(toks).strip()
            out.append(
                DecodingResult(
                    audio_features=features,
                    language=language,
                    tokens=toks,
                    text=text,
                    avg_logprob=lp / (len(toks) + 1),
                    no_speech_prob=ns,
                    temperature=self.options.temperature,
                    compression_ratio=compression_ratio(text),
                    token_logprobs=lps,
                )
            )
        return out


def _first(row: np.ndarray, token: int) -> int:
    """The index of ``token``'s first occurrence in ``row`` (the end of text a row ends with)."""
    return int(np.flatnonzero(np.asarray(row) == token)[0])


def decode(backend, audio_features: np.ndarray, options: DecodingOptions | None = None, **kwargs):
    """``DecodingTask(backend, options with kwargs).run(audio_features)``."""
    options = options or DecodingOptions()
    if kwargs:
        options = replace(options, **kwargs)
    return DecodingTask(backend, options).run(audio_features)
