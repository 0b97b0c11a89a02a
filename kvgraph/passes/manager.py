"""Programs, the pass protocol, and the pass manager (verify after every pass, keep history)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import attrs

from ..ir import Graph
from ..printer import format_graph
from ..verify import verify


@attrs.frozen
class Programs:
    """An ordered, immutable set of named graphs: ``{"full"}`` before caching,
    ``{"prefill", "step"}`` after it."""

    graphs: tuple[tuple[str, Graph], ...] = attrs.field(converter=tuple)

    @classmethod
    def of(cls, **graphs: Graph) -> Programs:
        return cls(tuple(graphs.items()))

    def __getitem__(self, name: str) -> Graph:
        for k, g in self.graphs:
            if k == name:
                return g
        raise KeyError(f"no program {name!r}; have {self.names()}")

    def __contains__(self, name: str) -> bool:
        return any(k == name for k, _ in self.graphs)

    def names(self) -> list[str]:
        return [k for k, _ in self.graphs]

    def items(self) -> Iterator[tuple[str, Graph]]:
        return iter(self.graphs)

    def replace(self, **graphs: Graph) -> Programs:
        new = dict(self.graphs)
        new.update(graphs)
        return Programs(tuple(new.items()))


class Pass(Protocol):
    """A pass is a frozen value with a ``name`` and a pure ``apply(programs) -> programs``."""

    name: str

    def apply(self, programs: Programs) -> Programs: ...


@attrs.frozen
class Stage:
    name: str
    programs: Programs


@attrs.frozen
class PassResult:
    """The final programs and every stage (``history[0]`` is the input, named ``build``)."""

    programs: Programs
    history: tuple[Stage, ...]

    def __getitem__(self, name: str) -> Graph:
        return self.programs[name]

    @property
    def prefill(self) -> Graph:
        return self.programs["prefill"]

    @property
    def step(self) -> Graph:
        return self.programs["step"]

    @property
    def full(self) -> Graph:
        return self.history[0].programs["full"]

    def format(self, stage: int | str | None = None) -> str:
        """Printed IR of every stage (or of one, by index or pass name)."""
        stages = list(self.history)
        if stage is not None:
            stages = [s for i, s in enumerate(stages) if stage in (i, s.name)]
            if not stages:
                raise KeyError(f"no stage {stage!r}; stages: {[s.name for s in self.history]}")
        out = []
        for s in stages:
            for k, g in s.programs.items():
                out.append(f"// ---- after {s.name}: {k}\n{format_graph(g)}")
        return "\n\n".join(out)


def run_passes(graph: Graph | Programs, passes: Sequence[Pass]) -> PassResult:
    """Apply ``passes`` in order to ``graph`` (a full-sequence graph, or Programs),
    verifying every program after every pass; returns the result with its history."""
    programs = graph if isinstance(graph, Programs) else Programs.of(full=graph)
    for _, g in programs.items():
        verify(g)
    history = [Stage("build", programs)]
    for p in passes:
        programs = p.apply(programs)
        for _, g in programs.items():
            verify(g)
        history.append(Stage(p.name, programs))
    return PassResult(programs, tuple(history))
