"""Linears reading one input (an attention's query, key and value projections) lower to one
GEMM over their stacked weights, held once in the registry (``kvgraph.max.lower``): MAX would
otherwise stack them itself into a copy made at every load. Lowered here without compiling;
the values are checked against the NumPy reference by ``tests/test_compile_max.py``."""

import json

import numpy as np
import pytest
from decoder_fixtures import SPECS, weights_for

import kvgraph
from kvgraph import ir
from kvgraph.max import runtime
from kvgraph.max.lower import FUSED


def _lowered(spec_name: str, program: str, weights=None, **options):
    """``(weights, registry, recipe, IR graph)`` of a spec's program, lowered as the runtime
    lowers it (the recipe as stored: names, layout, f16, source shape and dtype)."""
    weights = weights_for(spec_name) if weights is None else weights
    r = kvgraph.compile(SPECS[spec_name], weights, eager=False, **options).request(program)
    prog = runtime._lower([r], [program])
    return weights, prog.registry, prog.recipe, r.graph


def _linears_by_input(graph) -> list[set]:
    """The weights of the float32 linears of ``graph`` that read one input, where two or
    more do (what should be stacked)."""
    by_input: dict = {}
    for n in graph.nodes:
        if isinstance(n.op, ir.Linear) and isinstance(n.op.w, ir.Weight):
            by_input.setdefault(n.op.x, set()).add(n.op.w.name)
    return [g for g in by_input.values() if len(g) > 1]


def _fused_keys(registry):
    return sorted(k for k in registry if FUSED in k)


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_prefill_stacks_each_attentions_projections_once(spec_name):
    # float32 weights held as such (no float16 copies): every prefill GEMM is MAX's
    weights, registry, recipe, graph = _lowered(spec_name, "prefill", f16_weights=False)
    fused = _fused_keys(registry)
    assert fused, "no linears were fused"
    members = set()
    for key in fused:
        names, layout, f16 = recipe[key][:3]
        assert layout == "T" and not f16 and len(names) > 1
        want = np.concatenate([np.asarray(weights[n], np.float32) for n in names], axis=0).T
        np.testing.assert_array_equal(registry[key], want)
        assert registry[key].dtype == np.float32 and registry[key].flags.c_contiguous
        members.update(names)
    # each attention's projections of one input share one entry (a self-attention's query,
    # key and value: one per layer), and none is held apart too
    groups = _linears_by_input(graph)
    assert sum(len(g) == 3 for g in groups) == SPECS[spec_name].n_layers
    assert sorted(map(sorted, groups)) == sorted(sorted(recipe[k][0]) for k in fused)
    apart = {entry[0] for key, entry in recipe.items() if entry[1] == "T" and FUSED not in key}
    assert not apart & members


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_prefill_reads_float16_weights_through_the_float16_gemm(spec_name):
    """With float16-exact weights (a float16 checkpoint's) a prefill's many-row linears read
    the float16 weights the steps' GEMVs read, through ``kvgraph_gemm_f16``: no float32 copy
    (stacked or apart) is held of a linear's weight whose inner dim the kernels take."""
    from kvgraph.max import isa

    exact = {n: np.asarray(a, np.float16).astype(np.float32) for n, a in weights_for(spec_name).items()}
    r = kvgraph.compile(SPECS[spec_name], exact, eager=False).request("prefill")
    prog = runtime._lower([r], ["prefill"])
    assert "kvgraph_gemm_f16" in str(prog.unit)
    lanes = isa.host().lanes
    linear = {
        n.op.w.name: n.op.w.type.shape[1]
        for n in r.graph.nodes
        if isinstance(n.op, ir.Linear) and isinstance(n.op.w, ir.Weight)
    }
    suited = {w for w, inner in linear.items() if inner % lanes == 0}
    assert suited
    held32 = set()
    for names, layout, f16 in (entry[:3] for entry in prog.recipe.values()):
        if layout == "T" and not f16:
            held32.update(names if isinstance(names, (tuple, list)) else (names,))
    assert not suited & held32, sorted(suited & held32)
    held16 = {entry[0] for entry in prog.recipe.values() if entry[2]}
    assert suited <= held16


def test_few_row_steps_keep_their_float16_gemv():
    """A step of few rows reads the float16 weights by the GEMV (one per linear): nothing is
    stacked; the same step of many rows over float32 weights (MAX's GEMM) stacks."""
    _, registry, _, _ = _lowered("gpt_cross_gqa", "step_few")
    assert not _fused_keys(registry)
    _, registry, _, _ = _lowered("gpt_cross_gqa", "step", f16_weights=False)
    assert _fused_keys(registry)


