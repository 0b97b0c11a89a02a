"""The MAX decoder: prefill/step (or full-sequence) programs loaded on MAX, implementing
:class:`kvgraph.decoder.Decoder`.

Decoder state (KV caches, hoisted cross-attention K/V) stays in MAX ``Buffer`` s between
calls: a step passes the buffers the previous call returned straight back in. In-place
(``layout="buffer"``) caches are shared by the states stepped from one another; the state
records which step wrote each row (:class:`~kvgraph.decoder.WrittenRows`) so a stale state
is refused.
"""

from __future__ import annotations

import logging

import numpy as np
from max.driver import Buffer

from .. import ir
from ..analysis import has_f16_linear, limits, per_context_state
from ..decoder import DecoderState, WrittenRows, regroup, reorder_indices, tokens_array, zeros
from ..errors import InputError, KvgraphError
from ..ir import Graph
from ..names import BATCH, CACHE_PREFIX, CONTEXT, LOGITS, SCORES_PREFIX, SEQ, STEP_ARGS
from ..passes import ExposeAttention, PassResult, default_pipeline, run_passes
from . import custom, isa
from .runtime import CompiledProgram, ProgramRequest, load_programs

log = logging.getLogger("kvgraph")


class CompiledDecoder:
    """A decoder on MAX. With ``kv_cache=True``: ``prefill``/``step`` run the cached
    programs; ``logits`` runs the full-sequence graph. With ``kv_cache=False`` everything
    runs the full-sequence graph (``step`` recomputes every row: the fallback).

    MAX programs (``program(name)``): ``"prefill"``, ``"full"``, and two lowerings of the
    one step graph: ``"step_few"`` (float16 GEMVs, for steps of at most ``STEP_FEW_ROWS``
    rows; only when the weights are an fp16 checkpoint's, see ``few_steps``) and ``"step"``
    (float32 GEMMs). Both read and write the same state."""

    def __init__(
        self,
        graph: Graph,
        weights: dict,
        *,
        kv_cache: bool = True,
        passes=None,
        eager: bool = True,
        weights_mode: str = "registry",
        f16_weights: bool = True,
    ):
        self.full = graph
        self.weights = weights
        self.weights_mode = weights_mode
        self.f16_weights = f16_weights
        self.kv_cache = kv_cache
        self.passes: PassResult | None = run_passes(graph, passes or default_pipeline()) if kv_cache else None
        self._progs: dict[str, CompiledProgram] = {}
        self._rows_passes: PassResult | None = None
        self.vocab_size, self.max_len = limits(graph)
        # rows a fixed-capacity (layout="buffer") cache holds; None for growing caches
        caps = [
            n.op.cache.type.shape[1]
            for n in (self.passes.step.nodes if self.passes else ())
            if isinstance(n.op, ir.CacheStore)
        ]
        self.capacity: int | None = min(caps) if caps else None
        # state held one row per context (ShareContexts), not one per batch row
        self.per_context = per_context_state(self.passes.step) if self.passes else frozenset()
        # an fp16 checkpoint: steps of few rows run "step_few" (float16 GEMVs, no per-linear
        # run-time switch); steps of more rows run "step" (float32 GEMMs), compiled on first use
        self.few_steps = bool(
            kv_cache
            and f16_weights
            and weights_mode == "registry"
            and has_f16_linear(self.passes.step, weights)
        )
        #: steps of at most this many rows run "step_few" (see STEP_FEW_ROWS)
        self.step_few_rows = (
            isa.thresholds().step_few_rows_custom
            if self.few_steps and custom.kernel_package()
            else STEP_FEW_ROWS
        )
        if eager:
            self.load(self.eager_programs)

    # ---- programs
    @property
    def eager_programs(self) -> tuple[str, ...]:
        """The programs a decode needs from the start (loaded by ``eager=True``)."""
        return ("prefill", "step_few" if self.few_steps else "step") if self.kv_cache else ("full",)

    def request(self, name: str) -> ProgramRequest:
        """What program ``name`` is: its graph, weights and lowering options."""
        if name != "full" and self.passes is None:
            raise KvgraphError(
                f"no {name!r} program: this decoder was compiled with kv_cache=False (only 'full')"
            )
        if name not in ("full", "prefill", "step", "step_few", "step_rows"):
            raise KvgraphError(
                f"no program {name!r}: expected 'full', 'prefill', 'step', 'step_few' or 'step_rows'"
            )
        if name == "step_rows":
            # rows at different positions (continuous batching): each linear picks at run time
            # the float16 GEMV that reads its weight once for all rows (up to 16 rows, with
            # kvgraph's custom kernel) or the float32 GEMM; self-attention reads the cache in place
            return ProgramRequest(
                self.rows_passes.step,
                self.weights,
                self.weights_mode,
                self.f16_weights,
                few_dims=_TOKEN_DIMS,
                few_attention=True,
            )
        g = self.full if name == "full" else self.passes.programs["step" if name == "step_few" else name]
        if name == "step_few":
            # every linear is a GEMV: run only with few rows (see step())
            opts = dict(few_dims=_TOKEN_DIMS, always_few=True)
        else:  # a linear over [b, d] (prefill's last row) picks GEMV/GEMM at run time
            opts = dict(few_dims=_BATCH_DIM)
        return ProgramRequest(g, self.weights, self.weights_mode, self.f16_weights, **opts)

    @property
    def rows_passes(self) -> PassResult:
        """The pass pipeline with ``KVCache(per_row=True)``: its ``step`` (program
        ``"step_rows"``) takes ``past: i64[b]``, a position per row; its prefill and state
        names are those of the default pipeline's (see :mod:`kvgraph.slots`)."""
        if self._rows_passes is None:
            if self.capacity is None:
                raise KvgraphError(
                    "rows at different positions need fixed-capacity caches (cache_layout='buffer')"
                )
            # no ShareContexts: rows of different streams read different contexts, so the
            # hoisted state stays one row per batch row (a beam's rows hold copies)
            self._rows_passes = run_passes(self.full, default_pipeline("buffer", self.capacity, per_row=True))
        return self._rows_passes

    def load(self, names, extra=()) -> list[CompiledProgram]:
        """Load programs ``names`` (and ``extra`` requests of the same model, e.g. its encoder)
        in one go: from the program store, or compiled together (see ``load_programs``)."""
        names = [n for n in names if n not in self._progs]
        progs = load_programs([self.request(n) for n in names] + list(extra))
        self._progs.update(zip(names, progs))
        return progs[len(names) :]

    def program(self, name: str) -> CompiledProgram:
        if name not in self._progs:
            if name == "step" and self.few_steps:
                log.info("a step of more than %d rows: loading the GEMM step program", self.step_few_rows)
            self._progs[name] = load_programs([self.request(name)])[0]
        return self._progs[name]

    def exposed_program(self, which) -> CompiledProgram:
        """The full-sequence program with the attention scores ``which`` asks for as extra
        outputs (:class:`~kvgraph.passes.ExposeAttention`), compiled on first use: one MAX
        program per distinct ``which`` (``{attention value name: heads or None}``)."""
        which = ExposeAttention(which).which
        name = "full+scores(" + "; ".join(f"{a}: {'all' if h is None else list(h)}" for a, h in which) + ")"
        if name not in self._progs:
            log.info("loading the full-sequence program with attention scores of %s", [a for a, _ in which])
            self._progs[name] = load_programs([self.exposed_request(which)])[0]
        return self._progs[name]

    def exposed_request(self, which) -> ProgramRequest:
        """What :meth:`exposed_program` loads for ``which`` (e.g. to compile it together with
        other programs of this model, through :meth:`load`'s ``extra``)."""
        g = run_passes(self.full, [ExposeAttention(which)]).programs["full"]
        return ProgramRequest(g, self.weights, self.weights_mode, self.f16_weights, few_dims=_BATCH_DIM)

    @property
    def loaded(self) -> dict[str, CompiledProgram]:
        """The programs loaded so far, by name."""
        return dict(self._progs)

    @property
    def compile_seconds(self) -> dict[str, float]:
        return {k: p.compile_seconds for k, p in self._progs.items()}

    def _context_args(self, prog: CompiledProgram, context):
        if CONTEXT in prog.input_names:
            if context is None:
                raise InputError(f"{prog.graph.name} needs a context (cross-attention input)")
            return [
                context if isinstance(context, Buffer) else np.ascontiguousarray(context, dtype=np.float32)
            ]
        return []

    def _check(self, tok: np.ndarray, past: int = 0) -> np.ndarray:
        if self.vocab_size is not None:
            # a decode step's few ids: Python's min/max beat two numpy reductions per call
            ids = tok.ravel().tolist() if tok.size <= 64 else (int(tok.min()), int(tok.max()))
            lo, hi = min(ids), max(ids)
            if lo < 0 or hi >= self.vocab_size:
                raise InputError(f"token ids must be in [0, {self.vocab_size}), got {lo}..{hi}")
        if self.max_len is not None and past + tok.shape[1] > self.max_len:
            raise InputError(
                f"sequence of {past + tok.shape[1]} positions exceeds the model's "
                f"{self.max_len} learned positions"
            )
        if self.kv_cache and self.capacity is not None and past + tok.shape[1] > self.capacity:
            raise InputError(
                f"sequence of {past + tok.shape[1]} positions exceeds the KV cache "
                f"capacity of {self.capacity} rows (compile with a larger capacity=)"
            )
        return tok

    # ---- public API
    def logits(self, tokens, context=None) -> np.ndarray:
        """Full-sequence logits ``[b, t, vocab]`` (the cache-off graph)."""
        prog = self.program("full")
        out = prog(self._check(tokens_array(tokens)), *self._context_args(prog, context))
        return out[0].to_numpy()

    def logits_and_scores(self, tokens, context=None, *, which) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Full-sequence logits ``[b, t, vocab]`` and ``{attention name: scores}``: the
        pre-softmax scores ``f32[b, heads chosen, t, keys]`` of the attentions and heads
        ``which`` names (``{attention value name, e.g. "b0.cross": heads or None for all}``;
        see :func:`~kvgraph.passes.expose.expose_attention`)."""
        prog = self.exposed_program(which)
        args = [self._check(tokens_array(tokens))] + self._context_args(prog, context)
        got = dict(zip(prog.output_names, prog(*args)))
        logits = got.pop(LOGITS).to_numpy()
        return logits, {k[len(SCORES_PREFIX) :]: v.to_numpy() for k, v in got.items()}

    def prefill(self, tokens, context=None) -> tuple[np.ndarray, DecoderState]:
        """Run the prompt: ``(logits [b, vocab] of the last position, state)``."""
        tok = self._check(tokens_array(tokens))
        if not self.kv_cache:
            full = self.logits(tok, context)
            return full[:, -1], DecoderState(tok.shape[1], tok.shape[0], tokens=tok, context=context)
        prog = self.program("prefill")
        args = [tok] + self._context_args(prog, context)
        args += [_zeros(v, tok.shape[0]) for v in prog.graph.inputs[len(args) :]]
        got = prog.results(args, prog(*args))
        logits = got.pop(LOGITS)
        state = DecoderState(tok.shape[1], tok.shape[0], got, rows=self._rows(tok.shape[1]))
        return logits.to_numpy()[:, 0], state

    def _rows(self, past: int) -> WrittenRows | None:
        return WrittenRows(self.capacity, past) if self.capacity is not None else None

    def step(self, tokens, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        """Append ``tokens [b, n]``: ``(logits [b, n, vocab], new state)``.

        With ``cache_layout="buffer"`` the new state shares the given state's cache buffers,
        written in place at rows ``[past, past+n)``: the given state stays valid (its rows
        are untouched), but two states that step from one common state overwrite each
        other's new rows: stepping a state whose rows a later step from an earlier state
        overwrote raises ``KvgraphError``; ``reorder`` (or a fresh prefill) gives an
        independent copy."""
        tok = self._check(tokens_array(tokens), state.past)
        if state.rows is not None:
            state.rows.check(state.past, state.made_by)
        if tok.shape[0] != state.batch:
            raise InputError(f"step: batch {tok.shape[0]} != the state's batch {state.batch}")
        n = tok.shape[1]
        if state.batch % state.n_contexts:
            raise KvgraphError(f"step: {state.batch} rows cannot be grouped over {state.n_contexts} contexts")
        if not self.kv_cache:
            allt = np.concatenate([state.tokens, tok], axis=1)
            full = self.logits(allt, state.context)
            return full[:, -n:], DecoderState(allt.shape[1], state.batch, tokens=allt, context=state.context)
        few = self.few_steps and tok.shape[0] * n <= self.step_few_rows
        prog = self.program("step_few" if few else "step")
        args = [tok, np.array(state.past, dtype=np.int64)]
        for name in prog.input_names[len(STEP_ARGS) :]:
            if name not in state.buffers:
                raise KvgraphError(f"step needs state {name!r}; the state holds {sorted(state.buffers)}")
            args.append(state.buffers[name])
        got = prog.results(args, prog(*args))
        logits = got.pop(LOGITS)
        bufs = dict(state.buffers)
        bufs.update(got)
        made_by = state.rows.write(state.past, n) if state.rows is not None else 1
        return logits.to_numpy(), DecoderState(
            state.past + n, state.batch, bufs, rows=state.rows, made_by=made_by, contexts=state.contexts
        )

    def reorder(self, state: DecoderState, indices) -> DecoderState:
        """The state with batch rows re-indexed (beam search): an independent copy.

        Caches are gathered row by row, only their rows already written (``[0, past)`` of a
        fixed-capacity cache); per-context state (``ShareContexts``) is kept as it is while
        the new rows still read their contexts in groups (see :func:`~kvgraph.decoder.regroup`:
        beams of one audio share one copy of its cross-attention K/V), else gathered.
        On CPU a MAX ``Buffer`` is host memory: the gather writes straight from the old
        buffers into the new ones (NumPy views of both), with no copy to or from MAX."""
        idx = reorder_indices(indices, state.batch)
        if not self.kv_cache:
            ctx = None if state.context is None else np.asarray(state.context)[idx]
            return DecoderState(state.past, len(idx), tokens=state.tokens[idx], context=ctx)
        if state.rows is not None:
            state.rows.check(state.past, state.made_by)
        ctx_rows, contexts = regroup(state.batch, state.n_contexts, idx)
        bufs = {}
        for k, b in state.buffers.items():
            a = b.to_numpy()
            if k in self.per_context:
                bufs[k] = b if ctx_rows is None else Buffer.from_numpy(a[ctx_rows])
            elif self.capacity is not None and k.startswith(CACHE_PREFIX):
                new = np.empty((len(idx),) + a.shape[1:], a.dtype)  # rows >= past: written before read
                for i, j in enumerate(idx.tolist()):
                    new[i, : state.past] = a[j, : state.past]
                bufs[k] = Buffer.from_numpy(new)
            else:
                bufs[k] = Buffer.from_numpy(a[idx])
        return DecoderState(
            state.past,
            len(idx),
            bufs,
            rows=self._rows(state.past),
            contexts=None if contexts == len(idx) else contexts,
        )


#: Steps of at most this many rows (batch x new tokens) run the GEMV program "step_few".
#: Its cost grows with the rows (the 51865x384 projection: 0.9 ms for 1 row, 4.0 ms for 5,
#: on a par with the float32 GEMM there), while compiling the GEMM program "step" takes
#: minutes cold: so a prompt's few-token step or a beam of 5 stays on "step_few", and only
#: larger batches compile "step".
#: With kvgraph's custom GEMV (``kernels.linear_gemv_once``), which reads each weight once
#: for all rows, the limit is a table keyed by the CPU's class
#: (:func:`kvgraph.max.isa.thresholds`: 16 rows cost about what the GEMM program does).
STEP_FEW_ROWS = 8

_BATCH_DIM = frozenset({BATCH})  # kvgraph.build's batch dim
_TOKEN_DIMS = frozenset({BATCH, SEQ})  # ... and its new-tokens dim


def _zeros(v: ir.Value, batch: int) -> Buffer:
    """A zero-filled MAX buffer for prefill input ``v`` (a fixed-capacity cache), ``b`` = ``batch``."""
    if v.type.dtype != "f32":
        raise KvgraphError(f"cannot allocate prefill input %{v.name}: {v.type}")
    return Buffer.from_numpy(zeros(v, batch))
