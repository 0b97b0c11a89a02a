"""torch's CPU float32 arithmetic in NumPy, bit for bit: the one home of the kernels that the
token decoders (``filters.py``, ``search.py``) and word timestamps (``transcription/timing.py``)
reproduce.

Why. openai-whisper runs its statistics in float32 torch on the CPU, and its outputs follow
their last bits: beam search keeps the beams whose ``log_softmax`` sums are largest, the
timestamp rule compares float32 log-probabilities, dynamic time warping follows ties of the
softmaxed attention weights. Equal tokens and times need equal float32 values, so the
kernels' arithmetic is reproduced, not just their formulas:

* ``sleef_expf`` / ``sleef_logf``: SLEEF's ``expf`` and ``logf`` (u10), which torch's
  ``Vectorized<float>`` calls, with their fused multiply-adds emulated by ``fma_f32`` (a
  float64 sum, redone exactly where rounding twice could differ from rounding once);
* ``lane_sums``: the order of torch's vectorised sums (one running sum per SIMD lane, folded
  by halves);
* ``softmax_f32``, ``log_normalizers`` / ``log_softmax``: torch's last-axis softmax and
  log_softmax kernels built from those; ``logsumexp`` from the same exp and log (torch's
  elementwise exp there comes from MKL, not reproduced);
* ``torch_lanes``, ``TorchCpu`` / ``detect_torch_cpu``: the vector width and thread count
  torch dispatches to on this CPU (16 float lanes with AVX-512, 8 with AVX2).

x86-64 builds of torch with AVX2 or AVX-512 are reproduced; torch's scalar "default" kernels
and other CPUs are not reproduced bit for bit.

Speed. The exp, log and sums also exist as Mojo (``torch_float.mojo``, the same float32
operations with real fused multiply-adds), built into a shared library on first use
(:mod:`kvgraph.max.native`) and taken when it loads: some ten times faster than the NumPy
emulation, which stays as its twin (no compiler, or ``KVGRAPH_NATIVE=off``) and its check
(the tests hold both equal bit for bit, and an exhaustive run over every float32 input of
``expf`` in [-128, 128] found no difference). The same library holds ``search.py``'s beam top-k
and sampler (``kv_topk_log_probs``, ``kv_sampling_exps``, ``kv_sample_rows``), with their
NumPy twins there.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "F32",
    "F64",
    "NEG_INF",
    "TorchCpu",
    "detect_torch_cpu",
    "fma_f32",
    "fold8",
    "lane_sums",
    "log_normalizers",
    "log_probs_at",
    "log_softmax",
    "logsumexp",
    "sleef_expf",
    "sleef_logf",
    "softmax_f32",
    "split_log_normalizers",
    "stamps_beat",
    "stamps_beat_text",
    "torch_lanes",
]

F32 = np.float32
F64 = np.float64
NEG_INF = F32(-np.inf)

_NATIVE_SOURCE = Path(__file__).with_suffix(".mojo")


@functools.cache
def native_library() -> Any:
    """The Mojo twin of this module's exp, log and sums (a :mod:`ctypes` library), or None
    where it cannot be built (the NumPy code runs instead)."""
    import ctypes

    from kvgraph.max import native

    lib = native.library(_NATIVE_SOURCE)
    if lib is None:
        return None
    p, n, f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    lib.kv_expf.argtypes = (p, p, n)
    lib.kv_logf.argtypes = (p, p, n, n)
    lib.kv_exp_lane_sums.argtypes = (p, n, n, n, p, n, p)
    lib.kv_split_exp_lane_sums.argtypes = (p, n, n, n, n, n, p, p, p)
    lib.kv_stamps_beat.argtypes = (p, n, n, n, n, p, p, p, n, p)
    lib.kv_topk_log_probs.argtypes = (p, n, n, n, p, p, n, p, p)
    lib.kv_sampling_exps.argtypes = (p, n, n, n, f, p, p, p, n)
    lib.kv_sample_rows.argtypes = (p, p, n, n, n, p, p)
    for fn in (
        lib.kv_expf,
        lib.kv_logf,
        lib.kv_exp_lane_sums,
        lib.kv_split_exp_lane_sums,
        lib.kv_stamps_beat,
        lib.kv_topk_log_probs,
        lib.kv_sampling_exps,
        lib.kv_sample_rows,
    ):
        fn.restype = None
    return lib


# --------------------------------------------------------------------------
# The CPU torch runs on

# torch's CPU capability names (ATEN_CPU_CAPABILITY) and their float lanes per vector.
_CAPABILITY_LANES = {"avx512": 16, "avx2": 8, "default": 8}
# The CPU flags torch's dispatch asks of AVX-512 (DispatchStub.cpp).
_AVX512_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})


def _cpu_flags() -> set[str]:
    """The x86 feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@functools.cache