def test_a_pools_step_reads_float16_weights_through_the_float16_gemm():
    """``step_rows`` (a pool's step, its row count known only when it runs) reads each
    linear's float16 weight through ``kvgraph_gemm_f16`` (the GEMV up to the class's few rows,
    the GEMM beyond, one kernel): no run-time branch between two forms and no float32 copy,
    stacked or apart, of a weight whose inner dim the kernels take."""
    from kvgraph.max import isa

    r = kvgraph.compile(SPECS["gpt_cross_gqa"], weights_for("gpt_cross_gqa"), eager=False).request(
        "step_rows"
    )
    prog = runtime._lower([r], ["step_rows"])
    registry, recipe, graph = prog.registry, prog.recipe, r.graph
    assert "kvgraph_gemm_f16" in str(prog.unit)
    lanes = isa.host().lanes
    suited = {
        n.op.w.name
        for n in graph.nodes
        if isinstance(n.op, ir.Linear) and isinstance(n.op.w, ir.Weight) and n.op.w.type.shape[1] % lanes == 0
    }
    assert suited
    assert not _fused_keys(registry)
    held32 = {entry[0] for entry in recipe.values() if entry[1] == "T" and not entry[2]}
    assert not suited & held32, sorted(suited & held32)
    assert all(f"{name}#f16" in registry for name in suited)


def test_a_pools_step_without_the_kernels_stacks_only_its_gemm_branch(monkeypatch):
    """Without kvgraph's kernels, ``step_rows`` picks when it runs MAX's float16 GEMV (up to a
    few rows) or the float32 GEMM: each linear keeps its float16 weight for the GEMV, and the
    GEMM's weights of one input are held stacked once, none apart."""
    from kvgraph.max import custom

    monkeypatch.setattr(custom, "kernel_package", lambda: None)  # what "off" or a failed build answers
    weights, registry, recipe, graph = _lowered("gpt_cross_gqa", "step_rows")
    fused = _fused_keys(registry)
    assert fused
    members = {n for k in fused for n in recipe[k][0]}
    for name in members:
        assert f"{name}#f16" in registry  # the GEMV's
    apart = {entry[0] for key, entry in recipe.items() if entry[1] == "T" and FUSED not in key}
    assert not apart & members
    assert sum(len(recipe[k][0]) == 3 for k in fused) == SPECS["gpt_cross_gqa"].n_layers


def test_the_float16_gemm_switches_form_where_the_pools_few_rows_end():
    """``step_rows`` trusts ``kvgraph_gemm_f16`` to run the GEMV up to the class's few rows:
    the kernel's own limit (``GEMV_ROWS`` in ``gemm16.mojo``) is the one the lowering reads."""
    import re

    from kvgraph.max import custom, isa
    from kvgraph.max import kernels as K

    src = (custom.SOURCE / "gemm16.mojo").read_text()
    assert int(re.search(r"comptime GEMV_ROWS = (\d+)", src).group(1)) == K.GEMM_F16_GEMV_ROWS
    assert all(isa.thresholds(isa.make(c)).few_rows_custom == K.GEMM_F16_GEMV_ROWS for c in isa.CLASSES)


def test_a_stored_recipe_rebuilds_the_stacked_weight_and_names_a_missing_member():
    # float32 weights (no float16 copies): every prefill GEMM is MAX's, so the prefill holds
    # stacked weights whatever the class's lanes (with float16 copies, a linear runs kvgraph's
    # float16 GEMM where its inner dim is a multiple of the lanes: on AVX2, all of this spec's)
    weights, registry, recipe, _ = _lowered("gpt_cross_gqa", "prefill", f16_weights=False)
    key = _fused_keys(registry)[0]
    names = recipe[key][0]
    stored = {k: tuple(v) for k, v in json.loads(json.dumps({key: recipe[key]})).items()}  # as read back
    prog = runtime._Program([], stored)
    rebuilt = prog.weights_registry(weights)[key]
    np.testing.assert_array_equal(rebuilt, registry[key])
    # a second program binding it (another Module of the same weights) shares the array
    assert runtime._Program([], stored).weights_registry(weights)[key] is rebuilt
    partial = {k: v for k, v in weights.items() if k != names[1]}
    with pytest.raises(runtime.StaleRecipe, match=f"it reads weight '{names[1]}'"):
        prog.weights_registry(partial)
