"""Which weights may be read as float16: only those whose values are float16 values."""

import numpy as np

from kvgraph.analysis import f16_exact


def test_f16_exact_accepts_fp16_checkpoint_values():
    a = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float16)
    assert f16_exact(a)
    assert f16_exact(a.astype(np.float32))
    assert f16_exact(a.astype(np.float64))
    assert f16_exact(np.array([0.0, -0.0, 65504.0, 2.0**-24], np.float32))  # max and subnormal


def test_f16_exact_refuses_anything_else():
    a = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    assert not f16_exact(a)
    b = a.astype(np.float16).astype(np.float32)
    b[3, 2] = np.nextafter(b[3, 2], np.float32(10))  # one value off the float16 grid
    assert not f16_exact(b)
    assert not f16_exact(np.array([70000.0], np.float32))  # beyond float16's range
    assert not f16_exact(np.array([1.0, np.nan], np.float32))
