"""Token decoders of Whisper decoding in NumPy: greedy and sampling (``GreedyDecoder``), beam
search (``BeamSearchDecoder``) and the final choice among candidates
(``MaximumLikelihoodRanker``), reproducing openai-whisper's (``whisper/decoding.py``).

A batch holds ``n_audio * n_group`` rows (beams or samples of each audio, grouped). Each
step, ``update(tokens i64[rows, t], logits f32[rows, vocab], sum_logprobs f32[rows])`` picks
the next tokens, adds their log-probabilities to ``sum_logprobs`` in place, and returns
``(tokens i64[rows, t+1], completed, source_rows)``; ``source_rows`` (i64[rows], or None when
rows keep their places) tells the caller how to reorder its backend state, where openai's
beam search calls ``inference.rearrange_kv_cache``.

With ``keep_logprobs=True`` a decoder also keeps each row's chosen tokens' log-probabilities
(``token_logprobs`` f32[rows, steps], moved with the rows), the very values it adds into
``sum_logprobs``, and ``finalize`` leaves each candidate's in ``final_logprobs``; off (the
default), nothing else changes.

Log-probabilities are torch's float32 ``log_softmax`` bit for bit (``torch_float.log_softmax``),
and beam candidates come in the order ``torch.topk`` gives them, ties included, so beams,
scores and finished sequences equal openai's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from models.whisper.decoding import torch_float as tf
from models.whisper.decoding.filters import SHARED_MEMO, NormalizerMemo
from models.whisper.decoding.torch_float import F32, F64, log_probs_at, sleef_expf

# --------------------------------------------------------------------------
# torch.topk's order (libstdc++'s std::partial_sort with a NaN-first "greater")


def _before(a: float, b: float) -> bool:
    """torch's topk comparator: NaN ranks above numbers, otherwise larger first."""
    return (math.isnan(a) and not math.isnan(b)) or a > b


