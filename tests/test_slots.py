"""SlotPool's row bookkeeping (no MAX program runs): contiguous ranges, reuse, reorder."""

from __future__ import annotations

import numpy as np
import pytest

import kvgraph
from kvgraph.errors import InputError
from kvgraph.passes import default_pipeline
from kvgraph.slots import SlotPool


class _Decoder:
    """What SlotPool reads of a compiled decoder, without compiling: the per-row step's
    state inputs and the cache capacity."""

    def __init__(self, spec, capacity):
        self.capacity = capacity
        self.rows_passes = kvgraph.run_passes(
            kvgraph.build(spec), default_pipeline("buffer", capacity, per_row=True)
        )


@pytest.fixture
def pool():
    from kvgraph import specs

    return SlotPool(_Decoder(specs.get("llama-demo"), 16), rows=6)


def test_state_arrays_and_shared_buffers(pool):
    names = [v.name for v in pool.step_graph.inputs[2:]]
    assert pool.state_names == names and all(n.startswith("cache.") for n in names)
    for n, a in pool.arrays.items():
        assert a.shape[:2] == (6, 16)
        pool.buffers[n].to_numpy()[2, 3, 0] = 7.0  # one memory: the Buffer views the array
        assert a[2, 3, 0] == 7.0


def test_acquire_lowest_contiguous_range_and_reuse(pool):
    a, b, c = pool.acquire(1), pool.acquire(3), pool.acquire(2)
    assert [(g.lo, g.hi) for g in (a, b, c)] == [(0, 1), (1, 4), (4, 6)]
    assert pool.acquire(1) is None and pool.free_rows() == 0
    pool.release(b)
    assert pool.acquire(4) is None  # 3 free rows, but not 4
    d = pool.acquire(2)
    assert (d.lo, d.hi) == (1, 3)
    e = pool.acquire(1)
    assert (e.lo, e.hi) == (3, 4)
    with pytest.raises(InputError, match="does not fit"):
        pool.acquire(7)


def test_reorder_permutes_in_place_and_grows_into_new_rows(pool):
    name = pool.state_names[0]
    a = pool.arrays[name]
    g = pool.acquire(1)
    g.past = 3
    a[g.lo, :3] = 5.0
    a[g.lo, 3:] = -1.0  # rows not written yet: not copied
    grown = pool.reorder(g, [0, 0, 0])
    assert grown is not g and grown.size == 3 and grown.past == 3 and g not in pool.groups
    assert (a[grown.lo : grown.hi, :3] == 5.0).all()
    a[grown.lo + 1, :3] = 1.0
    same = pool.reorder(grown, [1, 1, 0])
    assert same is grown
    assert (a[grown.lo, :3] == 1.0).all() and (a[grown.lo + 2, :3] == 5.0).all()
    with pytest.raises(InputError, match="reorder"):
        pool.reorder(grown, [3])
    pool.acquire(pool.free_rows())
    assert pool.reorder(grown, [0] * 4) is None  # no room: nothing changed
    assert grown in pool.groups


def test_step_refuses_mixed_lengths(pool):
    g1, g2 = pool.acquire(1), pool.acquire(1)
    with pytest.raises(InputError, match="same number of new tokens"):
        pool.step([(g1, np.zeros((1, 1), np.int64)), (g2, np.zeros((1, 2), np.int64))])


def test_fragmented_pool_compacts_for_a_range_and_for_growth(pool):
    name = pool.state_names[0]
    a = pool.arrays[name]
    gs = [pool.acquire(1) for _ in range(6)]
    for i, g in enumerate(gs):
        g.past = 2
        a[g.lo, :2] = i
    for g in gs[::2]:
        pool.release(g)  # rows 0, 2, 4 free: 3 rows, no range of 2
    pair = pool.acquire(2)
    assert pool.compactions == 1 and (pair.lo, pair.hi) == (3, 5)
    assert [(g.lo, float(a[g.lo, 0, 0])) for g in gs[1::2]] == [(0, 1.0), (1, 3.0), (2, 5.0)]
    pool.release(pair)
    # one row grows to four: only 3 free rows, but its own row makes 4 once it is last
    grown = pool.reorder(gs[1], [0, 0, 0, 0])
    assert grown is gs[1] and (grown.lo, grown.hi) == (2, 6) and pool.compactions == 2
    assert (a[2:6, :2] == 1.0).all()
    assert [(g.lo, float(a[g.lo, 0, 0])) for g in gs[3::2]] == [(0, 3.0), (1, 5.0)]
