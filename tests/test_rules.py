"""Every interpreter of the IR has a rule for every op class: the NumPy reference, the MAX
lowering and the cost model (one table each; a new ``@op`` class is listed in
``ir.OP_CLASSES`` by itself, so a table that lacks it fails here, naming the op)."""

from __future__ import annotations

import importlib

import attrs
import pytest

from kvgraph import ir, reference
from kvgraph.errors import InputError

TABLES = {"reference": "kvgraph.reference", "cost": "kvgraph.cost", "max": "kvgraph.max.lower"}


@pytest.mark.parametrize("which", sorted(TABLES))
def test_every_table_covers_every_op(which):
    if which == "max":
        pytest.importorskip("max.graph")  # importing the lowering compiles nothing
    table = importlib.import_module(TABLES[which]).RULES
    missing = ir.missing_rules(table)
    assert not missing, f"{TABLES[which]}.RULES has no rule for op(s) {missing}"
    assert set(table) <= set(ir.OP_CLASSES), f"{TABLES[which]}.RULES has rules for classes that are not ops"


def test_op_classes_come_from_the_decorator_in_definition_order():
    names = [c.NAME for c in ir.OP_CLASSES]
    assert names[:3] == ["embed", "positions", "gather_rows"] and names[-1] == "conv1d"
    assert len(set(names)) == len(names)
    assert all(attrs.has(c) and issubclass(c, ir.Op) for c in ir.OP_CLASSES)


def test_missing_rules_names_the_op():
    @attrs.frozen(eq=False)
    class Probe(ir.Op):
        NAME = "probe"
        OPERANDS = ("x",)
        x: ir.Value

    assert ir.missing_rules(reference.RULES, ir.OP_CLASSES + (Probe,)) == ["probe"]
    assert ir.missing_rules({}, (ir.Add, ir.Mul)) == ["add", "mul"]


def test_an_op_name_is_taken_once():
    with pytest.raises(InputError, match="'add' is taken by Add"):

        @ir.op("add", ("a",))
        class Add2(ir.Op):
            a: ir.Value

    assert ir.OP_CLASSES.count(ir.Add) == 1
