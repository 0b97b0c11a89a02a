"""Running lowered programs on MAX: one ``InferenceSession`` per process, and
:class:`CompiledProgram` (one IR program loaded on MAX, called with host arrays or MAX
buffers).

Loaded programs are cached in-process by (program text, weights identity, lowering
options), and across processes by :mod:`kvgraph.store`: a compiled program is persisted
(MAX's MEF, with the recipe of its weight registry) and read back in milliseconds instead of
being compiled again (MAX's own cache still costs seconds per program on a hit). The store
key is computed without lowering (:func:`store_key`: the IR text and lowering options, the
weights' names, shapes, dtypes and float16-exactness, the lowering's source code, MAX's
version, the CPU), so a hit neither lowers nor compiles: the registry is rebuilt from the
recipe.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import io
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
from max import engine
from max.driver import CPU, Buffer, set_virtual_cpu_target
from max.graph import Graph as MaxGraph
from max.graph import Module

from ..analysis import buffer_outputs, emitted_outputs, f16_exact
from ..errors import KernelError, LoweringError
from ..ir import Graph
from ..memory import advise_huge_pages, no_huge_page_faults
from ..printer import format_graph
from ..store import ProgramStore, default_store, make_key
from . import converted, custom, isa
from .lower import LAYOUTS, lower, max_name, source_array
from .native import TARGET_ENV, cpu_id, virtual_target

log = logging.getLogger("kvgraph")

#: Compile the programs of one model (one weights dict) as one MAX Module (see README:
#: measured against one compile per program).
COMPILE_TOGETHER = True
#: Seconds between progress lines while MAX compiles.
PROGRESS_EVERY_S = 10.0
#: Bumped when what the store keys on changes meaning.
STORE_FORMAT = "kvgraph-max-program/3"
_SESSION = None
_MODELS: dict[tuple, object] = {}
_KEEP: dict[int, object] = {}
#: Programs a stored Module held beyond the ones asked for, bound when it was read (MAX binds
#: a Module's programs all at once): ``{(id(weights), name in the Module): MAX model}``. A later
#: request for one of them (a program compiled on first use, which `kvgraph prepare
#: --all-programs` stored with the first ones) is served from here: reading the Module again
#: would need every weight it binds, and a backend may have let some go (the encoder's).
_SERVED: dict[tuple, object] = {}


def session():
    """The process's one MAX InferenceSession (CPU)."""
    global _SESSION
    if _SESSION is None:
        target = virtual_target()
        if target is not None:  # before MAX compiles anything (max.driver's contract)
            set_virtual_cpu_target(target)
            log.warning("%s=%s: every program is compiled for that CPU, not this one", TARGET_ENV, target)
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
            kernels_id(),  # the custom kernels in use (turned off, or a rebuilt package: a new program)
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
    one artifact; a program asked for twice is loaded once. Compiles log their progress (program, elapsed seconds) every
    :data:`PROGRESS_EVERY_S` seconds on the ``kvgraph`` logger."""
    store = default_store() if store is None else store
    together = COMPILE_TOGETHER if together is None else together
    keys = [r.memo_key() for r in requests]
    out: list[CompiledProgram | None] = [_MODELS.get(k) for k in keys]
    todo: dict[tuple, int] = {}  # each program to load, once: at its first request
    for i, p in enumerate(out):
        if p is None:
            todo.setdefault(keys[i], i)
    groups: dict[tuple, list[int]] = {}
    for i in todo.values():  # one group per weights dict (a Module binds one registry), or one per program
        groups.setdefault(("weights", id(requests[i].weights)) if together else ("program", i), []).append(i)
    for idx in groups.values():
        batch = [requests[i] for i in idx]
        if len(batch) > 1 and any(r.weights_mode != "registry" for r in batch):
            progs = [p for i in idx for p in _load_group([requests[i]], [keys[i]], store)]
        else:
            progs = _load_group(batch, [keys[i] for i in idx], store)
        for i, r, prog in zip(idx, batch, progs):
            _MODELS[keys[i]] = out[i] = prog
            _KEEP[id(r.weights)] = r.weights  # the id in the memo key must not be reused while cached
    return [p if p is not None else _MODELS[k] for p, k in zip(out, keys)]


def _load_group(batch: list[ProgramRequest], memo: list[tuple], store: ProgramStore) -> list[CompiledProgram]:
    """Load ``batch`` (one MAX Module when it holds several programs) and bind its weights.

    Registry-bound programs go through the store under a key computed without lowering
    (:func:`store_key`): a hit reads the compiled artifact and the weight recipe stored with
    it, and builds the weight registry from the recipe (nothing is lowered); a miss lowers,
    compiles and stores both. A stored recipe that does not fit the weights at hand falls
    back to lowering and compiling, with one log line."""
    what = ", ".join(r.describe() for r in batch)
    t0 = time.perf_counter()
    if any(r.weights_mode != "registry" for r in batch):
        # constants are baked into the program: its text does not identify it, no store
        names = [max_name(r.graph) for r in batch]
        prog, hit = _lower(batch, names).compile(what), False
        models = prog.init(names, batch[0].weights, what, None)
    else:
        key = store_key(batch, memo)
        # each program's own key: its link to a Module's artifact, and its name in a Module
        # (unique there: a step program's two lowerings share the IR graph's name)
        own = [store_key([r], [m]) for r, m in zip(batch, memo)] if len(batch) > 1 else [key]
        in_module = [module_name(r, k) for r, k in zip(batch, own)]
        served = [_SERVED.get((id(batch[0].weights), n)) for n in in_module]
        if all(m is not None for m in served):
            log.info("%s: bound when its Module was read", what)
            return [CompiledProgram(r.graph, m, 0.0, "store") for r, m in zip(batch, served)]
        names = in_module if len(batch) > 1 else [max_name(batch[0].graph)]
        prog, hit = _stored_or_compiled(batch, names, key, own if len(batch) > 1 else [], store, what)
        try:
            # a program alone can be served by a Module holding it (found through its link)
            models = prog.init(names if len(prog.names) == 1 else in_module, batch[0].weights, what, store)
        except StaleRecipe as e:
            if not hit:
                raise
            store.stats.hits -= 1  # counted as what it was: a bad artifact and a miss
            store.stats.bad += 1
            store.stats.misses += 1
            log.warning("kvgraph store: ignoring the stored %s: %s; compiling instead", what, e)
            prog, hit = _lower(batch, names).compile(what), False
            store.put(key, lambda path: _write_stored(prog, path))
            models = prog.init(names, batch[0].weights, what, store)
    seconds = time.perf_counter() - t0
    log.info("%s %s in %.2f s", "loaded stored" if hit else "compiled", what, seconds)
    return [
        CompiledProgram(r.graph, m, seconds, "store" if hit else "compiled") for r, m in zip(batch, models)
    ]


def module_name(r: ProgramRequest, own_key: str) -> str:
    """Program ``r``'s graph name inside a MAX Module of several: its IR graph's name and its
    own store key's first digits (unique in the Module, and the same in every process)."""
    return f"{max_name(r.graph)}__{own_key[:12]}"


