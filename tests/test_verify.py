"""kvgraph.verify: one broken graph per rule, each checked for its message and IR window."""

from __future__ import annotations

import pytest

import kvgraph
from kvgraph import ir
from kvgraph.errors import VerifyError
from kvgraph.ir import Graph, Node, Value, Weight
from kvgraph.printer import format_node
from kvgraph.types import f32, i64, sym

B, S = sym("b"), sym("s")


def X():
    return Value("x", f32(B, S, 8))


def W(shape=(4, 8), name="w"):
    return Weight(name, f32(*shape))


def _fails(g: Graph, *fragments: str, node: Node | None = None, at_return: bool = False) -> str:
    with pytest.raises(VerifyError) as ei:
        kvgraph.verify(g)
    msg = str(ei.value)
    assert msg.startswith(f"graph {g.name}: "), msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in:\n{msg}"
    if node is not None:
        assert ">>" + format_node(node) in msg, f"no >> marker on the offending node in:\n{msg}"
        assert msg.count(">>") == 1, msg
    if at_return:
        assert ">>return " in msg, msg
    if node is not None or at_return:
        assert "   ^ " in msg, msg  # the note under the marked line
    return msg


def test_good_graph_passes_and_is_returned():
    x, w = X(), W()
    y = Value("y", f32(B, S, 4))
    g = Graph("ok", [x], [Node(ir.Linear(x, w), y)], [("y", y)])
    assert kvgraph.verify(g) is g
    built = kvgraph.build(
        kvgraph.DecoderSpec(vocab_size=10, d_model=8, n_heads=2, n_layers=1, max_seq_len=4, mlp_hidden=16)
    )
    assert kvgraph.verify(built) is built


def test_use_before_definition():
    x = X()
    y = Value("y", f32(B, S, 8))
    z = Value("z", f32(B, S, 8))
    n0 = Node(ir.Gelu(y), z)  # reads %y ...
    n1 = Node(ir.Gelu(x), y)  # ... defined only here
    g = Graph("g", [x], [n0, n1], [("z", z)])
    _fails(g, "operand %y (x) is used before it is defined", node=n0)


def test_operand_never_defined():
    x = X()
    ghost = Value("ghost", f32(B, S, 8))
    z = Value("z", f32(B, S, 8))
    bad = Node(ir.Add(x, ghost), z)
    g = Graph("g", [x], [bad], [("z", z)])
    _fails(g, "operand %ghost (b) is never defined", node=bad)


def test_value_name_defined_twice():
    x = X()
    y1, y2 = Value("y", f32(B, S, 8)), Value("y", f32(B, S, 8))
    n0, n1 = Node(ir.Gelu(x), y1), Node(ir.Silu(x), y2)
    g = Graph("g", [x], [n0, n1], [("y", y2)])
    _fails(g, "%y is defined twice", node=n1)


def test_node_result_shadows_input():
    x = X()
    x2 = Value("x", f32(B, S, 8))
    n = Node(ir.Gelu(x), x2)
    g = Graph("g", [x], [n], [("x", x2)])
    _fails(g, "%x is defined twice", node=n)


def test_input_defined_twice():
    x, x2 = X(), Value("x", f32(B, S, 4))
    y = Value("y", f32(B, S, 8))
    g = Graph("g", [x, x2], [Node(ir.Gelu(x), y)], [("y", y)])
    _fails(g, "input %x is defined twice")


def test_result_type_does_not_match_type_rule():
    x = X()
    y = Value("y", f32(B, S, 5))  # gelu keeps the type: should be f32[b, s, 8]
    bad = Node(ir.Gelu(x), y)
    g = Graph("g", [x], [bad], [("y", y)])
    _fails(g, "result type f32[b, s, 5] does not match the op's type rule f32[b, s, 8]", node=bad)


def test_result_dtype_does_not_match_type_rule():
    x = X()
    y = Value("y", i64(B, S, 4))
    bad = Node(ir.Linear(x, W()), y)
    g = Graph("g", [x], [bad], [("y", y)])
    _fails(g, "result type i64[b, s, 4] does not match the op's type rule f32[b, s, 4]", node=bad)


def test_linear_width_mismatch():
    x = X()
    y = Value("y", f32(B, S, 4))
    bad = Node(ir.Linear(x, W((4, 7))), y)
    g = Graph("g", [x], [bad], [("y", y)])
    _fails(g, "linear: input width 8 != weight in-dim 7", node=bad)


