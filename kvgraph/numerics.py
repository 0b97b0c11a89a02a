"""Compute types: the arithmetic a ``linear`` runs in (``ir.Linear.compute``), and their host
emulation — bfloat16 rounding and the packed weight layout of the bfloat16 kernel.

``float32`` is the default and exact. ``bfloat16`` rounds both operands of the product to
bfloat16 (to nearest, ties to even: what Intel's VCVTNEPS2BF16 and AMX users, MAX's own
float32 -> bfloat16 cast and PyTorch do for finite values) and accumulates in float32. The
NumPy reference applies the same rounding (:func:`round_bf16`), so the reference of a graph
with bfloat16 linears is the arithmetic the device runs, to float32 rounding of the sums.
``int8`` (linears only) quantizes the weight per output row: ``s = max|w[j]| / 127``,
``q = round(w / s)`` (ties to even, in [-127, 127]); the activations stay float32 and
``y[j] = s[j] * sum_k x[k] q[j, k] + bias[j]`` (:func:`quantize_int8`).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

#: every compute type a linear may name; the first is the default
COMPUTE_TYPES = ("float32", "bfloat16", "int8")


def check_compute_type(name: str, what: str = "compute_type") -> str:
    """``name`` if it is a compute type kvgraph runs, else a one-line :class:`InputError`."""
    if name not in COMPUTE_TYPES:
        raise InputError(
            f"{what}={name!r} is not a compute type kvgraph runs: one of {', '.join(COMPUTE_TYPES)}"
        )
    return name


def bf16_bits(a) -> np.ndarray:
    """The bfloat16 bit patterns (uint16) of ``a`` rounded from float32 to nearest, ties to even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """The float32 values of bfloat16 bit patterns."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_bf16(a) -> np.ndarray:
    """``a`` (as float32) rounded to the nearest bfloat16, as float32 values."""
    a = np.asarray(a)
    return from_bf16_bits(bf16_bits(a)).reshape(a.shape)


#: the bfloat16 kernel's unit: k is padded to a multiple of this, and the outputs too
PANEL_BLOCK = 32


def bf16_panels(w: np.ndarray) -> np.ndarray:
    """A linear's weight ``w`` f32[out, in] (PyTorch layout) as the bfloat16 kernels read it
    (``kvgraph/max/mojo/kvgraph_kernels/bf16.mojo``: AMX B tiles, AVX512-BF16 vectors): bfloat16 bits in panels of 16
    outputs, ``uint16[out_p / 16, in_p / 2, 32]`` with ``[p, i, 2 c + e] = w[16 p + c, 2 i + e]``;
    ``in`` and ``out`` zero-padded to multiples of 32 (``in_p``, ``out_p``)."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise InputError(f"bf16_panels: weight must be [out, in], got shape {list(w.shape)}")
    n, k = w.shape
    pad = lambda v: -(-v // PANEL_BLOCK) * PANEL_BLOCK  # noqa: E731
    bits = np.zeros((pad(n), pad(k)), np.uint16)
    bits[:n, :k] = bf16_bits(w).reshape(n, k)
    np_, kp = bits.shape
    return np.ascontiguousarray(bits.reshape(np_ // 16, 16, kp // 2, 2).transpose(0, 2, 1, 3)).reshape(
        np_ // 16, kp // 2, 32
    )


#: rows quantized at a time: bounds the float32 temporaries (a vocabulary projection's would
#: be hundreds of MB at once, and a whole process's peak memory with them)
QUANTIZE_ROWS = 4096
_QUANTIZED: dict[int, tuple] = {}  # id(source) -> (weak reference, q, s): one quantization per array


def _forget(key: int):
    return lambda _ref: _QUANTIZED.pop(key, None)


def quantize_int8(w) -> tuple[np.ndarray, np.ndarray]:
    """``(q int8[out, in], s float32[out])``: each row of ``w`` f32[out, in] quantized with its
    own scale ``s = max|row| / 127`` (1 for a row of zeros), ``q = round(row / s)``. Computed
    by blocks of rows; an array's result is kept while the array lives (a lowering asks for
    the integers, the scales and the integers' float32 form of one weight)."""
    import weakref

    if isinstance(w, np.ndarray):
        hit = _QUANTIZED.get(id(w))
        if hit is not None and hit[0]() is w:
            return hit[1], hit[2]
    a = np.asarray(w)
    if a.ndim != 2:
        raise InputError(f"quantize_int8: weight must be [out, in], got shape {list(a.shape)}")
    q = np.empty(a.shape, np.int8)
    s = np.empty(a.shape[0], np.float32)
    for r in range(0, a.shape[0], QUANTIZE_ROWS):
        block = np.asarray(a[r : r + QUANTIZE_ROWS], dtype=np.float32)
        top = np.abs(block).max(axis=1) if block.size else np.zeros(len(block), np.float32)
        sb = np.where(top > 0, top / np.float32(127), np.float32(1)).astype(np.float32)
        q[r : r + QUANTIZE_ROWS] = np.clip(np.rint(block / sb[:, None]), -127, 127)
        s[r : r + QUANTIZE_ROWS] = sb
    if isinstance(w, np.ndarray):
        try:
            ref = weakref.ref(w, _forget(id(w)))
        except TypeError:  # an array that takes no weak reference: not kept
            return q, s
        _QUANTIZED[id(w)] = (ref, q, s)
    return q, s


#: relative slack on the int8 error bound: the int8 sums' own float32 rounding (at most
#: ``in * 2**-24`` of ``sum |x| |q| s``, itself at most ``127 * s * sum |x|``: 0.6 % of the bound
#: at 384 inputs), with room to spare up to ~1,000 inputs per 4 %
EXACT_TOP_SLACK = 2.0**-4


def int8_bound(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``B[..., j]``: how far an int8 linear's output ``j`` may lie from the float32 one, for
    inputs ``x`` ``[..., in]`` and row scales ``s`` ``[out]``. Rounding moves each weight by at
    most ``s / 2``, so an output by at most ``s / 2 * sum |x|``; the float32 rounding of the
    sums is covered by :data:`EXACT_TOP_SLACK`."""
    xa = np.abs(np.asarray(x, np.float32)).sum(axis=-1, keepdims=True, dtype=np.float32)
    return (np.float32(0.5 * (1 + EXACT_TOP_SLACK)) * xa) * np.asarray(s, np.float32)


def exact_top(
    y: np.ndarray, x: np.ndarray, w: np.ndarray, s: np.ndarray, bias, k: int, splits=()
) -> np.ndarray:
    """``y`` (an int8 linear's outputs ``[..., out]`` for inputs ``x`` ``[..., in]``; ``w`` the
    float weight ``[out, in]``, ``s`` its int8 row scales) with every output that may rank among
    the ``k`` largest of its row recomputed as ``x @ w.T + bias``: those whose upper bound
    ``y + B`` reaches the ``k``-th largest lower bound ``y - B`` (:func:`int8_bound`). The
    ``k`` largest float32 outputs are all among them, so the row's top ``k`` (and its
    argmax) are float32's. ``splits``: outputs where a new group starts; the top ``k`` of
    each group are float32's."""
    y = np.array(y, copy=True)
    bound = int8_bound(x, s).astype(y.dtype)
    lo, hi = y - bound, y + bound
    flat_y, flat_x = y.reshape(-1, y.shape[-1]), np.asarray(x).reshape(-1, x.shape[-1])
    lo, hi = lo.reshape(flat_y.shape), hi.reshape(flat_y.shape)
    b = None if bias is None else np.asarray(bias)
    edges = [0, *splits, y.shape[-1]]
    for g0, g1 in zip(edges[:-1], edges[1:]):
        kk = min(k, g1 - g0)
        kth = np.partition(lo[:, g0:g1], -kk, axis=-1)[:, -kk : -kk + 1]
        pick = hi[:, g0:g1] >= kth
        for r in range(flat_y.shape[0]):
            cols = g0 + np.nonzero(pick[r])[0]
            exact = w[cols].astype(y.dtype) @ flat_x[r].astype(y.dtype)
            flat_y[r, cols] = exact + (b[cols] if b is not None else 0)
    return flat_y.reshape(y.shape)
