"""The decoder protocol, shared by the NumPy :class:`~kvgraph.reference_decoder.ReferenceDecoder`
and the MAX :class:`~kvgraph.max.decoder.CompiledDecoder` (tests compare the two): the
methods, the one state type, and the helpers both use to check tokens and allocate the
zero-filled inputs of a prefill.

State names follow :mod:`kvgraph.names`: every step input other than ``tokens`` and
``past`` is state (``cache.*``, ``hoisted.*``), held in ``DecoderState.buffers`` (NumPy
arrays for the reference, MAX ``Buffer`` s on MAX).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import attrs
import numpy as np

from . import ir, memory
from .errors import InputError, KvgraphError
from .names import BATCH


class WrittenRows:
    """Which write last touched each row of one set of in-place cache buffers
    (``cache_layout="buffer"`` on MAX). A state remembers the write that made it; it is
    stale once a later write (a step from an earlier state) touched one of its rows, and
    stepping it would silently attend to another branch's keys, so ``step`` refuses it."""

    __slots__ = ("last", "row_write")

    def __init__(self, capacity: int, rows: int):
        self.last = 1
        self.row_write = np.zeros(capacity, np.int64)
        self.row_write[:rows] = 1

    def check(self, past: int, made_by: int) -> None:
        if past and int(self.row_write[:past].max()) > made_by:
            bad = np.flatnonzero(self.row_write[:past] > made_by)
            raise KvgraphError(
                f"step: this state (past={past}) is stale: rows {bad[0]}..{bad[-1]} of its in-place "
                "KV cache were overwritten by a later step from an earlier state. Buffer caches are "
                "written in place; copy a state with reorder(state, range(batch)) before stepping "
                "two branches from it"
            )

    def write(self, past: int, n: int) -> int:
        self.last += 1
        self.row_write[past : past + n] = self.last
        return self.last


@attrs.define
class DecoderState:
    """What a decoder carries between calls: rows already seen and the named state."""

    past: int
    batch: int
    buffers: dict = attrs.field(factory=dict)  # state name -> array (NumPy) or Buffer (MAX)
    tokens: np.ndarray | None = None  # only for the cache-off fallback
    context: object = None  # only for the cache-off fallback
    rows: WrittenRows | None = None  # only for in-place (buffer) caches on MAX
    made_by: int = 1  # the write of ``rows`` that made this state
    #: rows of the per-context state (``ShareContexts``); batch rows are grouped contiguously
    #: by context, ``batch = contexts x g``. None: one context per batch row
    contexts: int | None = None

    @property
    def n_contexts(self) -> int:
        return self.batch if self.contexts is None else self.contexts

    def numpy(self) -> dict[str, np.ndarray]:
        """The state as host arrays."""
        return {k: b.to_numpy() if hasattr(b, "to_numpy") else np.asarray(b) for k, b in self.buffers.items()}


@runtime_checkable
class Decoder(Protocol):
    """A decoder: ``prefill`` a prompt, ``step`` new tokens, ``logits`` of a whole sequence
    (the un-cached graph), ``reorder`` a state's batch rows (beam search)."""

    def prefill(self, tokens, context=None) -> tuple[np.ndarray, DecoderState]:
        """Run the prompt ``tokens [b, t]``: ``(logits [b, vocab] of the last position, state)``."""

    def step(self, tokens, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        """Append ``tokens [b, n]`` after ``state``: ``(logits [b, n, vocab], new state)``."""

    def logits(self, tokens, context=None) -> np.ndarray:
        """Full-sequence logits ``[b, t, vocab]`` (the cache-off graph)."""

    def reorder(self, state: DecoderState, indices) -> DecoderState:
        """``state`` with its batch rows re-indexed by ``indices`` (an independent copy)."""


def reorder_indices(indices, batch: int) -> np.ndarray:
    """``indices`` as an int64 vector of batch rows of a state of ``batch`` rows, checked."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
        raise InputError(
            f"reorder: indices must be a non-empty integer vector, got {idx.dtype}{list(idx.shape)}"
        )
    idx = idx.astype(np.int64)
    if idx.min() < 0 or idx.max() >= batch:
        raise InputError(f"reorder: indices must be rows in [0, {batch}), got {idx.min()}..{idx.max()}")
    return idx


def regroup(batch: int, contexts: int, idx: np.ndarray) -> tuple[np.ndarray | None, int]:
    """How per-context state follows ``reorder(state, idx)``: ``(rows, n)`` — the rows of the
    per-context state to take (None: keep it as it is) and the new number of contexts.

    Row ``i`` of the new state comes from row ``idx[i]``, whose context is ``idx[i] // g``
    (``g = batch // contexts``). The new rows must again be grouped contiguously by context
    with one group size: kept as they are when every new row still reads its old group's
    context in order (beam search reorders within each audio's beams; ``[0] * 5`` expands one
    prompt into 5 beams), else gathered per run of equal contexts, else one per row."""
    src = idx // (batch // contexts)
    n = len(idx)
    if n % contexts == 0 and np.array_equal(src, np.arange(n) // (n // contexts)):
        return None, contexts
    starts = np.flatnonzero(np.diff(src)) + 1
    lengths = np.diff(np.concatenate([[0], starts, [n]]))
    if np.all(lengths == lengths[0]):
        return src[:: lengths[0]], n // int(lengths[0])
    return src, n


def tokens_array(t) -> np.ndarray:
    """``t`` as a C-contiguous int64 array ``[batch, n]`` with ``n >= 1``; anything else
    (another rank, a float dtype, no tokens) is refused."""
    a = np.asarray(t)
    if a.ndim != 2 or a.dtype.kind not in "iu" or a.shape[1] == 0:
        raise InputError(f"tokens must be a non-empty integer array [batch, n], got {a.dtype}{list(a.shape)}")
    return np.ascontiguousarray(a, dtype=np.int64)


def zeros(v: ir.Value, batch: int, dtype=np.float32) -> np.ndarray:
    """A zero-filled array for input ``v`` (a fixed-capacity cache a prefill takes), its
    batch dim bound to ``batch``; f32 inputs get ``dtype``, i64 ones int64."""
    shape = [batch if str(d) == BATCH else d for d in v.type.shape]
    if not all(isinstance(d, int) for d in shape):
        raise KvgraphError(
            f"cannot allocate input %{v.name}: {v.type} has a dim other than the batch {BATCH}"
        )
    return memory.zeros(shape, dtype if v.type.dtype == "f32" else np.int64)  # unwritten rows: no memory
