"""Word-level timestamps in NumPy: openai-whisper's ``whisper/timing.py`` on a kvgraph backend.

The backend's ``alignment`` is the forced pass (logits of every position and the alignment
heads' pre-softmax cross-attention scores); everything after it is here: the scores'
softmax over audio frames, per-frame normalisation over tokens, median filter, the mean over
heads, dynamic time warping from text tokens to frames, word boundaries and probabilities, the
punctuation merges and openai's duration heuristics.

Exactness. openai computes those statistics with float32 torch on the CPU, and dynamic time
warping follows ties and near-ties of the accumulated costs, so the times are only the same if
the float32 values are the same bit for bit. The float32 steps here reproduce torch's CPU
kernels (x86-64 builds), not just their formulas:

* softmax: ``torch_float.softmax_f32`` (SLEEF's ``expf_u10``, torch's vectorised ``exp``,
  with fused multiply-adds; the lane-wise sum and its shuffle tree; times the reciprocal of
  the sum);
* ``std_mean`` over tokens: Welford's running mean and squared deviation in float64;
* mean over heads: torch's cascade sum, whose summation order depends on the column (a few
  columns at the end of each block of work are summed in four interleaved partial sums), on
  the memory layout the median filter leaves, and on torch's intra-op thread count.

:class:`TorchCpu` names the vector widths and thread count; :func:`detect_torch_cpu` reads
them off this machine as torch would (both from ``torch_float``, re-exported here). Dynamic time warping reproduces numba's float32 cost
table (float64 sums rounded to float32) with its anti-diagonals vectorised.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from models.whisper.decoding.torch_float import TorchCpu, detect_torch_cpu, softmax_f32

__all__ = [
    "APPEND_PUNCTUATIONS",
    "PREPEND_PUNCTUATIONS",
    "TOKENS_PER_SECOND",
    "TorchCpu",
    "WordTiming",
    "add_word_timestamps",
    "detect_torch_cpu",
    "dtw",
    "find_alignment",
    "mean_over_heads_f32",
    "median_filter",
    "merge_punctuations",
    "std_mean_f32",
]

# openai-whisper's audio.py: 16 kHz audio, 10 ms mel hop, 2 mel frames per audio-feature frame
SAMPLE_RATE = 16000
HOP_LENGTH = 160
TOKENS_PER_SECOND = 50

# openai-whisper's transcribe defaults for add_word_timestamps
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"

_F32 = np.float32


@dataclass
class WordTiming:
    """One word of the alignment: its text, tokens, start/end seconds (within the window) and
    the mean probability of its tokens."""

    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


class AligningBackend(Protocol):
    """What word timestamps need of a backend (see ``models.whisper.decoding.adapter``)."""

    alignment_heads: Sequence[tuple[int, int]]

    def alignment(self, tokens: np.ndarray, audio_features: np.ndarray) -> tuple[np.ndarray, dict]:
        """tokens i64[1, t] -> (logits f32[1, t, vocab], {(layer, head): f32[1, t, n_audio_ctx]})."""


# --------------------------------------------------------------------------
# float32 statistics as torch's CPU kernels compute them (softmax: ``torch_float.softmax_f32``)


def std_mean_f32(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``torch.std_mean(w, dim=-2, keepdim=True, unbiased=False)`` of float32 ``w``, bit for bit:
    torch runs Welford's algorithm in float64 over the rows in order, then rounds to float32."""
    w = np.asarray(w, dtype=_F32)
    n = w.shape[-2]
    mean = np.zeros(w.shape[:-2] + w.shape[-1:])
    m2 = np.zeros_like(mean)
    for k in range(n):
        x = w[..., k, :].astype(np.float64)
        delta = x - mean
        mean = mean + delta / (k + 1)
        m2 = m2 + delta * (x - mean)
    std = np.sqrt(m2 / n)
    return std.astype(_F32)[..., None, :], mean.astype(_F32)[..., None, :]


# --------------------------------------------------------------------------
# The mean over heads: torch's cascade sum and the columns it sums differently

_GRAIN_SIZE = 32768  # torch's at::internal::GRAIN_SIZE: smaller reductions run on one thread


