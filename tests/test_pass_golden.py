"""Golden IR of every pipeline stage for the built-in specs.

The printed IR after each pass is compared byte for byte with
``tests/golden/passes/<spec>/<nn>_<stage>.ir``. After an intended change, regenerate with
``KVGRAPH_UPDATE_GOLDEN=1 pytest tests/test_pass_golden.py`` and review the diff.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

import kvgraph
from kvgraph import specs
from kvgraph.passes import ExposeAttention, default_pipeline

GOLDEN = Path(__file__).parent / "golden" / "passes"
SPECS = ("whisper-tiny.en", "llama-demo")
STAGES = ("build", "kv_cache", "hoist_invariant", "share_contexts", "sink_take_last", "dce")
UPDATE = os.environ.get("KVGRAPH_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module", params=SPECS)
def result(request):
    spec = specs.get(request.param)
    return request.param, kvgraph.run_passes(kvgraph.build(spec), default_pipeline())


def test_stage_names(result):
    _, r = result
    assert tuple(s.name for s in r.history) == STAGES


@pytest.mark.parametrize("index,stage", list(enumerate(STAGES)))
def test_stage_matches_golden(result, index, stage):
    name, r = result
    text = r.format(stage) + "\n"
    path = GOLDEN / name / f"{index:02d}_{stage}.ir"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"missing golden {path}; create it with KVGRAPH_UPDATE_GOLDEN=1")
    want = path.read_text()
    if text != want:
        diff = "".join(
            difflib.unified_diff(want.splitlines(True), text.splitlines(True), str(path), "now", n=2)
        )
        lines = diff.splitlines()
        shown = "\n".join(lines[:80]) + (
            f"\n... ({len(lines) - 80} more diff lines)" if len(lines) > 80 else ""
        )
        pytest.fail(
            f"stage {stage} of {name} differs from its golden (KVGRAPH_UPDATE_GOLDEN=1 regenerates):\n{shown}"
        )


#: ExposeAttention over whisper-tiny.en's full graph: the alignment heads of its checkpoint
#: (layer, head) as cross-attention scores outputs (the program word timestamps run).
EXPOSE_GOLDEN = "whisper-tiny.en/expose_attention.ir"
TINY_EN_ALIGNMENT_HEADS = {"b1.cross": [0], "b2.cross": [0, 5], "b3.cross": [0, 1, 2, 3, 4]}


def _check_golden(path: Path, text: str, what: str):
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"missing golden {path}; create it with KVGRAPH_UPDATE_GOLDEN=1")
    want = path.read_text()
    if text != want:
        diff = "".join(
            difflib.unified_diff(want.splitlines(True), text.splitlines(True), str(path), "now", n=2)
        )
        lines = diff.splitlines()
        shown = "\n".join(lines[:80]) + (
            f"\n... ({len(lines) - 80} more diff lines)" if len(lines) > 80 else ""
        )
        pytest.fail(f"{what} differs from its golden (KVGRAPH_UPDATE_GOLDEN=1 regenerates):\n{shown}")


def test_expose_attention_matches_golden():
    r = kvgraph.run_passes(
        kvgraph.build(specs.get("whisper-tiny.en")), [ExposeAttention(TINY_EN_ALIGNMENT_HEADS)]
    )
    _check_golden(
        GOLDEN / EXPOSE_GOLDEN, r.format("expose_attention") + "\n", "ExposeAttention on whisper-tiny.en"
    )


def test_goldens_have_no_strays():
    """Every golden file belongs to a (spec, stage) the test checks."""
    want = {f"{s}/{i:02d}_{st}.ir" for s in SPECS for i, st in enumerate(STAGES)} | {EXPOSE_GOLDEN}
    have = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.ir")}
    assert have <= want, sorted(have - want)
