"""GraphBuilder's helpers for passes: ``like`` (a rewrite of a graph) and ``copy`` (a node
with remapped operands)."""

import kvgraph
from kvgraph import specs
from kvgraph.ir import GraphBuilder
from kvgraph.passes.rewrite import remap


def test_like_and_copy_rebuild_a_graph_exactly():
    g = kvgraph.build(specs.get("llama-demo"))
    b = GraphBuilder.like(g)
    assert b.name == g.name and all(x is y for x, y in zip(b.inputs, g.inputs))
    mapping = {}
    for n in g.nodes:
        b.copy(n, remap(n.op, mapping), mapping)
    again = b.finish([(k, mapping[v]) for k, v in g.outputs])
    assert kvgraph.format_graph(again) == kvgraph.format_graph(g)
    first = g.nodes[0]
    assert b.copy(first, first.op, mapping).name == first.out.name + ".2"  # a taken name
    assert b.copy(first, first.op, mapping, name="fresh").name == "fresh"
    assert mapping[first.out].name == "fresh"
    assert GraphBuilder.like(g, name="other").name == "other"