def _sift(heap: list, hole: int, length: int, item: tuple) -> None:
    """libstdc++'s ``__adjust_heap`` then ``__push_heap``: sink the hole to a leaf along the
    preferred children, then float ``item`` up from there."""
    top, child = hole, hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if _before(heap[child][0], heap[child - 1][0]):
            child -= 1
        heap[hole] = heap[child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        heap[hole] = heap[child - 1]
        hole = child - 1
    while hole > top:
        parent = (hole - 1) // 2
        if not _before(heap[parent][0], item[0]):
            break
        heap[hole] = heap[parent]
        hole = parent
    heap[hole] = item


def _heap_topk(values: np.ndarray, k: int) -> list[int]:
    """Indices of ``std::partial_sort(first, first + k, last)`` over ``values``: a heap of the
    first k, each later element strictly ahead of the heap's top replacing it, then
    ``sort_heap``. Elements that cannot enter are skipped in vectorised chunks."""
    heap = [(float(v), i) for i, v in enumerate(values[:k].tolist())]
    for parent in range((k - 2) // 2, -1, -1):
        _sift(heap, parent, k, heap[parent])
    pos, chunk = k, 64
    while pos < values.size and not math.isnan(heap[0][0]):
        seg = values[pos : pos + chunk]
        for c in np.flatnonzero((seg > heap[0][0]) | np.isnan(seg)).tolist():
            v = float(seg[c])
            if _before(v, heap[0][0]):
                _sift(heap, 0, k, (v, pos + c))
        pos, chunk = pos + chunk, min(chunk * 2, 8192)
    for last in range(k - 1, 0, -1):
        item, heap[last] = heap[last], heap[0]
        _sift(heap, 0, last, item)
    return [i for _, i in heap]


def torch_topk(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``torch.topk(values, k)`` (largest, sorted) of a float32 row on the CPU: values f32[k]
    and indices i64[k], in torch's order among equal values (:func:`torch_topk_rows`)."""
    top, idx = torch_topk_rows(np.asarray(values, dtype=F32)[None], k)
    return top[0], idx[0]


def _check_k(k: int, n: int) -> None:
    """torch's top-k follows std::partial_sort's order where 64 * k <= n (the order kept here)."""
    if k < 1 or 64 * k > n:
        raise ValueError(f"torch_topk: k={k} needs 1 <= 64*k <= {n} (partial_sort's range)")


def torch_topk_rows(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``torch.topk(row, k)`` of every row of ``values`` f32[rows, n]: values f32[rows, k] and
    indices i64[rows, k]. Without ties the order is by value; with ties it is the heap order
    of ``std::partial_sort``, which torch uses when ``64 * k <= n`` (always so for Whisper's
    vocabularies). The k + 1 best of every row are found together (one argmax over all rows
    per place); a row whose k + 1 best hold a tie or a NaN takes the heap's order."""
    values = np.asarray(values, dtype=F32)
    _check_k(k, values.shape[-1])
    rows = np.arange(values.shape[0])
    work = values.copy()
    picked = np.empty((values.shape[0], k + 1), dtype=np.int64)
    for place in range(k + 1):
        picked[:, place] = np.argmax(work, axis=1)
        work[rows, picked[:, place]] = -np.inf
    top = np.take_along_axis(values, picked, axis=1)
    idx = picked[:, :k].copy()
    for row in np.flatnonzero(np.isnan(top).any(axis=1) | (top[:, :-1] == top[:, 1:]).any(axis=1)):
        idx[row] = _heap_topk(values[row], k)
    return np.take_along_axis(values, idx, axis=1), idx


def topk_log_probs(
    logits: np.ndarray, top: np.ndarray, logs: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``torch.topk(log_softmax(logits), k)`` of every row, the log-probabilities being
    ``(logits - top) - logs`` in float32 (``torch_float.log_normalizers``' terms): values
    f32[rows, k] and indices i64[rows, k] in torch's order, ties and NaN included. The Mojo
    twin keeps std::partial_sort's heap (:func:`_heap_topk`) in one pass over each row, never
    forming the log-probabilities; the NumPy code forms them and takes
    :func:`torch_topk_rows`."""
    logits = np.asarray(logits, dtype=F32)
    rows, n = logits.shape
    _check_k(k, n)
    lib = tf.native_library()
    if lib is not None and logits.strides[1] == 4 and logits.strides[0] % 4 == 0:
        top = np.ascontiguousarray(top, dtype=F32)
        logs = np.ascontiguousarray(logs, dtype=F32)
        values = np.empty((rows, k), F32)
        idx = np.empty((rows, k), np.int64)
        lib.kv_topk_log_probs(
            logits.ctypes.data, rows, n, logits.strides[0] // 4, top.ctypes.data, logs.ctypes.data, k,
            values.ctypes.data, idx.ctypes.data,
        )  # fmt: skip
        return values, idx
    with np.errstate(invalid="ignore"):
        logprobs = (logits - np.asarray(top, F32)[:, None]) - np.asarray(logs, F32)[:, None]
    return torch_topk_rows(logprobs, k)


# --------------------------------------------------------------------------
# Sampling


def sampling_probs(logits: np.ndarray, temperature: float, top: np.ndarray | None = None) -> np.ndarray:
    """Probabilities f32[rows, vocab] of ``Categorical(logits=logits / temperature)``: the
    logits divided in float32, ``e = exp(z - max z)`` with SLEEF's float32 exp (torch's
    softmax kernel's), then ``e`` times the reciprocal of its float64 sum rounded to float32.
    torch normalises the tempered logits by their logsumexp first and takes its exps of
    ``(z - lse) - max`` — one exp pass more per row for the same values within float32
    rounding of the exps' arguments (about a spacing of ``max |z|``, relative; the tests hold
    two). Sampling is random in openai-whisper too: the contract here is torch's
    probabilities within float tolerance (tests/test_filters_search.py,
    tests/test_whisper_max.py). :func:`sample` draws from the same ``e`` over their float64
    sum without forming these (one pass over a row fewer). ``top``: the rows' maxima of
    ``logits`` when the caller has them (``logits.max(axis=1)`` exactly, NaN where a row holds
    one)."""
    e, blocks = _exps_and_blocks(logits, temperature, top)
    total = _ordered_totals(blocks).astype(F32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return e * (F32(1.0) / total)[:, None]


#: tokens per block of the sampling CDF (:func:`sample`; a multiple of :data:`_RUN`)
_CDF_BLOCK = 256
#: weights per float32 partial sum inside a block (:func:`_block_sums`; a multiple of 16)
_RUN = 64


def _block_sums(e: np.ndarray, block: int) -> np.ndarray:
    """The sums f64[rows, blocks] of each ``block`` weights (a multiple of :data:`_RUN`; the
    last block perhaps shorter) of the rows of ``e`` f32[rows, n] in the Mojo twin's order:
    each run of :data:`_RUN` summed in sixteen float32 lanes (lane j adds the run's elements
    j, j + 16, ... in turn), the runs' lanes added in turn into eight float64 lanes (lanes 0-7
    of a run, then 8-15), folded by halves. Zeros pad the last block: they add nothing."""
    rows, n = e.shape
    nb = max(1, -(-n // block))
    padded = np.zeros((rows, nb * block), F32)
    padded[:, :n] = e
    runs = padded.reshape(rows, nb, block // _RUN, _RUN // 16, 16)
    lanes32 = np.cumsum(runs, axis=3, dtype=F32)[:, :, :, -1, :]  # in order, float32
    halves = lanes32.reshape(rows, nb, block // _RUN * 2, 8).astype(F64)  # run 0's 0-7, its 8-15, run 1's ...
    return tf.fold8(np.cumsum(halves, axis=2)[:, :, -1, :])


def _ordered_totals(blocks: np.ndarray) -> np.ndarray:
    """The rows' sums f64[rows] of ``blocks`` f64[rows, blocks], added left to right."""
    return np.cumsum(blocks, axis=1)[:, -1]


def _exps_and_blocks(
    logits: np.ndarray, temperature: float, top: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The sampler's weights ``e = exp(z - max z)`` f32[rows, vocab] of the tempered logits
    ``z = logits / temperature`` (see :func:`sampling_probs`) and the float64 sums of their
    blocks of :data:`_CDF_BLOCK` f64[rows, blocks]. The Mojo twin makes both in one pass over
    a row; the NumPy code takes the same float32 and float64 steps in the same order (the
    tests hold the two equal bit for bit)."""
    x = np.asarray(logits, dtype=F32)
    rows, n = x.shape
    t = F32(temperature)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if top is None:
            top = x.max(axis=1) if n else np.full(rows, -np.inf, F32)
        top = np.ascontiguousarray(top, dtype=F32)
        lib = tf.native_library()
        if lib is not None and n > 0 and x.strides[1] == 4 and x.strides[0] % 4 == 0:
            e = np.empty((rows, n), F32)
            blocks = np.empty((rows, -(-n // _CDF_BLOCK)), F64)
            lib.kv_sampling_exps(
                x.ctypes.data, rows, n, x.strides[0] // 4, t, top.ctypes.data, e.ctypes.data,
                blocks.ctypes.data, _CDF_BLOCK,
            )  # fmt: skip
            return e, blocks
        shift = _shift((top / t).astype(F32))  # z's maxima: dividing keeps the order
        e = sleef_expf(x / t - shift[:, None])
        return e, _block_sums(e, _CDF_BLOCK)


def _shift(top: np.ndarray) -> np.ndarray:
    """What is subtracted before the exps: the row maximum, 0 where infinite (NaN stays)."""
    return np.where(np.isinf(top), F32(0.0), top).astype(F32)


def sample(
    logits: np.ndarray, temperature: float, rng: np.random.Generator, top: np.ndarray | None = None
) -> np.ndarray:
    """One token i64[rows] per row drawn from ``sampling_probs(logits, temperature)`` with
    ``rng`` (one uniform per row, inverse CDF), so a seeded generator repeats its draws.
    ``top``: as :func:`sampling_probs`'.

    The CDF is that of the weights ``e`` (:func:`_exps_and_blocks`: the probabilities before
    their scaling by ``1 / sum``), found in two levels, in float64: the running total of
    blocks of :data:`_CDF_BLOCK` weights, then the running sum inside the one block the draw
    lands in (a running sum over the whole vocabulary is a chain of ~52,000 dependent
    additions per row), for all rows at once; the draw is the uniform times the total."""
    weights, blocks = _exps_and_blocks(logits, temperature, top)
    rows, n = weights.shape
    uniforms = np.ascontiguousarray(rng.random(rows), dtype=F64)
    lib = tf.native_library()
    if lib is not None and n > 0:
        out = np.empty(rows, np.int64)
        lib.kv_sample_rows(
            weights.ctypes.data,
            blocks.ctypes.data,
            rows,
            n,
            _CDF_BLOCK,
            uniforms.ctypes.data,
            out.ctypes.data,
        )
        if (out < 0).any():
            raise ValueError("sample: a row of logits has no finite entry to draw from")
        return out
    cum = np.cumsum(blocks, axis=1)
    total = cum[:, -1]
    if not np.all(np.isfinite(total) & (total > 0)):
        raise ValueError("sample: a row of logits has no finite entry to draw from")
    draws = uniforms * total
    # the block each draw lands in: searchsorted(cum, draw, side="right") (cum never falls)
    block = np.minimum(np.count_nonzero(cum <= draws[:, None], axis=1), cum.shape[1] - 1)
    at = block[:, None] * _CDF_BLOCK + np.arange(_CDF_BLOCK)
    inside_block = at < n
    values = np.where(inside_block, weights[np.arange(rows)[:, None], np.minimum(at, n - 1)], F32(0.0))
    inside = np.cumsum(values, axis=1, dtype=F64)
    before = np.where(block > 0, cum[np.arange(rows), block - 1], 0.0)
    inside[block > 0] += before[block > 0, None]
    out = block * _CDF_BLOCK + np.count_nonzero((inside <= draws[:, None]) & inside_block, axis=1)
    for k in np.flatnonzero(out >= np.minimum(block * _CDF_BLOCK + _CDF_BLOCK, n)):
        # past the block's end by a rounding: the last drawable token
        out[k] = int(np.flatnonzero(weights[k, : out[k]] > 0)[-1])
    return out.astype(np.int64)


# --------------------------------------------------------------------------
# Decoders


class GreedyDecoder:
    """The likeliest token at temperature 0, else a draw from the tempered distribution;
    rows that ended with EOT keep adding EOT without adding to their log-probability.
    ``keep_logprobs``: see the module docstring (a row's entries after its EOT are 0)."""

    def __init__(
        self,
        temperature: float,
        eot: int,
        rng: np.random.Generator | None = None,
        memo: NormalizerMemo | None = None,
        keep_logprobs: bool = False,
    ):
        self.temperature = temperature
        self.eot = eot
        self.rng = rng if rng is not None else np.random.default_rng()
        self.memo = memo if memo is not None else SHARED_MEMO
        self.keep_logprobs = keep_logprobs
        self.token_logprobs: np.ndarray | None = None
        self.final_logprobs: list | None = None

    def reset(self) -> None:
        """Forget the previous decode's kept log-probabilities."""
        self.token_logprobs = None
        self.final_logprobs = None

    def update(
        self, tokens: np.ndarray, logits: np.ndarray, sum_logprobs: np.ndarray
    ) -> tuple[np.ndarray, bool, None]:
        """Append each row's next token; add its log-probability to ``sum_logprobs``."""
        top, logs = self.memo(logits)
        if self.temperature == 0:
            chosen = np.argmax(logits, axis=-1).astype(np.int64)
        else:
            chosen = sample(logits, self.temperature, self.rng, top)
        live = tokens[:, -1] != self.eot
        with np.errstate(invalid="ignore"):
            added = log_probs_at(logits, top, logs, chosen) * live.astype(F32)
            sum_logprobs += added
        if self.keep_logprobs:
            self.token_logprobs = _appended(self.token_logprobs, added, None)
        chosen[~live] = self.eot
        tokens = np.concatenate([tokens, chosen[:, None]], axis=-1)
        return tokens, bool((tokens[:, -1] == self.eot).all()), None

    def finalize(self, tokens: np.ndarray, sum_logprobs: np.ndarray) -> tuple[np.ndarray, list]:
        """Every row ``tokens`` i64[n_audio, n_group, t] gets a closing EOT; the scores
        ``sum_logprobs`` f32[n_audio, n_group] become lists of Python floats (the closing
        EOT's kept log-probability is 0: nothing was added for it)."""
        tokens = np.pad(tokens, ((0, 0), (0, 0), (0, 1)), constant_values=self.eot)
        if self.keep_logprobs:
            n_audio, n_group = tokens.shape[:2]
            kept = _appended(self.token_logprobs, np.zeros(n_audio * n_group, F32), None)
            self.final_logprobs = [list(group) for group in kept.reshape(n_audio, n_group, -1)]
        return tokens, np.asarray(sum_logprobs).tolist()


class BeamSearchDecoder:
    """Beam search with openai's bookkeeping: each step every beam offers its ``beam_size + 1``
    best tokens, each audio keeps its ``beam_size`` best unfinished candidates and files
    those ending in EOT as finished, until every audio has ``round(beam_size * patience)``
    finished sequences."""

    def __init__(
        self,
        beam_size: int,
        eot: int,
        patience: float | None = None,
        memo: NormalizerMemo | None = None,
        keep_logprobs: bool = False,
    ):
        self.beam_size = beam_size
        self.eot = eot
        self.patience = patience or 1.0
        self.max_candidates = round(beam_size * self.patience)
        self.memo = memo if memo is not None else SHARED_MEMO
        self.keep_logprobs = keep_logprobs
        self.finished: list[dict[tuple, float]] | None = None
        self.sequences: dict[tuple, np.ndarray] = {}
        self.sequence_logprobs: dict[tuple, np.ndarray] = {}
        self.token_logprobs: np.ndarray | None = None
        self.final_logprobs: list | None = None
        if self.max_candidates <= 0:
            raise ValueError(f"BeamSearchDecoder: invalid beam size ({beam_size}) or patience ({patience})")

    def reset(self) -> None:
        """Forget the finished sequences (and kept log-probabilities) of the previous decode."""
        self.finished = None
        self.sequences = {}
        self.sequence_logprobs = {}
        self.token_logprobs = None
        self.final_logprobs = None

    def update(
        self, tokens: np.ndarray, logits: np.ndarray, sum_logprobs: np.ndarray
    ) -> tuple[np.ndarray, bool, np.ndarray]:
        """Advance every audio's beams one token; returns the new rows, whether every audio
        has enough finished sequences, and the source row of each new row."""
        if tokens.shape[0] % self.beam_size != 0:
            raise ValueError(f"BeamSearchDecoder: {tokens.shape[0]} rows is no multiple of {self.beam_size}")
        n_audio = tokens.shape[0] // self.beam_size
        if self.finished is None:
            self.finished = [{} for _ in range(n_audio)]
        top, logs = self.memo(logits)
        sources: list[int] = []
        picked: list[int] = []
        filed: list[tuple[tuple, int]] = []
        for i in range(n_audio):
            scores, origin = self._candidates(tokens, logits, top, logs, sum_logprobs, i)
            newly = self._select(scores, origin, sum_logprobs, sources, picked)
            filed += self._file_finished(self.finished[i], newly, tokens, origin)
        source = np.asarray(sources, dtype=np.int64)
        if self.keep_logprobs:
            self._keep_logprobs(logits, top, logs, source, np.asarray(picked, dtype=np.int64), filed)
        tokens = np.concatenate([tokens[source], np.asarray(picked, dtype=np.int64)[:, None]], axis=-1)
        completed = all(len(done) >= self.max_candidates for done in self.finished)
        return tokens, completed, source

    def _candidates(
        self,
        tokens: np.ndarray,
        logits: np.ndarray,
        top: np.ndarray,
        logs: np.ndarray,
        sum_logprobs: np.ndarray,
        audio: int,
    ) -> tuple[dict, dict]:
        """Every beam's ``beam_size + 1`` best continuations of audio ``audio``: score (Python
        float of the float32 sum) and source row per candidate, keyed by (prefix, token) in
        openai's insertion order (a repeated candidate keeps its first place, the last
        row's score and source)."""
        scores: dict[tuple, float] = {}
        origin: dict[tuple, int] = {}
        first = audio * self.beam_size
        group = slice(first, first + self.beam_size)
        best, best_idx = topk_log_probs(logits[group], top[group], logs[group], self.beam_size + 1)
        for row in range(first, first + self.beam_size):
            values, idx = best[row - first], best_idx[row - first]
            prefix = tokens[row].tobytes()
            base = F32(sum_logprobs[row])
            for value, token in zip(values.tolist(), idx.tolist()):
                key = (prefix, token)
                scores[key] = float(base + F32(value))
                origin[key] = row
        return scores, origin

    def _select(
        self, scores: dict, origin: dict, sum_logprobs: np.ndarray, sources: list, picked: list
    ) -> dict:
        """Walk the candidates best first (a stable sort): EOT-ended ones are finished, the
        others fill the audio's beams (their scores into ``sum_logprobs``) until
        ``beam_size`` are kept. Returns the finished ones found on the way, key -> score."""
        finished: dict[tuple, float] = {}
        saved = 0
        for key in sorted(scores, key=scores.get, reverse=True):
            if key[1] == self.eot:
                finished[key] = scores[key]
                continue
            sum_logprobs[len(sources)] = scores[key]
            sources.append(origin[key])
            picked.append(key[1])
            saved += 1
            if saved == self.beam_size:
                break
        return finished

    def _file_finished(self, done: dict, newly: dict, tokens: np.ndarray, origin: dict) -> list:
        """Add newly finished sequences best first until ``max_candidates`` are held; returns
        the ``(key, source row)`` of those added."""
        filed = []
        for key in sorted(newly, key=newly.get, reverse=True):
            if len(done) >= self.max_candidates:
                break
            done[key] = newly[key]
            self.sequences[key] = np.append(tokens[origin[key]], np.int64(self.eot))
            filed.append((key, origin[key]))
        return filed

    def _keep_logprobs(self, logits, top, logs, source: np.ndarray, picked: np.ndarray, filed: list) -> None:
        """Each kept beam's history (its source row's) plus its new token's log-probability,
        and each newly finished sequence's history plus its EOT's: the values its candidate
        score was summed from (the same float32 ``(logit - max) - log_sum`` as
        ``_candidates``' row, taken at one index)."""
        with np.errstate(invalid="ignore"):
            for key, row in filed:
                eot = (logits[row, self.eot] - top[row]) - logs[row]
                before = self.token_logprobs[row] if self.token_logprobs is not None else np.zeros(0, F32)
                self.sequence_logprobs[key] = np.append(before, eot).astype(F32)
            added = (logits[source, picked] - top[source]) - logs[source]
        self.token_logprobs = _appended(self.token_logprobs, added, source)

    def finalize(self, preceding_tokens: np.ndarray, sum_logprobs: np.ndarray) -> tuple[list, list]:
        """The finished sequences of each audio (i64 arrays ending in EOT) and their scores;
        an audio with fewer than ``beam_size`` gets its best unfinished beams closed with EOT.
        ``preceding_tokens`` i64[n_audio, beam_size, t], ``sum_logprobs`` f32[n_audio, beam]."""
        sum_logprobs = np.asarray(sum_logprobs)
        finished = self.finished if self.finished is not None else [{} for _ in range(len(sum_logprobs))]
        for i, done in enumerate(finished):
            if len(done) >= self.beam_size:
                continue
            for j in list(np.argsort(sum_logprobs[i]))[::-1]:
                row = preceding_tokens[i, j]
                key = (row.tobytes(), self.eot)
                done[key] = float(sum_logprobs[i][j])
                self.sequences[key] = np.append(row, np.int64(self.eot))
                if self.keep_logprobs:  # closed here: nothing added for its EOT
                    kept = (
                        self.token_logprobs[i * self.beam_size + j] if self.token_logprobs is not None else []
                    )
                    self.sequence_logprobs[key] = np.append(np.asarray(kept, F32), F32(0.0))
                if len(done) >= self.beam_size:
                    break
        tokens = [[self.sequences[key] for key in done] for done in finished]
        if self.keep_logprobs:
            self.final_logprobs = [[self.sequence_logprobs[key] for key in done] for done in finished]
        return tokens, [list(done.values()) for done in finished]


def _appended(kept: np.ndarray | None, added: np.ndarray, source: np.ndarray | None) -> np.ndarray:
    """``kept`` f32[rows, steps] (None: no step yet) with its rows taken from ``source`` (None:
    in place), then ``added`` f32[rows] as one more step."""
    added = np.asarray(added, dtype=F32)[:, None]
    if kept is None:
        return added
    return np.concatenate([kept if source is None else kept[source], added], axis=1)


class MaximumLikelihoodRanker:
    """Picks each audio's candidate of highest score: its log-probability over its length
    (``length_penalty`` None) or over the Google NMT penalty ``((5 + length) / 6) ** alpha``,
    in Python floats as openai computes it."""

    def __init__(self, length_penalty: float | None):
        self.length_penalty = length_penalty

    def _score(self, logprob: float, length: int) -> float:
        """One candidate's score."""
        penalty = length if self.length_penalty is None else ((5 + length) / 6) ** self.length_penalty
        return logprob / penalty

    def rank(self, tokens: list[list[Any]], sum_logprobs: list[list[float]]) -> list[int]:
        """Index of the chosen candidate of each audio (the first of equal best scores)."""
        return [
            int(np.argmax([self._score(lp, len(t)) for t, lp in zip(group, logprobs)]))
            for group, logprobs in zip(tokens, sum_logprobs)
        ]