def _cascade_sum(rows: list[np.ndarray]) -> np.ndarray:
    """float32 sum of ``rows`` in torch's cascade order (its ``multi_row_sum``): running sums of
    ``2**level_power`` rows at a time, carried up to three higher-level accumulators."""
    n = len(rows)
    power = max(4, (max(n, 2) - 1).bit_length() // 4)
    step = 1 << power
    acc = [np.zeros_like(rows[0]) for _ in range(4)]
    i = 0
    while i + step <= n:
        for _ in range(step):
            acc[0] = acc[0] + rows[i]
            i += 1
        for level in range(1, 4):
            acc[level] = acc[level] + acc[level - 1]
            acc[level - 1] = np.zeros_like(acc[0])
            if i & ((step - 1) << (level * power)):
                break
    for row in rows[i:]:
        acc[0] = acc[0] + row
    for level in range(1, 4):
        acc[0] = acc[0] + acc[level]
    return acc[0]


def _interleaved_sum(rows: list[np.ndarray]) -> np.ndarray:
    """float32 sum of ``rows`` in torch's ``row_sum`` order: four cascade sums of rows
    k, k+4, k+8, ...; rows past the last full four added to the first; then the four summed."""
    groups = len(rows) // 4
    if groups:
        parts = [_cascade_sum(rows[k : 4 * groups : 4]) for k in range(4)]
    else:
        parts = [np.zeros_like(rows[0]) for _ in range(4)]
    total = parts[0]
    for row in rows[4 * groups :]:
        total = total + row
    for part in parts[1:]:
        total = total + part
    return total


def _tail(n: int, contiguous: bool, lanes: int) -> np.ndarray:
    """Which of a block's ``n`` columns torch sums with :func:`_interleaved_sum`: those after the
    last full group of 4 vectors (contiguous columns, at least a vector of them) or of 4 columns."""
    group = 4 * lanes if contiguous and n >= lanes else 4
    mask = np.zeros(n, dtype=bool)
    mask[n // group * group :] = True
    return mask


def _thread_blocks(numel: int, cols: int, contiguous: bool, threads: int) -> list[tuple[int, int]]:
    """The column ranges torch's parallel reduction hands to its threads: equal shares of the
    columns, cut at multiples of 32 where the columns are contiguous floats."""
    if numel < _GRAIN_SIZE or threads == 1:
        return [(0, cols)]
    share = -(-cols // min(threads, cols))
    blocks = []
    for begin in range(0, cols, share):
        end = min(cols, begin + share)
        if contiguous:
            begin -= begin % 32
            end = end if end == cols else end - end % 32
        if begin != end:
            blocks.append((begin, end))
    return blocks


def _interleaved_columns(
    shape: tuple[int, int, int], filtered: bool, width: int, cpu: TorchCpu
) -> np.ndarray:
    """Columns (tokens x frames, flattened) that torch's sum over heads adds in interleaved order.

    The median filter's result is a strided view of ``torch.sort``'s output, which keeps the
    frames innermost only if there are at least ``width`` of them: then the columns make one
    strided block (cut by threads); with fewer frames each token is its own contiguous block.
    Unfiltered weights are contiguous (cut by threads at multiples of 32)."""
    heads, tokens, frames = shape
    if filtered and frames < width:
        return np.tile(_tail(frames, True, cpu.sum_lanes), tokens)
    contiguous = not filtered or width == 1
    mask = np.zeros(tokens * frames, dtype=bool)
    for begin, end in _thread_blocks(heads * tokens * frames, tokens * frames, contiguous, cpu.threads):
        mask[begin:end] = _tail(end - begin, contiguous, cpu.sum_lanes)
    return mask


def mean_over_heads_f32(w: np.ndarray, *, filtered: bool, width: int, cpu: TorchCpu) -> np.ndarray:
    """``w.mean(axis=0)`` of openai's median-filtered float32 weights ``w`` [heads, tokens,
    frames] on a CPU torch, bit for bit: the cascade sum, divided by the number of heads.
    ``filtered``: whether the median filter (of ``width``) ran, which sets the memory layout."""
    w = np.asarray(w, dtype=_F32)
    heads = w.shape[0]
    rows = [w[h].reshape(-1) for h in range(heads)]
    total = _cascade_sum(rows)
    odd = _interleaved_columns(w.shape, filtered, width, cpu)
    if odd.any():
        total[odd] = _interleaved_sum([row[odd] for row in rows])
    return (total / _F32(heads)).reshape(w.shape[1:])


# --------------------------------------------------------------------------
# Median filter and dynamic time warping


def median_filter(x: np.ndarray, filter_width: int) -> np.ndarray:
    """Median of each ``filter_width`` window along the last axis, the edges mirrored without
    repeating the edge value (reflect padding); ``x`` itself if the axis is no longer than
    half the width (too short to mirror). The width must be odd."""
    x = np.asarray(x)
    half = filter_width // 2
    if x.shape[-1] <= half:
        return x
    if filter_width <= 0 or filter_width % 2 == 0:
        raise ValueError(f"median_filter: filter_width {filter_width} is not a positive odd number")
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)], mode="reflect")
    windows = sliding_window_view(padded, filter_width, axis=-1)
    return np.partition(windows, half, axis=-1)[..., half]