def _stored_or_compiled(
    batch, names: list[str], key: str, members: list[str], store: ProgramStore, what: str
) -> tuple[_Program, bool]:
    """``(program, hit)``: the batch's artifact from the store — stored under the batch's key,
    or a Module holding every program of the batch, found through each program's own key
    (``members``; a Module compiled for other programs of the same model: ``kvgraph
    prepare``, a test session) — else compiled (graphs named ``names``) and stored, with a
    link from each program's own key to the artifact. Concurrent processes compile a batch
    once (the store's lock on its key)."""

    def find() -> _Program | None:
        target = store.target(key)
        if target is None and members:
            targets = {store.target(k) for k in members}
            target = targets.pop() if len(targets) == 1 else None
        return None if target is None else store.read(target, _read_stored)

    prog = find()
    if prog is not None:
        return prog, True
    with store.lock(key):
        prog = find()  # another process may have stored it while we waited
        if prog is not None:
            return prog, True
        store.stats.misses += 1
        prog = _lower(batch, names).compile(what)
        if store.put(key, lambda path: _write_stored(prog, path)):
            for k in members:
                store.link(k, key)
    return prog, False


class StaleRecipe(LoweringError):
    """A stored weight recipe that does not fit the weights at hand."""


@attrs.define
class _Program:
    """A batch of programs, lowered (``unit``: a MAX Graph or Module, and its ``registry``)
    or read back from the store (no unit, no registry); ``compiled`` once compiled or read.
    ``names``: the MAX names of its graphs, in batch order; ``recipe``: how each registry
    array is made from the weights, ``{MAX weight name: (weight name, layout, f16, source
    shape, source dtype)}``."""

    names: list
    recipe: dict
    unit: object = None
    registry: dict | None = None
    compiled: object = None
    kernels: list = attrs.field(factory=list)  # custom kernel packages the graphs use

    def compile(self, what: str) -> _Program:
        self.compiled = _compile(self.unit, what, self.kernels)
        self.unit = None  # the MAX graphs are not needed once compiled
        return self

    def weights_registry(self, weights: dict, store: ProgramStore | None = None) -> dict:
        """The registry MAX binds: as lowered, or rebuilt from the recipe. With ``store``,
        weights converted for a compute type are read from it, or kept in it once made
        (:mod:`kvgraph.max.converted`)."""
        if self.registry is not None:
            for key, (name, layout, f16, _shape, _dtype) in self.recipe.items():
                if layout in converted.CONVERTED:
                    converted.keep(source_array(weights, name), layout, f16, self.registry[key], store)
            return self.registry
        reg = {}
        for key, (name, layout, f16, shape, dtype) in self.recipe.items():
            try:  # a stacked entry names its members
                members = [
                    source_array(weights, n) for n in (name if isinstance(name, (list, tuple)) else [name])
                ]
            except KeyError as e:
                raise StaleRecipe(f"it reads weight {e.args[0]!r}, which these weights lack") from None
            held = [sum(m.shape[0] for m in members), *members[0].shape[1:]] if members[0].ndim else []
            held_dtype = np.result_type(*members)
            if (
                list(shape) != held
                or str(held_dtype) != dtype
                or any(m.shape[1:] != members[0].shape[1:] for m in members)
            ):
                got = " + ".join(f"{m.dtype}{list(m.shape)}" for m in members)
                raise StaleRecipe(
                    f"it reads weight {name!r} as {dtype}{list(shape)}, these weights hold {got}"
                )
            if layout not in LAYOUTS:
                raise StaleRecipe(f"it asks for an unknown weight layout {layout!r}")
            src = members[0] if len(members) == 1 else tuple(members)  # stacked once, when made
            reg[key] = converted.weight_array(src, layout, f16, store)
        return reg

    def init(self, want: list[str], weights: dict, what: str, store: ProgramStore | None = None) -> list:
        """The MAX models of the programs named ``want``, bound to ``weights``. The artifact
        may hold more programs (a Module found through its programs' own keys)."""
        if len(self.names) > 1:
            missing = [n for n in want if n not in self.names]
            if missing:
                raise StaleRecipe(f"it lacks programs {missing}")
        with no_huge_page_faults():  # made once, kept: see kvgraph.memory
            registry = self.weights_registry(weights, store)
        advise_huge_pages(registry.values())
        try:
            if len(self.names) == 1:
                return [session().init(self.compiled, weights_registry=registry)]
            by_name = session().init_all(self.compiled, weights_registry=registry)
        except Exception as e:
            if self.registry is None:  # read back: the artifact does not take these weights
                raise StaleRecipe(f"MAX refused its weights ({type(e).__name__}: {e})") from e
            raise LoweringError(f"MAX could not load {what}: {type(e).__name__}: {e}") from e
        if not all(n in by_name for n in self.names) and len(by_name) == len(self.names):
            # MAX's own cache can hand back an artifact compiled earlier from the same graphs
            # under other names (its key ignores them): the same graphs, in the same order
            by_name = dict(zip(self.names, by_name.values()))
        missing = [n for n in want if n not in by_name]
        if missing:
            raise StaleRecipe(f"it lacks programs {missing}")
        if self.registry is None:  # read back: keep the programs not asked for (yet)
            for n, model in by_name.items():
                _SERVED.setdefault((id(weights), n), model)
        return [by_name[n] for n in want]


