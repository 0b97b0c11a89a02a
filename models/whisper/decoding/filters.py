"""Logit filters of Whisper decoding in NumPy, and the float32 numerics they share with the
token decoders (``search.py``).

The filters reproduce openai-whisper's ``SuppressBlank``, ``SuppressTokens`` and
``ApplyTimestampRules`` (``whisper/decoding.py``): each ``apply(logits, tokens)`` masks
``logits`` f32[n_rows, vocab] in place with -inf, given ``tokens`` i64[n_rows, t], the rows'
tokens so far. A tokenizer is duck-typed as openai's (``eot``, ``no_timestamps``,
``timestamp_begin``, ``encode``).

openai-whisper computes log-probabilities with torch's CPU ``log_softmax`` in float32, and
its results (the beams kept, the timestamp rule, the ``sum_logprobs`` written into results)
depend on that kernel's last bits. ``log_softmax`` here is that kernel's arithmetic, bit for
bit: the row maximum, SLEEF's ``expf`` (u10) of ``x - max`` summed in the kernel's SIMD lanes
and folded by its shuffle tree, SLEEF's ``logf`` (u10) of the sum, then ``(x - max) - log``.
SLEEF's fused multiply-adds are emulated in float64, where the product is exact. The lane
count follows the CPU as torch's dispatch does (16 with AVX-512, 8 with AVX2); torch's
scalar "default" build and non-x86 CPUs are not reproduced bit for bit. This exactness costs
about half a millisecond per row and step; ``exact=False`` (``log_normalizers``,
``NormalizerMemo``) gives it up for speed and stays within a float32 step of torch.

The timestamp rule and the decoders share each row's normalizer through a ``NormalizerMemo``
(``SHARED_MEMO`` unless one is passed), so a row the rule leaves alone is normalised once.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

F32 = np.float32
F64 = np.float64
NEG_INF = F32(-np.inf)

# --------------------------------------------------------------------------
# torch's CPU float32 numerics

# SLEEF's single-precision constants (sleefsimdsp.c: xexpf, xlogf_u1).
_R_LN2 = F32(1.442695040888963407359924681001892137426645954152985934135449406931)
_LN2_HI = F32(0.693145751953125)
_LN2_LO = F64(F32(1.428606765330187045e-06))
_EXP_POLY = tuple(
    F64(F32(c))
    for c in (
        0.000198527617612853646278381,
        0.00139304355252534151077271,
        0.00833336077630519866943359,
        0.0416664853692054748535156,
        0.166666671633720397949219,
        0.5,
    )
)
_LOG_POLY = tuple(F64(F32(c)) for c in (0.3027294874, 0.3996108174, 0.6666694880))
_LN2_DF = (F32(0.69314718246459960938), F32(-1.904654323148236017e-09))

# torch's CPU capability names (ATEN_CPU_CAPABILITY) and their float lanes per vector.
_CAPABILITY_LANES = {"avx512": 16, "avx2": 8, "default": 8}


@functools.cache
def torch_lanes() -> int:
    """Float32 lanes of the SIMD vectors torch's CPU kernels use on this machine: 16 with
    AVX-512, else 8. ``ATEN_CPU_CAPABILITY`` overrides the CPU's flags, as it does for torch.
    The lane count fixes the order of the sums in ``log_softmax``."""
    forced = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    if forced in _CAPABILITY_LANES:
        return _CAPABILITY_LANES[forced]
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return 16
    if not flags:
        return 16
    return 16 if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(flags) else 8


class _Scratch(threading.local):
    """Per-thread scratch arrays for ``sleef_expf``, reused across calls: fresh arrays of a
    vocabulary's size come from ``mmap`` and cost page faults on every call."""

    def __init__(self) -> None:
        self.size = -1
        self.f32: list[np.ndarray] = []
        self.f64: list[np.ndarray] = []
        self.i32 = np.empty(0, np.int32)

    def get(self, n: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """Views of length ``n``: four float32, two float64 and one int32 array."""
        if n > self.size:
            self.size = n
            self.f32 = [np.empty(n, F32) for _ in range(4)]
            self.f64 = [np.empty(n, F64) for _ in range(2)]
            self.i32 = np.empty(n, np.int32)
        return [a[:n] for a in self.f32], [a[:n] for a in self.f64], self.i32[:n]


_SCRATCH = _Scratch()
_CHUNK = 1 << 16  # elements per sleef_expf pass: bounds the scratch arrays


def _round_f32_inplace(x64: np.ndarray, x32: np.ndarray) -> None:
    """Round ``x64`` to float32 in place (``x32`` receives the float32 values)."""
    np.copyto(x32, x64, casting="unsafe")
    np.copyto(x64, x32)


def sleef_expf(d: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``exp(d)`` of float32 ``d`` exactly as SLEEF's ``expf`` (u10) vector code computes it
    (torch's ``Vectorized<float>::exp``): Cody-Waite reduction by ``q * ln 2``, a degree-6
    polynomial in fused multiply-adds, scaling by ``2**q``; 0 below -104, inf above 100.
    Into ``out`` (1-D, of ``d``'s size) when given."""
    d = np.asarray(d, dtype=F32)
    flat = d.reshape(-1)
    result = np.empty(flat.size, F32) if out is None else out
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, flat.size, _CHUNK):
            _expf_chunk(flat[start : start + _CHUNK], result[start : start + _CHUNK])
    return result.reshape(d.shape) if out is None else result


def _expf_chunk(d: np.ndarray, out: np.ndarray) -> None:
    """``sleef_expf`` of one chunk (at most ``_CHUNK`` elements) into ``out``."""
    (dc, q, s, u), (s64, u64), qi = _SCRATCH.get(d.size)
    low, high = d < F32(-104.0), d > F32(100.0)
    np.copyto(dc, d)
    dc[low | high] = 0  # their results are fixed below; 0 keeps ldexp off its slow paths
    np.multiply(dc, _R_LN2, out=q)
    np.rint(q, out=q)
    np.multiply(q, _LN2_HI, out=s)
    np.subtract(dc, s, out=s)  # exact product: fma(q, -ln2_hi, d) is this one rounding
    np.multiply(q, _LN2_LO, out=u64, dtype=F64)
    np.subtract(s, u64, out=s64, dtype=F64)  # fma(q, -ln2_lo, s), rounded next
    _round_f32_inplace(s64, s)
    np.multiply(s64, _EXP_POLY[0], out=u64)
    u64 += _EXP_POLY[1]
    for c in _EXP_POLY[2:]:
        _round_f32_inplace(u64, u)
        u64 *= s64
        u64 += c
    _round_f32_inplace(u64, u)
    np.multiply(s, s, out=dc)
    np.multiply(u64, dc, out=u64, dtype=F64)
    u64 += s64
    np.copyto(u, u64, casting="unsafe")
    u += F32(1.0)
    np.copyto(qi, q, casting="unsafe")
    np.ldexp(u, qi, out=out)
    out[low] = 0
    out[high] = np.inf


def _fma(a: Any, b: Any, c: Any) -> np.ndarray:
    """``a * b + c`` of float32 values rounded once to float32 (a fused multiply-add)."""
    return (np.asarray(a, F64) * np.asarray(b, F64) + np.asarray(c, F64)).astype(F32)


def _two_sum_f32(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SLEEF's ``dfadd2``: ``x + y`` as a float32 pair (sum, rounding error)."""
    r = x + y
    v = r - x
    return r, (x - (r - v)) + (y - v)


def sleef_logf(x: np.ndarray) -> np.ndarray:
    """``log(x)`` of positive finite float32 ``x`` exactly as SLEEF's ``logf`` (u10) vector
    code computes it: ``x = m * 2**e`` with m in [0.75, 1.5), ``log m`` from
    ``2 atanh((m-1)/(m+1))`` in double-float arithmetic, plus ``e * ln 2``. With 16 lanes
    (AVX-512) m is the mantissa as ``vgetmant`` gives it, otherwise ``x * 2**-e``."""
    x = np.asarray(x, dtype=F32)
    e = (np.frexp(x * F32(1.0 / 0.75))[1] - 1).astype(F32)
    if torch_lanes() == 16:
        mant = np.frexp(x)[0] * F32(2.0)
        m = np.where(mant >= F32(1.5), mant * F32(0.5), mant).astype(F32)
    else:
        m = np.ldexp(x, -e.astype(np.int32)).astype(F32)
    s_hi = _LN2_DF[0] * e
    s_lo = _fma(_LN2_DF[1], e, _fma(_LN2_DF[0], e, -s_hi))
    num_hi, num_lo = _two_sum_f32(np.full_like(m, -1.0), m)
    den_hi, den_lo = _two_sum_f32(np.full_like(m, 1.0), m)
    t = F32(1.0) / den_hi
    q_hi = num_hi * t
    u = _fma(t, num_hi, -q_hi)
    q_lo = _fma(-den_lo, t, _fma(-den_hi, t, F32(1.0)))
    q_lo = _fma(q_hi, q_lo, _fma(num_lo, t, u))
    x2 = q_hi * q_hi
    poly = _fma(_fma(_LOG_POLY[0], x2, _LOG_POLY[1]), x2, _LOG_POLY[2])
    r_hi = s_hi + q_hi * F32(2.0)
    r_lo = (((s_hi - r_hi) + q_hi * F32(2.0)) + s_lo) + q_lo * F32(2.0)
    tail = (x2 * q_hi) * poly
    out_hi = r_hi + tail
    out_lo = ((r_hi - out_hi) + tail) + r_lo
    return (out_hi + out_lo).astype(F32)


def lane_sums(e: np.ndarray, lanes: int | None = None) -> np.ndarray:
    """Sums over the last axis of float32 ``e`` in the order of torch's vectorised
    reductions (``vec::map_reduce_all``): lane j adds elements j, j+lanes, ... in turn, the
    tail that fills no whole vector joins the first lanes last, then the lanes fold by
    halves (the shuffle tree). Rows shorter than a vector add left to right."""
    lanes = lanes or torch_lanes()
    e = np.asarray(e, dtype=F32)
    n = e.shape[-1]
    if n < lanes:
        acc = e[..., 0].copy() if n else np.zeros(e.shape[:-1], F32)
        for j in range(1, n):
            acc += e[..., j]
        return acc
    main = n - n % lanes
    blocks = e[..., :main].reshape(-1, main // lanes, lanes)
    acc = np.ascontiguousarray(blocks.transpose(1, 0, 2)).sum(axis=0, dtype=F32)
    if n > main:
        acc[:, : n - main] += e[..., main:].reshape(-1, n - main)
    while acc.shape[-1] > 1:
        half = acc.shape[-1] // 2
        acc = acc[:, :half] + acc[:, half:]
    return acc[:, 0].reshape(e.shape[:-1])


def _row_exp(d: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = sleef_expf(d)`` for one row, computing exp only where it is not 0."""
    live = np.count_nonzero(d >= F32(-104.0))
    if live * 2 > d.size or np.isnan(d).any():
        sleef_expf(d, out)
        return
    out[:] = 0
    at = np.flatnonzero(d >= F32(-104.0))
    out[at] = sleef_expf(d[at])


def log_normalizers(x: np.ndarray, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(max, log_sum)`` f32[n_rows] of logit rows ``x`` f32[n_rows, vocab] such that
    ``log_softmax(x) == (x - max) - log_sum``, as torch's CPU kernel computes them.
    ``exact=False`` takes NumPy's exp for SLEEF's, several times faster: the sums keep
    the kernel's order, so ``log_sum`` stays within a float32 step of torch's (and equals
    it for most rows), while torch's own float32 sum strays further from the true value."""
    x = np.asarray(x, dtype=F32)
    if x.ndim != 2:
        raise ValueError(f"log_normalizers: logits must be 2-D, got shape {x.shape}")
    top = x.max(axis=1) if x.shape[1] else np.full(x.shape[0], NEG_INF)
    sums = np.empty(x.shape[0], F32)
    d, e = np.empty(x.shape[1], F32), np.empty(x.shape[1], F32)
    with np.errstate(invalid="ignore"):
        for k in range(x.shape[0]):  # row by row: the arrays stay small and in cache
            np.subtract(x[k], top[k], out=d)
            if exact:
                _row_exp(d, e)
            else:
                np.exp(d, out=e)
            sums[k] = lane_sums(e)
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = sleef_logf(sums)
    logs[np.isnan(sums)] = np.nan
    return top, logs


def log_softmax(x: np.ndarray) -> np.ndarray:
    """``torch.log_softmax(x, dim=-1)`` of float32 ``x`` on the CPU, bit for bit."""
    x = np.asarray(x, dtype=F32)
    rows = x.reshape(-1, x.shape[-1])
    top, logs = log_normalizers(rows)
    with np.errstate(invalid="ignore"):
        return ((rows - top[:, None]) - logs[:, None]).reshape(x.shape)


def logsumexp(x: np.ndarray) -> np.ndarray:
    """``torch.logsumexp(x, dim=-1)`` of float32 ``x``: ``log(sum(exp(x - m))) + m`` with m
    the row maximum (0 where it is infinite). torch's elementwise ``exp`` comes from MKL,
    which is not reproducible here; exp and the sum are correctly rounded instead, which
    agrees with it but for the last bit now and then."""
    x = np.asarray(x, dtype=F32)
    top = x.max(axis=-1)
    top = np.where(np.isinf(top), F32(0.0), top).astype(F32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        e = np.exp((x - top[..., None]).astype(F64)).astype(F32)
        total = e.astype(F64).sum(axis=-1).astype(F32)
        return np.log(total.astype(F64)).astype(F32) + top


class NormalizerMemo:
    """``log_normalizers`` that remembers the last logit rows it saw, so the timestamp rule
    and the decoder after it compute a row's normalizer once when the rule leaves the row
    alone. Remembered rows are compared value for value, so a stale entry is never used;
    each thread has its own entry. ``exact=False``: see ``log_normalizers``."""

    def __init__(self, exact: bool = True) -> None:
        self.exact = exact
        self._local = threading.local()

    def __call__(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(max, log_sum)`` f32[n_rows] of ``logits`` f32[n_rows, vocab]."""
        entry = getattr(self._local, "entry", None)
        if entry is None or entry[0].shape != logits.shape:
            top, logs = log_normalizers(logits, self.exact)
            self._local.entry = (np.array(logits, dtype=F32), top, logs)
            return top.copy(), logs.copy()
        seen, top, logs = entry
        stale = [k for k in range(logits.shape[0]) if not np.array_equal(seen[k], logits[k])]
        if stale:
            top[stale], logs[stale] = log_normalizers(logits[stale], self.exact)
            seen[stale] = logits[stale]
        return top.copy(), logs.copy()


SHARED_MEMO = NormalizerMemo()  # the default memo of the timestamp rule and the decoders


def log_probs_at(logits: np.ndarray, top: np.ndarray, logs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Log-probabilities f32[n_rows] of token ``idx[k]`` of each row ``k``, as ``log_softmax``
    gives them, from the rows' normalizers ``(top, logs)``."""
    rows = np.arange(logits.shape[0])
    with np.errstate(invalid="ignore"):
        return (logits[rows, idx] - top) - logs


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
        top, logs = self.memo(logits)
        with np.errstate(invalid="ignore"):
            best_text = (logits[:, :tb].max(axis=1) - top) - logs
            stamps = (logits[:, tb:] - top[:, None]) - logs[:, None]
        for k in np.flatnonzero(logsumexp(stamps) > best_text):
            logits[k, :tb] = NEG_INF
