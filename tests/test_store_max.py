"""The program store with real MAX programs, across processes: a second process loads the
compiled programs from the store without compiling (asserted on the store's counters, not on
time), a damaged artifact falls back to compiling, concurrent processes compile once, and a
stored program computes exactly what a fresh compile does.

The child compiles the built-in ``llama-demo`` spec as the MAX tests do (``compiled`` of
tests/decoder_fixtures.py: the weights test_compile_max uses, every program the tests run of it in
one Module), so MAX's own cache already holds that Module when the suite runs in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest
from tolerance import MAX_VS_REF, assert_close

import kvgraph
import kvgraph.specs

pytestmark = pytest.mark.max
ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
import numpy as np
import kvgraph.max.runtime as runtime
from kvgraph.store import default_store
lowered = []
_lower = runtime.lower
runtime.lower = lambda *a, **k: lowered.append(a[0].name) or _lower(*a, **k)
sys.path.insert(0, "tests")
from decoder_fixtures import compiled
spec, weights, model = compiled("llama_gqa")
tokens = np.arange(1, 8, dtype=np.int64)[None]
last, state = model.prefill(tokens[:, :5])
step, state = model.step(tokens[:, 5:], state)
s = default_store().stats
print("RESULT " + json.dumps(dict(hits=s.hits, misses=s.misses, writes=s.writes, bad=s.bad,
      sources=sorted({p.source for p in model._progs.values()}), lowered=lowered,
      programs=len(model._progs) + len(model.concat._progs),
      last=last.tolist(), step=step.tolist())))
"""


