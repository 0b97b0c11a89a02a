"""``init_weights(spec, seed)``: random float32 weights honouring ``spec.param_shapes()``."""

from __future__ import annotations

import numpy as np

from .spec import DecoderSpec


def init_weights(spec: DecoderSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random weights: linear weights ~ N(0, 1/fan_in), biases and norm
    offsets small but nonzero (so a test notices a dropped bias), embeddings ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in spec.param_shapes().items():
        if len(shape) == 2 and ("embed" in name or "embedding" in name):
            a = rng.standard_normal(shape)
        elif len(shape) == 2:
            a = rng.standard_normal(shape) / np.sqrt(shape[1])
        elif name.endswith("bias"):
            a = 0.1 * rng.standard_normal(shape)
        else:  # norm gains
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        out[name] = a.astype(np.float32)
    return out
