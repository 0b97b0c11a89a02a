"""The NumPy oracle runtime: ``prefill`` / ``step`` / ``logits`` over the reference interpreter.

:class:`ReferenceDecoder` runs the programs of a :class:`~kvgraph.passes.PassResult` with
:func:`kvgraph.reference.run` and carries decoder state by one generic rule, so it works
for any spec the passes accept:

- every ``step`` input other than ``tokens`` and ``past`` is *state*;
- state starts as the ``prefill`` output of the same name (``cache.*``, ``hoisted.*``);
- after each step, a state entry is replaced by the step output of the same name when
  step returns one (the grown caches); others (``hoisted.*``) are carried unchanged;
- ``past`` counts the rows already cached;
- a ``prefill`` input other than ``tokens`` and ``context`` (the fixed-capacity caches of
  ``KVCache(layout="buffer")``) is allocated zero-filled from its type, ``b`` bound to the
  batch.

It implements :class:`kvgraph.decoder.Decoder`, as the MAX ``CompiledDecoder`` does; tests
compare the two.
"""

from __future__ import annotations

import numpy as np

from . import reference
from .analysis import per_context_state
from .build import build
from .decoder import DecoderState, regroup, reorder_indices, tokens_array, zeros
from .errors import InputTypeError, KvgraphError
from .ir import Graph
from .names import BATCH, CONTEXT, LOGITS, PAST, STEP_ARGS, TOKENS
from .passes import PassResult, Programs, default_pipeline, run_passes
from .spec import DecoderSpec


class ReferenceDecoder:
    """Prefill/step decoding through the NumPy reference interpreter.

    ``result_or_spec`` is a :class:`PassResult` (its ``prefill``/``step`` programs and its
    un-rewritten ``full`` graph are used), a :class:`DecoderSpec` or a full-sequence
    :class:`Graph` (both run through the default pipeline).
    """

    def __init__(self, result_or_spec, weights: dict, dtype=np.float32):
        if isinstance(result_or_spec, DecoderSpec):
            result_or_spec = build(result_or_spec)
        if isinstance(result_or_spec, (Graph, Programs)):
            result_or_spec = run_passes(result_or_spec, default_pipeline())
        if not isinstance(result_or_spec, PassResult):
            raise InputTypeError(
                "ReferenceDecoder takes a PassResult, DecoderSpec or Graph, "
                f"got {type(result_or_spec).__name__}"
            )
        self.result = result_or_spec
        self.weights = weights
        self.dtype = np.dtype(dtype)
        self.prefill_graph: Graph = self.result.prefill
        self.step_graph: Graph = self.result.step
        self.full_graph: Graph = self.result.full
        self.state_names = tuple(v.name for v in self.step_graph.inputs if v.name not in STEP_ARGS)
        prefill_outs = {k for k, _ in self.prefill_graph.outputs}
        missing = [n for n in self.state_names if n not in prefill_outs]
        if missing:
            raise KvgraphError(
                f"step input(s) {missing} are state but prefill does not return them; "
                f"prefill returns {sorted(prefill_outs)}"
            )
        self.step_outputs = tuple(k for k, _ in self.step_graph.outputs)
        self.per_context = per_context_state(self.step_graph)

    # ------------------------------------------------------------------ helpers
    def _inputs(self, g: Graph, **given) -> dict:
        names = {v.name for v in g.inputs}
        out = {k: v for k, v in given.items() if k in names}
        for k, v in given.items():
            if k not in names and v is not None:
                raise KvgraphError(f"graph {g.name} takes no input {k!r}; it takes {sorted(names)}")
        return out

    def _zeros(self, g: Graph, batch: int, given) -> dict:
        """Zero-filled arrays for the inputs of ``g`` not in ``given`` (other than context)."""
        out = {}
        for v in g.inputs:
            if v.name in given or v.name == CONTEXT:
                continue
            try:
                out[v.name] = zeros(v, batch, self.dtype)
            except KvgraphError as e:
                raise KvgraphError(f"graph {g.name}: {e}") from None
        return out

    def _run(self, g: Graph, **inputs) -> dict[str, np.ndarray]:
        return reference.run(g, self.weights, dtype=self.dtype, **inputs)

    # ------------------------------------------------------------------ API
    def prefill(self, tokens, context: np.ndarray | None = None) -> tuple[np.ndarray, DecoderState]:
        """Run the prompt; returns the last position's logits ``[b, V]`` and the state."""
        tokens = tokens_array(tokens)
        given = self._inputs(self.prefill_graph, **{TOKENS: tokens, CONTEXT: context})
        given.update(self._zeros(self.prefill_graph, tokens.shape[0], given))
        out = self._run(self.prefill_graph, **given)
        state = DecoderState(tokens.shape[1], tokens.shape[0], {n: out[n] for n in self.state_names})
        return out[LOGITS][:, -1, :], state

    def step(self, tokens, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        """Append ``tokens [b, n]`` after ``state``; returns their logits ``[b, n, V]`` and
        the new state (the given state is not modified)."""
        tokens = tokens_array(tokens)
        inputs = {TOKENS: tokens, PAST: np.int64(state.past)}
        for n in self.state_names:
            if n not in state.buffers:
                raise KvgraphError(f"state has no entry {n!r}; it has {sorted(state.buffers)}")
            inputs[n] = state.buffers[n]
        out = self._run(self.step_graph, **self._inputs(self.step_graph, **inputs))
        new = dict(state.buffers)
        for n in self.state_names:
            if n in out:
                new[n] = out[n]
        return out[LOGITS], DecoderState(
            state.past + tokens.shape[1], state.batch, new, contexts=state.contexts
        )

    def logits(self, tokens, context: np.ndarray | None = None) -> np.ndarray:
        """The un-rewritten full graph (the cache-off fallback): logits ``[b, s, V]``."""
        tokens = tokens_array(tokens)
        out = self._run(
            self.full_graph, **self._inputs(self.full_graph, **{TOKENS: tokens, CONTEXT: context})
        )
        return out[LOGITS]

    def reorder(self, state: DecoderState, indices) -> DecoderState:
        """The state with batch rows re-indexed (beam search): every state entry whose
        first dim is the batch ``b`` is indexed along it; per-context entries (first dim
        ``c``, ``ShareContexts``) follow :func:`~kvgraph.decoder.regroup`. A new state,
        ``state`` unchanged."""
        idx = reorder_indices(indices, state.batch)
        batched = {v.name for v in self.step_graph.inputs if v.type.rank and str(v.type.shape[0]) == BATCH}
        ctx_rows, contexts = regroup(state.batch, state.n_contexts, idx)
        bufs = {}
        for k, a in state.buffers.items():
            if k in self.per_context:
                bufs[k] = a if ctx_rows is None else a[ctx_rows]
            else:
                bufs[k] = a[idx] if k in batched else a
        return DecoderState(state.past, len(idx), bufs, contexts=None if contexts == len(idx) else contexts)
