"""``kvgraph.compile``: prefill/step (or full-sequence) programs loaded on MAX.

One ``InferenceSession`` per process; loaded models are cached in-process by
(program text, weights identity). MAX's own disk cache (``~/.cache/modular``) makes a
second process's compile of the same graph fast. Decoder state (KV caches, hoisted
cross-attention K/V) stays in MAX ``Buffer`` s between calls: a step passes the buffers
the previous call returned straight back in.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Optional

import attrs
import numpy as np

from .build import B, S, build
from .errors import InputError, InputTypeError, KvgraphError, LoweringError
from . import ir
from .ir import Graph
from .passes import PassResult, default_pipeline, run_passes
from .printer import format_graph
from .spec import DecoderSpec

log = logging.getLogger("kvgraph")
_SESSION = None
_MODELS: dict[tuple, object] = {}
_KEEP: dict[int, object] = {}


def session():
    """The process's one MAX InferenceSession (CPU)."""
    global _SESSION
    if _SESSION is None:
        from max import engine
        from max.driver import CPU
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
        from .lower_max import buffer_outputs, emitted_outputs
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
        from max.driver import Buffer
        bufs = [a if isinstance(a, Buffer) else Buffer.from_numpy(np.asarray(a, order="C")) for a in args]
        try:
            return self.model.execute(*bufs)
        except Exception as e:
            shapes = ", ".join(f"{n}={tuple(b.shape)}" for n, b in zip(self.input_names, bufs))
            raise LoweringError(f"MAX failed running {self.graph.name}({shapes}): {e}") from e


def load_program(g: Graph, weights: dict[str, np.ndarray], weights_mode: str = "registry",
                 f16_weights: bool = True, few_dims=frozenset(), always_few: bool = False) -> CompiledProgram:
    """Lower and load ``g`` (cached in-process by program text, weights identity and the
    lowering options; see :func:`kvgraph.lower_max.lower` for them)."""
    key = (hashlib.sha256(format_graph(g).encode()).hexdigest(), id(weights), weights_mode, f16_weights,
           tuple(sorted(few_dims)), always_few)
    hit = _MODELS.get(key)
    if hit is not None:
        return hit
    from .lower_max import lower
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


class WrittenRows:
    """Which write last touched each row of one set of in-place cache buffers
    (``cache_layout="buffer"``). A state remembers the write that made it; it is stale once
    a later write (a step from an earlier state) touched one of its rows, and stepping it
    would silently attend to another branch's keys, so ``step`` refuses it."""

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
                "two branches from it")

    def write(self, past: int, n: int) -> int:
        self.last += 1
        self.row_write[past:past + n] = self.last
        return self.last


@attrs.define
class DecoderState:
    """What a decoder carries between calls: rows already seen and named MAX buffers."""

    past: int
    batch: int
    buffers: dict = attrs.field(factory=dict)
    tokens: Optional[np.ndarray] = None      # only for the cache-off fallback
    context: object = None                   # only for the cache-off fallback
    rows: Optional[WrittenRows] = None       # only for in-place (buffer) caches
    made_by: int = 1                         # the write of ``rows`` that made this state

    def numpy(self) -> dict[str, np.ndarray]:
        return {k: b.to_numpy() for k, b in self.buffers.items()}