def _lower(batch: list[ProgramRequest], names: list[str]) -> _Program:
    """Lower ``batch`` to MAX graphs named ``names`` (one Module when it holds several)."""
    module = Module() if len(batch) > 1 else None
    registry: dict = {}
    recipe: dict = {}
    graphs = []
    for r, name in zip(batch, names):
        mg, reg = lower(
            r.graph,
            r.weights,
            r.weights_mode,
            r.f16_weights,
            r.few_dims,
            r.always_few,
            module=module,
            few_attention=r.few_attention,
            recipe=recipe,
            name=name,
        )
        graphs.append(mg)
        registry.update(reg)
    weights = batch[0].weights
    full = {}
    for k, (name, layout, f16) in recipe.items():
        src = source_array(weights, name)
        stored = list(name) if isinstance(name, tuple) else name  # a fused entry's names: a JSON list
        full[k] = (stored, layout, f16, list(src.shape), str(src.dtype))
    unit = module if module is not None else graphs[0]
    # custom kernel packages the graphs use (a Module's compile needs them named again)
    return _Program([mg.name for mg in graphs], full, unit, registry, kernels=packages_of(graphs))


_RECIPE_MAGIC = b"KVGRAPH-RECIPE-1"


def _write_stored(prog: _Program, path: str) -> None:
    """The stored artifact: the recipe (JSON) then MAX's MEF."""
    prog.compiled.export_mef(path)
    mef = Path(path).read_bytes()
    meta = json.dumps({"names": prog.names, "recipe": prog.recipe}, sort_keys=True).encode()
    with open(path, "wb") as f:
        f.write(_RECIPE_MAGIC + len(meta).to_bytes(8, "little") + meta)
        f.write(mef)


