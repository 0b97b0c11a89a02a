"""A pool of cache rows shared by many independent decodes (continuous batching).

:class:`SlotPool` holds every piece of decoder state (the in-place KV caches ``cache.*``
and the step-invariant ``hoisted.*`` values, e.g. Whisper's cross-attention K/V) as one
host array per name with ``rows`` batch rows, wrapped once as MAX ``Buffer`` s that share
its memory. A decode *joins* by taking a contiguous range of rows (:meth:`acquire`, one
row per beam or sample of that decode) and prefilling them: the prefill program is called
on views of the pool's rows (``Buffer[lo:hi]``), so its in-place cache writes land in the
pool; its hoisted outputs are copied into the rows. Every decode then *steps together*:
:meth:`step` runs the per-row step program (``KVCache(per_row=True)``, ``past: i64[b]``)
once over rows ``[0, r)`` with each row at its own position. A decode *leaves* with
:meth:`release`; its rows are reused by the next one.

Rows that take no part in a step still run in it (the program covers rows ``[0, r)``): a
free row steps at position 0 and a row of a decode that is not stepping now writes its
dummy token's K/V at that decode's next position, a row the decode has not written yet
and will overwrite with its own next step. So a step never changes what another decode
attends to.

Not thread-safe: one thread (a scheduler) calls it.
"""

from __future__ import annotations

import attrs
import numpy as np

from . import memory
from .errors import InputError, KvgraphError
from .names import CONTEXT, LOGITS, PAST, TOKENS


@attrs.define(eq=False)
class Group:
    """A decode's rows ``[lo, hi)`` of the pool and how many positions they hold."""

    lo: int
    hi: int
    past: int = 0

    @property
    def size(self) -> int:
        return self.hi - self.lo


