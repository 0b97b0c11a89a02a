"""Running lowered programs on MAX: one ``InferenceSession`` per process, and
:class:`CompiledProgram` (one IR program loaded on MAX, called with host arrays or MAX
buffers).

Loaded programs are cached in-process by (program text, weights identity, lowering
options). MAX's own disk cache (``~/.cache/modular``) makes a second process's compile of
the same graph fast.
"""
from __future__ import annotations

import hashlib
import logging
import time

import attrs
import numpy as np
from max import engine
from max.driver import CPU, Buffer

from ..analysis import buffer_outputs, emitted_outputs
from ..errors import LoweringError
from ..ir import Graph
from ..printer import format_graph
from .lower import lower

log = logging.getLogger("kvgraph")
_SESSION = None
_MODELS: dict[tuple, object] = {}
_KEEP: dict[int, object] = {}


def session():
    """The process's one MAX InferenceSession (CPU)."""
    global _SESSION
    if _SESSION is None:
        _SESSION = engine.InferenceSession(devices=[CPU()])
    return _SESSION


@attrs.define
class CompiledProgram:
    """One IR program loaded on MAX: call it with host arrays or MAX buffers."""

    graph: Graph
    model: object
    compile_seconds: float
    # computed once (steps read them every call)
    input_names: list = attrs.field(init=False)
    output_names: list = attrs.field(init=False)
    buffer_outputs: dict = attrs.field(init=False)
    _buffer_arg: list = attrs.field(init=False, repr=False)  # [(output name, argument index)]

    def __attrs_post_init__(self):
        self.input_names = [v.name for v in self.graph.inputs]
        self.output_names = emitted_outputs(self.graph)   # what the MAX model returns, in order
        self.buffer_outputs = buffer_outputs(self.graph)  # {output: input buffer mutated in place}
        self._buffer_arg = [(k, self.input_names.index(src)) for k, src in self.buffer_outputs.items()]

    def results(self, args: list, outs: list) -> dict:
        """``{output name: Buffer}`` of one call: emitted outputs, and buffer outputs as the
        (mutated) buffer passed for their input."""
        got = dict(zip(self.output_names, outs))
        for k, i in self._buffer_arg:
            got[k] = args[i]
        return got

    def __call__(self, *args) -> list:
        bufs = [a if isinstance(a, Buffer) else Buffer.from_numpy(np.asarray(a, order="C")) for a in args]
        try:
            return self.model.execute(*bufs)
        except Exception as e:
            shapes = ", ".join(f"{n}={tuple(b.shape)}" for n, b in zip(self.input_names, bufs))
            raise LoweringError(f"MAX failed running {self.graph.name}({shapes}): {e}") from e


def load_program(g: Graph, weights: dict[str, np.ndarray], weights_mode: str = "registry",
                 f16_weights: bool = True, few_dims=frozenset(), always_few: bool = False) -> CompiledProgram:
    """Lower and load ``g`` (cached in-process by program text, weights identity and the
    lowering options; see :func:`kvgraph.max.lower.lower` for them)."""
    key = (hashlib.sha256(format_graph(g).encode()).hexdigest(), id(weights), weights_mode, f16_weights,
           tuple(sorted(few_dims)), always_few)
    hit = _MODELS.get(key)
    if hit is not None:
        return hit
    mg, registry = lower(g, weights, weights_mode, f16_weights, few_dims, always_few)
    what = g.name + (" (few-row lowering: float16 GEMVs)" if always_few else "")
    log.info("compiling %s for MAX (%d nodes; minutes if MAX's cache is cold)", what, len(g.nodes))
    t0 = time.perf_counter()
    try:
        model = session().load(mg, weights_registry=registry)
    except Exception as e:
        raise LoweringError(f"MAX could not compile {g.name}: {type(e).__name__}: {e}") from e
    prog = CompiledProgram(g, model, time.perf_counter() - t0)
    log.info("compiled %s in %.1f s", what, prog.compile_seconds)
    _MODELS[key] = prog
    _KEEP[id(weights)] = weights  # the id in the key must not be reused while cached
    return prog
