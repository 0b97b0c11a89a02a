"""Running lowered programs on MAX: one ``InferenceSession`` per process, and
:class:`CompiledProgram` (one IR program loaded on MAX, called with host arrays or MAX
buffers).

Loaded programs are cached in-process by (program text, weights identity, lowering
options), and across processes by :mod:`kvgraph.store`: a compiled program is persisted
(MAX's MEF) under a key made of the lowered MAX program's text, MAX's version and the CPU,
and read back in milliseconds instead of being compiled again (MAX's own cache still costs
seconds per program on a hit).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import logging
import platform
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
from max import engine
from max.driver import CPU, Buffer
from max.graph import Module

from ..analysis import buffer_outputs, emitted_outputs
from ..errors import LoweringError
from ..ir import Graph
from ..printer import format_graph
from ..store import ProgramStore, default_store, make_key
from .lower import lower

log = logging.getLogger("kvgraph")

#: Compile the programs of one model (one weights dict) as one MAX Module (see README:
#: measured against one compile per program).
COMPILE_TOGETHER = True
#: Seconds between progress lines while MAX compiles.
PROGRESS_EVERY_S = 10.0
#: Bumped when what the store keys on changes meaning.
STORE_FORMAT = "kvgraph-max-program/1"
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
    compile_seconds: float  # seconds to compile or read back, and bind the weights
    source: str = "compiled"  # "compiled" (by MAX) or "store" (read back from kvgraph.store)
    # computed once (steps read them every call)
    input_names: list = attrs.field(init=False)
    output_names: list = attrs.field(init=False)
    buffer_outputs: dict = attrs.field(init=False)
    _buffer_arg: list = attrs.field(init=False, repr=False)  # [(output name, argument index)]

    def __attrs_post_init__(self):
        self.input_names = [v.name for v in self.graph.inputs]
        self.output_names = emitted_outputs(self.graph)  # what the MAX model returns, in order
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


@attrs.frozen(eq=False)
class ProgramRequest:
    """One program to load: an IR graph, its weights and the lowering options (see
    :func:`kvgraph.max.lower.lower`)."""

    graph: Graph
    weights: dict
    weights_mode: str = "registry"
    f16_weights: bool = True
    few_dims: frozenset = attrs.field(default=frozenset(), converter=frozenset)
    always_few: bool = False
    few_attention: bool = False

    def memo_key(self) -> tuple:
        """In-process identity: program text, weights identity, lowering options."""
        return (
            hashlib.sha256(format_graph(self.graph).encode()).hexdigest(),
            id(self.weights),
            self.weights_mode,
            self.f16_weights,
            tuple(sorted(self.few_dims)),
            self.always_few,
            self.few_attention,
        )

    def describe(self) -> str:
        return self.graph.name + (" (few-row lowering: float16 GEMVs)" if self.always_few else "")


def load_program(
    g: Graph,
    weights: dict[str, np.ndarray],
    weights_mode: str = "registry",
    f16_weights: bool = True,
    few_dims=frozenset(),
    always_few: bool = False,
) -> CompiledProgram:
    """Lower and load ``g`` (see :func:`load_programs`)."""
    return load_programs([ProgramRequest(g, weights, weights_mode, f16_weights, few_dims, always_few)])[0]


def load_programs(
    requests: Sequence[ProgramRequest], *, together: bool | None = None, store: ProgramStore | None = None
) -> list[CompiledProgram]:
    """Load several programs: each from the in-process cache, else from the program store
    (``kvgraph.store``: a persisted compiled artifact, read back without compiling), else
    compiled by MAX and stored. Programs that share one weights dict are compiled as one MAX
    ``Module`` when ``together`` (default :data:`COMPILE_TOGETHER`); the store keeps them as
    one artifact. Compiles log their progress (program, elapsed seconds) every
    :data:`PROGRESS_EVERY_S` seconds on the ``kvgraph`` logger."""
    store = default_store() if store is None else store
    together = COMPILE_TOGETHER if together is None else together
    keys = [r.memo_key() for r in requests]
    out: list[CompiledProgram | None] = [_MODELS.get(k) for k in keys]
    todo = [i for i, p in enumerate(out) if p is None]
    groups: dict[tuple, list[int]] = {}
    for i in todo:  # one group per weights dict (a Module binds one registry), or one per program
        groups.setdefault(("weights", id(requests[i].weights)) if together else ("program", i), []).append(i)
    for idx in groups.values():
        batch = [requests[i] for i in idx]
        names = [r.graph.name for r in batch]
        if len(batch) > 1 and (
            len(set(names)) < len(names) or any(r.weights_mode != "registry" for r in batch)
        ):
            progs = [p for r in batch for p in _load_group([r], store)]
        else:
            progs = _load_group(batch, store)
        for i, r, prog in zip(idx, batch, progs):
            _MODELS[keys[i]] = out[i] = prog
            _KEEP[id(r.weights)] = r.weights  # the id in the memo key must not be reused while cached
    return out


def _load_group(batch: list[ProgramRequest], store: ProgramStore) -> list[CompiledProgram]:
    """Lower ``batch`` (one MAX Module when it holds several programs), then read it from the
    store or compile it, and bind the weights."""
    module = Module() if len(batch) > 1 else None
    lowered = [
        lower(
            r.graph,
            r.weights,
            r.weights_mode,
            r.f16_weights,
            r.few_dims,
            r.always_few,
            module=module,
            few_attention=r.few_attention,
        )
        for r in batch
    ]
    what = ", ".join(r.describe() for r in batch)
    # custom kernel packages the graphs use (a Module's compile needs them named again)
    kernels = sorted({str(p) for mg, _ in lowered for p in mg.kernel_libraries_paths})
    t0 = time.perf_counter()
    unit = module if module is not None else lowered[0][0]
    if all(r.weights_mode == "registry" for r in batch):
        texts = [str(mg) for mg, _ in lowered]
        for k in kernels:  # a kernel package is named by its content hash, not where it lies
            folder = str(Path(k).parent.parent)
            texts = [t.replace(folder, "<kvgraph-kernels>") for t in texts]
        key = make_key(STORE_FORMAT, max_version(), cpu_id(), *texts)
        compiled, hit = store.get_or_make(
            key, _read_artifact, lambda: _compile(unit, what, kernels), lambda c, path: c.export_mef(path)
        )
    else:  # constants are baked into the program: its text does not identify it, no store
        compiled, hit = _compile(unit, what, kernels), False
    registry: dict = {}
    for _, reg in lowered:
        registry.update(reg)
    try:
        if module is None:
            models = [session().init(compiled, weights_registry=registry)]
        else:
            by_name = session().init_all(compiled, weights_registry=registry)
            models = [by_name[mg.name] for mg, _ in lowered]
    except Exception as e:
        raise LoweringError(f"MAX could not load {what}: {type(e).__name__}: {e}") from e
    seconds = time.perf_counter() - t0
    log.info("%s %s in %.2f s", "loaded stored" if hit else "compiled", what, seconds)
    return [
        CompiledProgram(r.graph, m, seconds, "store" if hit else "compiled") for r, m in zip(batch, models)
    ]


def _read_artifact(payload: bytes):
    return engine.read(io.BytesIO(payload))


def _compile(unit, what: str, kernels=()):
    """MAX's compile of ``unit`` (a Graph or a Module), logging progress while it runs."""
    log.info("compiling %s for MAX (minutes if MAX's own cache is cold)", what)
    done = threading.Event()

    def tick():
        t0 = time.perf_counter()
        while not done.wait(PROGRESS_EVERY_S):
            log.info("  still compiling %s: %.0f s", what, time.perf_counter() - t0)

    ticker = threading.Thread(target=tick, name="kvgraph-compile-progress", daemon=True)
    ticker.start()
    try:
        return session().compile(unit, custom_extensions=[Path(k) for k in kernels] or None)
    except Exception as e:
        raise LoweringError(f"MAX could not compile {what}: {type(e).__name__}: {e}") from e
    finally:
        done.set()


@functools.cache
def max_version() -> str:
    try:
        return importlib.metadata.version("max")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source build
        return getattr(engine, "__version__", "unknown")


@functools.cache
def cpu_id() -> str:
    """What a compiled CPU program depends on: the architecture, the model name and the
    instruction-set flags (``/proc/cpuinfo`` where there is one)."""
    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().split("\n\n", 1)[0]
        for line in info.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("model name", "flags", "Features", "CPU part"):
                parts.append(v.strip())
    except OSError:
        parts.append(platform.processor())
    return "|".join(parts)