def torch_lanes() -> int:
    """Float32 lanes of the SIMD vectors torch's CPU softmax and log_softmax kernels use on this
    machine: 16 with AVX-512, else 8. ``ATEN_CPU_CAPABILITY`` overrides the CPU's flags, as it
    does for torch (which ignores a value it does not know). The lane count fixes the order of
    the sums."""
    forced = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    if forced in _CAPABILITY_LANES:
        return _CAPABILITY_LANES[forced]
    return 16 if _AVX512_FLAGS <= _cpu_flags() else 8


def _physical_cores() -> int:
    """Physical cores (distinct package/core ids of /proc/cpuinfo), torch's default thread count."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return os.cpu_count() or 1
    cores, package = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            package = value.strip()
        elif key.strip() == "core id":
            cores.add((package, value.strip()))
    return len(cores) or os.cpu_count() or 1


def _env_threads() -> int:
    """torch's thread count from OMP_NUM_THREADS / MKL_NUM_THREADS (the latter wins), 0 if unset."""
    threads = 0
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            threads = int(value)
    return threads


@dataclass(frozen=True)
class TorchCpu:
    """The x86-64 CPU torch whose float32 rounding is reproduced.

    ``softmax_lanes``: float32 lanes of torch's softmax kernel (16 where torch runs its AVX512
    kernels, 8 with AVX2); ``sum_lanes``: those of its sum kernel (8: torch registers no AVX512
    sum kernel, so AVX512 machines run the AVX2 one); ``threads``: torch's intra-op threads,
    which decide where blocks of work end in a parallel reduction.
    """

    softmax_lanes: int = 16
    sum_lanes: int = 8
    threads: int = 1


@functools.lru_cache(maxsize=1)
def detect_torch_cpu() -> TorchCpu:
    """The :class:`TorchCpu` that torch would be on this machine with its default settings:
    softmax lanes as :func:`torch_lanes`; threads from the environment as torch reads it,
    else the physical cores."""
    return TorchCpu(softmax_lanes=torch_lanes(), sum_lanes=8, threads=_env_threads() or _physical_cores())


# --------------------------------------------------------------------------
# Fused multiply-add

_LOW29 = np.int64((1 << 29) - 1)  # float64 mantissa bits below float32's
_HALF29 = np.int64(1 << 28)  # ... set like this: exactly halfway between two float32 values
_TINY32 = F32(2.0**-126)  # below float32's smallest normal, rounding is coarser


def _as_f64(v: Any) -> Any:
    """A float32 array or scalar as float64 (exactly)."""
    return v.astype(F64) if isinstance(v, np.ndarray) else F64(v)


