"""kvgraph.memory: weights allocated without NumPy's huge-page request (no compaction stall
when first touched), then marked for the kernel to merge into huge pages later."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvgraph import memory

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _numpy_asks() -> bool:
    core = getattr(np, "_core", None) or np.core
    return bool(core.multiarray._get_madvise_hugepage())


@pytest.mark.skipif(memory._numpy_switch() is None or sys.platform != "linux", reason="no NumPy switch here")
def test_no_huge_page_faults_turns_numpys_request_off_and_back():
    before = _numpy_asks()
    with memory.no_huge_page_faults():
        assert _numpy_asks() is False
        with memory.no_huge_page_faults():  # nested (same thread): still off, then restored
            assert _numpy_asks() is False
        assert _numpy_asks() is False
    assert _numpy_asks() is before
    with pytest.raises(RuntimeError), memory.no_huge_page_faults():
        raise RuntimeError("boom")
    assert _numpy_asks() is before


def test_advise_marks_the_whole_huge_pages_inside_large_arrays_only():
    small = np.ones(memory.MIN_BYTES // 4 - 1, np.float32)
    big = np.ones(3 * memory.MIN_BYTES // 4 + 123, np.float32)  # 12 MiB and a bit
    start = -(-big.ctypes.data // memory.HUGE_PAGE) * memory.HUGE_PAGE
    inside = (big.ctypes.data + big.nbytes) // memory.HUGE_PAGE * memory.HUGE_PAGE - start
    assert memory.advise_huge_pages([small]) == 0
    assert memory.advise_huge_pages([big[::2]]) == 0  # not contiguous: left alone
    marked = memory.advise_huge_pages([small, big])
    if sys.platform == "linux" and THP.exists():
        assert marked == inside > 0
        assert inside % memory.HUGE_PAGE == 0 and big.nbytes - 2 * memory.HUGE_PAGE < inside <= big.nbytes
    else:
        assert marked == 0
    assert (big == 1).all()  # the contents are untouched


def test_a_loaded_checkpoint_leaves_numpys_switch_as_it_was():
    from models.whisper.weights.load import load_checkpoint

    before = _numpy_asks()
    _, weights = load_checkpoint("tiny.en", keep_float16=True)
    assert _numpy_asks() is before
    assert max(w.nbytes for w in weights.values()) >= memory.MIN_BYTES  # the vocabulary: advised


def test_zeros_are_writable_zero_arrays_of_any_size():
    for shape, dtype in (((3, 5), np.float32), ((4, 1500, 384), np.float32), ((300_000,), np.int64)):
        a = memory.zeros(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.writeable and a.flags.c_contiguous
        assert not a.any()
        a[...] = 1  # writable through, and a view of it too
        assert a.sum() == a.size
    big = memory.zeros((2, 1 << 20), np.float32)
    if sys.platform == "linux":
        assert big.base is not None  # mapped, not np.zeros: its pages are taken only when written


def test_per_array_values_are_made_once_while_the_array_lives():
    import gc

    from kvgraph.max.converted import PerArray

    memo, calls = PerArray(), []
    arrays = [np.arange(12, dtype=np.float32)]

    def make():
        calls.append(1)
        return arrays[0] * 2

    first = memo.get(arrays[0], "double", make)
    assert memo.get(arrays[0], "double", make) is first and len(calls) == 1
    assert memo.get(arrays[0], "other", make) is not first and len(calls) == 2  # another tag
    view = memo.get(arrays[0], "view", lambda: arrays[0][::2])
    assert memo.get(arrays[0], "view", lambda: arrays[0][::2]) is not view  # views are not kept
    del view
    arrays.clear()
    gc.collect()
    assert memo._made == {}  # dropped with its array
