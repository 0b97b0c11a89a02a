"""Types of IR values: a dtype and a shape whose dims are ints or symbolic sums.

A symbolic dim is a :class:`Sym`: a sorted tuple of symbol names plus an integer
constant, so ``past + s`` (what concatenating a ``past``-long cache with ``s`` new rows
gives) is ``Sym(("past", "s"))`` and prints as ``past+s``.
"""

from __future__ import annotations

import attrs

DTYPES = ("f32", "i64")


@attrs.frozen(order=False)
class Sym:
    terms: tuple[str, ...]
    const: int = 0

    def __str__(self) -> str:
        parts = list(self.terms) + ([str(self.const)] if self.const else [])
        return "+".join(parts)


Dim = int | Sym


def sym(name: str) -> Sym:
    return Sym((name,))


def dim_add(a: Dim, b: Dim) -> Dim:
    """The dim of two extents laid end to end (``concat`` along one axis)."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    ta, ca = (a.terms, a.const) if isinstance(a, Sym) else ((), a)
    tb, cb = (b.terms, b.const) if isinstance(b, Sym) else ((), b)
    return Sym(tuple(sorted(ta + tb)), ca + cb)


def dim_str(d: Dim) -> str:
    return str(d)


def bind_dim(d: Dim, env: dict[str, int]) -> int:
    """The concrete size of ``d`` given sizes for its symbols."""
    if isinstance(d, int):
        return d
    return sum(env[t] for t in d.terms) + d.const


@attrs.frozen
class TensorType:
    dtype: str = attrs.field(validator=attrs.validators.in_(DTYPES))
    shape: tuple[Dim, ...] = attrs.field(converter=tuple)

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(dim_str(d) for d in self.shape)}]"


def f32(*shape: Dim) -> TensorType:
    return TensorType("f32", shape)


def i64(*shape: Dim) -> TensorType:
    return TensorType("i64", shape)