class SlotPool:
    """``rows`` rows of decoder state for a :class:`kvgraph.max.decoder.CompiledDecoder`
    compiled with fixed-capacity caches."""

    def __init__(self, decoder, rows: int):
        from max.driver import Buffer

        if rows < 1:
            raise InputError(f"a slot pool needs at least one row, got rows={rows}")
        self.decoder = decoder
        self.rows = rows
        self.capacity = decoder.capacity
        step = decoder.rows_passes.step
        self.step_graph = step
        self.state_names = [v.name for v in step.inputs if v.name not in (TOKENS, PAST)]
        self.arrays: dict[str, np.ndarray] = {}
        for v in step.inputs:
            if v.name in (TOKENS, PAST):
                continue
            shape = v.type.shape[1:]
            if not all(isinstance(d, int) for d in shape):
                raise KvgraphError(f"state %{v.name}: {v.type} has a symbolic dim other than the batch")
            self.arrays[v.name] = memory.zeros((rows, *shape), np.float32)  # unused rows: no memory
        self.buffers = {k: Buffer.from_numpy(a) for k, a in self.arrays.items()}
        self.groups: list[Group] = []
        self.steps = 0  # batched step calls so far
        self.step_rows = 0  # rows those calls computed (busy or not)
        self.busy_rows = 0  # rows whose logits were wanted
        self.compactions = 0  # times rows were moved together (see compact)

    # ------------------------------------------------------------- rows
    def free_rows(self) -> int:
        return self.rows - sum(g.size for g in self.groups)

    def acquire(self, n: int) -> Group | None:
        """The lowest free range of ``n`` contiguous rows (the pool is compacted first when
        enough rows are free but not in one range), or None when fewer are free."""
        if n > self.rows:
            raise InputError(f"a decode of {n} rows does not fit a pool of {self.rows} rows")
        group = self._first_fit(n)
        if group is None and self.free_rows() >= n:
            self.compact()
            group = self._first_fit(n)
        if group is not None:
            self.groups.append(group)
        return group

    def _first_fit(self, n: int) -> Group | None:
        start = 0
        for g in sorted(self.groups, key=lambda g: g.lo):
            if g.lo - start >= n:
                break
            start = max(start, g.hi)
        if start + n > self.rows:
            return None
        return Group(start, start + n)

    def compact(self, last: Group | None = None) -> None:
        """Move the groups' rows together from row 0 (``last``, if given, after all the
        others), so the free rows are one range at the end. Rows are copied whole; a
        group's ``lo``/``hi`` change in place (its holders see the new rows)."""
        order = sorted((g for g in self.groups if g is not last), key=lambda g: g.lo)
        saved = None
        if last is not None:
            order.append(last)
            saved = {k: a[last.lo : last.hi].copy() for k, a in self.arrays.items()}
        pos = 0
        for g in order:
            if g is last:
                for k, a in self.arrays.items():
                    a[pos : pos + g.size] = saved[k]
            elif g.lo != pos:  # pos < g.lo: numpy copies overlapping ranges correctly
                for a in self.arrays.values():
                    a[pos : pos + g.size] = a[g.lo : g.hi]
            g.lo, g.hi = pos, pos + g.size
            pos += g.size
        self.compactions += 1

    def release(self, group: Group) -> None:
        if group in self.groups:
            self.groups.remove(group)

    def _views(self, lo: int, hi: int) -> dict:
        return {k: b[(slice(lo, hi),) + (slice(None),) * (b.rank - 1)] for k, b in self.buffers.items()}

    # ------------------------------------------------------------- programs
    def prefill(self, group: Group, tokens: np.ndarray, context=None) -> np.ndarray:
        """Run the prompt ``tokens [n, t]`` (``n`` = the group's rows) into the group's rows;
        returns the last position's logits ``[n, vocab]``."""
        dec = self.decoder
        tok = dec._check(np.ascontiguousarray(tokens, dtype=np.int64))
        if tok.shape[0] != group.size:
            raise InputError(f"prefill: {tok.shape[0]} token rows for a group of {group.size}")
        prog = dec.program("prefill")
        views = self._views(group.lo, group.hi)
        args = []
        for name in prog.input_names:
            if name == TOKENS:
                args.append(tok)
            elif name == CONTEXT:
                args += dec._context_args(prog, context)
            elif name in views:
                args.append(views[name])
            else:
                raise KvgraphError(f"prefill input {name!r} is neither tokens, context nor pool state")
        got = prog.results(args, prog(*args))
        for name in self.state_names:
            if name not in prog.buffer_outputs.values():  # hoisted values: copied into the rows
                if name not in got:
                    raise KvgraphError(f"prefill does not return state {name!r} the step reads")
                self.arrays[name][group.lo : group.hi] = got[name].to_numpy()
        group.past = tok.shape[1]
        return got[LOGITS].to_numpy()[:, 0]

    def check(self, group: Group, tokens: np.ndarray) -> None:
        """Raise (``InputError`` / ``KvgraphError``) if ``tokens`` cannot step ``group``: ids
        out of the vocabulary, positions past the model's or the cache's end, released rows,
        a row count other than the group's."""
        if group not in self.groups:
            raise KvgraphError("step: this decode's rows were released")
        if tokens.ndim != 2 or tokens.shape[0] != group.size:
            raise InputError(f"step: tokens {list(tokens.shape)} for a group of {group.size} rows")
        self.decoder._check(tokens, group.past)

    def step(self, requests: list[tuple[Group, np.ndarray]]) -> list[np.ndarray]:
        """One step of several decodes together: ``requests`` are ``(group, tokens [n, s])``
        with one ``s`` for all; returns each request's logits ``[n, s, vocab]``."""
        if not requests:
            return []
        s = requests[0][1].shape[1]
        if any(t.shape[1] != s for _, t in requests):
            raise InputError("a batched step takes the same number of new tokens for every row")
        r = max(g.hi for g in self.groups)
        tokens = np.zeros((r, s), np.int64)
        past = np.zeros(r, np.int64)
        for g in self.groups:  # rows not stepping now: their next position (see the module doc)
            if g.hi <= r:
                past[g.lo : g.hi] = min(g.past, self.capacity - s)
        for g, t in requests:
            self.check(g, t)
            tokens[g.lo : g.hi] = t
            past[g.lo : g.hi] = g.past
        prog = self.decoder.program("step_rows")
        views = self._views(0, r)
        args = [tokens, past] + [views[n] for n in prog.input_names[2:]]
        logits = prog(*args)[prog.output_names.index(LOGITS)].to_numpy()
        self.steps += 1
        self.step_rows += r
        out = []
        for g, _ in requests:
            out.append(logits[g.lo : g.hi])
            self.busy_rows += g.size
            g.past += s
        return out

    def reorder(self, group: Group, indices, hoisted: bool = True) -> Group | None:
        """Re-index the group's rows (beam search): row ``i`` becomes row ``indices[i]``;
        returns the group now holding them. With as many indices as rows the rows are
        permuted in place (``hoisted=False`` leaves the hoisted values alone: rows known to
        hold the same); with another count (a prompt run once, then one row per beam) the
        rows move to a new range of that size and the old one is released, or the group
        grows in place after a :meth:`compact` — None, and nothing changed, when fewer rows
        are free than the growth needs."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or not len(idx) or idx.min() < 0 or idx.max() >= group.size:
            raise InputError(f"reorder: indices {idx.tolist()} for a group of {group.size} rows")
        if len(idx) == group.size:
            for name, a in self.arrays.items():
                if name.startswith("cache."):
                    rows = a[group.lo : group.hi, : group.past]
                    rows[...] = rows[idx]
                elif hoisted:
                    rows = a[group.lo : group.hi]
                    rows[...] = rows[idx]
            return group
        new = self._first_fit(len(idx))
        if new is None and self.free_rows() + group.size >= len(idx):
            # grow in place: the group last, the free rows right after it
            self.compact(last=group)
            src = group.lo + idx
            for name, a in self.arrays.items():
                if name.startswith("cache."):
                    a[group.lo : group.lo + len(idx), : group.past] = a[src, : group.past]
                else:
                    a[group.lo : group.lo + len(idx)] = a[src]
            group.hi = group.lo + len(idx)
            return group
        if new is None:
            return None
        self.groups.append(new)
        src = group.lo + idx
        for name, a in self.arrays.items():
            if name.startswith("cache."):
                a[new.lo : new.hi, : group.past] = a[src, : group.past]
            else:
                a[new.lo : new.hi] = a[src]
        new.past = group.past
        self.release(group)
        return new