def _read_stored(payload: memoryview) -> _Program:
    n0 = len(_RECIPE_MAGIC)
    if payload[:n0] != _RECIPE_MAGIC:
        raise StaleRecipe("the artifact holds no weight recipe")
    n = int.from_bytes(payload[n0 : n0 + 8], "little")
    meta = json.loads(bytes(payload[n0 + 8 : n0 + 8 + n]))
    recipe = {k: tuple(v) for k, v in meta["recipe"].items()}
    compiled = engine.read(io.BytesIO(payload[n0 + 8 + n :]))  # the MEF's one copy
    return _Program(list(meta["names"]), recipe, compiled=compiled)


#: The modules whose code decides what a lowered program is (their source is in the store key).
_LOWERING_MODULES = (
    "kvgraph.max.lower",
    "kvgraph.max.kernels",
    "kvgraph.analysis",
    "kvgraph.ir",
    "kvgraph.types",
    "kvgraph.printer",
    "kvgraph.names",
    "kvgraph.max.custom",
    "kvgraph.max.isa",
    "kvgraph.numerics",
)


@functools.cache
def lowering_source_digest() -> str:
    """SHA-256 of the lowering's source (:data:`_LOWERING_MODULES`): a change to how programs
    are lowered changes every store key."""
    h = hashlib.sha256()
    for name in _LOWERING_MODULES:
        mod = sys.modules.get(name) or importlib.import_module(name)
        h.update(name.encode())
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()


def weights_signature(r: ProgramRequest) -> str:
    """What of the weights can change ``r``'s lowered program: each weight's name, shape and
    dtype and, where float16 copies are made, whether its values are float16-exact."""
    parts = []
    check_f16 = r.f16_weights and r.weights_mode == "registry"
    for w in r.graph.weights():
        a = r.weights.get(w.name)
        if a is None:
            parts.append(f"{w.name}:missing")
            continue
        a = np.asarray(a)
        exact = int(f16_exact(a)) if check_f16 and a.ndim == 2 else "-"
        parts.append(f"{w.name}:{a.dtype}{list(a.shape)}:{exact}")
    return "\n".join(parts)


def kernels_id() -> str:
    """Which custom kernels the lowering uses: the package's content hash (the folder it was
    built into is named by it, see :mod:`kvgraph.max.custom`) and the instruction-set class
    their tiles are instantiated for (:mod:`kvgraph.max.isa`) and the engine of bfloat16
    products (``isa.bf16_engine``), or "none"."""
    pkg = custom.kernel_package()
    if pkg is None:
        return "none"
    k = isa.host()
    return f"{pkg.parent.name}/{k.name}/{k.l1d}/bf16-{isa.bf16_engine()}"


def store_key(batch: list[ProgramRequest], memo: list[tuple] | None = None) -> str:
    """The store key of ``batch``, computed without lowering: each program's IR text and
    lowering options and what of the weights shapes the program (:func:`weights_signature`),
    the lowering's source, MAX's version and the CPU."""
    parts = [STORE_FORMAT, max_version(), cpu_id(), lowering_source_digest(), kernels_id()]
    for r, m in zip(batch, memo or [r.memo_key() for r in batch]):
        parts += [m[0], *map(str, m[2:]), weights_signature(r)]  # m[1] is the weights' id
    return make_key(*parts)