def _diagonal(start: int, count: int, step: int) -> slice:
    """``count`` flat indices from ``start`` by ``step`` (any step when there is one)."""
    return slice(start, start + (count - 1) * max(step, 1) + 1, max(step, 1))


def _fill_costs(x: np.ndarray) -> np.ndarray:
    """The DTW trace table [n+1, m+1] (0 diagonal, 1 from above, 2 from the left) of cost ``x``.

    Costs are float32, each a float64 sum rounded to float32; a cell takes the diagonal only
    if strictly cheaper than both others, then from above if strictly cheapest, else from the
    left. Cells with the same i + j depend only on earlier anti-diagonals, so each anti-diagonal
    is one vector step (cell (i, j) of the flat tables is at i * m + (i + j))."""
    n, m = x.shape
    flat_x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    cost = np.full((n + 1) * (m + 1), np.inf, dtype=_F32)
    cost[0] = 0
    trace = np.full((n + 1) * (m + 1), -1, dtype=np.int8)
    for d in range(2, n + m + 1):
        lo, hi = max(1, d - m), min(n, d - 1)
        count = hi - lo + 1
        if count <= 0:
            continue
        here = lo * m + d
        c0 = cost[_diagonal(here - m - 2, count, m)]
        c1 = cost[_diagonal(here - m - 1, count, m)]
        c2 = cost[_diagonal(here - 1, count, m)]
        step = np.full(count, 2, dtype=np.int8)
        step[(c1 < c0) & (c1 < c2)] = 1
        step[(c0 < c1) & (c0 < c2)] = 0
        best = np.where(step == 0, c0, np.where(step == 1, c1, c2))
        cells = flat_x[_diagonal(lo * (m - 1) + d - m - 1, count, m - 1)]
        cost[_diagonal(here, count, m)] = (cells + best.astype(np.float64)).astype(_F32)
        trace[_diagonal(here, count, m)] = step
    return trace.reshape(n + 1, m + 1)


def _backtrace(trace: np.ndarray) -> np.ndarray:
    """The warping path [2, k] (text index, time index) from the bottom-right corner back to
    the origin: the top row leads left, the left column up."""
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        move = trace[i, j]
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        elif move == 2:
            j -= 1
        else:
            raise ValueError(f"dtw: trace cell ({i}, {j}) holds {move}")
    if not path:
        return np.zeros((2, 0), dtype=np.int64)
    return np.array(path[::-1], dtype=np.int64).T


def dtw(x: np.ndarray) -> np.ndarray:
    """Dynamic time warping of cost matrix ``x`` [n, m] (openai's CPU ``dtw``): int64 [2, k]
    (row, column) pairs of the cheapest monotone path from (0, 0) to (n - 1, m - 1)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"dtw: cost matrix has shape {x.shape}, expected 2 dimensions")
    return _backtrace(_fill_costs(x))


# --------------------------------------------------------------------------
# Alignment


def _batch_of_one(audio_features: np.ndarray) -> np.ndarray:
    """f32[1, n_audio_ctx, d] from [n_audio_ctx, d] or [1, n_audio_ctx, d]."""
    features = np.asarray(audio_features, dtype=_F32)
    if features.ndim == 2:
        features = features[None]
    if features.ndim != 3 or features.shape[0] != 1:
        raise ValueError(f"audio_features: shape {features.shape}, expected [1, n_audio_ctx, d]")
    return features


def _text_token_probs(logits: np.ndarray, first: int, text_tokens: list[int], eot: int, cpu: TorchCpu):
    """Probability of each text token given the tokens before it: float32 softmax over the
    text vocabulary (ids below ``eot``) of the logits one position earlier, as Python floats."""
    n = len(text_tokens)
    rows = softmax_f32(logits[first : first + n, :eot], cpu.softmax_lanes)
    return rows[np.arange(n), text_tokens].tolist()


def _head_scores(scores: dict, heads: Sequence[tuple[int, int]], where: str) -> np.ndarray:
    """f32[heads, t, n_audio_ctx]: the scores of ``heads`` sorted by (layer, head), the order
    of openai's sparse alignment-heads mask."""
    order = sorted((int(layer), int(head)) for layer, head in heads)
    missing = [h for h in order if h not in scores]
    if missing:
        raise ValueError(f"{where}.alignment returned no scores for alignment heads {missing}")
    return np.stack([np.asarray(scores[h], dtype=_F32)[0] for h in order])


