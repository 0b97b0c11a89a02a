"""kvgraph's custom MAX kernels: the package builds (once, into the cache folder, atomically),
turns off cleanly, and the few-row float16 GEMV equals ``x @ w.T`` for any row count."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
from tolerance import F32_PASS, assert_close

from kvgraph.max import custom


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("KVGRAPH_KERNELS_DIR", str(tmp_path / "kernels"))
    custom.kernel_package.cache_clear()
    yield tmp_path
    custom.kernel_package.cache_clear()


def test_builds_once_into_the_cache_folder(fresh):
    pkg = custom.kernel_package()
    assert pkg is not None and pkg.is_file() and pkg.name == "kvgraph_kernels.mojoc"
    assert pkg.parent.parent == fresh / "kernels"
    assert not list(pkg.parent.glob(".build-*"))  # the temporary build folder is gone
    mtime = pkg.stat().st_mtime_ns
    custom.kernel_package.cache_clear()
    assert custom.kernel_package() == pkg and pkg.stat().st_mtime_ns == mtime  # found, not rebuilt


def test_the_package_is_kept_per_user_whatever_the_program_store(monkeypatch, tmp_path):
    """One package path per user: MAX's compiled programs name it, so processes with their own
    program stores (KVGRAPH_CACHE_DIR) still share MAX's cache."""
    monkeypatch.delenv("KVGRAPH_KERNELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for store in ("off", str(tmp_path / "a"), str(tmp_path / "b")):
        monkeypatch.setenv("KVGRAPH_CACHE_DIR", store)
        assert custom.kernels_root() == tmp_path / "xdg" / "kvgraph" / "kernels"
    monkeypatch.setenv("KVGRAPH_KERNELS_DIR", str(tmp_path / "k"))
    assert custom.kernels_root() == tmp_path / "k"


def test_source_change_means_a_new_package(fresh, monkeypatch, tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "kvgraph_kernels"
    src.mkdir()
    for f in custom.SOURCE.glob("*.mojo"):
        (src / f.name).write_text(f.read_text())
    monkeypatch.setattr(custom, "SOURCE", src)
    a = custom.source_hash(custom.mojo_compiler())
    (src / "gemv.mojo").write_text((src / "gemv.mojo").read_text() + "\n# edited\n")
    assert custom.source_hash(custom.mojo_compiler()) != a


def test_off_and_broken_compiler_fall_back_to_max_ops(fresh, monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("KVGRAPH_CUSTOM_KERNELS", "off")
    assert custom.kernel_package() is None
    monkeypatch.delenv("KVGRAPH_CUSTOM_KERNELS")
    custom.kernel_package.cache_clear()
    bad = tmp_path / "mojo"
    bad.write_text("#!/bin/sh\necho 'error: broken compiler' >&2\nexit 3\n")
    bad.chmod(0o755)
    monkeypatch.setattr(custom, "mojo_compiler", lambda: bad)
    with caplog.at_level(logging.WARNING, logger="kvgraph"):
        assert custom.kernel_package() is None
    assert "broken compiler" in caplog.text
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "\n" not in warned[0]  # one line: the kernels, why, the way out
    assert "kvgraph_gemv_f16" in warned[0] and "KVGRAPH_CUSTOM_KERNELS=off" in warned[0]
    assert not list((fresh / "kernels").rglob("*.mojoc"))  # nothing half-written


class _SpySession:
    """Stands in for MAX's session: records what a compile is given, compiles nothing."""

    def __init__(self, fail=None):
        self.calls, self.fail = [], fail

    def compile(self, unit, custom_extensions=None):
        self.calls.append((unit, list(custom_extensions or [])))
        if self.fail:
            raise RuntimeError(self.fail)
        return "compiled"


def _kernel_graph(name, pkg):
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType

    return Graph(name, input_types=[TensorType(DType.float32, [4], device=DeviceRef.CPU())],
                 custom_extensions=[pkg])  # fmt: skip


def test_the_kernel_package_reaches_max_once_per_compile(monkeypatch):
    """Every compile path names the package exactly once to MAX: a ``Graph`` carries it (MAX's
    compile adds a Graph's own kernel libraries to the ones it is given), a ``Module`` does not
    (so it is named). Naming it twice failed every unseen spec on AMD Zen 3 ("kernel
    'kvgraph_attend_f32' is registered multiple times with the same device infos")."""
    from max.graph import Graph, Module

    from kvgraph.max import runtime

    pkg = custom.kernel_package()
    if pkg is None:
        pytest.skip("custom kernels unavailable on this machine")
    spy = _SpySession()
    monkeypatch.setattr(runtime, "session", lambda: spy)
    monkeypatch.delenv("KVGRAPH_COMPILE_LOG", raising=False)
    graph = _kernel_graph("one_graph", pkg)
    module = Module()
    for name in ("first", "second"):
        Graph(name, input_types=[], module=module, custom_extensions=[pkg])
    for unit in (graph, module):
        # what the lowering passes: every graph's packages (twice for the Module's two graphs)
        kernels = [str(pkg)] * (2 if unit is module else 1)
        assert runtime._compile(unit, "test", kernels) == "compiled"
        _, given = spy.calls[-1]
        own = list(unit.kernel_libraries_paths) if isinstance(unit, Graph) else []
        reaching = [str(p) for p in given + own]
        assert reaching == [str(pkg)], (type(unit).__name__, reaching)


def test_a_kernel_that_max_refuses_is_one_line_naming_it_and_the_way_out(monkeypatch):
    from kvgraph.errors import KernelError
    from kvgraph.max import runtime

    pkg = custom.kernel_package()
    if pkg is None:
        pytest.skip("custom kernels unavailable on this machine")
    max_says = (
        "Failed to compile the model. Please file an issue.\n"
        "error: kernel 'kvgraph_attend_f32' is registered multiple times with the same device infos\n"
        "  at some/internal/frame.mlir:12"
    )
    monkeypatch.setattr(runtime, "session", lambda: _SpySession(fail=max_says))
    with pytest.raises(KernelError) as e:
        runtime._compile(_kernel_graph("refused", pkg), "the step program", [])
    msg = str(e.value)
    assert "\n" not in msg and e.value.__cause__ is None and e.value.__suppress_context__
    assert "kvgraph_attend_f32" in msg and "registered multiple times" in msg
    assert "KVGRAPH_CUSTOM_KERNELS=off" in msg and "the step program" in msg


#: The float16 GEMV and GEMM graphs' input width.
LINEAR_IN = 48


def _gemv_size() -> int:
    """gemv_once's output count, drawn per run (no compile cache holds its graphs: the package
    reaches MAX through a cold compile every run), never a multiple of the 4-row blocks: the
    tail path runs too."""
    from decoder_fixtures import SEED

    rng = np.random.default_rng(SEED)
    return 4 * int(rng.integers(20, 80)) + int(rng.integers(1, 4))


def _gemm16_size(rng) -> int:
    """gemm16's output count, drawn from ``rng`` per run, past a whole number of blocks."""
    return 32 * int(rng.integers(2, 8)) + int(rng.integers(1, 32))


@functools.cache
def _linears_per_class() -> dict:
    """``{label: {class name: model}}``: ``linear(x f32[*lead, k], w f16[n, k], b f32[n],
    isa=...)`` of the float16 GEMV (``gemv_once``) and GEMM (``gemm16``) for every
    instruction-set class (the code targets this machine whatever the class, so every class
    runs here), at sizes drawn per run, in one Module: one compile for all (two cost ~1.5x
    one on Zen 3, 2026-12-08)."""
    from decoder_fixtures import SEED
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, Module, TensorType

    from kvgraph.max import isa as I
    from kvgraph.max import kernels as K
    from kvgraph.max.runtime import load_graphs

    pkg = custom.kernel_package()
    assert pkg is not None
    cpu = DeviceRef.CPU()
    k = LINEAR_IN
    cases = {
        "gemv_once": (["b", "s"], _gemv_size(), K.linear_gemv_once),
        "gemm16": (["m"], _gemm16_size(np.random.default_rng(SEED + 2)), K.linear_gemm_f16),
    }
    module, graphs = Module(), []
    for label, (lead, n, linear) in cases.items():
        types = [
            TensorType(DType.float32, [*lead, k], device=cpu),
            TensorType(DType.float16, [n, k], device=cpu),
            TensorType(DType.float32, [n], device=cpu),
        ]
        for name in I.CLASSES:
            with Graph(
                f"{label}_test_{name}", input_types=types, custom_extensions=[pkg], module=module
            ) as g:
                x, w, b = (v.tensor for v in g.inputs)
                g.output(linear(x, w, b, isa=I.make(name)))
            graphs.append(g)
    models = load_graphs(module, graphs, "gemv_once and gemm16 tests")
    return {label: {name: models[f"{label}_test_{name}"] for name in I.CLASSES} for label in cases}


@pytest.mark.max
def test_gemv_once_equals_matmul_for_any_rows():
    """The float16 GEMV of every instruction-set class's tiles (AVX-512, AVX2, NEON, SSE: the
    code targets this machine whatever the class, so every class runs here) equals ``x @ w.T``
    for row counts across the tile heights (6 rows a tile on AVX-512 and NEON, 2 on AVX2)."""
    from max.driver import Buffer

    from kvgraph.max import isa as I

    n, k = _gemv_size(), LINEAR_IN
    models = _linears_per_class()["gemv_once"]
    rng = np.random.default_rng(0)
    w16 = rng.standard_normal((n, k)).astype(np.float16)
    bias = rng.standard_normal(n).astype(np.float32)
    for rows, seq in [
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 1),
        (6, 1),
        (7, 1),
        (8, 1),
        (12, 1),
        (13, 1),
        (16, 1),
        (17, 1),
        (3, 2),
    ]:
        x = rng.standard_normal((rows, seq, k)).astype(np.float32)
        ref = x.astype(np.float64) @ w16.astype(np.float64).T + bias
        for name in I.CLASSES:
            got = models[name].execute(*(Buffer.from_numpy(a) for a in (x, w16, bias)))[0]
            assert_close(got.to_numpy(), ref, F32_PASS, what=f"gemv_once {name} rows={rows}x{seq}")


@pytest.mark.max
def test_gemm16_equals_matmul_for_any_rows():
    """The float16 GEMM (``kvgraph_gemm_f16``, a prefill's many-row linears) of every
    instruction-set class equals ``x @ w.T``: its GEMV up to 16 rows, and beyond, its widened
    and transposed panels in tiles of every height (6 rows a tile) and the outputs past the
    last whole block of two vectors."""
    from decoder_fixtures import SEED
    from max.driver import Buffer

    from kvgraph.max import isa as I

    rng = np.random.default_rng(SEED + 2)
    n, k = _gemm16_size(rng), LINEAR_IN  # as the graphs were drawn; then the data from the same generator
    models = _linears_per_class()["gemm16"]
    w16 = rng.standard_normal((n, k)).astype(np.float16)
    bias = rng.standard_normal(n).astype(np.float32)
    for rows in (1, 5, 16, 17, 18, 19, 20, 21, 22, 23, 24, 61, 200):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        ref = x.astype(np.float64) @ w16.astype(np.float64).T + bias
        for name in I.CLASSES:
            got = models[name].execute(*(Buffer.from_numpy(a) for a in (x, w16, bias)))[0]
            assert_close(got.to_numpy(), ref, F32_PASS, what=f"gemm16 {name} rows={rows} n={n}")


def _attention_reference(q, k, v, heads, kv_heads, scale):
    """float64 softmax(scale * q k^T) v per head, query head h on KV head h // group."""
    c, rows, hd = q.shape
    dh = hd // heads
    group = heads // kv_heads
    out = np.zeros((c, rows, hd))
    for h in range(heads):
        g = h // group
        qh = q[:, :, h * dh : (h + 1) * dh].astype(np.float64)
        kh = k[:, :, g * dh : (g + 1) * dh].astype(np.float64)
        vh = v[:, :, g * dh : (g + 1) * dh].astype(np.float64)
        s = scale * qh @ kh.transpose(0, 2, 1)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, :, h * dh : (h + 1) * dh] = (p / p.sum(-1, keepdims=True)) @ vh
    return out


#: The attention kernels' cases: every instruction-set class's tiles (one of them with Zen 3's
#: 32 KB L1d: fewer rows a tile over 1500 keys), on one head size each and all on the grouped
#: case. ``(heads, kv_heads, head size, scale, class)``.
ATTEND_CASES = [
    (6, 6, 64, 0.125, "avx512"),
    (6, 6, 64, 0.125, "neon"),
    (4, 2, 128, 0.09, "avx2"),
    (4, 2, 128, 0.09, "sse"),
    (2, 1, 64, 0.3, "avx512"),
    (2, 1, 64, 0.3, "avx2"),
]
#: ``(heads, kv_heads, head size, scale, rows at their own positions, class)``
CACHE_ATTEND_CASES = [
    (6, 6, 64, 0.125, True, "avx512"),
    (6, 6, 64, 0.125, True, "avx2"),
    (4, 2, 128, 0.09, True, "avx512"),
    (4, 2, 128, 0.09, True, "neon"),
    (2, 1, 64, 0.3, False, "sse"),
]
CACHE_CAPACITY = 40


@functools.cache
def _attention_models() -> tuple[list, list]:
    """``(attend graphs, cache attend graphs)``, each a list of ``(name, model)`` in its cases'
    order: the context attention (``attention_context``) of ATTEND_CASES and the step kernels
    over cache buffers (``store_rows`` + ``attention_cache``) of CACHE_ATTEND_CASES, in one
    Module (one compile for all)."""
    from max.dtype import DType
    from max.graph import BufferType, DeviceRef, Graph, Module, TensorType, ops

    from kvgraph.max import isa as I
    from kvgraph.max import kernels as K
    from kvgraph.max.runtime import load_graphs

    pkg = custom.kernel_package()
    assert pkg is not None
    cpu = DeviceRef.CPU()
    module, attend, cache = Module(), [], []
    for heads, kv_heads, dh, scale, cls in ATTEND_CASES:
        types = [
            TensorType(DType.float32, ["c", "r", heads * dh], device=cpu),
            TensorType(DType.float32, ["c", "t", kv_heads * dh], device=cpu),
            TensorType(DType.float32, ["c", "t", kv_heads * dh], device=cpu),
        ]
        name = f"attend_test_{heads}_{kv_heads}_{dh}_{cls}"
        isa = I.make(cls, 32 * 1024 if cls == "avx2" else 48 * 1024)
        with Graph(name, input_types=types, custom_extensions=[pkg], module=module) as g:
            q, k, v = (x.tensor for x in g.inputs)
            g.output(K.attention_context(q, k, v, heads, kv_heads, False, None, scale, isa=isa))
        attend.append(g)
    cap = CACHE_CAPACITY
    for heads, kv_heads, dh, scale, per_row, cls in CACHE_ATTEND_CASES:
        w, kw = heads * dh, kv_heads * dh
        types = [
            TensorType(DType.float32, ["b", "s", w], device=cpu),
            TensorType(DType.float32, ["b", "s", kw], device=cpu),
            TensorType(DType.float32, ["b", "s", kw], device=cpu),
            TensorType(DType.int64, ["b"] if per_row else [], device=cpu),
            BufferType(DType.float32, ["b", cap, kw], device=cpu),
            BufferType(DType.float32, ["b", cap, kw], device=cpu),
        ]
        name = f"cache_attend_test_{heads}_{kv_heads}_{dh}_{per_row}_{cls}"
        with Graph(name, input_types=types, custom_extensions=[pkg], module=module) as g:
            q, kn, vn, past = (x.tensor for x in g.inputs[:4])
            kc, vc = g.inputs[4].buffer, g.inputs[5].buffer
            s = K.scalar_dim(kn.shape[1])
            if per_row:
                K.store_rows(kc, kn, past)
                K.store_rows(vc, vn, past)
                end = ops.reshape(ops.max(past, axis=0), []) + s
            else:
                sl = [slice(None), (slice(past, past + s), kn.shape[1]), slice(None)]
                ops.buffer_store_slice(kc, kn, sl)
                ops.buffer_store_slice(vc, vn, sl)
                end = past + s
            g.output(K.attention_cache(q, kc, vc, heads, kv_heads, past, end, scale, isa=I.make(cls)))
        cache.append(g)
    models = load_graphs(module, attend + cache, "attend and cache attend tests")
    return [(g.name, models[g.name]) for g in attend], [(g.name, models[g.name]) for g in cache]


@pytest.mark.max
def test_attend_equals_softmax_attention():
    """The few-row context attention against a float64 reference: row counts across its
    tile sizes (1 .. 9 rows; tiles of up to 6 rows at head size 64, 3 at 128), several
    contexts, grouped-query heads, a context length that is not a multiple of 16; the tiles of
    every instruction-set class (:mod:`kvgraph.max.isa`)."""
    from max.driver import Buffer

    rng = np.random.default_rng(1)
    graphs, _ = _attention_models()
    for (heads, kv_heads, dh, scale, _), (name, model) in zip(ATTEND_CASES, graphs):
        for c, rows, sk in [
            (1, 1, 1500),
            (1, 5, 1500),
            (1, 5, 37),
            (3, 2, 100),
            (2, 9, 7),
            (1, 4, 16),
            (2, 3, 1),
        ]:
            q = rng.standard_normal((c, rows, heads * dh)).astype(np.float32)
            k = rng.standard_normal((c, sk, kv_heads * dh)).astype(np.float32)
            v = rng.standard_normal((c, sk, kv_heads * dh)).astype(np.float32)
            got = model.execute(*(Buffer.from_numpy(a) for a in (q, k, v)))[0].to_numpy()
            ref = _attention_reference(q, k, v, heads, kv_heads, scale)
            assert_close(got, ref, F32_PASS, what=f"{name} c={c} rows={rows} sk={sk}")


@pytest.mark.max
def test_cache_attend_and_store_rows_equal_the_reference():
    """The step kernels over cache buffers read in place: ``store_rows`` writes each row's new
    K/V at its own position (nothing else changes), then ``attention_cache`` attends causally
    over rows ``[0, end)``: rows at unequal positions (one position for all, too), one or
    several new tokens, grouped-query heads, stale values past each row's position (which
    the mask must hide), a view shorter than the capacity."""
    from max.driver import Buffer

    rng = np.random.default_rng(2)
    cap = CACHE_CAPACITY
    _, graphs = _attention_models()
    for (heads, kv_heads, dh, scale, per_row, _), (name, model) in zip(CACHE_ATTEND_CASES, graphs):
        w, kw = heads * dh, kv_heads * dh
        for pasts, sq in [([0], 1), ([5, 0, 17], 1), ([3, 9], 3), ([12, 12, 12, 12, 12], 1), ([36], 4)]:
            if not per_row:
                pasts = [pasts[0]] * len(pasts)
            b = len(pasts)
            q = rng.standard_normal((b, sq, w)).astype(np.float32)
            kn, vn = (rng.standard_normal((b, sq, kw)).astype(np.float32) for _ in range(2))
            kc, vc = (rng.standard_normal((b, cap, kw)).astype(np.float32) for _ in range(2))  # stale
            kc0, vc0 = kc.copy(), vc.copy()
            p = np.array(pasts, np.int64)
            args = [q, kn, vn, p if per_row else np.array(p[0]), kc, vc]
            got = model.execute(*(Buffer.from_numpy(a) for a in args))[0].to_numpy()
            ref = np.zeros((b, sq, w))
            for r in range(b):
                kc0[r, p[r] : p[r] + sq], vc0[r, p[r] : p[r] + sq] = kn[r], vn[r]
                for i in range(sq):  # query i of row r sees keys [0, p[r] + i]
                    n = p[r] + i + 1
                    one = _attention_reference(
                        q[r : r + 1, i : i + 1],
                        kc0[r : r + 1, :n],
                        vc0[r : r + 1, :n],
                        heads,
                        kv_heads,
                        scale,
                    )
                    ref[r, i] = one[0, 0]
            np.testing.assert_array_equal(kc, kc0, err_msg=f"{name}: K cache after the store")
            np.testing.assert_array_equal(vc, vc0, err_msg=f"{name}: V cache after the store")
            assert_close(got, ref, F32_PASS, what=f"{name} pasts={pasts} s={sq}")


@pytest.mark.max
def test_a_cache_view_read_before_a_later_store_keeps_its_values():
    """A step program where a cache is written again after its view was taken and before
    the attention reads the view (functional IR: the view is of the first store's result).
    On MAX every store writes the same buffer, so the lowering must load that view before the
    second store instead of letting the kernel read the buffer in place afterwards. Compared
    with the reference interpreter."""
    import kvgraph.reference
    from kvgraph import ir
    from kvgraph.max.runtime import load_program
    from kvgraph.types import TensorType as T
    from kvgraph.types import sym

    cap, w = 8, 64
    gb = ir.GraphBuilder("late_store")
    q = gb.input("q", T("f32", (sym("b"), 1, w)))
    kn = gb.input("kn", T("f32", (sym("b"), 1, w)))
    vn = gb.input("vn", T("f32", (sym("b"), 1, w)))
    k2 = gb.input("k2", T("f32", (sym("b"), 1, w)))
    past = gb.input("past", T("i64", ()))
    kc = gb.input("cache.k", T("f32", (sym("b"), cap, w)))
    vc = gb.input("cache.v", T("f32", (sym("b"), cap, w)))
    ks = gb.add(ir.CacheStore(kc, kn, past), "k_store")
    vs = gb.add(ir.CacheStore(vc, vn, past), "v_store")
    kview = gb.add(ir.CacheView(ks, kn, past), "k_all")
    vview = gb.add(ir.CacheView(vs, vn, past), "v_all")
    ks2 = gb.add(ir.CacheStore(ks, k2, past), "k_again")  # overwrites the row just viewed
    att = gb.add(ir.Attention(q, kview, vview, 1, 1, True, 0.125, past), "attn")
    g = gb.finish([("attn", att), ("cache.k", ks2), ("cache.v", vs)])
    prog = load_program(g, {}, few_dims={"b"}, always_few=True)
    rng = np.random.default_rng(3)
    b, p = 2, 5
    args = {n: rng.standard_normal((b, 1, w)).astype(np.float32) for n in ("q", "kn", "vn", "k2")}
    args["past"] = np.array(p, np.int64)
    args["cache.k"], args["cache.v"] = (rng.standard_normal((b, cap, w)).astype(np.float32) for _ in range(2))
    ref = kvgraph.reference.run(g, {}, np.float64, **args)
    arrays = {n: a.copy() for n, a in args.items()}
    got = prog.results([arrays[n] for n in prog.input_names], prog(*[arrays[n] for n in prog.input_names]))
    assert_close(
        got["attn"].to_numpy(), ref["attn"], F32_PASS, what="attention over the view taken before the store"
    )
    np.testing.assert_array_equal(arrays["cache.k"][:, p], args["k2"][:, 0])  # the late store landed


@pytest.mark.max
def test_a_drawn_step_program_runs_every_kernel_through_the_lowering():
    """A step program built in the IR and lowered the way ``kvgraph.compile`` lowers one, whose
    sizes are drawn anew each run (``KVGRAPH_TEST_SEED``): no compile cache (MAX's own, the
    program store) can hold it, so a fault in how the kernel package reaches MAX (twice in one
    compile, a stale package) fails the suite on any machine, warm or cold. It runs every
    custom kernel — float16 GEMVs, the float16 GEMM of a context's many rows, rows stored at
    their own positions, causal attention over the cache buffers in place, grouped
    cross-attention over a context — and equals the NumPy reference interpreter."""
    import re

    from decoder_fixtures import SEED

    import kvgraph.reference
    from kvgraph import ir
    from kvgraph.max import kernels as K
    from kvgraph.max.lower import lower
    from kvgraph.max.runtime import load_program
    from kvgraph.types import TensorType as T
    from kvgraph.types import sym

    draw = np.random.default_rng(SEED + 1)
    n_out, t_ctx, cap = int(draw.integers(40, 400)), int(draw.integers(3, 60)), 24
    d, heads, dh = 64, 2, 64  # grouped: 2 query heads on 1 KV head
    b = sym("b")
    gb = ir.GraphBuilder("drawn_step")
    x = gb.input("x", T("f32", (b, 1, d)))
    past = gb.input("past", T("i64", (b,)))
    kc = gb.input("cache.k", T("f32", (b, cap, dh)))
    vc = gb.input("cache.v", T("f32", (b, cap, dh)))
    ck = gb.input("ctx.k", T("f32", (b, t_ctx, dh)))
    cv = gb.input("ctx.v", T("f32", (b, t_ctx, dh)))
    lin = {n: gb.weight(n, shape) for n, shape in (("wq", (heads * dh, d)), ("wk", (dh, d)), ("wv", (dh, d)))}
    lin["wo"] = gb.weight("wo", (n_out, heads * dh))
    lin["wc"] = gb.weight("wc", (dh, dh))
    q = gb.add(ir.Linear(x, lin["wq"]), "q")
    kn = gb.add(ir.Linear(x, lin["wk"]), "k")
    vn = gb.add(ir.Linear(x, lin["wv"]), "v")
    ks = gb.add(ir.CacheStore(kc, kn, past), "k_store")
    vs = gb.add(ir.CacheStore(vc, vn, past), "v_store")
    kview = gb.add(ir.CacheView(ks, kn, past), "k_all")
    vview = gb.add(ir.CacheView(vs, vn, past), "v_all")
    att = gb.add(ir.Attention(q, kview, vview, heads, 1, True, 0.125, past), "attn")
    # the context's keys through a linear of its many rows: the float16 GEMM
    ckw = gb.add(ir.Linear(ck, lin["wc"]), "ctx_k_w")
    cross = gb.add(ir.Attention(att, ckw, cv, heads, 1, False, 0.125), "cross")
    out = gb.add(ir.Linear(cross, lin["wo"]), "out")
    g = gb.finish([("out", out), ("cache.k", ks), ("cache.v", vs)])
    rng = np.random.default_rng(SEED)
    weights = {  # float16-exact: the lowering keeps float16 copies for the GEMVs
        n: (rng.standard_normal(w.type.shape) * 0.2).astype(np.float16).astype(np.float32)
        for n, w in lin.items()
    }
    lowered, _ = lower(g, weights, few_dims={"b"}, always_few=True)
    float32_kernels = set(custom.kernel_names()) - K.COMPUTE_TYPE_KERNELS
    assert set(re.findall(r'"(kvgraph_\w+)"', str(lowered))) == float32_kernels, f"seed {SEED}"
    prog = load_program(g, weights, few_dims={"b"}, always_few=True)
    for pasts in ([0], [5, 0, 17], [cap - 1, 3]):
        rows = len(pasts)
        args = {"x": rng.standard_normal((rows, 1, d)).astype(np.float32), "past": np.array(pasts, np.int64)}
        for n in ("cache.k", "cache.v"):  # stale values past each row's position: masked
            args[n] = rng.standard_normal((rows, cap, dh)).astype(np.float32)
        for n in ("ctx.k", "ctx.v"):
            args[n] = rng.standard_normal((rows, t_ctx, dh)).astype(np.float32)
        ref = kvgraph.reference.run(g, weights, np.float64, **args)
        arrays = {n: a.copy() for n, a in args.items()}
        got = prog.results(
            [arrays[n] for n in prog.input_names], prog(*[arrays[n] for n in prog.input_names])
        )
        what = f"drawn step (seed {SEED}: {n_out} outputs, context {t_ctx}) pasts={pasts}"
        assert_close(got["out"].to_numpy(), ref["out"], F32_PASS, what=what)
        for n in ("cache.k", "cache.v"):  # each row's new K/V at its position, the rest as it was
            assert_close(arrays[n], ref[n], F32_PASS, what=f"{what}: {n}")