def test_linear_bias_mismatch():
    x = X()
    y = Value("y", f32(B, S, 4))
    bad = Node(ir.Linear(x, W(), Weight("bias", f32(5))), y)
    g = Graph("g", [x], [bad], [("y", y)])
    _fails(g, "linear: bias must be f32[4], got f32[5]", node=bad)


def test_attention_heads_do_not_divide_width():
    x = X()
    y = Value("y", f32(B, S, 8))
    bad = Node(ir.Attention(x, x, x, heads=3, kv_heads=3, causal=True, scale=0.5), y)
    g = Graph("g", [x], [bad], [("y", y)])
    _fails(g, "attention: q width 8 not divisible by heads=3", node=bad)


def test_attention_heads_not_multiple_of_kv_heads():
    x = X()
    k = Value("k", f32(B, S, 6))
    y = Value("y", f32(B, S, 8))
    bad = Node(ir.Attention(x, k, k, heads=4, kv_heads=3, causal=True, scale=0.5), y)
    g = Graph("g", [x, k], [bad], [("y", y)])
    _fails(g, "attention: heads=4 not a multiple of kv_heads=3", node=bad)


def test_attention_kv_width_mismatch():
    x = X()
    k = Value("k", f32(B, S, 6))
    y = Value("y", f32(B, S, 8))
    bad = Node(ir.Attention(x, k, k, heads=4, kv_heads=2, causal=True, scale=0.5), y)
    g = Graph("g", [x, k], [bad], [("y", y)])
    _fails(g, "attention: k width 6 != kv_heads=2 * head size 2", node=bad)


def test_type_rule_error_in_middle_shows_neighbours():
    """The window shows the fault in context: lines before and after, '...' beyond the radius."""
    x = X()
    vals, nodes, prev = [], [], x
    for i in range(9):
        v = Value(f"h{i}", f32(B, S, 8))
        op = ir.Linear(prev, W((8, 7), "bad")) if i == 5 else ir.Gelu(prev)
        nodes.append(Node(op, v))
        vals.append(v)
        prev = v
    g = Graph("long", [x], nodes, [("out", prev)])
    msg = _fails(g, "linear: input width 8 != weight in-dim 7", node=nodes[5])
    for j in (2, 3, 4, 6, 7, 8):
        assert "  " + format_node(nodes[j]) in msg
    assert format_node(nodes[1]) not in msg
    assert "  ..." in msg


def test_output_never_defined():
    x = X()
    y = Value("y", f32(B, S, 8))
    ghost = Value("ghost", f32(B, S, 8))
    g = Graph("g", [x], [Node(ir.Gelu(x), y)], [("y", y), ("out", ghost)])
    _fails(g, "output out=%ghost is never defined", at_return=True)


def test_duplicate_output_names():
    x = X()
    y = Value("y", f32(B, S, 8))
    z = Value("z", f32(B, S, 8))
    g = Graph("g", [x], [Node(ir.Gelu(x), y), Node(ir.Silu(x), z)], [("out", y), ("out", z)])
    _fails(g, "output name 'out' is used twice", "return out=%y, out=%z", at_return=True)


def test_no_outputs():
    x = X()
    y = Value("y", f32(B, S, 8))
    g = Graph("g", [x], [Node(ir.Gelu(x), y)], [])
    _fails(g, "graph has no outputs", at_return=True)


def test_weight_used_with_two_shapes():
    x = X()
    y = Value("y", f32(B, S, 4))
    z = Value("z", f32(B, S, 8))
    n0 = Node(ir.Linear(x, W((4, 8))), y)
    n1 = Node(ir.Linear(x, W((8, 8))), z)
    g = Graph("g", [x], [n0, n1], [("y", y), ("z", z)])
    _fails(g, "weight @w used as f32[8, 8] here but as f32[4, 8] before", node=n1)


def test_node_without_op():
    x = X()
    y = Value("y", f32(B, S, 8))
    bad = Node("gelu", y)
    g = Graph("g", [x], [bad], [("y", y)])
    _fails(g, "node 0 holds str, not an op", node=bad)


def test_operand_not_a_value():
    x = X()
    y = Value("y", f32(B, S, 8))
    bad = Node(ir.Gelu(3), y)
    g = Graph("g", [x], [bad], [("y", y)])
    _fails(g, "operand x is int, not a value", node=bad)


def test_verify_error_is_a_kvgraph_error():
    assert issubclass(VerifyError, kvgraph.KvgraphError)
    assert kvgraph.VerifyError is VerifyError
