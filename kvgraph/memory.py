"""Large arrays kept for a process's life (weights) without the page-fault stalls of
transparent huge pages, and still on huge pages once the kernel has made them; large zeroed
arrays (caches) whose pages cost nothing until written (:func:`zeros`).

NumPy asks Linux for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on every allocation
of 4 MiB or more. Where the kernel's THP ``defrag`` setting is ``madvise`` (a common default),
each first touch of such memory compacts physical memory on the spot to find a free 2 MiB
page: on a machine whose memory is fragmented this made one 40 MB weight copy (tiny.en's
vocabulary) cost 0.1-0.5 s of system time in a ~1 s transcription (2-core Intel Xeon,
2026-12-06; ``docs/performance.md``), and varied from run to run. Yet huge pages do help
once there: a decode step reading that weight ran ~6 % faster with them (fewer TLB misses).

So weights are allocated with NumPy's request off (:func:`no_huge_page_faults`) and filled
on ordinary pages, then marked (:func:`advise_huge_pages`), which costs nothing now: the
kernel's background thread (khugepaged) merges their pages into huge ones while the process
runs. Linux only; elsewhere both do nothing."""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
import sys
import threading
from collections.abc import Iterable, Iterator

import numpy as np

HUGE_PAGE = 2 << 20  # x86-64's and most arm64 kernels' transparent huge page
_MADV_HUGEPAGE = 14  # <linux/mman.h>
#: NumPy's own threshold for asking (numpy/_core/src/multiarray/alloc.c); smaller arrays
#: cannot fill a huge page worth the bother
MIN_BYTES = 4 << 20

_LOCK = threading.RLock()


def _numpy_switch():
    """NumPy's process-wide "madvise huge pages" switch (setter returning the old value), or
    None where this NumPy has none."""
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    return getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)


@contextlib.contextmanager
def no_huge_page_faults() -> Iterator[None]:
    """NumPy allocations inside the block ask for no huge pages, so touching them never
    waits on memory compaction (the switch is process-wide while the block runs)."""
    switch = _numpy_switch()
    if switch is None or sys.platform != "linux":
        yield
        return
    with _LOCK:
        before = switch(False)
        try:
            yield
        finally:
            switch(before)


def advise_huge_pages(arrays: Iterable[np.ndarray]) -> int:
    """Mark the whole 2 MiB pages inside each array of :data:`MIN_BYTES` or more as wanting
    huge pages, for the kernel to merge in the background; returns the bytes marked. A
    refused call (no THP, another OS) marks nothing and is not an error."""
    if sys.platform != "linux":
        return 0
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    marked = 0
    for a in arrays:
        if a.nbytes < MIN_BYTES or not a.flags.c_contiguous:
            continue
        start = -(-a.ctypes.data // HUGE_PAGE) * HUGE_PAGE
        stop = (a.ctypes.data + a.nbytes) // HUGE_PAGE * HUGE_PAGE
        if stop > start and madvise(start, stop - start, _MADV_HUGEPAGE) == 0:
            marked += stop - start
    return marked


#: arrays from this size on are mapped by :func:`zeros` (smaller ones: ``np.zeros``)
MAPPED_ZEROS_BYTES = 1 << 20


def zeros(shape, dtype=np.float32) -> np.ndarray:
    """A zero-filled, writable array whose pages are the operating system's zero pages until
    written: a private anonymous mapping for arrays of :data:`MAPPED_ZEROS_BYTES` or more.

    ``np.zeros`` is lazily zeroed only while the C allocator hands out fresh mappings; once a
    process has freed large blocks, its allocator serves the next ones from memory it keeps and
    clears them by writing every byte (and NumPy asks for huge pages on them: memory
    compaction on top). A batching engine's 264 MB of cache rows took 0.05-2.4 s to allocate
    that way (2-core Intel Xeon, 2026-12-06); mapped, nothing, and rows never used never take
    memory."""
    dtype = np.dtype(dtype)
    shape = tuple(int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    nbytes = math.prod(shape) * dtype.itemsize
    flags = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    if nbytes < MAPPED_ZEROS_BYTES or None in flags:
        return np.zeros(shape, dtype)
    pages = mmap.mmap(-1, nbytes, flags=flags[0] | flags[1])
    return np.frombuffer(pages, dtype).reshape(shape)  # the array keeps the mapping alive
