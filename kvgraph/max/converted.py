"""Weights converted for a compute type, made once and kept beside the stored programs.

A bfloat16 or int8 program binds weights in layouts made from the model's float weights
(:data:`CONVERTED`: bfloat16 panels, int8 rows and their scales, ...). Making them is NumPy work
at every load (a third of a second for tiny.en's int8 decoder, more for larger models); kept
in the program store they are read back instead: under ``<store root>/weights``, one entry
per (source tensor, layout), keyed by the source's bytes (SHA-256), dtype and shape, the layout,
and the source code that converts (:mod:`kvgraph.numerics` and the layouts of
:mod:`kvgraph.max.lower`). An entry is written atomically and checked against its checksum
when read (:class:`kvgraph.store.ProgramStore`); a refused or unreadable one is converted again.
With the store turned off (``KVGRAPH_CACHE_DIR=off``) every load converts.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import weakref
from pathlib import Path

import numpy as np

from .. import numerics
from ..store import ProgramStore, make_key
from . import lower

log = logging.getLogger("kvgraph.store")

#: layouts that convert a weight's values (the rest are views, transposes and casts: cheaper
#: to make than to read back)
CONVERTED = frozenset(
    {"bf16_panels", "bf16_T", "bf16_conv_panels", "bf16_rscf", "int8", "int8_scale", "int8_T"}
)
#: bumped when the entries' meaning changes
FORMAT = "kvgraph-converted-weight/1"
_STORES: dict[Path, ProgramStore] = {}


@functools.cache
def conversion_digest() -> str:
    """SHA-256 of the code that converts weights: a change to it changes every key."""
    h = hashlib.sha256()
    for mod in (numerics, lower):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()


def weights_store(store: ProgramStore | None) -> ProgramStore | None:
    """The store of converted weights beside program store ``store`` (None when it is off)."""
    if store is None or not store.enabled:
        return None
    root = store.root / "weights"
    if root not in _STORES:
        _STORES[root] = ProgramStore(root)
    return _STORES[root]


class PerArray:
    """Values made from an array (or a tuple of arrays: a stacked weight's members), each made
    once while the arrays live: keyed by their ids and a tag, checked by weak references (an id
    can be reused once its array is gone), dropped when one of them is. A value that holds a
    source itself (a view of it) is not kept: it would keep its own key alive."""

    def __init__(self) -> None:
        self._made: dict[tuple, tuple] = {}

    def get(self, src: np.ndarray | tuple, tag, make):
        srcs = src if isinstance(src, tuple) else (src,)
        key = (tuple(map(id, srcs)), tag)
        hit = self._made.get(key)
        if hit is not None and all(r() is s for r, s in zip(hit[0], srcs)):
            return hit[1]
        value = make()
        if isinstance(value, np.ndarray) and any(np.may_share_memory(value, s) for s in srcs):
            return value
        try:
            refs = tuple(
                weakref.ref(s, lambda _ref, made=self._made, key=key: made.pop(key, None)) for s in srcs
            )
        except TypeError:  # takes no weak reference: made again next time
            return value
        self._made[key] = (refs, value)
        return value


_DIGESTS = PerArray()  # a source's SHA-256, hashed once per array
#: weights in the layouts the programs bind, made once per source array however many programs
#: (prefill and step, the batching engine's per-row step, ...) bind them
_LAYOUTS = PerArray()


def _digest(src: np.ndarray) -> str:
    return _DIGESTS.get(
        src, "sha256", lambda: hashlib.sha256(memoryview(np.ascontiguousarray(src)).cast("B")).hexdigest()
    )


def converted_key(src: np.ndarray, layout: str, f16: bool) -> str:
    """The key of ``src`` converted to ``layout``: its bytes, dtype and shape, the layout and
    the conversion's code."""
    src = np.asarray(src)
    return make_key(
        FORMAT, conversion_digest(), layout, int(f16), src.dtype.str, list(src.shape), _digest(src)
    )


#: an ``.npy`` header's bytes are read from at most this prefix (numpy writes them in a few
#: hundred; a longer one fails to parse and the entry is converted again)
_HEADER_BYTES = 1 << 16


def _read(payload: memoryview) -> np.ndarray | None:
    """The array of an ``.npy`` payload, copied out of it in one pass (``np.load`` of a byte
    stream reads by small chunks: ten times slower); None for a payload it does not read."""
    f = io.BytesIO(payload[:_HEADER_BYTES])  # the header only (a stream would copy it all)
    version = np.lib.format.read_magic(f)
    header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in header:
        return None
    shape, fortran, dtype = header[version](f)
    if dtype.hasobject:
        return None
    count = int(np.prod(shape, dtype=np.int64))
    flat = np.frombuffer(payload, dtype, count, f.tell())
    return np.ascontiguousarray(flat.reshape(shape, order="F" if fortran else "C")).copy()


def _write(arr: np.ndarray):
    def write(path: str) -> None:
        with open(path, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    return write


def weight_array(src: np.ndarray | tuple, layout: str, f16: bool, store: ProgramStore | None) -> np.ndarray:
    """:func:`kvgraph.max.lower.weight_array`, read from the store when ``layout`` converts
    and an entry is there, else made (and stored when it converts). ``src`` a tuple of
    arrays: the members of a stacked weight (:func:`kvgraph.max.lower.stack_rows`), stacked
    only when the layout is made (once for every program that binds it)."""
    ws = weights_store(store) if layout in CONVERTED else None
    if ws is None:
        return _LAYOUTS.get(src, (layout, f16), lambda: lower.weight_array(_stacked(src), layout, f16))
    src = _stacked(src)
    key = converted_key(src, layout, f16)
    data = ws.load_bytes(key)  # None on a miss, or a refused entry (one log line)
    if data is not None:
        try:
            arr = _read(data)
        except ValueError as e:  # a malformed header or a short payload
            arr, why = None, str(e)
        else:
            why = "not a plain .npy array"
        if arr is not None:
            return arr
        log.warning("kvgraph store: converted weight %s unreadable (%s); converting again", key[:12], why)
    arr = lower.weight_array(src, layout, f16)
    keep(src, layout, f16, arr, store, key)
    return arr


def _stacked(src: np.ndarray | tuple) -> np.ndarray:
    return lower.stack_rows(list(src)) if isinstance(src, tuple) else src


def keep(
    src: np.ndarray, layout: str, f16: bool, arr: np.ndarray, store: ProgramStore | None, key=None
) -> bool:
    """Store ``arr``, ``src`` converted to ``layout``, unless the layout does not convert or
    the store is off or already holds it. Returns whether it was written."""
    ws = weights_store(store) if layout in CONVERTED else None
    if ws is None:
        return False
    key = key or converted_key(src, layout, f16)
    if ws.path(key).exists():
        return False
    return ws.put(key, _write(arr))
