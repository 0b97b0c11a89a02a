"""Deterministic text for graphs: one line per node, the result type on every line."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the printer reads the IR's declared fields; ir imports it for ``str(graph)``
    from .ir import Graph, Node, Value


def _operand(v) -> str:
    if v is None:
        return "_"
    sigil = getattr(v, "SIGIL", None)
    if sigil is None:  # not a Value: a malformed operand; verify() reports it with this line
        return f"<{type(v).__name__}>"
    return f"{sigil}{v.name}"


def _attr(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(_attr(x) for x in v) + "]"
    return str(v)


def format_node(n: Node) -> str:
    op = n.op
    if not hasattr(op, "OPERANDS"):  # not an Op: a malformed node; verify() reports it with this line
        return f"%{n.out.name} = <{type(op).__name__}> : {n.out.type}"
    args = ", ".join(_operand(getattr(op, f)) for f in op.OPERANDS if getattr(op, f) is not None)
    attrs_ = op.attributes()
    tail = (" {" + ", ".join(f"{k}={_attr(v)}" for k, v in attrs_.items()) + "}") if attrs_ else ""
    return f"%{n.out.name} = {op.NAME} {args}{tail} : {n.out.type}"


def header(g: Graph) -> str:
    ins = ", ".join(f"%{v.name}: {v.type}" for v in g.inputs)
    return f"graph {g.name}({ins}) {{"


def footer(g: Graph) -> list[str]:
    outs = ", ".join(f"{k}={_operand(v)}" for k, v in g.outputs)
    return [f"  return {outs}", "}"]


def format_graph(g: Graph, *, weights: bool = False) -> str:
    """The printed IR. With ``weights=True`` a comment block lists every parameter's type."""
    lines = [header(g)]
    if weights:
        lines += [f"  // @{w.name}: {w.type}" for w in g.weights()]
    lines += ["  " + format_node(n) for n in g.nodes]
    lines += footer(g)
    return "\n".join(lines)


def window(g: Graph, index: int, radius: int = 3, note: str = "") -> str:
    """Lines of ``g`` around node ``index`` (-1: the return line), the fault marked ``>>``."""
    body = ["  " + format_node(n) for n in g.nodes] + footer(g)[:1]
    at = len(g.nodes) if index < 0 else index
    lo, hi = max(0, at - radius), min(len(body), at + radius + 1)
    out = [header(g)] if lo == 0 else ["  ..."]
    for i in range(lo, hi):
        mark = ">>" if i == at else "  "
        out.append(mark + body[i][2:] if i == at else body[i])
        if i == at and note:
            out.append("   ^ " + note)
    if hi < len(body):
        out.append("  ...")
    return "\n".join(out)


def describe(v: Value) -> str:
    return _operand(v)