def _sum_rounded_to_odd(p: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``p + c`` in float64 rounded to odd: the float64 sum where exact, else its neighbour with
    an odd last bit (the exact error comes from Knuth's TwoSum). Rounding that to float32 gives
    the correctly rounded float32 sum (Boldo & Melquiond)."""
    s = p + c
    back = s - p
    err = (p - (s - back)) + (c - back)
    even = (s.view(np.int64) & 1) == 0
    return np.where((err != 0) & even, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)


def _round_once(
    p: Any,
    c: Any,
    total: np.ndarray,
    out: np.ndarray | None = None,
    tiny: bool = True,
    scratch: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """float32 of ``p + c`` (float64 ``p`` an exact product of float32 values, ``c`` a float32
    value as float64) rounded once, given ``total``, their float64 sum; into ``out`` if given.

    Rounding ``total`` again to float32 differs from one rounding only where it lands exactly
    halfway between float32 values, or, nonzero, below float32's normal range (``tiny=False``:
    the caller knows such results are exact). Those few are redone exactly
    (:func:`_sum_rounded_to_odd`). ``scratch``: an int64 and a bool array of ``total``'s shape
    for the test, saving two allocations."""
    total = np.asarray(total)
    if out is None:
        out = total.astype(F32)
    else:
        np.copyto(out, total, casting="unsafe")
    if scratch is None:
        suspect = (total.view(np.int64) & _LOW29) == _HALF29
    else:
        bits, suspect = scratch
        np.bitwise_and(total.view(np.int64), _LOW29, out=bits)
        np.equal(bits, _HALF29, out=suspect)
    if tiny:
        suspect |= (np.abs(out) < _TINY32) & (total != 0)
    if suspect.any():
        p_all, c_all = np.broadcast_arrays(p, c)
        out[suspect] = _sum_rounded_to_odd(p_all[suspect], c_all[suspect]).astype(F32)
    return out


def fma_f32(a: Any, b: Any, c: Any) -> np.ndarray:
    """float32 ``a * b + c`` rounded once, as an FMA instruction does (float32 arrays or
    scalars, at least one an array). The product of two float32 values is exact in float64."""
    p = _as_f64(a) * _as_f64(b)
    c64 = _as_f64(c)
    return _round_once(p, c64, p + c64)


# --------------------------------------------------------------------------
# SLEEF's expf and logf

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


class _Scratch(threading.local):
    """Per-thread scratch arrays for ``sleef_expf``, reused across calls: fresh arrays of a
    vocabulary's size come from ``mmap`` and cost page faults on every call."""

    def __init__(self) -> None:
        self.size = -1
        self.f32: list[np.ndarray] = []
        self.f64: list[np.ndarray] = []
        self.ints: list[np.ndarray] = []

    def get(self, n: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Views of length ``n``: four float32 arrays; three float64; int32, int64 and bool."""
        if n > self.size:
            self.size = n
            self.f32 = [np.empty(n, F32) for _ in range(4)]
            self.f64 = [np.empty(n, F64) for _ in range(3)]
            self.ints = [np.empty(n, np.int32), np.empty(n, np.int64), np.empty(n, bool)]
        return [a[:n] for a in self.f32], [a[:n] for a in self.f64], [a[:n] for a in self.ints]


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
    lib = native_library()
    if lib is not None and result.flags.c_contiguous:
        flat = np.ascontiguousarray(flat)
        lib.kv_expf(flat.ctypes.data, result.ctypes.data, flat.size)
        return result.reshape(d.shape) if out is None else result
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, flat.size, _CHUNK):
            _expf_chunk(flat[start : start + _CHUNK], result[start : start + _CHUNK])
    return result.reshape(d.shape) if out is None else result


def _fma_into(a: np.ndarray, b: np.ndarray, c: Any, out: np.ndarray, scratch: tuple) -> None:
    """``out[:] = fma(a, b, c)`` of float32 ``a`` and ``b`` (``b`` may hold float32 values as
    float64), ``c`` float64, with ``scratch`` (float64, float64, int64, bool arrays). For
    ``sleef_expf``'s steps, whose results are normal or exact (see ``_expf_chunk``)."""
    p64, t64, bits, suspect = scratch
    np.multiply(a, b, out=p64, dtype=F64)
    np.add(p64, c, out=t64)
    _round_once(p64, c, t64, out, tiny=False, scratch=(bits, suspect))


def _expf_chunk(d: np.ndarray, out: np.ndarray) -> None:
    """``sleef_expf`` of one chunk (at most ``_CHUNK`` elements) into ``out``."""
    (dc, q, s, u), (s64, p64, t64), (qi, bits, suspect) = _SCRATCH.get(d.size)
    fma_scratch = (p64, t64, bits, suspect)
    low, high = d < F32(-104.0), d > F32(100.0)
    np.copyto(dc, d)
    dc[low | high] = 0  # their results are fixed below; 0 keeps ldexp off its slow paths
    np.multiply(dc, _R_LN2, out=q)
    np.rint(q, out=q)
    np.multiply(q, _LN2_HI, out=s)
    np.subtract(dc, s, out=s)  # exact product: fma(q, -ln2_hi, d) is this one rounding
    np.multiply(q, _LN2_LO, out=p64, dtype=F64)
    np.subtract(s, p64, out=s64, dtype=F64)  # fma(q, -ln2_lo, s): exact in float64 (< 53 bits)
    _round_f32_inplace(s64, s)
    # The polynomial's values stay far above float32's subnormals; the last step's result
    # u * s * s + s is below them only for such tiny s that s * s is 0 and the sum exact.
    u.fill(_EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        _fma_into(u, s64, c, u, fma_scratch)
    np.multiply(s, s, out=dc)
    _fma_into(u, dc, s64, u, fma_scratch)
    u += F32(1.0)
    np.copyto(qi, q, casting="unsafe")
    np.ldexp(u, qi, out=out)  # one rounding, as SLEEF's two exact-then-rounding scalings
    out[low] = 0
    out[high] = np.inf


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
    lib = native_library()
    if lib is not None and x.size and np.all((x >= _TINY32) & (x <= F32(2.0**126))):
        flat = np.ascontiguousarray(x.reshape(-1))
        out = np.empty_like(flat)
        lib.kv_logf(flat.ctypes.data, out.ctypes.data, flat.size, int(torch_lanes() == 16))
        return out.reshape(x.shape)
    e = (np.frexp(x * F32(1.0 / 0.75))[1] - 1).astype(F32)
    if torch_lanes() == 16:
        mant = np.frexp(x)[0] * F32(2.0)
        m = np.where(mant >= F32(1.5), mant * F32(0.5), mant).astype(F32)
    else:
        m = np.ldexp(x, -e.astype(np.int32)).astype(F32)
    s_hi = _LN2_DF[0] * e
    s_lo = fma_f32(_LN2_DF[1], e, fma_f32(_LN2_DF[0], e, -s_hi))
    num_hi, num_lo = _two_sum_f32(np.full_like(m, -1.0), m)
    den_hi, den_lo = _two_sum_f32(np.full_like(m, 1.0), m)
    t = F32(1.0) / den_hi
    q_hi = num_hi * t
    u = fma_f32(t, num_hi, -q_hi)
    q_lo = fma_f32(-den_lo, t, fma_f32(-den_hi, t, F32(1.0)))
    q_lo = fma_f32(q_hi, q_lo, fma_f32(num_lo, t, u))
    x2 = q_hi * q_hi
    poly = fma_f32(fma_f32(_LOG_POLY[0], x2, _LOG_POLY[1]), x2, _LOG_POLY[2])
    r_hi = s_hi + q_hi * F32(2.0)
    r_lo = (((s_hi - r_hi) + q_hi * F32(2.0)) + s_lo) + q_lo * F32(2.0)
    tail = (x2 * q_hi) * poly
    out_hi = r_hi + tail
    out_lo = ((r_hi - out_hi) + tail) + r_lo
    return (out_hi + out_lo).astype(F32)


# --------------------------------------------------------------------------
# Vectorised sums, softmax and log_softmax


def lane_sums(e: np.ndarray, lanes: int | None = None) -> np.ndarray:
    """Sums over the last axis of float32 ``e`` in the order of torch's vectorised
    reductions (``vec::reduce_all``, ``vec::map_reduce_all``): lane j adds elements j,
    j+lanes, ... in turn, the tail that fills no whole vector joins the first lanes last, then
    the lanes fold by halves (the shuffle tree). Rows shorter than a vector add left to right.
    ``lanes``: the kernel's vector width (default :func:`torch_lanes`)."""
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


def _softmax_rows(x: np.ndarray, lanes: int) -> np.ndarray:
    """torch's float32 softmax of rows ``x`` [r, n]: exp(x - max) times 1 / (lane sum)."""
    e = sleef_expf(x - x.max(axis=-1, keepdims=True))
    return e * (F32(1) / lane_sums(e, lanes))[:, None]


def softmax_f32(x: np.ndarray, lanes: int) -> np.ndarray:
    """``torch.softmax(x, dim=-1)`` of float32 ``x`` on the CPU, bit for bit (``lanes``: the
    kernel's vector width, :attr:`TorchCpu.softmax_lanes`). Rows are done a few at a time, so
    the intermediates stay in cache."""
    x = np.asarray(x, dtype=F32)
    n = x.shape[-1]
    if x.size == 0:
        return x.copy()
    rows = x.reshape(-1, n)
    out = np.empty_like(rows)
    step = max(1, 65536 // n)
    for i in range(0, rows.shape[0], step):
        out[i : i + step] = _softmax_rows(rows[i : i + step], lanes)
    return out.reshape(x.shape)


def _row_exp(d: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = sleef_expf(d)`` for one row, computing exp only where it is not 0."""
    live = np.count_nonzero(d >= F32(-104.0))
    if live * 2 > d.size or np.isnan(d).any():
        sleef_expf(d, out)
        return
    out[:] = 0
    at = np.flatnonzero(d >= F32(-104.0))
    out[at] = sleef_expf(d[at])


def log_normalizers(
    x: np.ndarray, exact: bool = True, top: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(max, log_sum)`` f32[n_rows] of logit rows ``x`` f32[n_rows, vocab] such that
    ``log_softmax(x) == (x - max) - log_sum``, as torch's CPU kernel computes them: the row
    maximum, SLEEF's exp of ``x - max`` summed in the kernel's lanes, SLEEF's log of the sum.
    ``exact=False`` (without the Mojo twin only) takes NumPy's exp for SLEEF's, several
    times faster: the sums keep the kernel's order, so ``log_sum`` stays within a float32 step
    of torch's (and equals it for most rows), while torch's own float32 sum strays further
    from the true value. ``top``: the rows' maxima when the caller has them (``x.max(axis=1)``
    exactly, NaN where a row holds one)."""
    x = np.asarray(x, dtype=F32)
    if x.ndim != 2:
        raise ValueError(f"log_normalizers: logits must be 2-D, got shape {x.shape}")
    if top is None:
        top = x.max(axis=1) if x.shape[1] else np.full(x.shape[0], NEG_INF)
    lib = native_library()
    if lib is not None and x.shape[1] and x.strides[1] == 4 and x.strides[0] % 4 == 0:
        top = np.ascontiguousarray(top, dtype=F32)
        sums = np.empty(x.shape[0], F32)
        lib.kv_exp_lane_sums(
            x.ctypes.data,
            x.shape[0],
            x.shape[1],
            x.strides[0] // 4,
            top.ctypes.data,
            torch_lanes(),
            sums.ctypes.data,
        )
    else:
        sums = _exp_lane_sums_numpy(x, top, exact)
    return top, _logs_of(sums)


def split_log_normalizers(
    x: np.ndarray, split: int, exact: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(front, max, log_sum)`` f32[n_rows]: the maxima of ``x[:, :split]`` and
    :func:`log_normalizers` of ``x`` f32[n_rows, vocab] (the timestamp rule's best text token
    and its normalizers). The Mojo twin takes a row's maxima and its exps in one call, the row
    in cache for the second pass; NumPy takes the two parts' maxima (NaN where one is there)."""
    x = np.asarray(x, dtype=F32)
    if x.ndim != 2:
        raise ValueError(f"split_log_normalizers: logits must be 2-D, got shape {x.shape}")
    rows, n = x.shape
    lib = native_library()
    if lib is not None and 0 < split < n and x.strides[1] == 4 and x.strides[0] % 4 == 0:
        front, top, sums = np.empty(rows, F32), np.empty(rows, F32), np.empty(rows, F32)
        lib.kv_split_exp_lane_sums(
            x.ctypes.data, rows, n, x.strides[0] // 4, split, torch_lanes(), front.ctypes.data,
            top.ctypes.data, sums.ctypes.data,
        )  # fmt: skip
        return front, top, _logs_of(sums)
    front = x[:, :split].max(axis=1) if split > 0 else np.full(rows, NEG_INF)
    top = np.maximum(front, x[:, split:].max(axis=1)) if split < n else front
    return (front, *log_normalizers(x, exact, top))


def _logs_of(sums: np.ndarray) -> np.ndarray:
    """SLEEF's log of the exps' sums (NaN stays NaN)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = sleef_logf(sums)
    logs[np.isnan(sums)] = np.nan
    return logs


def _exp_lane_sums_numpy(x: np.ndarray, top: np.ndarray, exact: bool) -> np.ndarray:
    """``lane_sums(sleef_expf(x - top))`` row by row (the arrays stay small and in cache)."""
    sums = np.empty(x.shape[0], F32)
    d, e = np.empty(x.shape[1], F32), np.empty(x.shape[1], F32)
    with np.errstate(invalid="ignore"):
        for k in range(x.shape[0]):
            np.subtract(x[k], top[k], out=d)
            if exact:
                _row_exp(d, e)
            else:
                np.exp(d, out=e)
            sums[k] = lane_sums(e)
    return sums


def log_softmax(x: np.ndarray) -> np.ndarray:
    """``torch.log_softmax(x, dim=-1)`` of float32 ``x`` on the CPU, bit for bit."""
    x = np.asarray(x, dtype=F32)
    rows = x.reshape(-1, x.shape[-1])
    top, logs = log_normalizers(rows)
    with np.errstate(invalid="ignore"):
        return ((rows - top[:, None]) - logs[:, None]).reshape(x.shape)


def log_probs_at(logits: np.ndarray, top: np.ndarray, logs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Log-probabilities f32[n_rows] of token ``idx[k]`` of each row ``k``, as ``log_softmax``
    gives them, from the rows' normalizers ``(top, logs)`` (see ``log_normalizers``)."""
    rows = np.arange(logits.shape[0])
    with np.errstate(invalid="ignore"):
        return (logits[rows, idx] - top) - logs


def logsumexp(x: np.ndarray) -> np.ndarray:
    """``torch.logsumexp(x, dim=-1)`` of float32 ``x``: ``log(sum(exp(x - m))) + m`` with m
    the row maximum (0 where it is infinite), in float32 with SLEEF's ``expf`` and ``logf``,
    the exps summed in float64 in eight lanes (lane j adds elements j, j + 8, ... in turn,
    folded by halves). torch's elementwise ``exp`` there comes from MKL and its sum is a
    float32 cascade, neither reproducible here: this agrees with it but for the last bit now
    and then (the timestamp rule's comparisons, tested against openai's on random logits).
    The Mojo twin (:func:`stamps_beat_text`) computes it for the timestamp rule."""
    x = np.asarray(x, dtype=F32)
    top = x.max(axis=-1)
    shift = np.where(np.isinf(top), F32(0.0), top).astype(F32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        e = sleef_expf(x - shift[..., None])
        n = e.shape[-1]
        padded = np.zeros(e.shape[:-1] + (-(-n // 8) * 8,), F64)  # zeros add nothing
        padded[..., :n] = e
        lanes = np.cumsum(padded.reshape(e.shape[:-1] + (-1, 8)), axis=-2)[..., -1, :]  # in order
        total = fold8(lanes).astype(F32)
        logs = np.where(total == 0, NEG_INF, total)  # 0: -inf; inf and NaN stay
        live = (total > 0) & np.isfinite(total)
        if live.any():
            logs[live] = sleef_logf(total[live])
        return (logs + shift).astype(F32)


def fold8(lanes: np.ndarray) -> np.ndarray:
    """Eight float64 lanes ``lanes[..., 8]`` folded by halves, as the Mojo twins' ``fold8``:
    ``((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))``."""
    half = lanes[..., :4] + lanes[..., 4:]
    return (half[..., 0] + half[..., 2]) + (half[..., 1] + half[..., 3])


def stamps_beat_text(
    x: np.ndarray, split: int, front: np.ndarray, top: np.ndarray, logs: np.ndarray
) -> np.ndarray:
    """The timestamp rule's decision per row (bool[n_rows]): the timestamps' total
    log-probability ``logsumexp((x[:, split:] - top) - logs)`` beats the best text token's
    ``(front - top) - logs`` (``front``: the maxima of ``x[:, :split]``; ``(top, logs)``:
    :func:`log_normalizers`), in float32 as openai compares them. The Mojo twin decides every
    row in one call; NumPy forms the log-probabilities and takes :func:`stamps_beat`."""
    x = np.asarray(x, dtype=F32)
    rows, n = x.shape
    lib = native_library()
    if lib is not None and 0 < split < n and x.strides[1] == 4 and x.strides[0] % 4 == 0:
        front, top, logs = (np.ascontiguousarray(a, dtype=F32) for a in (front, top, logs))
        forced = np.empty(rows, np.int64)
        lib.kv_stamps_beat(
            x.ctypes.data, rows, n, x.strides[0] // 4, split, front.ctypes.data, top.ctypes.data,
            logs.ctypes.data, int(torch_lanes() == 16), forced.ctypes.data,
        )  # fmt: skip
        return forced.astype(bool)
    with np.errstate(invalid="ignore"):
        best_text = (front - top) - logs
        stamps = (x[:, split:] - top[:, None]) - logs[:, None]
    return stamps_beat(stamps, best_text)


def stamps_beat(stamps: np.ndarray, best_text: np.ndarray) -> np.ndarray:
    """``logsumexp(stamps) > best_text`` per row (bool[n_rows]), the logsumexp computed only
    for rows its bounds leave open. With m a row's maximum and n its length, ``m <= logsumexp
    <= m + log n`` holds for those float32 values too: the largest term's exp is 1 exactly and
    none exceeds 1 by more than a rounding, so the float sum lies in [1, n (1 + eps)], its log
    in [0, log n + eps], and adding m rounds monotonically. A row whose best text token falls
    below m is forced; one at or above the upper bound (log n rounded up with room) is not;
    NaN and infinities leave a row open."""
    if stamps.shape[1] == 0:
        return logsumexp(stamps) > best_text
    out = np.zeros(stamps.shape[0], dtype=bool)
    top = stamps.max(axis=1)
    room = F32(np.log(stamps.shape[1]) + 1e-4)
    with np.errstate(invalid="ignore", over="ignore"):
        out[:] = top > best_text
        shut = out | (best_text >= top + room)
    open_rows = np.flatnonzero(~shut)
    if open_rows.size:
        with np.errstate(invalid="ignore"):
            out[open_rows] = logsumexp(stamps[open_rows]) > best_text[open_rows]
    return out