def _alignment_matrix(weights: np.ndarray, num_frames: int, width: int, qk_scale: float, cpu: TorchCpu):
    """Token x frame similarity [t, frames]: per head a softmax over the window's frames, each
    frame normalised over tokens, median-filtered along frames; then the mean over heads."""
    w = weights[:, :, : num_frames // 2] * _F32(qk_scale)
    w = softmax_f32(w, cpu.softmax_lanes)
    std, mean = std_mean_f32(w)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = (w - mean) / std
    filtered = w.shape[-1] > width // 2
    w = median_filter(w, width)
    return mean_over_heads_f32(w, filtered=filtered, width=width, cpu=cpu)


def _word_timings(
    tokenizer, text_tokens: list[int], path: np.ndarray, probs: list[float]
) -> list[WordTiming]:
    """Words with times from the warping path: a token's time is the first frame its path row
    reaches; a word spans from the time of the row of its first token to that of the next
    word's (row 0 being the no-timestamps token). Empty if there is no word before ``eot``."""
    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    rows, frames = path
    first_of_row = np.concatenate([[True], np.diff(rows) != 0])
    row_times = frames[first_of_row] / TOKENS_PER_SECOND
    edges = np.concatenate([[0], np.cumsum([len(t) for t in word_tokens[:-1]])]).astype(np.int64)
    return [
        WordTiming(word, tokens, row_times[a], row_times[b], np.mean(probs[a:b]))
        for word, tokens, a, b in zip(words, word_tokens, edges[:-1], edges[1:])
    ]


def find_alignment(
    backend: AligningBackend,
    tokenizer: Any,
    text_tokens: list[int],
    audio_features: np.ndarray,
    num_frames: int,
    *,
    medfilt_width: int = 7,
    qk_scale: float = 1.0,
    torch_cpu: TorchCpu | None = None,
) -> list[WordTiming]:
    """Word timings of ``text_tokens`` in the 30 s window of ``audio_features`` whose first
    ``num_frames`` mel frames hold audio (openai's ``find_alignment``).

    One forced pass of ``[*sot_sequence, no_timestamps, *text_tokens, eot]``; ``tokenizer`` is
    duck-typed as openai's (``sot_sequence``, ``no_timestamps``, ``eot``,
    ``split_to_word_tokens``). ``torch_cpu``: the torch whose float32 results to reproduce
    (default :func:`detect_torch_cpu`). Note that openai's forced pass re-encodes the mel with
    SDPA disabled, so the same times and probabilities need those features, bit for bit."""
    if len(text_tokens) == 0:
        return []
    cpu = torch_cpu or detect_torch_cpu()
    text_tokens = list(text_tokens)
    prefix = len(tokenizer.sot_sequence)
    tokens = np.array([[*tokenizer.sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]])
    logits, scores = backend.alignment(tokens.astype(np.int64), _batch_of_one(audio_features))
    probs = _text_token_probs(np.asarray(logits, dtype=_F32)[0], prefix, text_tokens, tokenizer.eot, cpu)
    weights = _head_scores(scores, backend.alignment_heads, type(backend).__name__)
    matrix = _alignment_matrix(weights, num_frames, medfilt_width, qk_scale, cpu)
    path = dtw(-matrix[prefix:-1])
    return _word_timings(tokenizer, text_tokens, path, probs)


# --------------------------------------------------------------------------
# Punctuation and openai's duration heuristics


def _move_word(source: WordTiming, target: WordTiming, *, before: bool) -> None:
    """Moves ``source``'s text and tokens onto ``target`` (in front if ``before``), leaving it empty."""
    if before:
        target.word, target.tokens = source.word + target.word, source.tokens + target.tokens
    else:
        target.word, target.tokens = target.word + source.word, target.tokens + source.tokens
    source.word, source.tokens = "", []


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """Joins punctuation words to their neighbours in place, leaving empty words behind.

    Right to left: a word of a leading space and text found in ``prepended`` (a substring
    test, as openai's) goes in front of the nearest following word not merged away. Left to
    right: a word found in ``appended`` goes after the nearest earlier word not merged away,
    unless that word ends with a space."""
    target = len(alignment) - 1
    for i in range(len(alignment) - 2, -1, -1):
        word = alignment[i]
        if word.word.startswith(" ") and word.word.strip() in prepended:
            _move_word(word, alignment[target], before=True)
        else:
            target = i
    target = 0
    for i in range(1, len(alignment)):
        word = alignment[i]
        if not alignment[target].word.endswith(" ") and word.word in appended:
            _move_word(word, alignment[target], before=False)
        else:
            target = i


def _duration_limits(alignment: list[WordTiming]) -> tuple[float, float, bool]:
    """(median word duration capped at 0.7 s, twice that, whether any word lasts at all)."""
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations) if len(durations) > 0 else 0.0))
    return median, median * 2, len(durations) > 0