def _tokens(t) -> np.ndarray:
    a = np.asarray(t)
    if a.ndim != 2 or a.dtype.kind not in "iu" or a.shape[1] == 0:
        raise InputError(f"tokens must be a non-empty integer array [batch, n], got {a.dtype}{list(a.shape)}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _limits(g: Graph) -> tuple[Optional[int], Optional[int]]:
    """(vocabulary size, longest sequence) the graph can index: rows of the tables that
    ``embed`` reads with tokens and ``gather_rows`` reads with positions."""
    vocab = max_len = None
    pos = {n.out for n in g.nodes if isinstance(n.op, ir.Positions)}
    for n in g.nodes:
        if isinstance(n.op, ir.Embed):
            vocab = n.op.table.type.shape[0] if vocab is None else min(vocab, n.op.table.type.shape[0])
        elif isinstance(n.op, ir.GatherRows) and n.op.index in pos:
            rows = n.op.table.type.shape[0]
            max_len = rows if max_len is None else min(max_len, rows)
    return vocab, max_len


class CompiledDecoder:
    """A decoder on MAX. With ``kv_cache=True``: ``prefill``/``step`` run the cached
    programs; ``logits`` runs the full-sequence graph. With ``kv_cache=False`` everything
    runs the full-sequence graph (``step`` recomputes every row: the fallback).

    MAX programs (``program(name)``): ``"prefill"``, ``"full"``, and two lowerings of the
    one step graph: ``"step_few"`` (float16 GEMVs, for steps of at most ``STEP_FEW_ROWS``
    rows; only when the weights are an fp16 checkpoint's, see ``few_steps``) and ``"step"``
    (float32 GEMMs). Both read and write the same state."""

    def __init__(self, graph: Graph, weights: dict, *, kv_cache: bool = True,
                 passes=None, eager: bool = True, weights_mode: str = "registry",
                 f16_weights: bool = True):
        self.full = graph
        self.weights = weights
        self.weights_mode = weights_mode
        self.f16_weights = f16_weights
        self.kv_cache = kv_cache
        self.passes: Optional[PassResult] = run_passes(graph, passes or default_pipeline()) if kv_cache else None
        self._progs: dict[str, CompiledProgram] = {}
        self.vocab_size, self.max_len = _limits(graph)
        # rows a fixed-capacity (layout="buffer") cache holds; None for growing caches
        caps = [n.op.cache.type.shape[1] for n in (self.passes.step.nodes if self.passes else ())
                if isinstance(n.op, ir.CacheStore)]
        self.capacity: Optional[int] = min(caps) if caps else None
        # an fp16 checkpoint: steps of few rows run "step_few" (float16 GEMVs, no per-linear
        # run-time switch); steps of more rows run "step" (float32 GEMMs), compiled on first use
        self.few_steps = bool(kv_cache and f16_weights and weights_mode == "registry"
                              and _has_f16_linear(self.passes.step, weights))
        if eager:
            for name in (("prefill", "step_few" if self.few_steps else "step") if kv_cache else ("full",)):
                self.program(name)

    # ---- programs
    def program(self, name: str) -> CompiledProgram:
        if name not in self._progs:
            if name != "full" and self.passes is None:
                raise KvgraphError(f"no {name!r} program: this decoder was compiled with kv_cache=False "
                                   "(only 'full')")
            g = self.full if name == "full" else self.passes.programs["step" if name == "step_few" else name]
            if name == "step_few":
                # every linear is a GEMV: run only with few rows (see step())
                opts = dict(few_dims=_TOKEN_DIMS, always_few=True)
            else:  # a linear over [b, d] (prefill's last row) picks GEMV/GEMM at run time
                opts = dict(few_dims=_BATCH_DIM)
            if name == "step" and self.few_steps:
                log.info("a step of more than %d rows: compiling the GEMM step program", STEP_FEW_ROWS)
            self._progs[name] = load_program(g, self.weights, self.weights_mode, self.f16_weights, **opts)
        return self._progs[name]

    @property
    def compile_seconds(self) -> dict[str, float]:
        return {k: p.compile_seconds for k, p in self._progs.items()}

    def _context_args(self, prog: CompiledProgram, context):
        if "context" in prog.input_names:
            if context is None:
                raise InputError(f"{prog.graph.name} needs a context (cross-attention input)")
            return [np.ascontiguousarray(context, dtype=np.float32)] if not _is_buffer(context) else [context]
        return []

    def _check(self, tok: np.ndarray, past: int = 0) -> np.ndarray:
        if self.vocab_size is not None:
            # a decode step's few ids: Python's min/max beat two numpy reductions per call
            ids = tok.ravel().tolist() if tok.size <= 64 else (int(tok.min()), int(tok.max()))
            lo, hi = min(ids), max(ids)
            if lo < 0 or hi >= self.vocab_size:
                raise InputError(f"token ids must be in [0, {self.vocab_size}), got {lo}..{hi}")
        if self.max_len is not None and past + tok.shape[1] > self.max_len:
            raise InputError(f"sequence of {past + tok.shape[1]} positions exceeds the model's "
                             f"{self.max_len} learned positions")
        if self.kv_cache and self.capacity is not None and past + tok.shape[1] > self.capacity:
            raise InputError(f"sequence of {past + tok.shape[1]} positions exceeds the KV cache "
                             f"capacity of {self.capacity} rows (compile with a larger capacity=)")
        return tok

    # ---- public API
    def logits(self, tokens, context=None) -> np.ndarray:
        """Full-sequence logits ``[b, t, vocab]`` (the cache-off graph)."""
        prog = self.program("full")
        out = prog(self._check(_tokens(tokens)), *self._context_args(prog, context))
        return out[0].to_numpy()

    def prefill(self, tokens, context=None) -> tuple[np.ndarray, DecoderState]:
        """Run the prompt: ``(logits [b, vocab] of the last position, state)``."""
        tok = self._check(_tokens(tokens))
        if not self.kv_cache:
            full = self.logits(tok, context)
            return full[:, -1], DecoderState(tok.shape[1], tok.shape[0], tokens=tok, context=context)
        prog = self.program("prefill")
        args = [tok] + self._context_args(prog, context)
        args += [_zeros(v, tok.shape[0]) for v in prog.graph.inputs[len(args):]]
        got = prog.results(args, prog(*args))
        logits = got.pop("logits")
        state = DecoderState(tok.shape[1], tok.shape[0], got, rows=self._rows(tok.shape[1]))
        return logits.to_numpy()[:, 0], state

    def _rows(self, past: int) -> Optional[WrittenRows]:
        return WrittenRows(self.capacity, past) if self.capacity is not None else None

    def step(self, tokens, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        """Append ``tokens [b, n]``: ``(logits [b, n, vocab], new state)``.

        With ``cache_layout="buffer"`` the new state shares the given state's cache buffers,
        written in place at rows ``[past, past+n)``: the given state stays valid (its rows
        are untouched), but two states that step from one common state overwrite each
        other's new rows: stepping a state whose rows a later step from an earlier state
        overwrote raises ``KvgraphError``; ``reorder`` (or a fresh prefill) gives an
        independent copy."""
        tok = self._check(_tokens(tokens), state.past)
        if state.rows is not None:
            state.rows.check(state.past, state.made_by)
        if tok.shape[0] != state.batch:
            raise InputError(f"step: batch {tok.shape[0]} != the state's batch {state.batch}")
        n = tok.shape[1]
        if not self.kv_cache:
            allt = np.concatenate([state.tokens, tok], axis=1)
            full = self.logits(allt, state.context)
            return full[:, -n:], DecoderState(allt.shape[1], state.batch, tokens=allt, context=state.context)
        few = self.few_steps and tok.shape[0] * n <= STEP_FEW_ROWS
        prog = self.program("step_few" if few else "step")
        args = [tok, np.array(state.past, dtype=np.int64)]
        for name in prog.input_names[2:]:
            if name not in state.buffers:
                raise KvgraphError(f"step needs state {name!r}; the state holds {sorted(state.buffers)}")
            args.append(state.buffers[name])
        got = prog.results(args, prog(*args))
        logits = got.pop("logits")
        bufs = dict(state.buffers)
        bufs.update(got)
        made_by = state.rows.write(state.past, n) if state.rows is not None else 1
        return logits.to_numpy(), DecoderState(state.past + n, state.batch, bufs, rows=state.rows, made_by=made_by)

    def reorder(self, state: DecoderState, indices) -> DecoderState:
        """The state with batch rows re-indexed (beam search)."""
        from max.driver import Buffer
        idx = np.asarray(indices, dtype=np.int64)
        if not self.kv_cache:
            ctx = None if state.context is None else np.asarray(state.context)[idx]
            return DecoderState(state.past, len(idx), tokens=state.tokens[idx], context=ctx)
        if state.rows is not None:
            state.rows.check(state.past, state.made_by)
        bufs = {k: Buffer.from_numpy(np.ascontiguousarray(b.to_numpy()[idx])) for k, b in state.buffers.items()}
        return DecoderState(state.past, len(idx), bufs, rows=self._rows(state.past))


#: Steps of at most this many rows (batch x new tokens) run the GEMV program "step_few".
#: Its cost grows with the rows (the 51865x384 projection: 0.9 ms for 1 row, 4.0 ms for 5,
#: on a par with the float32 GEMM there), while compiling the GEMM program "step" takes
#: minutes cold: so a prompt's few-token step or a beam of 5 stays on "step_few", and only
#: larger batches compile "step".
STEP_FEW_ROWS = 8

_BATCH_DIM = frozenset({str(B)})           # kvgraph.build's batch dim
_TOKEN_DIMS = frozenset({str(B), str(S)})  # ... and its new-tokens dim


def _has_f16_linear(g: Graph, weights: dict) -> bool:
    """Does ``g`` have a linear whose weight is float16-exact (see lower_max.f16_exact)?"""
    from .lower_max import f16_exact
    names = {n.op.w.name for n in g.nodes if isinstance(n.op, ir.Linear) and isinstance(n.op.w, ir.Weight)}
    return any(name in weights and f16_exact(weights[name]) for name in sorted(names))


def _zeros(v: ir.Value, batch: int):
    """A zero-filled MAX buffer for input ``v`` (a fixed-capacity cache), ``b`` = ``batch``."""
    from max.driver import Buffer
    shape = [batch if str(d) == "b" else d for d in v.type.shape]
    if v.type.dtype != "f32" or not all(isinstance(d, int) for d in shape):
        raise KvgraphError(f"cannot allocate prefill input %{v.name}: {v.type}")
    return Buffer.from_numpy(np.zeros(shape, np.float32))


def _is_buffer(x) -> bool:
    from max.driver import Buffer
    return isinstance(x, Buffer)


def compile(spec_or_graph, weights: dict, *, kv_cache: bool = True, device: str = "cpu",
            passes=None, eager: bool = True, weights_mode: str = "registry",
            cache_layout: str = "auto", capacity: Optional[int] = None,
            f16_weights: bool = True) -> CompiledDecoder:
    """Compile a decoder spec (or a full-sequence graph from ``kvgraph.build``) for MAX.

    ``weights_mode``: ``"registry"`` binds weights at load (one compile serves any weights
    of the same shapes); ``"constant"`` bakes them into the graph (see lower_max.lower).

    ``f16_weights``: matrix weights whose values are all exactly float16 (an fp16
    checkpoint) are read as float16 by the one-token kernels, computing in float32:
    the same results with half the bytes per token. ``False`` keeps every weight float32.

    ``cache_layout``: ``"buffer"`` (fixed-capacity MAX buffers written in place;
    ``capacity`` rows, by default the graph's learned-position limit or the spec's
    ``max_seq_len``), ``"concat"`` (caches grow by a new tensor each step), or ``"auto"``
    (the default): ``"buffer"`` whenever a capacity is known, else ``"concat"``. The
    buffer layout was measured faster (README, Design notes); its states are written in
    place, so two branches stepped from one state need ``reorder`` (a stale state is
    refused). Ignored when ``passes`` is given."""
    if device != "cpu":
        raise LoweringError(f"device={device!r}: this build lowers for 'cpu' only")
    if isinstance(spec_or_graph, DecoderSpec):
        g = build(spec_or_graph)
    elif isinstance(spec_or_graph, Graph):
        g = spec_or_graph
    else:
        raise InputTypeError(f"compile() takes a DecoderSpec or Graph, got {type(spec_or_graph).__name__}")
    if cache_layout not in ("auto", "concat", "buffer"):
        raise InputError(f"cache_layout={cache_layout!r}: expected 'auto', 'buffer' or 'concat'")
    if capacity is not None and cache_layout == "concat":
        raise InputError("capacity= is for cache_layout='buffer' (or 'auto') only")
    if passes is None and kv_cache and cache_layout != "concat":
        if capacity is None:
            capacity = _limits(g)[1]
        if capacity is None and isinstance(spec_or_graph, DecoderSpec):
            capacity = spec_or_graph.max_seq_len
        if capacity is None and cache_layout == "buffer":
            raise InputError(f"cache_layout='buffer': graph {g.name} has no learned-position limit; "
                             "pass capacity=<max rows the cache holds>")
        if capacity is not None:
            passes = default_pipeline("buffer", capacity)
    return CompiledDecoder(g, weights, kv_cache=kv_cache, passes=passes, eager=eager,
                           weights_mode=weights_mode, f16_weights=f16_weights)