def _compile(unit, what: str, kernels=()):
    """MAX's compile of ``unit`` (a Graph or a Module), logging progress while it runs."""
    log.info("compiling %s for MAX (minutes if MAX's own cache is cold)", what)
    done = threading.Event()
    t_start = time.perf_counter()

    def tick():
        t0 = time.perf_counter()
        while not done.wait(PROGRESS_EVERY_S):
            log.info("  still compiling %s: %.0f s", what, time.perf_counter() - t0)

    ticker = threading.Thread(target=tick, name="kvgraph-compile-progress", daemon=True)
    ticker.start()
    extensions = extensions_for(unit, kernels)
    uses_kernels = bool(extensions or _own_packages(unit))
    try:
        compiled = session().compile(unit, custom_extensions=extensions or None)
    except Exception as e:
        if uses_kernels:
            raise kernel_error(what, e) from None
        raise LoweringError(f"MAX could not compile {what}: {type(e).__name__}: {e}") from e
    finally:
        done.set()
    record_compile(what, time.perf_counter() - t_start)
    return compiled


def extensions_for(unit, kernels) -> list[Path]:
    """The kernel packages to name in MAX's compile of ``unit`` so that each reaches MAX exactly
    once. MAX's ``InferenceSession.compile`` adds a ``Graph``'s own ``kernel_libraries_paths``
    to the list it is given (max/engine/api.py, 26.7), and loading one package twice fails on
    some CPUs ("kernel ... is registered multiple times with the same device infos"); a
    ``Module`` brings none of its graphs' packages, so they are named here."""
    own = _own_packages(unit)
    out: list[Path] = []
    for k in kernels:
        if str(k) not in own and Path(k) not in out:
            out.append(Path(k))
    return out


def _own_packages(unit) -> set[str]:
    """The kernel packages a unit brings to MAX's compile by itself (a ``Graph``'s own)."""
    return set(packages_of([unit])) if isinstance(unit, MaxGraph) else set()


def packages_of(graphs) -> list[str]:
    """The custom kernel packages MAX graphs were built with, each once, sorted."""
    return sorted({str(p) for g in graphs for p in g.kernel_libraries_paths})


def kernel_error(what: str, e: BaseException) -> KernelError:
    """One line for a failed compile of a program that uses kvgraph's custom kernels: the
    kernel MAX names (else the package), MAX's reason, and the way out."""
    msg = " ".join(str(e).split()) or type(e).__name__
    named = sorted(set(re.findall(r"kvgraph_[a-z0-9_]+", msg)) - {"kvgraph_kernels"})
    reason = (msg[msg.index("error: ") + 7 :] if "error: " in msg else msg)[:300]
    if named:
        return KernelError(
            f"MAX could not compile {what} with kvgraph's custom kernel {', '.join(named)}: {reason} "
            f"(set KVGRAPH_CUSTOM_KERNELS=off to run MAX's own ops instead)"
        )
    return KernelError(
        f"MAX could not compile {what}: {reason} (it uses kvgraph's custom kernels, "
        f"{', '.join(custom.kernel_names())}: if the fault is theirs, KVGRAPH_CUSTOM_KERNELS=off "
        f"runs MAX's own ops instead)"
    )


def record_compile(what: str, seconds: float) -> None:
    """Append one line (JSON: what, seconds, pid) to ``$KVGRAPH_COMPILE_LOG`` when it is set:
    the test suite counts every MAX compile of a run this way, its subprocesses' included."""
    path = os.environ.get("KVGRAPH_COMPILE_LOG")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "")
    line = json.dumps({"what": what, "seconds": round(seconds, 3), "pid": os.getpid(), "test": test})
    with open(path, "a") as f:  # one short append per compile: lines do not interleave
        f.write(line + "\n")


def load_graph(g, what: str | None = None):
    """Compile one hand-built MAX ``Graph`` (no weights) and load it: the runtime's own compile
    path, so kernel packages reach MAX once and the compile is counted."""
    return session().init(_compile(g, what or g.name))


def load_graphs(module: Module, graphs: Sequence, what: str) -> dict:
    """Compile hand-built MAX ``graphs`` (no weights), built into ``module``, in one go (one
    compile for all: far cheaper than one each) and load them: ``{graph name: model}``."""
    return session().init_all(_compile(module, what, packages_of(graphs)))


@functools.cache
def max_version() -> str:
    try:
        return importlib.metadata.version("max")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source build
        return getattr(engine, "__version__", "unknown")