def _clip_sentence_ends(alignment: list[WordTiming], longest: float) -> None:
    """Words longer than ``longest``: a sentence-end mark keeps only its first ``longest``
    seconds; the word after one keeps only its last ``longest`` seconds."""
    for previous, timing in zip(alignment, alignment[1:]):
        if timing.end - timing.start > longest:
            if timing.word in SENTENCE_END_MARKS:
                timing.end = timing.start + longest
            elif previous.word in SENTENCE_END_MARKS:
                timing.start = timing.end - longest


def _take_words(alignment: list[WordTiming], index: int, n_tokens: int, offset: float):
    """The word dicts of a segment of ``n_tokens`` text tokens from ``alignment[index:]`` (empty
    words skipped, their tokens counted), times shifted by ``offset`` and rounded to 10 ms; and
    the index after them."""
    words, taken = [], 0
    while index < len(alignment) and taken < n_tokens:
        timing = alignment[index]
        if timing.word:
            start, end = round(offset + timing.start, 2), round(offset + timing.end, 2)
            words.append({"word": timing.word, "start": start, "end": end, "probability": timing.probability})
        taken += len(timing.tokens)
        index += 1
    return words, index


def _shorten_after_pause(words: list[dict], last_speech: float, median: float, longest: float) -> None:
    """After a pause (more than 4 median durations since ``last_speech``), a long first word
    (or first two) is cut to ``longest`` seconds, ending where the second word then starts."""
    first = words[0]
    second = words[1] if len(words) > 1 else None
    too_long = first["end"] - first["start"] > longest or (
        second is not None and second["end"] - first["start"] > longest * 2
    )
    if not (first["end"] - last_speech > median * 4 and too_long):
        return
    if second is not None and second["end"] - second["start"] > longest:
        boundary = max(second["end"] / 2, second["end"] - longest)
        first["end"] = second["start"] = boundary
    first["start"] = max(0, first["end"] - longest)


def _reconcile_segment(segment: dict, words: list[dict], median: float) -> None:
    """Segment and word edges agree: a first word starting over 0.5 s before the segment (which
    starts within it) starts at the segment instead (no earlier than a median duration before its
    end), else the segment starts with it; the same for the last word and the segment's end."""
    first, last = words[0], words[-1]
    if segment["start"] < first["end"] and segment["start"] - 0.5 > first["start"]:
        first["start"] = max(0, min(first["end"] - median, segment["start"]))
    else:
        segment["start"] = first["start"]
    if segment["end"] > last["start"] and segment["end"] + 0.5 < last["end"]:
        last["end"] = max(last["start"] + median, segment["end"])
    else:
        segment["end"] = last["end"]


def add_word_timestamps(
    *,
    segments: list[dict],
    backend: AligningBackend,
    tokenizer: Any,
    audio_features: np.ndarray,
    num_frames: int,
    prepend_punctuations: str = PREPEND_PUNCTUATIONS,
    append_punctuations: str = APPEND_PUNCTUATIONS,
    last_speech_timestamp: float,
    **kwargs,
) -> None:
    """Adds openai's ``words`` (word, start, end, probability dicts) to each segment of one
    window, adjusting the segments' start/end as openai's ``add_word_timestamps`` does.

    ``segments``: the window's segment dicts (``seek``, ``start``, ``end``, ``tokens``);
    ``last_speech_timestamp``: end of the last speech before them; ``kwargs`` go to
    :func:`find_alignment` (``medfilt_width``, ``qk_scale``, ``torch_cpu``)."""
    if len(segments) == 0:
        return
    per_segment = [[t for t in segment["tokens"] if t < tokenizer.eot] for segment in segments]
    text_tokens = list(itertools.chain.from_iterable(per_segment))
    alignment = find_alignment(backend, tokenizer, text_tokens, audio_features, num_frames, **kwargs)
    median, longest, any_duration = _duration_limits(alignment)
    if any_duration:
        _clip_sentence_ends(alignment, longest)
    merge_punctuations(alignment, prepend_punctuations, append_punctuations)
    offset = segments[0]["seek"] * HOP_LENGTH / SAMPLE_RATE
    index = 0
    for segment, tokens in zip(segments, per_segment):
        words, index = _take_words(alignment, index, len(tokens), offset)
        if words:
            _shorten_after_pause(words, last_speech_timestamp, median, longest)
            _reconcile_segment(segment, words, median)
            last_speech_timestamp = segment["end"]
        segment["words"] = words