def _spawn(store: Path) -> subprocess.Popen:
    env = dict(os.environ, KVGRAPH_CACHE_DIR=str(store), PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _result(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _child(store: Path) -> dict:
    return _result(_spawn(store))


def _artifacts(store: Path) -> list[Path]:
    return sorted(store.rglob("*.kvp"))


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A child with an empty store: compiles and stores."""
    store = tmp_path_factory.mktemp("store")
    return store, _child(store)


def test_first_process_compiles_and_stores(first):
    store, r = first
    assert (r["hits"], r["misses"], r["writes"], r["bad"]) == (0, 1, 1, 0)
    assert r["sources"] == ["compiled"]
    assert len(_artifacts(store)) == 1  # prefill, step and the rest: one Module, one artifact
    assert len(r["lowered"]) == r["programs"] > 2


def test_second_process_loads_without_compiling(first):
    store, r1 = first
    r2 = _child(store)
    assert (r2["hits"], r2["misses"], r2["writes"], r2["bad"]) == (1, 0, 0, 0)
    assert r2["sources"] == ["store"]
    assert r2["lowered"] == [] and len(r1["lowered"]) == r1["programs"]  # a hit lowers nothing
    # the stored program computes exactly what the fresh compile did ...
    assert r2["last"] == r1["last"] and r2["step"] == r1["step"]
    # ... which is the reference's result
    spec = kvgraph.specs.get("llama-demo")
    full = kvgraph.reference.run(
        kvgraph.build(spec), kvgraph.init_weights(spec, seed=3), np.float64, tokens=np.arange(1, 8)[None]
    )["logits"]
    assert_close(np.array(r2["last"]), full[:, 4], MAX_VS_REF, what="stored program prefill")
    assert_close(np.array(r2["step"]), full[:, 5:], MAX_VS_REF, what="stored program step")


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_damaged_artifact_falls_back_to_compiling(first, tmp_path, damage):
    store, r1 = first
    mine = tmp_path / "store"
    (art,) = _artifacts(store)
    dst = mine / art.relative_to(store)
    dst.parent.mkdir(parents=True)
    data = art.read_bytes()
    dst.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(4096))
    r = _child(mine)
    assert (r["hits"], r["misses"], r["writes"], r["bad"]) == (0, 1, 1, 1)
    assert r["last"] == r1["last"] and r["step"] == r1["step"]
    assert _child(mine)["hits"] == 1  # and the replacement is whole


def _restore(store: Path, key: str, payload: bytes) -> None:
    from kvgraph.store import ProgramStore

    assert ProgramStore(store).put(key, lambda path: Path(path).write_bytes(payload))


@pytest.mark.parametrize("stale", ["weight name", "weight shape"])
def test_stale_recipe_falls_back_to_compiling(first, tmp_path, stale):
    """A whole artifact whose weight recipe does not fit the weights (the key did not see
    the change) is refused with one log line, compiled anew and replaced."""
    from kvgraph.max.runtime import _RECIPE_MAGIC
    from kvgraph.store import ProgramStore

    store, r1 = first
    mine = tmp_path / "store"
    (art,) = _artifacts(store)
    key = art.stem
    payload = bytes(ProgramStore(store).load_bytes(key))
    n0 = len(_RECIPE_MAGIC)
    n = int.from_bytes(payload[n0 : n0 + 8], "little")
    meta = json.loads(payload[n0 + 8 : n0 + 8 + n])
    first_key = sorted(meta["recipe"])[0]
    if stale == "weight name":
        meta["recipe"][first_key][0] = "no.such.weight"
    else:
        meta["recipe"][first_key][3] = [7, 7]
    new = json.dumps(meta).encode()
    _restore(mine, key, payload[:n0] + len(new).to_bytes(8, "little") + new + payload[n0 + 8 + n :])
    r = _child(mine)
    assert (r["hits"], r["misses"], r["writes"], r["bad"]) == (0, 1, 1, 1)
    assert r["sources"] == ["compiled"]
    assert r["last"] == r1["last"] and r["step"] == r1["step"]
    again = _child(mine)  # the replacement fits
    assert (again["hits"], again["bad"], again["lowered"]) == (1, 0, [])


def test_concurrent_processes_compile_once(tmp_path):
    store = tmp_path / "store"
    rs = [_result(p) for p in [_spawn(store), _spawn(store)]]
    assert sorted(r["writes"] for r in rs) == [0, 1]
    assert sorted(r["hits"] for r in rs) == [0, 1]
    assert rs[0]["last"] == rs[1]["last"]


def test_store_key_sees_what_changes_the_lowered_program():
    """The key is computed without lowering, so it must see every input of the lowering:
    options, weight dtypes and shapes, float16-exactness of the values, the graph."""
    from kvgraph.max.runtime import ProgramRequest, store_key

    spec = kvgraph.specs.get("llama-demo")
    g = kvgraph.build(spec)
    w = kvgraph.init_weights(spec, seed=3)  # random float32: not float16-exact
    base = store_key([ProgramRequest(g, w)])
    assert base == store_key([ProgramRequest(g, dict(w))])  # same shapes and dtypes: same key
    assert base != store_key([ProgramRequest(g, w, f16_weights=False)])
    assert base != store_key([ProgramRequest(g, w, few_dims={"b"})])
    assert base != store_key([ProgramRequest(g, w, always_few=True)])
    exact = {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}
    assert base != store_key([ProgramRequest(g, exact)])  # float16 copies are made: another program
    half = {k: v.astype(np.float16) for k, v in w.items()}
    assert store_key([ProgramRequest(g, exact)]) != store_key([ProgramRequest(g, half)])
    other = kvgraph.build(attrs.evolve(spec, eps=1e-6))
    assert base != store_key([ProgramRequest(other, w)])


def test_models_are_matched_by_order_when_max_reports_other_names(monkeypatch):
    """MAX's own compile cache ignores graph names: for the same graphs it can hand back an
    artifact compiled earlier under other names. The programs of a Module are then matched to
    MAX's models by their order (the Module's), and a program the artifact lacks is a stale
    artifact, not a wrong model."""
    from kvgraph.max import runtime

    class Session:
        def init_all(self, compiled, weights_registry=None):
            return {"old_prefill_name": "prefill model", "old_step_name": "step model"}

    monkeypatch.setattr(runtime, "session", lambda: Session())
    prog = runtime._Program(["m_prefill__1", "m_step__2"], {}, compiled=object(), registry={})
    assert prog.init(["m_step__2"], {}, "m") == ["step model"]
    assert prog.init(["m_prefill__1", "m_step__2"], {}, "m") == ["prefill model", "step model"]
    with pytest.raises(runtime.StaleRecipe, match="lacks"):
        prog.init(["m_other__3"], {}, "m")
