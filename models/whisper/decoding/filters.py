"""Logit filters of Whisper decoding in NumPy, and the memo of the rows' log-softmax
normalizers they share with the token decoders (``search.py``).

The filters reproduce openai-whisper's ``SuppressBlank``, ``SuppressTokens`` and
``ApplyTimestampRules`` (``whisper/decoding.py``): each ``apply(logits, tokens)`` masks
``logits`` f32[n_rows, vocab] in place with -inf, given ``tokens`` i64[n_rows, t], the rows'
tokens so far. A tokenizer is duck-typed as openai's (``eot``, ``no_timestamps``,
``timestamp_begin``, ``encode``).

openai-whisper computes log-probabilities with torch's CPU ``log_softmax`` in float32, and
its results (the beams kept, the timestamp rule, the ``sum_logprobs`` written into results)
depend on that kernel's last bits; ``torch_float.log_normalizers`` reproduces them bit for
bit. That exactness costs about half a millisecond per row and step; ``exact=False``
(``NormalizerMemo``) gives it up for speed and stays within a float32 step of torch.

The timestamp rule and the decoders share each row's normalizer through a ``NormalizerMemo``
(``SHARED_MEMO`` unless one is passed), so a row the rule leaves alone is normalised once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.whisper.decoding.torch_float import (
    NEG_INF,
    log_normalizers,
    split_log_normalizers,
    stamps_beat_text,
)

# --------------------------------------------------------------------------
# The normalizer memo


class NormalizerMemo:
    """``log_normalizers`` of a step's logit rows, handed from the timestamp rule to the
    decoder of the same step, so that each row's normalizer is computed once: the rule
    computes them (:meth:`compute`) and computes again the rows it masks afterwards
    (:meth:`masked`); the decoder takes them (calling the memo) when it is handed the very
    array the rule finished with — the rule is the last filter (openai's order), so nothing
    changes the array between the two — and computes them itself otherwise. An entry serves
    one call; each thread has its own. ``exact=False``: see ``log_normalizers``.

    (It compared the rows value for value before, to find those the rule had changed: a copy
    and a comparison of every logit each step, ~0.05 ms of a five-row beam step's 0.4.)"""

    def __init__(self, exact: bool = True) -> None:
        self.exact = exact
        self._local = threading.local()

    def compute(self, logits: np.ndarray, split: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(front, max, log_sum)`` f32[n_rows] of ``logits`` f32[n_rows, vocab]: the maxima
        of ``logits[:, :split]`` and the normalizers (``split_log_normalizers``), these kept
        for the decoder of this step (read them; they are handed on)."""
        front, top, logs = split_log_normalizers(logits, split, self.exact)
        self._local.entry = (logits, top, logs)
        return front, top, logs

    def masked(self, logits: np.ndarray, rows, masked_before: int = 0) -> None:
        """Rows ``rows`` of ``logits`` changed since :meth:`compute`: their normalizers again.
        ``masked_before``: every value of those rows before this column is now -inf, so only
        the rest is read — from a multiple of :data:`_ALIGN` columns, so that every value
        keeps its lane of the sum (the -inf before add exact zeros)."""
        entry = getattr(self._local, "entry", None)
        rows = np.asarray(rows, dtype=np.int64)
        if entry is None or entry[0] is not logits or not rows.size:
            return
        start = masked_before - masked_before % _ALIGN
        if logits.shape[1] - start < _ALIGN:
            start = 0
        entry[1][rows], entry[2][rows] = log_normalizers(logits[rows, start:], self.exact)

    def __call__(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(max, log_sum)`` f32[n_rows] of ``logits``: the rule's, when this is the array it
        finished with, else computed now."""
        entry = getattr(self._local, "entry", None)
        self._local.entry = None
        if entry is not None and entry[0] is logits:
            return entry[1], entry[2]
        return log_normalizers(logits, self.exact)


#: a multiple of every vector width the sums emulate (``torch_float.torch_lanes``: 8 or 16)
_ALIGN = 64

SHARED_MEMO = NormalizerMemo()  # the default memo of the timestamp rule and the decoders


# --------------------------------------------------------------------------
# Logit filters


class SuppressBlank:
    """At the first sampled position, forbid a blank (the encoding of " ") and end of text."""

    def __init__(self, tokenizer: Any, sample_begin: int):
        self.sample_begin = sample_begin
        self.ids = np.asarray(list(tokenizer.encode(" ")) + [tokenizer.eot], dtype=np.int64)

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        """Mask the blank and EOT when ``tokens`` end at the first sampled position."""
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.ids] = NEG_INF


class SuppressTokens:
    """Forbid a fixed set of tokens at every position."""

    def __init__(self, suppress_tokens: Sequence[int]):
        self.ids = np.asarray(list(suppress_tokens), dtype=np.int64)

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        """Mask the suppressed tokens of every row."""
        logits[:, self.ids] = NEG_INF


class ApplyTimestampRules:
    """Whisper's timestamp grammar: no ``<|notimestamps|>``; timestamps come in pairs except
    right before EOT; they never decrease and a segment is never empty; the first token is a
    timestamp no later than ``max_initial_timestamp_index``; and when the timestamps together
    are likelier than the best text token, a timestamp it is."""

    def __init__(
        self,
        tokenizer: Any,
        sample_begin: int,
        max_initial_timestamp_index: int | None,
        memo: NormalizerMemo | None = None,
    ):
        self.sample_begin = sample_begin
        self.max_initial_timestamp_index = max_initial_timestamp_index
        self.eot = int(tokenizer.eot)
        self.timestamp_begin = int(tokenizer.timestamp_begin)
        nts = tokenizer.no_timestamps
        self.no_timestamps = None if nts is None else int(nts)
        self.memo = memo if memo is not None else SHARED_MEMO

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        """Mask ``logits`` by the rules, in openai's order (the mass rule reads the others)."""
        if self.no_timestamps is not None:
            logits[:, self.no_timestamps] = NEG_INF
        self._pairing_rules(logits, tokens)
        if tokens.shape[1] == self.sample_begin:
            logits[:, : self.timestamp_begin] = NEG_INF
            if self.max_initial_timestamp_index is not None:
                logits[:, self.timestamp_begin + self.max_initial_timestamp_index + 1 :] = NEG_INF
        self._mass_rule(logits)

    def _pairing_rules(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        """Pairs and monotonicity, from the sampled tokens of each row."""
        sampled = tokens[:, self.sample_begin :]
        n_rows, n = sampled.shape
        if n == 0:
            return
        tb = self.timestamp_begin
        is_ts = sampled >= tb
        last = is_ts[:, -1]
        penultimate = is_ts[:, -2] if n >= 2 else np.ones(n_rows, dtype=bool)
        has_ts = is_ts.any(axis=1)
        last_at = n - 1 - np.argmax(is_ts[:, ::-1], axis=1)
        last_ts = sampled[np.arange(n_rows), last_at]
        upper = np.where(last & ~penultimate, last_ts, last_ts + 1)
        for k in np.flatnonzero(last | has_ts):
            if last[k]:
                if penultimate[k]:
                    logits[k, tb:] = NEG_INF  # a pair just closed: text or EOT next
                else:
                    logits[k, : self.eot] = NEG_INF  # an open pair: no text
            if has_ts[k]:
                logits[k, tb : upper[k]] = NEG_INF

    def _mass_rule(self, logits: np.ndarray) -> None:
        """Force a timestamp in rows whose timestamps' total log-probability (logsumexp)
        beats the best text token's, comparing float32 values as openai does."""
        tb = self.timestamp_begin
        text_max, top, logs = self.memo.compute(logits, tb)
        forced = np.flatnonzero(stamps_beat_text(logits, tb, text_max, top, logs))
        logits[forced, :tb] = NEG_INF
        self.memo.masked(logits, forced, masked_before=tb)
